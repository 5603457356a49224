#!/usr/bin/env bash
# Runs every benchmark of BENCHMARKS.md on this machine and writes the raw output under
# bench/results/. Long: 40-80 minutes, by machine. Pass --quick for a ~3-minute smoke pass.
# Never run in CI (CI only compiles the benches: `cargo build --workspace --all-targets`).
set -euo pipefail
cd "$(dirname "$0")/.."
# --server-only skips the simulation benchmarks at the end.
quick=()
server_only=false
for arg in "$@"; do
  case "$arg" in
    --quick) quick=(--quick) ;;
    --server-only) server_only=true ;;
    *) echo "usage: $0 [--quick] [--server-only]" >&2; exit 2 ;;
  esac
done
ulimit -n "$(ulimit -Hn)"   # 10,000 client sockets in the generator, 10,000 in the server
mkdir -p bench/results
nproc > bench/results/machine.txt; lscpu | head -15 >> bench/results/machine.txt
cargo build --release -p herald-core --bin herald --example baseline_server
lg() { cargo bench -p herald-core --bench loadgen -- "$@" "${quick[@]}"; }
# isolated OUT ROUNDS FILTER ARGS...: `lg ARGS` for each in-process server ($servers, by default
# the herald-baseline pair), one run per fresh
# process, the servers interleaved, ROUNDS times; the lines matching FILTER go to OUT. With
# glibc's allocator an in-process server runs slower the more servers ran before it in the
# same process (bench/HISTORY.md, "Eighth pass"); a fresh process per run removes that.
isolated() {
  local out=$1 rounds=$2 filter=$3
  shift 3
  : > "$out"
  for ((run = 0; run < rounds; run++)); do
    for server in ${servers:-herald-notifier baseline-notifier}; do
      echo "# round $run: $server in a fresh process" | tee -a "$out"
      lg "$@" --runs 1 --servers "$server" | grep -E "$filter" | tee -a "$out"
    done
  done
}
# Servers: herald (binary, HTTP publish), herald-notifier (in this process, Server::notifier()
# from a thread), baseline-small and baseline-default (HTTP publish), baseline-notifier (the
# baseline's code in this process, App::publish_raw from a thread). See BENCHMARKS.md.
all=herald,herald-notifier,baseline-small,baseline-default,baseline-notifier
lg --scenario idle --connections 10000 --runs 3                                  | tee bench/results/idle.txt
lg --scenario rate --rates 20000,50000,100000 --runs 3 --duration-secs 5 --servers $all | tee bench/results/rate.txt
# The headline target (p99 at 100k): more runs, and the in-process pair with a 100 µs publishing
# tick (the generator's own pacing delay shrinks; see "Seventh pass" in bench/HISTORY.md).
lg --scenario rate --rates 100000 --runs 7 --duration-secs 5 \
   --servers herald,baseline-small,herald-notifier,baseline-notifier                | tee bench/results/rate100k.txt
# The in-process pair again, each run in a fresh process (see `isolated` above), with the floor
# under any in-process server (`floor-notifier`: the publishing thread writes the sockets itself).
servers="herald-notifier baseline-notifier floor-notifier" \
isolated bench/results/rate100k-notifier-isolated.txt 7 "rate 100000/s run" \
   --scenario rate --rates 100000 --duration-secs 5
lg --scenario rate --rates 100000 --runs 5 --duration-secs 5 --notifier-tick-us 100 \
   --servers herald-notifier,baseline-notifier                                      | tee bench/results/rate100k-tick100us.txt
# The HTTP pair with a 100 µs publishing tick (a thread wakes the publishers; see --http-tick-us).
lg --scenario rate --rates 100000 --runs 5 --duration-secs 5 --http-tick-us 100 \
   --servers herald,baseline-small                                                  | tee bench/results/rate100k-http-tick100us.txt
lg --scenario peak --runs 3 --duration-secs 5 \
   --servers herald,herald-notifier,baseline-small,baseline-notifier       | tee bench/results/peak.txt
# Fine steps wide enough for the machines of BENCHMARKS.md (the AMD EPYC's knee is near 80k
# over HTTP and 350k in process, the first Intel Xeon's near 190k and 850k, the sixteenth
# and seventeenth passes' Intel Xeon's below 60k and near 200k); a run stops at its first
# failing step, so steps below the knee cost one pass each.
http_peak_rates=$(seq -s, 30000 5000 120000),$(seq -s, 130000 10000 200000)
lg --scenario peak --runs 5 --duration-secs 5 --servers herald,baseline-small \
   --peak-rates "$http_peak_rates"                                                  | tee bench/results/peak-http-fine.txt
notifier_peak_rates=$(seq -s, 100000 25000 500000),$(seq -s, 550000 50000 1000000)
lg --scenario peak --runs 3 --duration-secs 5 --servers herald-notifier,baseline-notifier \
   --peak-rates "$notifier_peak_rates"                                               | tee bench/results/peak-notifier-fine.txt
# The same in-process peak with every run in a fresh process: the in-process peak's headline.
isolated bench/results/peak-notifier-isolated.txt 3 "peak step|peak sustained" \
   --scenario peak --duration-secs 5 --peak-rates "$notifier_peak_rates"
lg --scenario burst --runs 3 --servers $all                                      | tee bench/results/burst.txt
# The in-process pair of the burst again, each run in a fresh process.
isolated bench/results/burst-notifier-isolated.txt 7 "burst run" --scenario burst
lg --scenario resume --runs 3                                                    | tee bench/results/resume.txt
lg --scenario stalled --runs 2 --servers herald,baseline-small | tee bench/results/stalled.txt
if $server_only; then exit 0; fi
cargo bench -p herald-sim --bench sim_throughput -- --repetitions 5 | tee bench/results/sim.txt
cargo bench -p herald-sim --bench sim_throughput -- --repetitions 5 --set settle_ms=null | tee bench/results/sim-whole-quiet-period.txt
cargo bench -p herald-sim --bench time_to_find | tee bench/results/time-to-find.txt
