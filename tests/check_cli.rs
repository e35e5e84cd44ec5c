//! `stasis check` on this machine. MACHINE.md says what this kernel has:
//! PAGEMAP_SCAN and userfaultfd WP_ASYNC, no soft-dirty, no device-mapper,
//! and root without CAP_SYS_RESOURCE. If the machine changes, these
//! assertions say which fact moved.

mod util;

use util::run;

fn facility<'a>(v: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    v["facilities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == id)
        .unwrap_or_else(|| panic!("no facility {id} in the report"))
}

#[test]
fn check_reports_this_machine() {
    let r = run(["check", "--json"]).success();
    let v = r.json();
    assert_eq!(v["ready"], true, "{}", r.dump());
    for (id, status) in [
        ("soft-dirty", "missing"),
        ("device-mapper", "missing"),
        ("pagemap-scan", "available"),
        ("uffd-wp-async", "available"),
        ("cap-sys-resource", "missing"),
        ("ptrace", "available"),
        ("clone3-set-tid", "available"),
        ("pidfd-open", "available"),
        ("pidfd-getfd", "available"),
        ("process-vm-readv", "available"),
        ("proc-pid-mem-write", "available"),
        ("pr-set-mm-map", "available"),
        ("tcp-repair", "available"),
        ("time-namespace", "available"),
        ("cgroup-v2-freeze", "available"),
        ("cgroup-v1-freezer", "available"),
        ("btrfs", "available"),
    ] {
        assert_eq!(facility(&v, id)["status"], status, "facility {id}\n{}", r.dump());
        assert!(!facility(&v, id)["without"].as_str().unwrap().is_empty());
    }
    assert!(v["capabilities_missing"].as_array().unwrap().iter().any(|c| c == "CAP_SYS_RESOURCE"));
    assert!(v["vdso_mappings"].as_array().unwrap().iter().any(|m| m == "[vdso]"));
    assert!(!v["kernel"]["release"].as_str().unwrap().is_empty());
}

#[test]
fn check_text_says_what_is_missing() {
    let r = run(["check"]).success();
    assert!(r.stdout.contains("everything stasis needs"), "{}", r.dump());
    // A missing optional facility still gets its sentence.
    assert!(r.stdout.contains("without it:"), "{}", r.dump());
}

#[test]
fn required_missing_facility_fails_with_a_sentence() {
    let r = run(["check", "--require", "soft-dirty", "--require", "device-mapper"]).expect_code(1);
    assert!(r.stdout.contains("stasis cannot work fully here"), "{}", r.dump());
    let v = run(["check", "--json", "--require", "device-mapper"]).expect_code(1).json();
    assert_eq!(v["ready"], false);
    assert_eq!(v["missing"], serde_json::json!(["device-mapper"]));
}

#[test]
fn unknown_facility_is_a_clear_error() {
    let r = run(["check", "--require", "warp-drive"]).expect_code(1);
    assert!(r.stderr.contains("--require warp-drive: no such facility"), "{}", r.dump());
}

#[test]
fn check_leaves_nothing_behind() {
    // As a subreaper, this test adopts anything `stasis check` leaves running
    // (or dead but unreaped) when it exits, so leftovers show up as children.
    nix::sys::prctl::set_child_subreaper(true).unwrap();
    // Probe cgroups are named after the stasis that makes them
    // (stasis-probe-PID-N); other tests run `stasis check` at the same time.
    let mut child = util::stasis().arg("check").stdout(std::process::Stdio::null()).spawn().unwrap();
    let prefix = format!("stasis-probe-{}-", child.id());
    assert!(child.wait().unwrap().success(), "stasis check failed");
    let mut found = Vec::new();
    for root in ["/sys/fs/cgroup/unified", "/sys/fs/cgroup/freezer"] {
        if let Ok(dir) = std::fs::read_dir(root) {
            found.extend(
                dir.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with(&prefix)),
            );
        }
    }
    assert_eq!(found, Vec::<String>::new(), "probe cgroups left behind");
    let me = std::process::id().to_string();
    let adopted: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().nth(1)) == Some(me.as_str()))
        .collect();
    assert!(adopted.is_empty(), "stasis check left processes behind: {adopted:?}");
}
