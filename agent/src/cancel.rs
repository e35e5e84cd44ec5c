//! Ctrl-C and SIGTERM: a flag the library checks at phase boundaries, so
//! that an interrupted dump or restore lets its target go cleanly instead
//! of dying half-way.

use anyhow::Context;

/// Whether the operator asked to stop (SIGINT or SIGTERM).
pub type Cancel = std::sync::Arc<std::sync::atomic::AtomicBool>;

/// A flag set on SIGINT and SIGTERM.
pub fn cancel_on_signals() -> anyhow::Result<Cancel> {
    let cancel = Cancel::default();
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Cancel::clone(&cancel)).context("cannot install signal handlers")?;
    }
    Ok(cancel)
}
