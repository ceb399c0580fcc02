#!/bin/bash
# Runs fit_end.py on the demo config; 5 s after on_train_end, if fit has not returned, dumps
# every thread's stack with gdb into OUT.gdb.txt. Usage: fit_end_gdb.sh OUT [train args...]
set -u
out=$1; shift
log=$out.log
.venv/bin/python benchmarks/probes/fit_end.py --config configs/demo.yaml --workdir "$out.run" \
  "$@" > "$log" 2>&1 &
pid=$!
until grep -q "on_train_end" "$log" 2>/dev/null || ! kill -0 $pid 2>/dev/null; do sleep 0.5; done
sleep 5
if ! grep -q "fit returned" "$log"; then
  gdb -p $pid -batch -ex "thread apply all bt 30" > "$out.gdb.txt" 2>&1
fi
wait $pid
grep "\[probe\]" "$log" | tail -2
