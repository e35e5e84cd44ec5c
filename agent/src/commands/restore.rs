//! `stasis restore`: bring a process back from an image.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use stasis_checkpoint::restore::{self, PidNamespaceMode, RestoreOptions};

use crate::output::json;
use crate::Outcome;

/// Bring a process tree back from an image, every process at its original
/// pid and thread ids, with its parent, session and process group, zombies
/// included, continuing exactly where it was when it was dumped.
///
/// The restored tree runs detached: it goes on after stasis exits. Before
/// anything is created, the image is verified, and every file the processes
/// had open or mapped is checked against the image (a file that changed
/// since the dump is refused unless --allow-changed-files). If an original
/// pid is still taken by a process being reaped (one just killed keeps it
/// until its parent reaps it), stasis waits up to --pid-timeout. If a live
/// process holds one, the tree is restored into a new PID namespace, with a
/// warning saying so: there every process has its original pid, under a
/// small init of stasis's (pid 1 inside), which adopts the tree's orphans,
/// passes the signals sent to it on to the root, and exits with the root's
/// status when the last process of the namespace ends; the tree also gets a
/// /proc of that namespace. The pid printed is then the root's on this
/// host. Each process goes back into the cgroups it was in (made again if
/// removed; a warning when that cannot be done). No process runs before all
/// are rebuilt. If the restore fails, nothing it created is left behind.
///
/// Established TCP connections are rebuilt with TCP_REPAIR under the dump's
/// network lock (an nftables table stasis_<pid>_<time> dropping their
/// peers' packets), which is removed once the tree runs; a failed restore
/// leaves the lock as it found it, so it can be tried again. Unix sockets
/// are made again, bound to their names (a socket file left by the killed
/// tree is replaced); System V segments again with their key and id.
///
/// An image from `stasis snapshot` names the volume snapshot taken with
/// the processes: --rollback-volume rolls the volume back to it first.
/// Without it the processes meet the volume's files as they are now, and
/// files they had open that changed are refused as always.
///
/// Exit status: 0 when the tree runs again (the root's pid is printed), 1
/// otherwise, 2 for bad arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The image directory.
    #[arg(long, value_name = "DIR")]
    images: PathBuf,
    /// Write the restored root process's pid to this file.
    #[arg(long, value_name = "FILE")]
    pidfile: Option<PathBuf>,
    /// Restore even if files the process had open changed since the dump.
    #[arg(long)]
    allow_changed_files: bool,
    /// Seconds to wait for the original pids to become free.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pid_timeout: u64,
    /// Restore into a new PID namespace even if the original pids are free.
    #[arg(long, conflicts_with = "no_pid_namespace")]
    pid_namespace: bool,
    /// Never restore into a new PID namespace: a pid taken by a live
    /// process is an error.
    #[arg(long)]
    no_pid_namespace: bool,
    /// For an image from `stasis snapshot`: roll the volume back to the
    /// snapshot taken with the processes (checked by its id) before
    /// restoring them, so their files are as they left them. Everything
    /// written to the volume since is lost.
    #[arg(long)]
    rollback_volume: bool,
    /// Hand fd N of this stasis process to the restored tree in place of
    /// a pipe whose other end was outside the tree, or of a terminal
    /// (CRIU's syntax; `stasis inspect` lists both as external). The tree's
    /// fds on that object become this fd's open file description, given the
    /// status flags they had: a process whose stdout went to a logger writes
    /// on into the pipe passed here, e.g. `stasis restore ... --inherit-fd
    /// 'fd[3]:pipe:[4242]' 3> >(logger)`. Bytes that were queued in the old
    /// pipe are not carried over. Without it, the outside end is gone after
    /// restore: a writer gets EPIPE (and SIGPIPE), a reader the queued bytes
    /// and then end of file. May be given more than once.
    #[arg(long, value_name = "fd[N]:pipe:[INODE]|fd[N]:tty:[MAJOR:MINOR]")]
    inherit_fd: Vec<restore::InheritFd>,
    /// Give the tree this stasis's terminal (its stdin, stdout or stderr)
    /// wherever it held a terminal, as CRIU's --shell-job: a program
    /// dumped from one shell goes on in the shell that restores it, in that
    /// terminal's session. Without it (or an --inherit-fd for each
    /// terminal), an image whose processes held a terminal is refused: a
    /// restore never reopens /dev/pts/N by its name, which another session
    /// may hold by now.
    #[arg(long)]
    shell_job: bool,
    /// Let the tree run before its memory is back: private anonymous
    /// memory (heap, stacks, anonymous mappings) loads from the image in
    /// the background and, page by page, as the tree touches it
    /// (userfaultfd), so a large process runs again at once. The pid is
    /// printed when the tree runs; stasis stays until the last page is in,
    /// then says how long that took. It must not be killed before: the
    /// pages not loaded yet would read as zeros (SIGINT, SIGTERM and
    /// SIGHUP are ignored meanwhile, and a closed terminal does not stop
    /// it).
    #[arg(long)]
    lazy: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// Roll the image's volume back to its snapshot (--rollback-volume), or say
