# vm-tests/scenarios/record-lvm-fixtures.sh: records what LVM's commands
# really print, for the unit tests of the lvm crate. Runs in the guest; needs
# two blank disks (an LVM PV and a device that is not LVM):
#
#   vm-tests/vm.sh run -d 1G -d 64M -o lvm/tests/fixtures \
#       vm-tests/scenarios/record-lvm-fixtures.sh
#
# Each case NAME leaves in $VM_OUT: NAME.cmd (the command line, shell-quoted),
# NAME.json (stdout, as printed: JSON for reports, often empty otherwise),
# NAME.stderr and NAME.status (the exit code). See lvm/tests/fixtures/README.md.
set -euo pipefail
export LC_ALL=C
PV=/dev/vdb
OTHER=/dev/vdc
OUT=${VM_OUT:?run me with vm-tests/vm.sh}
# The fields are the backend's own (LV_FIELDS and VG_FIELDS in
# lvm/src/report.rs; a unit test there checks they agree).
LVS=(lvs -a --reportformat json --units b --nosuffix
    -o lv_name,vg_name,lv_uuid,lv_path,lv_attr,lv_size,segtype,pool_lv,origin,data_percent,snap_percent,lv_time,lv_tags,lv_kernel_major,lv_kernel_minor,lv_merging,lv_snapshot_invalid)
VGS=(vgs --reportformat json --units b --nosuffix -o vg_name,vg_size,vg_free,vg_extent_size)

fail() { echo "record-lvm-fixtures: FAILED: $*" >&2; exit 1; }
step() { echo "=== $*"; }
# must STEP CMD...: a set-up step that has to succeed
must() {
    local what=$1
    shift
    "$@" || fail "$what: '$*' exited $?"
}
# record NAME EXPECT CMD...: run CMD, keep its output; EXPECT is ok (exit 0)
# or fail (non-zero), so a changed behaviour is noticed when re-recording.
record() {
    local name=$1 expect=$2 rc=0
    shift 2
    printf '%q ' "$@" | sed 's/ $//' >"$OUT/$name.cmd"
    echo >>"$OUT/$name.cmd"
    "$@" >"$OUT/$name.json" 2>"$OUT/$name.stderr" || rc=$?
    echo "$rc" >"$OUT/$name.status"
    echo "--- $name: exit $rc"
    sed 's/^/    err| /' "$OUT/$name.stderr"
    case $expect in
        ok) [ "$rc" -eq 0 ] || fail "$name: expected success, got exit $rc" ;;
        fail) [ "$rc" -ne 0 ] || fail "$name: expected a failure, got exit 0" ;;
    esac
}

lvm version >"$OUT/lvm-version.txt"
uname -r >"$OUT/kernel-version.txt"

step "a VG with a linear origin (ext4), mounted"
must pvcreate pvcreate -q "$PV"
must vgcreate vgcreate -q vg0 "$PV"
must "origin LV" lvcreate -q -y -L 64M -n origin vg0
must "mkfs origin" mkfs.ext4 -q -F /dev/vg0/origin
mkdir -p /mnt/origin /mnt/thin1
must "mount origin" mount /dev/vg0/origin /mnt/origin
echo "before" >/mnt/origin/marker
sync

step "failures before any snapshot exists"
record lvcreate-missing-origin fail lvcreate -s -L 8M -n snap vg0/missing

step "classic snapshot, thin pool, thin LV, thin snapshot"
record lvcreate-snapshot ok lvcreate -s -L 32M -n snap vg0/origin
record lvcreate-thin-pool ok lvcreate -y -L 128M -T vg0/pool
record lvcreate-thin ok lvcreate -y -V 512M -T vg0/pool -n thin1
# mkfs.xfs (xfsprogs 6) refuses filesystems under 300 MB: thin1 is 512M
must "mkfs thin1" mkfs.xfs -q -f /dev/vg0/thin1
must "mount thin1" mount /dev/vg0/thin1 /mnt/thin1
record lvcreate-thin-snapshot ok lvcreate -s -n thin1_snap vg0/thin1
record lvs-origin-snapshot-thin ok "${LVS[@]}"
record vgs ok "${VGS[@]}"
record vgs-vg0 ok "${VGS[@]}" vg0

