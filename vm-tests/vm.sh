#!/usr/bin/env bash
# vm-tests/vm.sh: run a bash script inside a throwaway QEMU (TCG) guest that
# has device-mapper, so LVM can be tested on hosts whose kernel has none.
# See --help below and docs/vm-tests.md.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: vm-tests/vm.sh setup
       vm-tests/vm.sh run [-b BINARY]... [-d SIZE]... [-o DIR] [-t SECONDS] [-q]
                          SCRIPT [ARGS...]

setup   Install what the harness needs from Debian when it is missing
        (QEMU, lvm2, thin-provisioning-tools, busybox-static, mkfs tools, cpio,
        kmod), then fetch Debian's cloud kernel with `apt-get download` and
        unpack it (not install it) into the cache directory. Idempotent, and
        quick when everything is there already. Needs root.

run     Boot the cached kernel under QEMU TCG with an initramfs built for this
        run from the host's own binaries, run SCRIPT with bash as root inside
        the guest (ARGS passed on), power off, and exit with SCRIPT's exit
        status.

  -b BINARY  copy a host executable (and the libraries ldd lists for it) into
             the guest as /usr/local/bin/<basename>, debug info stripped;
             repeatable
  -d SIZE    attach a blank sparse raw disk of SIZE (truncate(1) syntax: 512M,
             1G); repeatable. The guest sees them in order as /dev/vdb,
             /dev/vdc, ... (/dev/vda is the harness's output disk)
  -o DIR     after the run, extract into DIR the files the guest script left
             in $VM_OUT (they travel back as a tar written to /dev/vda)
  -t SECONDS wall-clock limit for the whole VM (default 300)
  -q         do not stream the guest console; it is still printed (its tail)
             on failure

The guest: the root is the initramfs (writable), /proc /sys /dev /run /tmp are
mounted, dm-mod dm-snapshot dm-thin-pool dm-bufio xfs btrfs are loaded, LVM is
configured for a system without udev (/etc/lvm/lvm.conf), PATH is
/usr/local/bin:/usr/sbin:/usr/bin then busybox's applets. bash, coreutils,
util-linux, lvm2, thin_check & co, mkfs.ext4/xfs/btrfs are the host's own.
Environment given to SCRIPT: VM_OUT (a directory whose contents reach the
host with -o), LC_ALL=C, VM_TESTS=1.

Exit status of run: SCRIPT's own (0..255) when it reported one; otherwise
non-zero with the tail of the console printed: 124 when the VM ran past -t,
125 when the guest ended without reporting (kernel panic, init died), 126 for
harness errors (setup not run, a tool missing, bad usage, QEMU failed).

Environment: VM_TESTS_CACHE (default <repo>/target/vm: kernel and lock),
VM_TESTS_KEEP=1 keeps the run's work directory (disks, initramfs, console.log)
and prints where it is.
EOF
}

ROOT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${VM_TESTS_CACHE:-$ROOT_DIR/target/vm}
KERNEL_META=linux-image-cloud-amd64

die() {
    echo "vm.sh: $*" >&2
    exit 126
}

# Host programs the harness and the guest need, each with the Debian package
# that provides it. Found by full path in the guest, so listed by full path
# here too (util-linux and coreutils are not what busybox offers).
declare -A HOST_TOOLS=(
    [/usr/bin/qemu-system-x86_64]=qemu-system-x86
    [/usr/sbin/lvm]=lvm2
    [/usr/sbin/dmsetup]=dmsetup
    [/usr/sbin/pdata_tools]=thin-provisioning-tools
    [/usr/bin/busybox]=busybox-static
    [/usr/sbin/mkfs.xfs]=xfsprogs
    [/usr/sbin/mkfs.btrfs]=btrfs-progs
    [/usr/sbin/mke2fs]=e2fsprogs
    [/usr/bin/cpio]=cpio
    [/usr/sbin/modprobe]=kmod
    [/usr/bin/setpriv]=util-linux
)

missing_packages() {
    local path
    for path in "${!HOST_TOOLS[@]}"; do
        [ -x "$path" ] || echo "${HOST_TOOLS[$path]}"
    done
    # busybox (dynamic) also provides /usr/bin/busybox; the guest needs the
    # static one, which runs with no libraries.
    if [ -x /usr/bin/busybox ] && ldd /usr/bin/busybox >/dev/null 2>&1; then
        echo busybox-static
    fi
}

# --- setup ------------------------------------------------------------------

kernel_dir() {
    readlink -f "$CACHE/kernel/current" 2>/dev/null || true
}

