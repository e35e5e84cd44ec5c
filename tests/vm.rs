//! LVM, for real, inside a QEMU guest: this host's kernel has no
//! device-mapper (docs/vm-tests.md). Each test runs one scenario from
//! `vm-tests/scenarios/` with the harness `vm-tests/vm.sh`, in a guest that
//! has the `stasis` binary cargo built for these tests, and asserts on the
//! guest script's exit status. Nothing is skipped: without QEMU or the
//! guest kernel, setup installs them, and if that fails the test fails.

mod util;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Kills a guest that hangs well before nextest's 5 minute limit does.
const GUEST_TIMEOUT_SECONDS: &str = "480";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// What a harness command printed, for assertion messages.
struct Harness {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    what: String,
}

impl Harness {
    fn run(mut cmd: Command) -> Self {
        let what = format!("{cmd:?}");
        let out = cmd.output().unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
        Harness {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into(),
            stderr: String::from_utf8_lossy(&out.stderr).into(),
            what,
        }
    }

    fn success(self) -> Self {
        assert_eq!(self.code, Some(0), "{}: expected exit 0\n{}", self.what, self.dump());
        // the timings, for `--no-capture` runs
        for line in self.stderr.lines().filter(|l| l.starts_with("vm.sh:")) {
            eprintln!("{line}");
        }
        self
    }

    fn dump(&self) -> String {
        format!(
            "--- exit: {:?}\n--- stdout (the guest console):\n{}\n--- stderr:\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn vm_sh() -> Command {
    Command::new(repo().join("vm-tests/vm.sh"))
}

/// `vm-tests/vm.sh setup`, once per test process. The script holds a lock
/// (`target/vm/setup.lock`) while it works, so test processes running in
/// parallel install packages and unpack the kernel one at a time, and the
/// later ones find everything done.
fn setup() {
    static SETUP: OnceLock<Result<(), String>> = OnceLock::new();
    let done = SETUP.get_or_init(|| {
        let mut cmd = vm_sh();
        cmd.arg("setup");
        let r = Harness::run(cmd);
        if r.code == Some(0) {
            Ok(())
        } else {
            Err(format!("{}: the VM test harness could not be set up\n{}", r.what, r.dump()))
        }
    });
    if let Err(e) = done {
        panic!("{e}");
    }
}

/// The stasis binary to put in the guest. The guest CPU (QEMU TCG's
/// `-cpu max`) has no AVX-512, which the build host has: a binary built
/// with `-C target-cpu=native` would die of SIGILL in the guest. The test
/// crate is built with the binary's RUSTFLAGS, so its target features tell.
fn guest_stasis() -> PathBuf {
    if cfg!(target_feature = "avx512f") {
        panic!(
            "this build enables AVX-512 (RUSTFLAGS with target-cpu=native?), which the QEMU guest's \
             CPU lacks: build the tests without it"
        );
    }
    PathBuf::from(env!("CARGO_BIN_EXE_stasis"))
}

/// Boot a guest and run `scenario` in it with `args` for vm.sh before it.
fn run_scenario(args: &[&str], scenario: &str) -> Harness {
    setup();
    let mut cmd = vm_sh();
    cmd.arg("run").arg("-t").arg(GUEST_TIMEOUT_SECONDS).arg("-b").arg(guest_stasis());
    cmd.args(args).arg(repo().join("vm-tests/scenarios").join(scenario));
    Harness::run(cmd)
}

#[test]
fn lvm_tools_work_in_the_guest() {
    let r = run_scenario(&["-d", "1G"], "lvm-tools.sh").success();
    assert!(r.stdout.contains("stasis "), "no `stasis --version` output\n{}", r.dump());
    assert!(r.stdout.contains("all checks passed"), "{}", r.dump());
}

/// The recorded LVM output in lvm/tests/fixtures is still what this lvm2
/// does: each case is recorded again in a guest and compared on what does
/// not change between recordings (command, exit code, stderr, and the LVs
/// a report lists with their attributes; not UUIDs, times or percentages).
/// The LVM backend through `stasis volume` in the guest: a classic ext4
/// and a thin xfs volume (snapshot, list, export, rollback while mounted,
/// a busy rollback refused, import, a corrupted import refused, delete, an
/// incremental export refused).
#[test]
fn stasis_volume_on_lvm_in_the_guest() {
    let r = run_scenario(&["-d", "1G"], "volume-lvm.sh").success();
    assert!(r.stdout.contains("=== ALL OK"), "{}", r.dump());
}

/// The coherent snapshot on LVM (classic ext4 and thin xfs): the workload
/// `appender` captured with `stasis snapshot --leave-running` together with
/// its volume; the snapshot's file ends at the image's fd offset; a restore
/// without `--rollback-volume` is refused once the file moved on; with it,
/// twice from the same image, the restored process goes on from its state
/// and finds its last number and offset match the file.
#[test]
fn coherent_snapshot_on_lvm_in_the_guest() {
    let appender = util::workload::build("appender");
    let r = run_scenario(&["-d", "1G", "-b", appender.to_str().unwrap()], "coherent-lvm.sh").success();
    assert!(r.stdout.contains("=== ALL OK"), "{}", r.dump());
    assert_eq!(r.stdout.matches("after round 2: the file holds records").count(), 2, "{}", r.dump());
}

#[test]
fn lvm_fixtures_match_a_new_recording() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let r = run_scenario(&["-d", "1G", "-d", "64M", "-o", out], "record-lvm-fixtures.sh").success();
    let fixtures = repo().join("lvm/tests/fixtures");
    let recorded = cases(&fixtures);
    let fresh = cases(dir.path());
    assert_eq!(recorded, fresh, "the scenario records other cases than lvm/tests/fixtures holds\n{}", r.dump());
    for name in &recorded {
        let read = |d: &Path, ext: &str| {
            std::fs::read_to_string(d.join(format!("{name}.{ext}")))
                .unwrap_or_else(|e| panic!("{name}.{ext} in {}: {e}", d.display()))
        };
        // A command may name an LV by UUID (the re-made snapshot's tag).
        for ext in ["cmd", "status", "stderr"] {
            assert_eq!(
                mask_uuids(&read(&fixtures, ext)),
                mask_uuids(&read(dir.path(), ext)),
                "{name}.{ext} differs from lvm/tests/fixtures: re-record them (README there)"
            );
        }
        let (old, new) = (read(&fixtures, "json"), read(dir.path(), "json"));
        if name.starts_with("lvs") || name.starts_with("vgs") {
            assert_eq!(
                report_shape(&old),
                report_shape(&new),
                "{name}.json lists other LVs or attributes than lvm/tests/fixtures: \
                 re-record them (README there)"
            );
        } else {
            assert_eq!(old, new, "{name}.json differs from lvm/tests/fixtures");
        }
    }
}

/// Case names (files `NAME.status`) in a fixtures directory.
fn cases(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".status").map(str::to_owned)
        })
        .collect()
}

