#!/usr/bin/env bash
# Instructions per medium scenario (callgrind; steady on a noisy machine, unlike wall time).
# Runs the sim_throughput bench binary on the first 5 fixed medium scenarios under callgrind
# and prints total instructions / 5. Extra arguments go to the bench, e.g. a config override:
#   bench/sim-instructions.sh                          # the generated config
#   bench/sim-instructions.sh --set tick_ms=20          # one knob changed, same steps
# Needs valgrind. Takes ~15 s per call.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p herald-sim --bench sim_throughput --message-format=json 2>/dev/null \
  | grep -o '"executable":"[^"]*sim_throughput[^"]*"' | tail -1 | cut -d'"' -f4 > /tmp/herald-sim-throughput-bin
bin=$(cat /tmp/herald-sim-throughput-bin)
valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" --bench --size medium \
  --repetitions 1 --scenarios 5 "$@" 2>&1 \
  | awk '/Collected/ { gsub(",", "", $4); printf "%.1f M instructions per medium scenario (%s)\n", $4 / 5 / 1e6, args }' args="$*"
