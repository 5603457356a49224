#!/usr/bin/env bash
# User-space instructions per delivered event, by thread group, for the in-process servers
# (callgrind; steady on a noisy machine, unlike wall time and CPU samples).
#
# Each server runs the loadgen's `rate` scenario under callgrind, for a short and a long
# publishing phase at the same rate, and the script divides the difference in instructions by
# the difference in delivered events. Start-up (connecting, minting and checking tokens) cancels
# out, so what remains is the marginal cost of one delivered event. Two counts per server:
# "tasks" collects only inside the server's own code paths (the connection tasks and the publish
# call, with all they call), which is steady run to run; "threads" collects whole threads:
#   - server:    the server runtime's worker threads (herald-srv / baseline-srv);
#   - publisher: the publishing thread (the bridge call, plus the generator's payload formatting,
#                which is the same for both servers);
#   - clients:   the generator's client threads and main thread (same code for both servers).
# Kernel work (TCP, epoll, futex) is not counted: callgrind sees user space only.
#
#   bench/server-instructions.sh                            # herald-notifier and baseline-notifier
#   SERVERS="herald-notifier" bench/server-instructions.sh   # one server
#   LOADGEN=/path/to/loadgen bench/server-instructions.sh    # another build (A/B)
#   KEEP=/tmp/cg bench/server-instructions.sh                # keep the callgrind files
# Needs valgrind. Takes about a minute per server.
set -euo pipefail
cd "$(dirname "$0")/.."
servers=${SERVERS:-"herald-notifier baseline-notifier"}
connections=${CONNECTIONS:-200}
# A low rate keeps the process ahead of its load even under valgrind, so every event is
# delivered on its own (no batching) and the count is per event, not per batch.
rate=${RATE:-400}
short_secs=${SHORT_SECS:-2}
long_secs=${LONG_SECS:-8}

bin=${LOADGEN:-}
if [ -z "$bin" ]; then
  bin=$(cargo bench --no-run -p herald-core --bench loadgen --message-format=json 2>/dev/null \
    | grep -o '"executable":"[^"]*loadgen[^"]*"' | tail -1 | cut -d'"' -f4)
fi
# KEEP=dir keeps the callgrind files there (for callgrind_annotate).
if [ -n "${KEEP:-}" ]; then
  work=$KEEP
  mkdir -p "$work"
else
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
fi

# The functions whose instructions count as "in the server's code" (with everything they call):
# the connection tasks' futures and the in-process publish calls, of either server.
tasks=(
  "--toggle-collect=*server::connection::serve_connection::{{closure}}"
  "--toggle-collect=*baseline::connection::{{closure}}*"
  "--toggle-collect=*Notifier::publish_raw"
  "--toggle-collect=*baseline::App::publish_raw"
)

# Runs one load under callgrind ($3: "threads" counts whole threads, "tasks" only the
# functions above); prints "delivered server publisher clients" (instructions).
measure() {
  local server=$1 secs=$2 what=$3 dir="$work/$1-$2-$3"
  local collect=()
  [ "$what" = tasks ] && collect=("${tasks[@]}")
  mkdir -p "$dir"
  valgrind --tool=callgrind --separate-threads=yes --fair-sched=yes "${collect[@]}" \
    --callgrind-out-file="$dir/cg.%p" "$bin" --scenario rate --rates "$rate" --runs 1 \
    --duration-secs "$secs" --connections "$connections" --servers "$server" \
    >"$dir/out.txt" 2>"$dir/valgrind.txt"
  local line
  line=$(grep ' run 0 ' "$dir/out.txt")
  case $line in *"| ok"*) ;; *) echo "run not verified: $line" >&2; exit 1 ;; esac
  local delivered
  delivered=$(sed -E 's/.*delivered ([0-9]+)\/.*/\1/' <<<"$line")
  local server_ir=0 publisher_ir=0 clients_ir=0 ir
  for f in "$dir"/cg.*-*; do
    ir=$(awk '/^summary:/ { print $2; exit }' "$f")
    if grep -qE 'publish_notifier_thread|Notifier::publish_raw|App::publish_raw' "$f"; then
      publisher_ir=$((publisher_ir + ir))
    elif grep -qE 'herald_core::server::connection::serve_connection|baseline::connection' "$f"; then
      server_ir=$((server_ir + ir))
    else
      clients_ir=$((clients_ir + ir))
    fi
  done
  echo "$delivered $server_ir $publisher_ir $clients_ir"
}

echo "# user-space instructions per delivered event (callgrind), $connections connections ($((connections / 2)) users x 2 tabs),"
echo "# $rate delivered/s, marginal between ${short_secs} s and ${long_secs} s of publishing; loadgen: $bin"
echo "# tasks: only inside the connection tasks' futures (server) and the publish call (publisher)."
echo "# threads: whole threads, the runtime's scheduling and parking included (noisier)."
printf '| server | counted | delivered (short / long) | server | publisher | clients | all |\n|---|---|---:|---:|---:|---:|---:|\n'
for server in $servers; do
  for what in tasks threads; do
    read -r d1 s1 p1 c1 < <(measure "$server" "$short_secs" "$what")
    read -r d2 s2 p2 c2 < <(measure "$server" "$long_secs" "$what")
    awk -v name="$server" -v what="$what" -v d1="$d1" -v d2="$d2" -v s="$((s2 - s1))" -v p="$((p2 - p1))" -v c="$((c2 - c1))" \
      'BEGIN { d = d2 - d1; printf "| %s | %s | %d / %d | %.0f | %.0f | %.0f | %.0f |\n", name, what, d1, d2, s / d, p / d, c / d, (s + p + c) / d }'
  done
done
