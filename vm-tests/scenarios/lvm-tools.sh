# vm-tests/scenarios/lvm-tools.sh: proves the guest's LVM stack works, the
# way stasis will use it: classic and thin snapshots of mounted ext4 and xfs
# volumes, read back, rolled back with lvconvert --merge, torn down. Runs in
# the guest with one blank disk and the stasis binary:
#
#   vm-tests/vm.sh run -b target/debug/stasis -d 1G vm-tests/scenarios/lvm-tools.sh
#
# Every step is checked; the first failure exits non-zero naming the step.
set -euo pipefail
PV=${1:-/dev/vdb}
STEP=start
t0=$(cut -d' ' -f1 /proc/uptime)
step() {
    STEP=$*
    awk -v t0="$t0" -v s="$STEP" '{ printf "=== [%6.2fs] %s\n", $1 - t0, s }' /proc/uptime
}
fail() {
    echo "lvm-tools: FAILED at step '$STEP': $*" >&2
    exit 1
}
trap 'echo "lvm-tools: FAILED at step '"'"'$STEP'"'"': line $LINENO: $BASH_COMMAND exited $?" >&2' ERR

# write_data DIR TAG: a marker file and 4 MiB of random bytes; their sums go
# to /tmp/TAG.sha so a snapshot can be checked against them later
write_data() {
    echo "$2" >"$1/marker"
    dd if=/dev/urandom of="$1/blob" bs=1M count=4 status=none
    sync
    (cd "$1" && sha256sum marker blob) >"/tmp/$2.sha"
}
# holds DIR TAG: DIR has exactly the data write_data DIR TAG wrote
holds() {
    (cd "$1" && sha256sum --quiet -c "/tmp/$2.sha") || fail "$1 does not hold the '$2' data"
}

step "stasis runs in the guest"
command -v stasis >/dev/null || fail "no stasis binary in the guest: run with -b path/to/stasis"
stasis --version || fail "stasis --version exited $?"

step "device-mapper targets"
dmsetup targets | tee /tmp/targets
for t in linear snapshot snapshot-origin snapshot-merge thin thin-pool; do
    grep -qw "^$t" /tmp/targets || fail "dm target $t missing"
done

step "PV and VG on $PV"
pvcreate -q "$PV"
vgcreate -q vg0 "$PV"
mkdir -p /mnt/ext /mnt/xfs /mnt/snap /mnt/thin

step "linear LV with ext4"
lvcreate -q -y -L 64M -n ext vg0
mkfs.ext4 -q -F /dev/vg0/ext
mount /dev/vg0/ext /mnt/ext
write_data /mnt/ext ext-old

step "linear LV with xfs"
# mkfs.xfs (xfsprogs 6) refuses filesystems under 300 MB
lvcreate -q -y -L 320M -n xfs vg0
mkfs.xfs -q -f /dev/vg0/xfs
mount /dev/vg0/xfs /mnt/xfs
write_data /mnt/xfs xfs-old

step "classic snapshots of both, taken while mounted"
# lvcreate -s suspends the origin, which freezes its filesystem: no fsfreeze
lvcreate -q -s -L 32M -n ext_snap vg0/ext
lvcreate -q -s -L 32M -n xfs_snap vg0/xfs
attrs=$(lvs --noheadings -o lv_name,lv_attr vg0)
[[ $attrs =~ ext_snap\ +swi-a-s ]] || fail "ext_snap is not an active snapshot: $attrs"

step "origins modified after the snapshot"
write_data /mnt/ext ext-new
write_data /mnt/xfs xfs-new
holds /mnt/ext ext-new

step "ext4 snapshot mounted read-only holds the old data"
mount -o ro /dev/vg0/ext_snap /mnt/snap
holds /mnt/snap ext-old
umount /mnt/snap

step "xfs snapshot mounted read-only (nouuid) holds the old data"
# the snapshot has the origin's XFS UUID, which is mounted already
mount -o ro,nouuid /dev/vg0/xfs_snap /mnt/snap
holds /mnt/snap xfs-old
umount /mnt/snap

step "thin pool, thin LV (ext4), thin snapshot"
lvcreate -q -y -L 128M -T vg0/pool
lvcreate -q -y -V 256M -T vg0/pool -n thin
mkfs.ext4 -q -F /dev/vg0/thin
mount /dev/vg0/thin /mnt/thin
write_data /mnt/thin thin-old
lvcreate -q -s -n thin_snap vg0/thin
write_data /mnt/thin thin-new

step "thin snapshot activated with -K holds the old data"
# thin snapshots are created with the activation-skip flag
[ ! -e /dev/vg0/thin_snap ] || fail "thin_snap active without -K"
lvchange -q -ay -K vg0/thin_snap
mount -o ro /dev/vg0/thin_snap /mnt/snap
holds /mnt/snap thin-old
umount /mnt/snap

step "roll back the ext4 LV: lvconvert --merge of its snapshot"
umount /mnt/ext
# origin unmounted: the merge starts now and lvconvert waits for its end
lvconvert -q --merge vg0/ext_snap
names=$(lvs -a --noheadings -o lv_name vg0)
[[ ! $names =~ ext_snap ]] || fail "ext_snap still exists after the merge: $names"
mount /dev/vg0/ext /mnt/ext
holds /mnt/ext ext-old

step "roll back the thin LV: lvconvert --merge of the thin snapshot"
umount /mnt/thin
lvchange -q -an vg0/thin_snap
lvconvert -q --merge vg0/thin_snap
names=$(lvs -a --noheadings -o lv_name vg0)
[[ ! $names =~ thin_snap ]] || fail "thin_snap still exists after the merge: $names"
mount /dev/vg0/thin /mnt/thin
holds /mnt/thin thin-old

step "unmount and remove the xfs snapshot"
umount /mnt/ext /mnt/thin /mnt/xfs
lvremove -q -y vg0/xfs_snap

step "deactivate: no dm device left"
vgchange -q -an vg0
left=$(dmsetup ls | grep -v 'No devices found' || true)
[ -z "$left" ] || fail "dm devices left after vgchange -an: $left"

step "teardown"
vgremove -q -f vg0
pvremove -q "$PV"
step "all checks passed"