/// what restoring without it means. Returns the volume's (device at dump,
/// device now) when its files moved to a new device.
pub fn volume_first(
    images: &std::path::Path,
    rollback: bool,
    allow_changed_files: bool,
    inherit: &[restore::InheritFd],
    shell_job: bool,
) -> anyhow::Result<Vec<(u64, u64)>> {
    use std::os::unix::fs::MetadataExt;
    let image = stasis_image::Image::open(images)?;
    let recorded = image.processes().and_then(|t| t.volume.clone());
    let Some(v) = recorded else {
        if rollback {
            anyhow::bail!("{} holds no volume snapshot (it was not made by stasis snapshot)", images.display());
        }
        return Ok(Vec::new());
    };
    if !rollback {
        eprintln!(
            "stasis: note: {} was taken with snapshot {:?} of {}; without --rollback-volume the processes come back \
             to the volume's files as they are now",
            images.display(),
            v.name,
            v.volume
        );
        return Ok(Vec::new());
    }
    let volume = super::volume::open(std::path::Path::new(&v.volume))?;
    let snapshot = volume.find(&v.name)?;
    if snapshot.id != v.id {
        anyhow::bail!(
            "snapshot {:?} of {} is not the one taken with the image (id {}, the image's {})",
            v.name,
            volume.describe(),
            snapshot.id,
            v.id
        );
    }
    // Nothing is rolled back for a restore that would then fail.
    let opts = RestoreOptions {
        images: images.to_path_buf(),
        allow_changed_files,
        pid_timeout: Duration::ZERO,
        pid_namespace: PidNamespaceMode::Auto,
        cancel: None,
        progress: None,
        moved_devices: Vec::new(),
        inherit: inherit.to_vec(),
        shell_job,
    };
    restore::preflight(&opts, v.dev)
        .with_context(|| format!("not rolling {} back: the restore would fail", volume.describe()))?;
    volume.rollback(&v.name)?;
    eprintln!("stasis: rolled {} back to snapshot {:?}", volume.describe(), v.name);
    let now = std::fs::metadata(&v.volume).with_context(|| format!("stat {}", v.volume))?.dev();
    Ok(if now != v.dev && v.dev != 0 { vec![(v.dev, now)] } else { Vec::new() })
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    let bar = crate::output::Progress::new("restoring memory");
    let cancel = crate::cancel::cancel_on_signals()?;
    let moved_devices =
        volume_first(&args.images, args.rollback_volume, args.allow_changed_files, &args.inherit_fd, args.shell_job)
            .with_context(|| format!("restore from {} failed", args.images.display()))?;
    let opts = RestoreOptions {
        moved_devices,
        inherit: args.inherit_fd.clone(),
        shell_job: args.shell_job,
        images: args.images.clone(),
        allow_changed_files: args.allow_changed_files,
        pid_timeout: Duration::from_secs(args.pid_timeout),
        cancel: Some(cancel),
        progress: bar.as_ref().map(|(_, f)| f.clone()),
        pid_namespace: match (args.pid_namespace, args.no_pid_namespace) {
            (true, _) => PidNamespaceMode::Always,
            (_, true) => PidNamespaceMode::Never,
            _ => PidNamespaceMode::Auto,
        },
    };
    let failed = || format!("restore from {} failed", args.images.display());
    let (report, loading) = if args.lazy {
        let (report, loading) = restore::restore_lazy(&opts).with_context(failed)?;
        (report, Some(loading))
    } else {
        (restore::restore(&opts).with_context(failed)?, None)
    };
    drop(bar);
    if let Some(file) = &args.pidfile {
        std::fs::write(file, format!("{}\n", report.pid)).with_context(|| {
            format!("process {} runs, but its pid could not be written to {}", report.pid, file.display())
        })?;
    }
    if let Some(ns) = &report.namespace {
        eprintln!(
            "stasis: restored into a new PID namespace ({}): the root is pid {} here and {} inside; its init is pid {}",
            ns.reason, report.pid, ns.pid_inside, ns.init
        );
    }
    let Some(loading) = loading else {
        if args.json {
            json(&report)?;
        } else {
            println!("{}", report.pid);
        }
        return Ok(Outcome::Success);
    };
    // The tree runs: its pid now, for whoever waits on it. From here on
    // stasis must stay until every page is in: a hangup is ignored, as
    // SIGINT and SIGTERM are, and output that cannot be written (a closed
    // terminal or pipe) is dropped rather than ending stasis.
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Default::default())
        .context("cannot ignore SIGHUP while the memory loads")?;
    let running_ms = report.total_us as f64 / 1000.0;
    if !args.json {
        use std::io::Write;
        let mut out = std::io::stdout();
        let _ = writeln!(out, "{}", report.pid).and_then(|()| out.flush());
        let _ = writeln!(std::io::stderr(), "stasis: running after {running_ms:.1} ms; loading its memory");
    }
    let loaded = loading.wait();
    let loaded =
        loaded.map_err(|e| anyhow::anyhow!("loading the memory of the tree of process {} failed: {e}", report.pid))?;
    // Said where it can still be (the terminal may be gone by now).
    use std::io::Write;
    if args.json {
        let mut value = serde_json::to_value(&report).context("JSON")?;
        value["lazy"] = serde_json::to_value(&loaded).context("JSON")?;
        let _ = writeln!(std::io::stdout(), "{}", serde_json::to_string_pretty(&value).context("JSON")?);
    } else {
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        let _ = writeln!(
            std::io::stderr(),
            "stasis: memory loaded {:.1} ms after the tree ran: {:.1} MiB in the background, {:.1} MiB on faults",
            loaded.loading_us as f64 / 1000.0,
            mib(loaded.ahead),
            mib(loaded.on_fault)
        );
    }
    Ok(Outcome::Success)
}
