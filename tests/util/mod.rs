//! Running the real `stasis` binary from tests.

#![allow(dead_code)]

pub mod netns;
pub mod pidns;
pub mod servers;
pub mod workload;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `stasis` binary cargo built for these tests.
pub fn stasis() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stasis"));
    cmd.env_remove("RUST_LOG");
    cmd
}

/// What a finished command said, with its exit code.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    what: String,
}

impl Run {
    /// Panics, showing everything the command printed, unless it exited `code`.
    pub fn expect_code(self, code: i32) -> Self {
        assert_eq!(self.code, Some(code), "{}: expected exit {code}\n{}", self.what, self.dump());
        self
    }

    pub fn success(self) -> Self {
        self.expect_code(0)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("{}: stdout is not JSON ({e})\n{}", self.what, self.dump()))
    }

    pub fn dump(&self) -> String {
        format!("--- exit: {:?}\n--- stdout:\n{}\n--- stderr:\n{}", self.code, self.stdout, self.stderr)
    }
}

/// Run `stasis ARGS...` to completion.
pub fn run<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = stasis();
    cmd.args(args);
    run_command(cmd)
}

/// Run a command (stasis under a shell, say) to completion.
pub fn run_command(mut cmd: Command) -> Run {
    let what = format!("{cmd:?}");
    let Output { status, stdout, stderr } = cmd.output().expect("run stasis");
    Run {
        code: status.code(),
        stdout: String::from_utf8_lossy(&stdout).into(),
        stderr: String::from_utf8_lossy(&stderr).into(),
        what,
    }
}

/// The golden version 1 image checked into the repository.
pub fn golden_image() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("image/tests/golden/v1")
}

/// Copy an image directory (flat: images hold no subdirectories).
pub fn copy_image(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// Real programs (python3, bash, sleep) started by the tests, and dump and
/// restore helpers for them.
pub mod spawned;
