#!/usr/bin/env bash
# Dump and restore time of a process tree: a python3 root with N-1 children,
# each holding 4 MiB of its own (incompressible) data and a pipe to the root.
# Prints each run and the medians. Run as root, from the repository:
#
#     scripts/bench-tree.sh [PROCESSES=50] [RUNS=3]
#
# Uses target/release/stasis (built if missing). Only the processes it
# started are killed, by pid.
set -euo pipefail
n=${1:-50}
runs=${2:-3}
cd "$(dirname "$0")/.."
[ -x target/release/stasis ] || cargo build --release --quiet
stasis=$PWD/target/release/stasis
work=$(mktemp -d /tmp/stasis-bench-tree.XXXXXX)
root=""
cleanup() {
	[ -n "$root" ] && kill -KILL "$root" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

cat >"$work/tree.py" <<'PY'
import os, sys, time
ready, n = sys.argv[1], int(sys.argv[2])
os.closerange(3, 4096)
data = bytearray(os.urandom(1 << 20)) * 4
for i in range(n - 1):
    r, w = os.pipe()
    if os.fork() == 0:
        import ctypes
        ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
        os.close(r)
        mine = bytearray(data)
        mine[0] = i % 256
        while True:
            time.sleep(0.05)
    os.close(w)
with open(ready + ".tmp", "w") as f:
    f.write(str(os.getpid()))
os.rename(ready + ".tmp", ready)
while True:
    time.sleep(0.05)
PY

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for i in $(seq "$runs"); do
	rm -rf "$work/img" "$work/ready"
	(setsid python3 "$work/tree.py" "$work/ready" "$n" </dev/null >/dev/null 2>&1 &)
	for _ in $(seq 300); do [ -f "$work/ready" ] && break; sleep 0.1; done
	root=$(cat "$work/ready")
	sleep 0.5
	"$stasis" dump --pid "$root" --images "$work/img" --json >"$work/dump.json"
	"$stasis" restore --images "$work/img" --json >"$work/restore.json"
	python3 - "$work" <<'PY' | tee -a "$work/runs"
import json, sys
d = json.load(open(sys.argv[1] + "/dump.json"))
r = json.load(open(sys.argv[1] + "/restore.json"))
print(d["processes"], d["frozen_us"] / 1000, d["total_us"] / 1000, r["total_us"] / 1000, d["write"]["logical_bytes"] >> 20)
PY
	kill -KILL "$root"
	root=""
	sleep 1
done
echo "processes frozen_ms dump_ms restore_ms MiB (median of $runs)"
echo "$n $(awk '{print $2}' "$work/runs" | median) $(awk '{print $3}' "$work/runs" | median)" \
	"$(awk '{print $4}' "$work/runs" | median) $(awk '{print $5}' "$work/runs" | median)"