/// What a JSON report says that does not change between recordings: each
/// row's name and attributes (`lv_name`, `lv_attr`, `vg_name`, ...).
fn report_shape(json: &str) -> Vec<Vec<(String, String)>> {
    const STABLE: [&str; 9] = [
        "lv_name",
        "vg_name",
        "lv_attr",
        "origin",
        "pool_lv",
        "segtype",
        "lv_tags",
        "lv_merging",
        "lv_snapshot_invalid",
    ];
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("not JSON ({e}):\n{json}"));
    let mut rows = Vec::new();
    for report in v["report"].as_array().expect("a report array") {
        for list in report.as_object().expect("a report object").values() {
            for row in list.as_array().expect("a list of rows") {
                let row = row.as_object().expect("a row object");
                rows.push(
                    STABLE
                        .iter()
                        .filter_map(|k| row.get(*k).map(|v| (k.to_string(), mask_uuids(&v.to_string()))))
                        .collect(),
                );
            }
        }
    }
    rows
}

/// `text` with every LVM UUID (`xxxxxx-xxxx-xxxx-xxxx-xxxx-xxxx-xxxxxx`,
/// letters and digits) replaced by `<uuid>`: they change with each recording.
fn mask_uuids(text: &str) -> String {
    const GROUPS: [usize; 7] = [6, 4, 4, 4, 4, 4, 6];
    const LEN: usize = 38;
    let is_uuid = |b: &[u8]| {
        let mut at = 0;
        GROUPS.iter().enumerate().all(|(i, &n)| {
            let group = b[at..at + n].iter().all(u8::is_ascii_alphanumeric);
            at += n;
            let dash = i == GROUPS.len() - 1 || b[at] == b'-';
            at += 1;
            group && dash
        })
    };
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        if i + LEN <= bytes.len() && is_uuid(&bytes[i..i + LEN]) {
            out.push_str("<uuid>");
            i += LEN;
        } else {
            let c = text[i..].chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

#[test]
fn uuids_are_masked() {
    assert_eq!(
        mask_uuids("--addtag stasis_id_Tj0xWU-sCzF-J0Qw-mClW-kXcb-y7fj-wKRNDc vg0/origin"),
        "--addtag stasis_id_<uuid> vg0/origin"
    );
    assert_eq!(mask_uuids("lvcreate -s -L 32M -n snap vg0/origin"), "lvcreate -s -L 32M -n snap vg0/origin");
}
