# vm-tests/scenarios/volume-lvm.sh: the LVM backend end to end through
# `stasis volume`, in a QEMU guest (this host has no device-mapper):
#
#   cargo build --bin stasis
#   vm-tests/vm.sh run -b target/debug/stasis -d 1G -t 400 vm-tests/scenarios/volume-lvm.sh
#
# Classic snapshot of a mounted ext4 LV: snapshot, list, export, rollback
# while mounted (the snapshot made again), rollback refused while a process
# has its cwd there, import (and a corrupted import refused, its LV removed);
# thin snapshot of a mounted xfs thin LV: snapshot, export (activated with
# -K), rollback, delete; incremental export refused. About 90 s under TCG.
set -euo pipefail
PV=/dev/vdb
trap 'echo "FAILED line $LINENO: $BASH_COMMAND"' ERR
sums() { (cd "$1" && sha256sum marker blob); }
pvcreate -q $PV; vgcreate -q vg0 $PV
mkdir -p /mnt/ext /mnt/thin
lvcreate -q -y -L 64M -n ext vg0; mkfs.ext4 -q -F /dev/vg0/ext; mount /dev/vg0/ext /mnt/ext
echo old > /mnt/ext/marker; dd if=/dev/urandom of=/mnt/ext/blob bs=1M count=4 status=none; sums /mnt/ext > /tmp/ext-old
echo "=== classic snapshot"
stasis volume snapshot /mnt/ext before --json
stasis volume list /mnt/ext
echo new > /mnt/ext/marker; dd if=/dev/urandom of=/mnt/ext/blob bs=1M count=4 status=none; sync
stasis volume list /mnt/ext --json
echo "=== export"
stasis volume export /mnt/ext before -o /tmp/ext.stream
ls -l /tmp/ext.stream
echo "=== rollback classic (mounted)"
stasis volume rollback /mnt/ext before
mount | grep /mnt/ext
(cd /mnt/ext && sha256sum -c /tmp/ext-old)
stasis volume list /mnt/ext
lvs -a vg0
echo "=== busy rollback"
( cd /mnt/ext && sleep 30 ) & sleep 1
if stasis volume rollback /mnt/ext before 2>/tmp/busy; then echo "FAILED: rollback with cwd inside"; exit 1; fi
cat /tmp/busy
grep -q "used by process [0-9]* (sleep): cwd /mnt/ext" /tmp/busy || { echo "FAILED: the refusal names no process"; exit 1; }
kill %1 || true; wait || true
echo "=== import (after deleting the snapshot of that name)"
stasis volume delete /mnt/ext before
stasis volume import /mnt/ext -i /tmp/ext.stream
stasis volume list /mnt/ext
mkdir -p /mnt/imp; mount -o ro,noload /dev/vg0/before /mnt/imp; (cd /mnt/imp && sha256sum -c /tmp/ext-old); umount /mnt/imp
echo "=== corrupted import"
stasis volume delete /mnt/ext before
cp /tmp/ext.stream /tmp/bad.stream
printf X | dd of=/tmp/bad.stream bs=1 seek=5000 conv=notrunc status=none
if stasis volume import /mnt/ext -i /tmp/bad.stream; then echo "FAILED: corrupted import accepted"; exit 1; fi
if lvs vg0/before 2>/dev/null; then echo "FAILED: the corrupted import left its LV"; exit 1; fi
echo "=== thin xfs"
lvcreate -q -y -L 128M -T vg0/pool; lvcreate -q -y -V 320M -T vg0/pool -n thin; mkfs.xfs -q -f /dev/vg0/thin; mount /dev/vg0/thin /mnt/thin
echo old > /mnt/thin/marker; dd if=/dev/urandom of=/mnt/thin/blob bs=1M count=4 status=none; sums /mnt/thin > /tmp/thin-old
stasis volume snapshot /mnt/thin tsnap
echo new > /mnt/thin/marker; sync
stasis volume list /mnt/thin
stasis volume export /mnt/thin tsnap -o /tmp/thin.stream
lvs -a vg0
stasis volume rollback /mnt/thin tsnap
(cd /mnt/thin && sha256sum -c /tmp/thin-old)
mount | grep /mnt/thin
stasis volume list /mnt/thin
stasis volume delete /mnt/thin tsnap
stasis volume list /mnt/thin
echo "=== incremental refused"
if stasis volume export /mnt/ext x --parent y -o /tmp/x; then exit 1; fi
echo "=== ALL OK"
