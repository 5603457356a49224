#!/usr/bin/env bash
# The in-process pair at 70k and 100k with the generator's runtime on 2 worker threads (the
# default) and on 1, each run in a fresh process, interleaved, 5 rounds.
set -euo pipefail
cd /work/main
export CARGO_TARGET_DIR=$HOME/.cache/herald/target
ulimit -n "$(ulimit -Hn)"
out=/tmp/scaled/rate-generator-workers.txt
: > "$out"
for round in 0 1 2 3 4; do
  for rate in 70000 100000; do
    for workers in 2 1; do
      for server in herald-notifier baseline-notifier; do
        echo "# round $round: $server at $rate, generator worker threads $workers, fresh process" | tee -a "$out"
        cargo bench -q -p herald-core --bench loadgen -- --scenario rate --rates $rate --duration-secs 5 --runs 1 \
          --worker-threads $workers --servers $server | grep -E "/s run" | tee -a "$out"
      done
    done
  done
done
