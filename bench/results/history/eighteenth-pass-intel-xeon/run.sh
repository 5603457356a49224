#!/usr/bin/env bash
set -euo pipefail
cd /work/main
export CARGO_TARGET_DIR=$HOME/.cache/herald/target
ulimit -n "$(ulimit -Hn)"
out=/tmp/scaled/rate-scaled-isolated.txt
: > "$out"
for round in 0 1 2 3 4 5 6; do
  for rate in 30000 40000 50000 70000; do
    for server in herald-notifier baseline-notifier; do
      echo "# round $round: $server at $rate in a fresh process" | tee -a "$out"
      cargo bench -q -p herald-core --bench loadgen -- --scenario rate --rates $rate --duration-secs 5 --runs 1 --servers $server | grep -E "/s run" | tee -a "$out"
    done
  done
done