setup() {
    [ "$(id -u)" -eq 0 ] || die "setup installs packages: run it as root"
    mkdir -p "$CACHE/kernel"
    # One setup at a time (tests run in parallel and each calls setup).
    exec 9>"$CACHE/setup.lock"
    flock 9
    local t0=$SECONDS
    local -a missing
    mapfile -t missing < <(missing_packages | sort -u)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "vm.sh: installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q >/dev/null
        # qemu-system-x86 and qemu-utils in one command: installing
        # qemu-system-x86 alone removes a preinstalled qemu-utils. Both are
        # pinned to the qemu-system-x86 candidate's version because these
        # machines may carry a backported qemu-utils (10.x) that Breaks
        # bookworm's qemu-system-common (7.2), which apt then cannot solve.
        local qver
        qver=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
        [ -n "$qver" ] && [ "$qver" != "(none)" ] || die "apt knows no qemu-system-x86"
        apt-get install -y -q -o DPkg::Lock::Timeout=300 --no-install-recommends \
            --allow-downgrades "qemu-system-x86=$qver" "qemu-utils=$qver" \
            lvm2 thin-provisioning-tools busybox-static xfsprogs btrfs-progs \
            e2fsprogs cpio kmod >/dev/null
        mapfile -t missing < <(missing_packages | sort -u)
        [ ${#missing[@]} -eq 0 ] || die "still missing after apt-get install: ${missing[*]}"
    fi

    local kdir
    kdir=$(kernel_dir)
    if [ -z "$kdir" ] || [ ! -d "$kdir" ]; then
        local pkg
        pkg=$(apt-cache depends "$KERNEL_META" 2>/dev/null |
            awk '/Depends: linux-image-/ {print $2; exit}')
        if [ -z "$pkg" ]; then
            apt-get update -q >/dev/null
            pkg=$(apt-cache depends "$KERNEL_META" | awk '/Depends: linux-image-/ {print $2; exit}')
        fi
        [ -n "$pkg" ] || die "cannot resolve $KERNEL_META to a kernel package"
        local ver=${pkg#linux-image-} tmp=$CACHE/kernel/.unpack
        echo "vm.sh: fetching $pkg"
        rm -rf "$tmp" && mkdir -p "$tmp/deb"
        # The download sandbox user (_apt) may not be able to write here.
        (cd "$tmp/deb" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >/dev/null)
        dpkg-deb -x "$tmp"/deb/*.deb "$tmp/root"
        depmod -b "$tmp/root" "$ver"
        [ -f "$tmp/root/boot/vmlinuz-$ver" ] || die "$pkg holds no boot/vmlinuz-$ver"
        rm -rf "${CACHE:?}/kernel/$ver"
        mv "$tmp/root" "$CACHE/kernel/$ver"
        rm -rf "$tmp"
        ln -sfn "$ver" "$CACHE/kernel/current"
        kdir=$CACHE/kernel/$ver
    fi
    echo "vm.sh: ready: kernel $(basename "$kdir") in $kdir ($((SECONDS - t0)) s)"
}

# --- the initramfs ----------------------------------------------------------

# Modules the guest loads, dependencies resolved on the host with modprobe.
GUEST_MODULES="virtio_pci virtio_blk dm-mod dm-bufio dm-snapshot dm-thin-pool xfs btrfs"
# Host programs copied into the guest at their own paths, with their libraries.
GUEST_PROGRAMS="/bin/bash /usr/sbin/lvm /usr/sbin/dmsetup /usr/sbin/pdata_tools
 /usr/sbin/mke2fs /usr/sbin/e2fsck /usr/sbin/tune2fs /usr/sbin/dumpe2fs
 /usr/sbin/mkfs.xfs /usr/sbin/xfs_repair /usr/sbin/xfs_db /usr/sbin/xfs_io
 /usr/sbin/mkfs.btrfs /usr/bin/btrfs
 /bin/mount /bin/umount /sbin/losetup /sbin/blkid /bin/lsblk /bin/findmnt
 /sbin/fsfreeze /sbin/wipefs /sbin/blockdev /usr/bin/fallocate
 /bin/grep /bin/sed /usr/bin/mawk /bin/tar /usr/bin/find /usr/bin/xargs
 /usr/bin/cmp /usr/bin/diff /bin/kmod"
LVM_COMMANDS="pvcreate pvremove pvs pvscan pvdisplay pvchange pvresize vgcreate
 vgremove vgs vgscan vgchange vgdisplay vgextend vgreduce lvcreate lvremove lvs
 lvscan lvchange lvextend lvreduce lvresize lvconvert lvdisplay lvrename"
THIN_COMMANDS="thin_check thin_dump thin_repair thin_restore thin_ls thin_delta
 thin_trim cache_check cache_dump cache_repair era_check"
BUSYBOX_DIR=/usr/lib/vm-tests/busybox

build_initramfs() { # KDIR KVER GUEST_ROOT OUT SCRIPT ARGS...
    local kdir=$1 kver=$2 groot=$3 out=$4 script=$5
    shift 5

    mkdir -p "$groot"/usr/{bin,sbin,lib,lib64,local/bin} "$groot$BUSYBOX_DIR" \
        "$groot"/{dev,proc,sys,run,tmp,mnt,root,etc/lvm,vmtest/out}
    local d
    for d in bin sbin lib lib64; do ln -s "usr/$d" "$groot/$d"; done

    copy_file() { # host path, copied to the same guest path (symlinks followed)
        local dst=$groot$1
        [ -e "$dst" ] && return 0
        mkdir -p "$(dirname "$dst")"
        cp -L "$1" "$dst"
    }
    copy_libs() { # the libraries (and loader) ldd lists for an executable
        local lib
        for lib in $(ldd "$1" 2>/dev/null | grep -o '/[^ ]*' || true); do
            [ -e "$lib" ] && copy_file "$lib"
        done
        return 0
    }
    copy_program() {
        if [ ! -x "$1" ]; then
            local pkg=${HOST_TOOLS[$1]:-}
            [ -n "$pkg" ] || pkg=$(dpkg -S "$1" 2>/dev/null | cut -d: -f1 | head -1)
            die "host program $1 is missing (package ${pkg:-unknown}); run: vm-tests/vm.sh setup"
        fi
        copy_file "$1"
        copy_libs "$1"
    }

    local p
    for p in $GUEST_PROGRAMS; do copy_program "$p"; done
    # coreutils: all of them, GNU's, ahead of busybox's applets on PATH
    while read -r p; do
        [ -x "$p" ] && [ ! -d "$p" ] && copy_program "$p" coreutils
    done < <(dpkg -L coreutils | grep -E '^/(usr/)?s?bin/.')
    # libgcc_s is dlopen()ed by glibc when a thread is cancelled: ldd misses it
    for p in /lib/x86_64-linux-gnu/libgcc_s.so.1; do
        [ -e "$p" ] && copy_file "$p"
    done
    cp /usr/bin/busybox "$groot/usr/bin/busybox"
    for p in $(/usr/bin/busybox --list); do
        ln -s /usr/bin/busybox "$groot$BUSYBOX_DIR/$p"
    done
    for p in $LVM_COMMANDS; do ln -s lvm "$groot/usr/sbin/$p"; done
    for p in $THIN_COMMANDS; do ln -s pdata_tools "$groot/usr/sbin/$p"; done
    ln -s mke2fs "$groot/usr/sbin/mkfs.ext4"
    ln -s e2fsck "$groot/usr/sbin/fsck.ext4"
    ln -s mawk "$groot/usr/bin/awk"
    ln -s kmod "$groot/usr/bin/insmod"
    ln -s /proc/self/mounts "$groot/etc/mtab"
    echo 'root:x:0:0:root:/root:/bin/bash' >"$groot/etc/passwd"
    echo 'root:x:0:' >"$groot/etc/group"

    # LVM on a system with no udev, no lvmetad/lvmpolld/dmeventd, no devices
    # file: lvm makes the /dev nodes and links itself.
    cat >"$groot/etc/lvm/lvm.conf" <<'EOF'
devices {
    obtain_device_list_from_udev = 0
    external_device_info_source = "none"
    use_devicesfile = 0
}
activation {
    udev_sync = 0
    udev_rules = 0
    monitoring = 0
    # lvm polls a snapshot merge to its end itself (no lvmpolld): the
    # default 15 s between polls makes a merge take 15 s at least.
    polling_interval = 1
}
global {
    use_lvmlockd = 0
    use_lvmpolld = 0
    thin_check_executable = "/usr/sbin/thin_check"
}
EOF

    # Kernel modules, in the order modprobe would load them.
    local m kind path rel deps
    : >"$groot/vmtest/modules"
    for m in $GUEST_MODULES; do
        deps=$(modprobe -d "$kdir" -S "$kver" --show-depends "$m" 2>/dev/null) ||
            die "kernel $kver has no module $m"
        while read -r kind path _; do
            [ "$kind" = insmod ] || continue # "builtin NAME": nothing to load
            rel=${path#"$kdir"}
            [ -e "$groot$rel" ] && continue
            mkdir -p "$(dirname "$groot$rel")"
            cp "$path" "$groot$rel"
            echo "$rel" >>"$groot/vmtest/modules"
        done <<<"$deps"
    done

    # What to run: the script, its arguments (NUL-separated), the binaries.
    cp "$script" "$groot/vmtest/script"
    if [ $# -gt 0 ]; then printf '%s\0' "$@"; fi >"$groot/vmtest/args"
    local b
    for b in ${BINS[@]+"${BINS[@]}"}; do
        [ -f "$b" ] && [ -x "$b" ] || die "-b $b: no such executable"
        # Debug info makes a debug build 10x larger, and the guest unpacks
        # the whole initramfs under emulation.
        objcopy --strip-debug "$b" "$groot/usr/local/bin/$(basename "$b")" 2>/dev/null ||
            cp -L "$b" "$groot/usr/local/bin/$(basename "$b")"
        copy_libs "$b"
    done

    cat >"$groot/init" <<EOF
#!/bin/bash
# PID 1 of the guest. Reports on the second serial port (/dev/ttyS1), which
# the host reads as a file: "BOOTED <uptime>", then "RC=<status> <uptime>".
export PATH=/usr/local/bin:/usr/sbin:/usr/bin:$BUSYBOX_DIR
export HOME=/root TERM=dumb LC_ALL=C VM_TESTS=1 VM_OUT=/vmtest/out
EOF
    cat >>"$groot/init" <<'EOF'
uptime() { read -r up _ </proc/uptime; echo "$up"; }
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mkdir -p /run/lock/lvm /run/lvm
while read -r m; do
    insmod "$m" || echo "vm-tests: insmod $m failed"
done </vmtest/modules
echo "BOOTED $(uptime)" >/dev/ttyS1
echo "vm-tests: guest up after $(uptime) s; running the script"
mapfile -d '' -t args </vmtest/args
cd /root
bash /vmtest/script "${args[@]}" </dev/null
rc=$?
sync
if [ -n "$(ls -A /vmtest/out)" ]; then
    if tar -C /vmtest/out -cf /dev/vda .; then
        echo "OUT tar" >/dev/ttyS1
    else
        echo "vm-tests: could not write the output tar to /dev/vda"
        rc=125
    fi
fi
sync
echo "RC=$rc $(uptime)" >/dev/ttyS1
busybox poweroff -f
EOF
    chmod 755 "$groot/init"
    (cd "$groot" && find . | cpio -o -H newc --quiet) >"$out"
}

# --- run --------------------------------------------------------------------

run() {
    BINS=() DISKS=()
    local outdir='' timeout=300 quiet=0 opt
    OPTIND=1
    while getopts 'b:d:o:t:qh' opt; do
        case $opt in
            b) BINS+=("$OPTARG") ;;
            d) DISKS+=("$OPTARG") ;;
            o) outdir=$OPTARG ;;
            t) timeout=$OPTARG ;;
            q) quiet=1 ;;
            h) usage; exit 0 ;;
            *) usage >&2; exit 126 ;;
        esac
    done
    shift $((OPTIND - 1))
    [ $# -ge 1 ] || { usage >&2; die "run: no SCRIPT given"; }
    local script=$1
    shift
    [ -f "$script" ] || die "no such script: $script"
    [[ $timeout =~ ^[0-9]+$ ]] || die "-t wants whole seconds, not $timeout"

    local -a missing
    mapfile -t missing < <(missing_packages | sort -u)
    [ ${#missing[@]} -eq 0 ] || die "missing packages: ${missing[*]}; run: vm-tests/vm.sh setup"
    local kdir kver
    kdir=$(kernel_dir)
    [ -n "$kdir" ] && [ -d "$kdir" ] || die "no kernel in $CACHE/kernel; run: vm-tests/vm.sh setup"
    kver=$(basename "$kdir")

    local t_start=$EPOCHREALTIME
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/vm-tests.XXXXXX")
    QEMU_PID=
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM

    build_initramfs "$kdir" "$kver" "$WORK/root" "$WORK/initrd.cpio" "$script" "$@"
    rm -rf "$WORK/root"

    # /dev/vda: the output disk; then one sparse raw image per -d.
    local -a drives=()
    local i=0 size img
    for size in out:256M ${DISKS[@]+"${DISKS[@]}"}; do
        img=$WORK/disk$i.img
        truncate -s "${size#out:}" "$img" || die "bad disk size ${size#out:}"
        drives+=(-drive "file=$img,format=raw,if=virtio,cache=unsafe,discard=unmap")
        i=$((i + 1))
    done

    local -a console
    if [ "$quiet" = 1 ]; then
        console=(-chardev "file,id=con,path=$WORK/console.log")
    else
        console=(-chardev "stdio,id=con,signal=off,logfile=$WORK/console.log")
    fi
    : >"$WORK/status"
    local t_boot=$EPOCHREALTIME
    # KVM here is PVM, which stock kernels do not survive: always TCG.
    # -cpu max under TCG lacks AVX-512: -b binaries must not be built with
    # target-cpu=native. setpriv --pdeathsig takes timeout (and, through the
    # second one, QEMU) down with this script even if it is SIGKILLed.
    setpriv --pdeathsig KILL -- timeout -k 5 "$timeout" \
        setpriv --pdeathsig KILL -- qemu-system-x86_64 \
        -accel tcg -M q35 -cpu max -smp 1 -m 1024 \
        -nodefaults -no-user-config -display none -no-reboot \
        "${console[@]}" -serial chardev:con \
        -chardev "file,id=status,path=$WORK/status" -serial chardev:status \
        "${drives[@]}" \
        -kernel "$kdir/boot/vmlinuz-$kver" -initrd "$WORK/initrd.cpio" \
        -append "console=ttyS0 panic=-1 quiet loglevel=4" \
        </dev/null &
    QEMU_PID=$!
    local qrc=0
    wait "$QEMU_PID" || qrc=$?
    QEMU_PID=
    local t_end=$EPOCHREALTIME

    local booted rc_line rc='' t_rc
    booted=$(awk '/^BOOTED / {print $2}' "$WORK/status")
    rc_line=$(grep -a '^RC=' "$WORK/status" | tail -1 || true)
    if [ -n "$rc_line" ]; then
        rc=${rc_line%% *}
        rc=${rc#RC=}
        t_rc=${rc_line#* }
    fi
    awk -v a="$t_start" -v b="$t_boot" -v c="$t_end" -v up="$booted" -v done="${t_rc:-}" 'BEGIN {
        wall = c - b
        if (up != "" && done != "") {
            script = done - up
            printf "vm.sh: initramfs %.1f s; boot and power-off %.1f s; script %.1f s; VM %.1f s in all\n", b - a, wall - script, script, wall
        } else {
            printf "vm.sh: initramfs %.1f s; VM %.1f s (the guest reported no end)\n", b - a, wall
        }
    }' >&2

    local fail=''
    if [ "$qrc" -eq 124 ] || [ "$qrc" -eq 137 ]; then
        fail="the VM ran past the ${timeout} s limit (-t) and was killed"
        rc=124
    elif [ -z "$rc" ]; then
        fail="the guest ended without reporting a status (kernel panic? init died?)"
        [ "$qrc" -eq 0 ] || fail="$fail; qemu exited $qrc"
        rc=125
    elif [ "$qrc" -ne 0 ]; then
        fail="qemu exited $qrc after the guest reported $rc"
        rc=126
    fi
    if [ -n "$fail" ]; then
        echo "vm.sh: FAILED: $fail" >&2
        echo "vm.sh: last 40 lines of the console:" >&2
        tail -n 40 "$WORK/console.log" | sed 's/^/  | /' >&2
        exit "$rc"
    fi

    if [ -n "$outdir" ]; then
        if grep -q '^OUT tar' "$WORK/status"; then
            mkdir -p "$outdir"
            tar -xf "$WORK/disk0.img" -C "$outdir" --no-same-owner ||
                die "could not extract the guest's output into $outdir"
            echo "vm.sh: guest output extracted into $outdir" >&2
        else
            echo "vm.sh: the guest left nothing in \$VM_OUT for -o $outdir" >&2
        fi
    fi
    if [ "$rc" -ne 0 ]; then
        echo "vm.sh: the guest script exited $rc" >&2
        if [ "$quiet" = 1 ]; then
            echo "vm.sh: last 40 lines of the console:" >&2
            tail -n 40 "$WORK/console.log" | sed 's/^/  | /' >&2
        fi
    fi
    exit "$rc"
}

cleanup() {
    if [ -n "${QEMU_PID:-}" ]; then
        kill -TERM "$QEMU_PID" 2>/dev/null || true
        wait "$QEMU_PID" 2>/dev/null || true
    fi
    if [ -n "${WORK:-}" ] && [ -d "$WORK" ]; then
        if [ "${VM_TESTS_KEEP:-0}" = 1 ]; then
            echo "vm.sh: kept the work directory $WORK" >&2
        else
            rm -rf "$WORK"
        fi
    fi
}

case ${1:-} in
    setup) setup ;;
    run) shift; run "$@" ;;
    -h | --help | help) usage ;;
    '') usage >&2; exit 126 ;;
    *) usage >&2; die "unknown command: $1" ;;
esac
