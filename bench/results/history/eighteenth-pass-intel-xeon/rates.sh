#!/usr/bin/env bash
# The eighteenth pass's in-process rate runs (BENCHMARKS.md), each run in a fresh process, the
# servers interleaved. Writes its output beside this script.
#   rates.sh scaled    # 30k, 40k, 50k, 70k; 7 rounds      -> rate-scaled-isolated.txt
#   rates.sh workers   # 70k, 100k with 2 and 1 generator worker threads; 5 rounds
#                      #                                    -> rate-generator-workers.txt
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../../../.."
ulimit -n "$(ulimit -Hn)"
lg() { cargo bench -q -p herald-core --bench loadgen -- --scenario rate --duration-secs 5 --runs 1 "$@" | grep -E "/s run"; }
servers="herald-notifier baseline-notifier"
case "${1:-}" in
  scaled)
    out=$here/rate-scaled-isolated.txt
    : > "$out"
    for round in 0 1 2 3 4 5 6; do for rate in 30000 40000 50000 70000; do for server in $servers; do
      echo "# round $round: $server at $rate in a fresh process" | tee -a "$out"
      lg --rates $rate --servers $server | tee -a "$out"
    done; done; done ;;
  workers)
    out=$here/rate-generator-workers.txt
    : > "$out"
    for round in 0 1 2 3 4; do for rate in 70000 100000; do for workers in 2 1; do for server in $servers; do
      echo "# round $round: $server at $rate, generator worker threads $workers, fresh process" | tee -a "$out"
      lg --rates $rate --worker-threads $workers --servers $server | tee -a "$out"
    done; done; done; done ;;
  *) echo "usage: $0 scaled|workers" >&2; exit 2 ;;
esac
