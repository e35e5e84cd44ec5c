#!/usr/bin/env bash
# The whole stasis test suite, as CI runs it: installs the Debian packages the
# tests need (when missing; needs root, as the tests do), checks formatting
# and lints, then runs every test with cargo-nextest.
#
#   scripts/test.sh              # everything
#   scripts/test.sh -E 'test(image)'   # extra arguments go to nextest
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/test.sh: the tests freeze, seize and mount things; run them as root" >&2
    exit 1
fi

# Debian packages the tests use, by the command that proves each is there.
declare -A packages=(
    [mkfs.btrfs]=btrfs-progs
    [python3]=python3
    [gcc]=gcc
    [bash]=bash
    [unshare]=util-linux
    [redis-server]=redis-server
    [nginx]=nginx
    [pg_ctlcluster]=postgresql
    [tmux]=tmux
    [ip]=iproute2
)
missing=()
for cmd in "${!packages[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${packages[$cmd]}")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "scripts/test.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # The servers' packages must not start their own instances: the tests
    # start their own, on 127.0.0.1 (101: "action forbidden by policy").
    policy=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        policy=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod +x "$policy"
    fi
    apt-get update -q >/dev/null
    apt-get install -y -q -o DPkg::Lock::Timeout=300 --no-install-recommends "${missing[@]}" >/dev/null
    if [ -n "$policy" ]; then rm -f "$policy"; fi
fi
# QEMU, lvm2 and a guest kernel for the LVM tests in tests/vm.rs (docs/vm-tests.md).
vm-tests/vm.sh setup

if ! cargo nextest --version >/dev/null 2>&1; then
    echo "scripts/test.sh: cargo-nextest is missing; installing it from crates.io"
    cargo install cargo-nextest --locked
fi

# Tests kill the processes they started by pid. With the kernel's 32768
# pids a run wraps around, and a pid freed by one test may be another test's
# process by the time it is signalled; with pid_max at its 64-bit maximum a
# run never reuses one.
if [ "$(cat /proc/sys/kernel/pid_max)" -lt 4194304 ]; then
    echo 4194304 >/proc/sys/kernel/pid_max 2>/dev/null ||
        echo "scripts/test.sh: cannot raise kernel.pid_max; pids may be reused during the run"
fi

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo nextest run --workspace --locked --no-fail-fast "$@"
