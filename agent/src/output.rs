//! Formatting shared by the commands.

use std::fmt::Write;

/// The error and each of its causes, joined with ": ", without repeats (a
/// cause whose text its parent already shows is left out).
pub fn error_chain(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// A byte count for people: 1536 -> "1.5 KiB".
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        let mut s = String::new();
        let _ = write!(s, "{value:.1} {}", UNITS[unit]);
        s
    }
}

/// A progress bar for a long phase, drawn on stderr only when stdout is a
/// terminal and the phase has run for more than a second (short operations
/// stay quiet). Dropping it clears it.
pub struct Progress {
    bar: indicatif::ProgressBar,
}

impl Progress {
    /// The bar and the callback to hand to the library, or `None` when
    /// stdout is not a terminal.
    pub fn new(label: &'static str) -> Option<(Progress, stasis_checkpoint::ProgressFn)> {
        use std::io::IsTerminal;
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        use std::time::{Duration, Instant};
        if !std::io::stdout().is_terminal() {
            return None;
        }
        let bar = indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::hidden());
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:40}] {binary_bytes}/{binary_total_bytes} ({binary_bytes_per_sec})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message(label);
        let start = Instant::now();
        let shown = Arc::new(AtomicBool::new(false));
        let b = bar.clone();
        let callback = move |done: u64, total: u64| {
            b.set_length(total);
            b.set_position(done);
            if start.elapsed() > Duration::from_secs(1) && !shown.swap(true, Ordering::Relaxed) {
                b.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            }
        };
        Some((Progress { bar }, stasis_checkpoint::ProgressFn(Arc::new(callback))))
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

/// Print `value` as pretty JSON on stdout.
pub fn json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
    }

    #[test]
    fn chain_drops_repeats() {
        let err = anyhow::anyhow!("disk full").context("cannot write /x").context("dump of pid 7 failed");
        assert_eq!(error_chain(&err), "dump of pid 7 failed: cannot write /x: disk full");
    }
}
