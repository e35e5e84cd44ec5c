//! How the LVM tools (and mount, umount) are run: the one place that starts
//! a process, so that tests replay recorded outputs through [`Runner`]
//! instead.
//!
//! Every LVM command goes through the `lvm` binary (`lvm lvs ...`: `lvs` and
//! the others are links to it), with `LC_ALL=C` so messages are the English
//! ones [`tool_error`] matches, and `LVM_SUPPRESS_FD_WARNINGS=1` so a
//! descriptor the caller leaked into us is not reported as an error line.

use std::fmt;
use std::io;
use std::path::Path;
use std::process::{Command, Stdio};

use stasis_volume::Error;

/// What a finished command left.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Output {
    /// The exit status; None when a signal killed it.
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }
}

/// Runs commands and the two system calls the backend needs besides them.
/// [`System`] is the real one; tests implement it to replay recordings.
pub trait Runner: fmt::Debug + Send + Sync {
    /// Runs `program` with `args` in the C locale, waits for it, and returns
    /// its status and output. An error is only for a program that could not
    /// be started (not found: ErrorKind::NotFound).
    fn run(&self, program: &str, args: &[String]) -> io::Result<Output>;

    /// syncfs(2) on the filesystem mounted at `path`.
    fn sync_fs(&self, path: &Path) -> io::Result<()>;

    /// The text of /proc/self/mountinfo.
    fn mountinfo(&self) -> io::Result<String>;
}

/// The real runner: processes, syncfs(2), /proc.
#[derive(Clone, Copy, Debug, Default)]
pub struct System;

impl Runner for System {
    fn run(&self, program: &str, args: &[String]) -> io::Result<Output> {
        let out = Command::new(program)
            .args(args)
            .env("LC_ALL", "C")
            .env("LVM_SUPPRESS_FD_WARNINGS", "1")
            .stdin(Stdio::null())
            .output()?;
        Ok(Output {
            status: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    fn sync_fs(&self, path: &Path) -> io::Result<()> {
        let dir = std::fs::File::open(path)?;
        stasis_sys::nix::unistd::syncfs(&dir).map_err(io::Error::from)
    }

    fn mountinfo(&self) -> io::Result<String> {
        std::fs::read_to_string("/proc/self/mountinfo")
    }
}

/// The LVM binary every LVM command runs through.
pub const LVM: &str = "lvm";

/// What a command is about, for its errors: the volume (`VG/LV` of the
/// origin) and, for commands on one snapshot, its name.
#[derive(Clone, Copy, Debug)]
pub struct About<'a> {
    pub volume: &'a str,
    pub snapshot: Option<&'a str>,
}

impl fmt::Display for About<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.snapshot {
            Some(name) => write!(f, "{} snapshot {name:?}", self.volume),
            None => f.write_str(self.volume),
        }
    }
}

/// Runs `lvm COMMAND ARGS...`; a non-zero exit becomes the typed error
/// [`tool_error`] gives.
pub fn lvm(runner: &dyn Runner, command: &str, args: &[String], about: About<'_>) -> Result<String, Error> {
    let mut all = Vec::with_capacity(args.len() + 1);
    all.push(command.to_owned());
    all.extend_from_slice(args);
    let out = runner.run(LVM, &all).map_err(|e| not_started(command, e))?;
    if out.success() {
        Ok(out.stdout)
    } else {
        Err(tool_error(command, about, &out))
    }
}

/// A tool that could not be started: a missing `lvm` means LVM is not
/// installed.
pub fn not_started(tool: &str, e: io::Error) -> Error {
    let message = if e.kind() == io::ErrorKind::NotFound {
        format!("the LVM tools are not installed (no `{LVM}` in PATH: install the lvm2 package)")
    } else {
        format!("cannot run `{LVM} {tool}`: {e}")
    };
    Error::Tool { tool: tool.to_owned(), message }
}

/// The typed error for a failed LVM command, from its stderr (LVM's
/// messages in the C locale; tools/errors.h for the exit statuses: 3 is a
/// command line LVM refused, 5 a failed command). Exists, NoSnapshot and
/// Invalid are only said of a snapshot: about the volume itself, those
/// messages stay a Tool error with LVM's words.
pub fn tool_error(tool: &str, about: About<'_>, out: &Output) -> Error {
    let lines: Vec<&str> = out.stderr.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    // Warnings (no udev, a leaked descriptor) come before the real message.
    let errors: Vec<&str> = lines.iter().copied().filter(|l| !l.starts_with("WARNING:")).collect();
    let message = if errors.is_empty() { lines.join("; ") } else { errors.join("; ") };
    let has = |s: &str| message.contains(s);
    let volume = about.volume.to_owned();
    // Only when LVM names the snapshot (`"snap"`, `vg0/snap.`): a message
    // can be about the origin.
    let vg = about.volume.split('/').next().unwrap_or_default();
    let names_it = |name: &str| {
        let full = format!("{vg}/{name}");
        message.split(|c: char| c.is_whitespace() || c == '"').any(|word| {
            let word = word.strip_suffix('.').unwrap_or(word);
            word == name || word == full
        })
    };
    if let Some(name) = about.snapshot.filter(|name| names_it(name)) {
        let name = name.to_owned();
        if has("already exists") {
            return Error::Exists { volume, name };
        }
        if has("Failed to find logical volume") {
            return Error::NoSnapshot { volume, name };
        }
        if has("invalidated snapshot") || has("is invalid") {
            return Error::Invalid { volume, name, why: message };
        }
    }
    if has("insufficient free space") || has("Insufficient free space") || has("free space in thin pool") {
        let what = match about.snapshot {
            Some(name) => format!("snapshot {name:?} ({message})"),
            None => message,
        };
        return Error::NoSpace { volume, what };
    }
    if has("in use") || has("is open") || has("is busy") || has("Device or resource busy") {
        return Error::Busy { volume, what: message };
    }
    let status = match out.status {
        Some(3) => "exit status 3: LVM refused the command line".to_owned(),
        Some(code) => format!("exit status {code}"),
        None => "killed by a signal".to_owned(),
    };
    let message = if message.is_empty() { "no message".to_owned() } else { message };
    Error::Tool { tool: tool.to_owned(), message: format!("{about}: {message} ({status})") }
}
