#!/bin/bash
# every 2 s: time, worker pid, minflt, majflt, utime, stime (ticks), vol/nonvol ctx switches, RSS kB
while true; do
  for p in $(pgrep -f "VLLM::Worker"); do
    st=($(sed 's/.*) //' /proc/$p/stat 2>/dev/null)) || continue
    cs=$(grep -E "^(voluntary|nonvoluntary)_ctxt" /proc/$p/status 2>/dev/null | awk '{printf "%s ", $2}')
    echo "$(date +%s) $p ${st[7]} ${st[9]} ${st[11]} ${st[12]} $cs ${st[21]}"
  done
  sleep 2
done
