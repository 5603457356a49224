#!/bin/bash
ulimit -n $(ulimit -Hn)
bin=/tmp/lg-knob
for round in 1 2 3 4 5; do
 for v in def ei8 ei200 gqi7 base; do
  case $v in
   def) env=""; srv=herald-notifier;;
   ei8) env="LOADGEN_EVENT_INTERVAL=8"; srv=herald-notifier;;
   ei200) env="LOADGEN_EVENT_INTERVAL=200"; srv=herald-notifier;;
   gqi7) env="LOADGEN_GQI=7"; srv=herald-notifier;;
   base) env=""; srv=baseline-notifier;;
  esac
  echo "# round $round $v"
  env $env $bin --bench --scenario rate --rates 100000 --runs 1 --duration-secs 5 --servers $srv 2>&1 | grep "rate 100000"
 done
done
