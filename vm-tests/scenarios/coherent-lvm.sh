# vm-tests/scenarios/coherent-lvm.sh: the coherent disk-plus-process image
# on LVM, in a QEMU guest (this host has no device-mapper):
#
#   cargo build --bin stasis
#   gcc -O1 -pthread -o target/appender tests/workloads/appender.c
#   vm-tests/vm.sh run -b target/debug/stasis -b target/appender -d 1G -t 400 \
#       vm-tests/scenarios/coherent-lvm.sh
#
# For a classic snapshot of an ext4 LV and a thin snapshot of an xfs thin LV:
# the workload `appender` appends numbered records to a file on the volume
# (no fsync) and keeps the last number and the offset in memory.
# `stasis snapshot --leave-running` freezes it, snapshots the LV and dumps
# it; the snapshot's file ends exactly at the image's fd offset with the
# records 1..N. The original writes on and is killed. A restore without
# --rollback-volume is refused (the file moved on) and leaves the volume
# alone; with it the volume goes back to the snapshot and the restored
# process goes on writing from its state, then checks itself: its last
# number is the file's last record, its offset the file's size. A second
# restore from the same image (after a classic rollback the snapshot is
# made again) works the same way.
set -euo pipefail
PV=/dev/vdb
trap 'echo "FAILED line $LINENO: $BASH_COMMAND"' ERR
fail() { echo "FAILED: $*"; exit 1; }

# wait_for FILE [SECONDS]: until FILE exists.
wait_for() {
    local i
    for ((i = 0; i < ${2:-120} * 10; i++)); do
        [ -e "$1" ] && return 0
        sleep 0.1
    done
    fail "no $1 after ${2:-120} s"
}

# progress DIR: the workload's last published generation.
progress() { cat "$1/progress" 2>/dev/null || echo 0; }

# wait_progress DIR N: until the workload is past generation N.
wait_progress() {
    local i
    for ((i = 0; i < 1200; i++)); do
        [ "$(progress "$1")" -ge "$2" ] && return 0
        sleep 0.1
    done
    fail "$1: no progress past $2 (at $(progress "$1"))"
}

# check_records FILE: prints the number of records; fails unless FILE holds
# exactly the records 1..N, each "%010u\n".
check_records() {
    local size n last
    size=$(stat -c %s "$1")
    [ $((size % 11)) -eq 0 ] || fail "$1: $size bytes is not whole records"
    n=$((size / 11))
    [ "$n" -gt 0 ] || fail "$1: empty"
    seq -f %010g 1 "$n" | cmp - "$1" >/dev/null || fail "$1: not the records 1..$n"
    echo "$n"
}

# result DIR: the workload's verdict, after it was asked to check itself.
result() {
    touch "$1/check"
    wait_for "$1/result" 120
    cat "$1/result"
    head -1 "$1/result" | grep -qx ok || { fail "$1: the restored workload found its state wrong"; }
}

# coherent MOUNT THIN: the whole story on the LV mounted at MOUNT (THIN: 1
# for a thin LV, 0 for a classic one).
coherent() {
    local mnt=$1 thin=$2 name=img-${1##*/} w pid pos n out
    w=$(mktemp -d /tmp/wl.XXXXXX)
    # stdout to /dev/null: a log file that grew between restores would be
    # (rightly) refused as changed by the second restore.
    appender "$w" "$mnt/records" </dev/null >/dev/null 2>&1 &
    pid=$!
    wait_for "$w/ready"
    wait_progress "$w" 20

    echo "=== snapshot --leave-running of pid $pid on $mnt"
    stasis snapshot --pid "$pid" --volume "$mnt" --images "/tmp/$name" --name "$name" --leave-running
    out=$(stasis inspect "/tmp/$name")
    echo "$out" | grep -E '^volume|records'
    echo "$out" | grep -q "^volume     lvm " || fail "inspect shows no LVM volume snapshot"
    pos=$(echo "$out" | grep "$mnt/records" | sed -n 's/.*(pos \([0-9]*\),.*/\1/p')
    [ -n "$pos" ] || fail "no fd on $mnt/records in the image"
    kill -0 "$pid" || fail "the original did not run on"

    echo "=== the snapshot's file ends at the image's offset ($pos)"
    mkdir -p /mnt/snap
    # A thin snapshot is made inactive (activation skipped): -K activates
    # it. ext4 without journal replay; xfs without log recovery, and with
    # the origin's filesystem UUID.
    [ "$thin" = 0 ] || lvchange -q -ay -K "vg0/$name"
    case $(findmnt -no FSTYPE "$mnt") in
        xfs) mount -o ro,norecovery,nouuid "/dev/vg0/$name" /mnt/snap ;;
        *) mount -o ro,noload "/dev/vg0/$name" /mnt/snap ;;
    esac
    [ "$(stat -c %s /mnt/snap/records)" -eq "$pos" ] || fail "snapshot file is $(stat -c %s /mnt/snap/records) bytes, image offset $pos"
    n=$(check_records /mnt/snap/records)
    umount /mnt/snap
    [ "$thin" = 0 ] || lvchange -q -an "vg0/$name"
    echo "snapshot holds records 1..$n"

    echo "=== the original writes on, then dies"
    wait_progress "$w" $(($(progress "$w") + 30))
    kill -9 "$pid"
    wait "$pid" || true
    [ "$(stat -c %s "$mnt/records")" -gt "$pos" ] || fail "the file did not move on"
    sync

    echo "=== restore without --rollback-volume: refused"
    if stasis restore --images "/tmp/$name" >/tmp/out 2>&1; then
        cat /tmp/out
        fail "restored onto a volume that moved on"
    fi
    cat /tmp/out
    grep -q records /tmp/out || fail "the refusal does not name the file"
    [ "$(stat -c %s "$mnt/records")" -gt "$pos" ] || fail "a refused restore touched the volume"

    for round in 1 2; do
        echo "=== restore --rollback-volume (round $round)"
        rm -f "$w/check" "$w/result"
        pid=$(stasis restore --images "/tmp/$name" --rollback-volume)
        echo "restored pid $pid"
        [ "$(stat -c %s "$mnt/records")" -ge "$pos" ] || fail "the rolled-back file is shorter than the image's offset"
        wait_progress "$w" $(($(progress "$w") + 20))
        result "$w"
        # The workload exited after its check; wait for it to be reaped
        # (it is PID 1's child now) before its pid is needed again.
        for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        n=$(check_records "$mnt/records")
        echo "after round $round: the file holds records 1..$n, written on from ${pos} bytes"
    done
    stasis volume delete "$mnt" "$name"
}

pvcreate -q $PV
vgcreate -q vg0 $PV
mkdir -p /mnt/ext /mnt/thin

echo "=== classic snapshot, ext4"
lvcreate -q -y -L 64M -n ext vg0
mkfs.ext4 -q -F /dev/vg0/ext
mount /dev/vg0/ext /mnt/ext
coherent /mnt/ext 0

echo "=== thin snapshot, xfs"
lvcreate -q -y -L 128M -T vg0/pool
lvcreate -q -y -V 320M -T vg0/pool -n thin
mkfs.xfs -q -f /dev/vg0/thin
mount /dev/vg0/thin /mnt/thin
coherent /mnt/thin 1
echo "=== ALL OK"