step "failures with everything in place"
record lvcreate-snapshot-exists fail lvcreate -s -L 8M -n snap vg0/origin
# lvm caps a classic snapshot at its origin's size, so asking for more than
# the VG has is no failure: recorded as such. Running out takes a full VG.
record lvcreate-snapshot-larger-than-origin ok lvcreate -s -L 2G -n big vg0/origin
must "remove big" lvremove -q -y vg0/big
must "fill the VG" lvcreate -q -y -l 100%FREE -n filler vg0
record lvcreate-snapshot-no-space fail lvcreate -s -L 8M -n big vg0/origin
must "remove filler" lvremove -q -y vg0/filler
record lvs-no-such-vg fail "${LVS[@]}" nosuchvg/x
record lvs-no-such-lv fail "${LVS[@]}" vg0/nosuchlv
record lvremove-mounted fail lvremove -y vg0/thin1
record lvconvert-merge-not-snapshot fail lvconvert --merge vg0/origin
record lvs-not-lvm-disk fail "${LVS[@]}" "$OTHER"
must "a plain dm device" dmsetup create plain --table "0 2048 linear $OTHER 0"
record lvs-not-lvm-dm fail "${LVS[@]}" /dev/mapper/plain
must "remove the plain dm device" dmsetup remove plain

step "a classic snapshot that overflows its COW space"
record lvcreate-small-snapshot ok lvcreate -s -L 4M -n small vg0/origin
must "overflow small" dd if=/dev/urandom of=/mnt/origin/fill bs=1M count=16 oflag=direct status=none
sync
record lvs-snapshot-invalid ok "${LVS[@]}"
"${LVS[@]}" vg0/small | grep -q '"lv_snapshot_invalid":"snapshot invalid"' ||
    grep -q '"lv_attr":"s.....I' "$OUT/lvs-snapshot-invalid.json" ||
    echo "note: vg0/small does not look invalid, see lvs-snapshot-invalid.json"
record lvconvert-merge-invalid fail lvconvert --merge vg0/small
record lvremove-snapshot ok lvremove -y vg0/small

step "a merge of the classic snapshot, deferred because the origin is mounted"
snap_uuid=$(lvs --noheadings -o lv_uuid vg0/snap | tr -d ' ')
record lvconvert-merge-deferred ok lvconvert --merge vg0/snap
record lvs-merge-pending ok "${LVS[@]}"

step "a merge of the thin snapshot, deferred because thin1 is mounted"
record lvconvert-merge-thin-deferred ok lvconvert --merge vg0/thin1_snap
record lvs-merge-pending-thin ok "${LVS[@]}"

step "the merges happen on the next activation"
must "umount origin" umount /mnt/origin
must "umount thin1" umount /mnt/thin1
must "deactivate origin" lvchange -an vg0/origin
must "deactivate thin1" lvchange -an vg0/thin1
must "activate origin" lvchange -ay vg0/origin
must "activate thin1" lvchange -ay vg0/thin1
# the activation starts the classic merge; a background lvm process polls it
# and drops the snapshot from the metadata when done
for _ in $(seq 100); do
    [ -z "$(lvs --noheadings -o lv_merging vg0/origin | tr -d ' ')" ] && break
    sleep 0.2
done
[ -z "$(lvs --noheadings -o lv_merging vg0/origin | tr -d ' ')" ] ||
    fail "the merge into vg0/origin did not finish in 20 s"
record lvs-after-merge ok "${LVS[@]}"
must "mount merged origin" mount /dev/vg0/origin /mnt/origin
grep -qx before /mnt/origin/marker || fail "merged origin lost its marker"
[ ! -e /mnt/origin/fill ] || fail "merged origin still has the file written after the snapshot"
must "umount merged origin" umount /mnt/origin

step "the snapshot made again after the merge, tagged with the first one's id"
record lvcreate-snapshot-again ok lvcreate -s -L 32M -n snap --addtag "stasis_id_$snap_uuid" vg0/origin
record lvs-snapshot-again ok "${LVS[@]}" vg0

step "teardown"
record vgchange-deactivate ok vgchange -an vg0
record vgremove ok vgremove -f vg0
must pvremove pvremove -q "$PV"
step "recorded $(ls "$OUT" | grep -c '\.status$') cases"
