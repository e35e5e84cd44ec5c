# vm-tests/scenarios/bench-lvm.sh: `stasis bench --volume` on LVM, in a QEMU
# guest (this host has no device-mapper): how long the volume snapshot takes
# inside the freeze, and the rollback before the restore, on a classic
# snapshot of an ext4 LV and a thin snapshot of an xfs thin LV. Every
# restore is checked by the workload itself (exit 1 if one is wrong).
#
#   cargo build --release --bin stasis
#   vm-tests/vm.sh run -b target/release/stasis -d 2G -t 900 \
#       vm-tests/scenarios/bench-lvm.sh [MIB] [RUNS] [DIRTY_MIB]
#
# Defaults: 32 MiB of memory, 5 runs, 64 MiB of unsynced writes on the
# volume before each dump. The guest is emulated (QEMU TCG): its figures are
# slow in absolute terms; compare them with each other, and with the same
# bench on btrfs on the host (docs/volumes.md).
set -euo pipefail
trap 'echo "FAILED line $LINENO: $BASH_COMMAND"' ERR
MIB=${1:-32} RUNS=${2:-5} DIRTY=${3:-64}
PV=/dev/vdb
pvcreate -q $PV
vgcreate -q vg0 $PV
mkdir -p /mnt/ext /mnt/thin
lvcreate -q -y -L 512M -n ext vg0
mkfs.ext4 -q -F /dev/vg0/ext
mount /dev/vg0/ext /mnt/ext
lvcreate -q -y -L 768M -T vg0/pool
lvcreate -q -y -V 512M -T vg0/pool -n thin
mkfs.xfs -q -f /dev/vg0/thin
mount /dev/vg0/thin /mnt/thin
for vol in /mnt/ext /mnt/thin; do
    echo "=== $vol ($(findmnt -no FSTYPE $vol))"
    stasis bench --mib "$MIB" --pattern random --runs "$RUNS" --volume "$vol" --dirty-mib "$DIRTY" --dir /tmp 2>&1 |
        grep -v '^stasis: rolled'
done
echo "=== ALL OK"
