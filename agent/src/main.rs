//! `stasis`: capture a running workload into an image and bring it back.
//!
//! The binary is glue: it parses arguments, sets up logging, turns each
//! subcommand into a call of the library crates, and prints the result for
//! people or, with `--json`, for programs. Errors end as one line on stderr
//! (the whole cause chain); `-v` or `RUST_LOG` shows more.
#![forbid(unsafe_code)]

mod cancel;
mod commands;
mod output;
mod workload;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Capture a running Linux workload (its processes, and the copy-on-write
/// snapshot of the volume it writes to) into one image, and bring it back.
#[derive(Debug, Parser)]
#[command(name = "stasis", version, propagate_version = true, max_term_width = 100)]
struct Cli {
    /// Log more: -v for progress, -vv for details. RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Bench(commands::bench::Args),
    Check(commands::check::Args),
    Demo(commands::demo::Args),
    Dump(commands::dump::Args),
    Inspect(commands::inspect::Args),
    Restore(commands::restore::Args),
    Snapshot(commands::snapshot::Args),
    Verify(commands::verify::Args),
    Volume(commands::volume::Args),
    #[command(hide = true)]
    Workload(workload::Args),
    #[command(hide = true)]
    HoldTracking(commands::dump::HoldArgs),
}

/// Exit status of a command that ran to its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Exit 0.
    Success,
    /// Exit 1: what was checked is not as wanted (a corrupt image, a missing
    /// facility). The command has already said why.
    Failure,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    // A stasis killed while it held a cgroup frozen left a journal entry:
    // thaw that workload before anything else. (Not in a bundled workload,
    // which is no agent and may be the very process being dumped.)
    if !matches!(cli.command, Command::Workload(_) | Command::HoldTracking(_)) {
        for cgroup in stasis_checkpoint::journal::recover() {
            eprintln!("stasis: thawed {}, left frozen by a stasis that did not finish", cgroup.display());
        }
    }
    let result = match cli.command {
        Command::Bench(args) => commands::bench::run(args),
        Command::Check(args) => commands::check::run(args),
        Command::Demo(args) => commands::demo::run(args),
        Command::Dump(args) => commands::dump::run(args),
        Command::Inspect(args) => commands::inspect::run(args),
        Command::Restore(args) => commands::restore::run(args),
        Command::Snapshot(args) => commands::snapshot::run(args),
        Command::Verify(args) => commands::verify::run(args),
        Command::Volume(args) => commands::volume::run(args),
        Command::Workload(args) => workload::run(args),
        Command::HoldTracking(args) => commands::dump::hold(args),
    };
    match result {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::Failure) => ExitCode::from(1),
        Err(err) => {
            eprintln!("stasis: error: {}", output::error_chain(&err));
            ExitCode::from(1)
        }
    }
}

fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Colour only on a terminal; times only when asked for detail.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(verbose > 1)
        .with_ansi(ansi);
    if verbose == 0 {
        fmt.without_time().init();
    } else {
        fmt.init();
    }
}
