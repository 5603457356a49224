#!/usr/bin/env bash
# Runs every benchmark of BENCHMARKS.md on this machine and writes the raw output under
# bench/results/. Long: ~60 minutes. Pass --quick for a ~3-minute smoke pass.
# Never run in CI (CI only does `cargo bench --no-run`).
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
# Servers: herald (binary, HTTP publish), herald-notifier (in this process, Server::notifier()
# from a thread), baseline-small and baseline-default (HTTP publish), baseline-notifier (the
# baseline's code in this process, App::publish_raw from a thread). See BENCHMARKS.md.
all=herald,herald-notifier,baseline-small,baseline-default,baseline-notifier
lg --scenario idle --connections 10000 --runs 3                                  | tee bench/results/idle.txt
lg --scenario rate --rates 20000,50000,100000 --runs 3 --duration-secs 5 --servers $all | tee bench/results/rate.txt
# The headline target (p99 at 100k): more runs, and the in-process pair with a 100 µs publishing
# tick (the generator's own pacing delay shrinks; see "Seventh pass" in BENCHMARKS.md).
lg --scenario rate --rates 100000 --runs 7 --duration-secs 5 \
   --servers herald,baseline-small,herald-notifier,baseline-notifier                | tee bench/results/rate100k.txt
# The in-process pair again, each run in a fresh process (see the in-process peak below).
: > bench/results/rate100k-notifier-isolated.txt
for run in 0 1 2 3 4 5 6; do
  for server in herald-notifier baseline-notifier; do
    echo "# round $run: $server in a fresh process" >> bench/results/rate100k-notifier-isolated.txt
    lg --scenario rate --rates 100000 --runs 1 --duration-secs 5 --servers $server \
       | grep -E "rate 100000/s run" >> bench/results/rate100k-notifier-isolated.txt
  done
done
lg --scenario rate --rates 100000 --runs 5 --duration-secs 5 --notifier-tick-us 100 \
   --servers herald-notifier,baseline-notifier                                      | tee bench/results/rate100k-tick100us.txt
lg --scenario peak --runs 3 --duration-secs 5 \
   --servers herald,herald-notifier,baseline-small,baseline-notifier       | tee bench/results/peak.txt
lg --scenario peak --runs 3 --duration-secs 5 --servers herald,baseline-small \
   --peak-rates 100000,110000,120000,130000,140000,150000,160000,170000,180000,190000,200000 \
   | tee bench/results/peak-http-fine.txt
lg --scenario peak --runs 3 --duration-secs 5 --servers herald-notifier,baseline-notifier \
   --peak-rates 600000,650000,700000,750000,800000,850000,900000,950000,1000000 \
   | tee bench/results/peak-notifier-fine.txt
# The same in-process peak, each run of each server in a fresh process (interleaved): with glibc's
# allocator an in-process server runs slower the more servers ran before it in the same process
# (BENCHMARKS.md, eighth pass), so this series is the in-process peak's headline.
: > bench/results/peak-notifier-isolated.txt
for run in 0 1 2; do
  for server in herald-notifier baseline-notifier; do
    echo "# round $run: $server in a fresh process" | tee -a bench/results/peak-notifier-isolated.txt
    lg --scenario peak --runs 1 --duration-secs 5 --servers $server \
       --peak-rates 600000,650000,700000,750000,800000,850000,900000,950000,1000000 \
       | grep -E "peak step|peak sustained" | tee -a bench/results/peak-notifier-isolated.txt
  done
done
lg --scenario burst --runs 3 --servers $all                                      | tee bench/results/burst.txt
lg --scenario resume --runs 3                                                    | tee bench/results/resume.txt
if $server_only; then exit 0; fi
cargo bench -p herald-sim --bench sim_throughput -- --repetitions 5 | tee bench/results/sim.txt
cargo bench -p herald-sim --bench sim_throughput -- --repetitions 5 --set settle_ms=null | tee bench/results/sim-whole-quiet-period.txt
cargo bench -p herald-sim --bench time_to_find | tee bench/results/time-to-find.txt
