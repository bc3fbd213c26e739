//! SIGINT (Ctrl-C) and SIGTERM (what Kubernetes and Slurm send before killing a job): the
//! first one stops reading new rows, lets the work in flight finish and be committed, and
//! the run exits resumable; a second one exits at once. Commits are atomic Lance versions,
//! so exiting between them never leaves a half-written table.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};

use crate::error::{Error, Result};

/// Set once a stop signal arrived; holds its number.
#[derive(Clone, Default)]
pub(crate) struct StopFlag(Arc<AtomicI32>);

impl StopFlag {
    pub fn stopped(&self) -> bool {
        self.0.load(Ordering::SeqCst) != 0
    }

    /// The signal that stopped the run, if one did.
    pub fn signal(&self) -> Option<i32> {
        Some(self.0.load(Ordering::SeqCst)).filter(|&s| s != 0)
    }
}

/// The conventional exit status of a process stopped by `signal` (128 + its number).
pub fn exit_status(signal: i32) -> u8 {
    (128 + signal.clamp(0, 127)) as u8
}

pub fn signal_name(signal: i32) -> &'static str {
    match signal {
        2 => "SIGINT",
        15 => "SIGTERM",
        _ => "a signal",
    }
}

/// Installs the handlers; call first thing on the runtime, so a signal at any later moment is
/// handled.
pub(crate) fn install() -> Result<StopFlag> {
    let err = |e: std::io::Error| Error::Join { stage: "installing the signal handlers".into(), message: e.to_string() };
    let mut interrupt = signal(SignalKind::interrupt()).map_err(err)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(err)?;
    let flag = StopFlag::default();
    let f = flag.clone();
    tokio::spawn(async move {
        loop {
            let number = tokio::select! {
                Some(()) = interrupt.recv() => 2,
                Some(()) = terminate.recv() => 15,
                else => return,
            };
            if f.0.compare_exchange(0, number, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                eprintln!(
                    "\ngemma-batch: {}: finishing the rows in flight and committing them (send it again to stop at once)",
                    signal_name(number)
                );
            } else {
                eprintln!("gemma-batch: {}: stopping now; committed rows are kept, rerun to resume", signal_name(number));
                std::process::exit(exit_status(number).into());
            }
        }
    });
    Ok(flag)
}
