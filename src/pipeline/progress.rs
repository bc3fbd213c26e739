//! Counters of a run and how they are shown: a progress bar on a terminal, log lines otherwise.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// What the stages have seen so far (shared between threads).
#[derive(Default)]
pub(crate) struct Counters {
    pub rows: AtomicU64,
    pub items: AtomicU64,
    /// Items already done in the table (or staged by a shard).
    pub skipped: AtomicU64,
    /// Items whose key another item of this run already has (identical rows, a repeated question).
    pub duplicates: AtomicU64,
    /// Failed items of earlier runs tried again by this one.
    pub retried: AtomicU64,
    /// Failed items of earlier runs not tried again (retries off, or out of attempts).
    pub failed_kept: AtomicU64,
    pub done: AtomicU64,
    pub failed: AtomicU64,
    pub quarantined: AtomicU64,
}

impl Counters {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    pub fn add(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// A progress bar on a terminal; plain log lines otherwise.
pub(crate) struct Progress {
    bar: Option<indicatif::ProgressBar>,
    pub plain: bool,
}

impl Progress {
    pub fn new(quiet: bool) -> Self {
        let tty = std::io::stderr().is_terminal();
        if quiet || !tty {
            return Progress { bar: None, plain: !quiet };
        }
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {elapsed_precise} {pos} rows ({per_sec}) {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress { bar: Some(bar), plain: false }
    }

    pub fn update(&self, c: &Counters) {
        if let Some(bar) = &self.bar {
            let done = c.done.load(Ordering::Relaxed) + c.failed.load(Ordering::Relaxed);
            bar.set_position(done);
            let todo = c.items.load(Ordering::Relaxed).saturating_sub(c.skipped.load(Ordering::Relaxed));
            bar.set_message(format!(
                "of {todo} so far, {} failed, {} skipped",
                c.failed.load(Ordering::Relaxed),
                c.skipped.load(Ordering::Relaxed)
            ));
        }
    }

    pub fn log(&self, c: &Counters, elapsed: Duration) {
        let done = c.done.load(Ordering::Relaxed) + c.failed.load(Ordering::Relaxed);
        eprintln!(
            "gemma-batch: {done} rows finished ({} failed, {} skipped), {:.1} rows/s",
            c.failed.load(Ordering::Relaxed),
            c.skipped.load(Ordering::Relaxed),
            done as f64 / elapsed.as_secs_f64().max(1e-9)
        );
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
