//! A lease on a sink scope (`run`, `shard-I-of-N`, `commit`): an exclusive lock on
//! `leases/SCOPE.lock`, held for the life of the run. The operating system releases it when
//! the process ends, however it ends (a crash or SIGKILL included), so a lease is never
//! stale. The file also names its holder, for the message a second run prints. A second run
//! of the same spec (an overlapping nightly job, a replaced pod running the same shard) waits
//! or stops with that message instead of doing the work twice.
//!
//! The lease is a courtesy: the table stays right without it, because every write is an
//! idempotent merge on `key` (see the module above).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::util::now_ms;

/// A held lease; released when dropped (or when the process ends).
pub struct Lease {
    path: PathBuf,
    /// The locked file: the lock lives as long as this handle.
    _file: File,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Holder {
    host: String,
    pid: u32,
    run_id: String,
    acquired_ms: i64,
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into())
}

impl Lease {
    /// Takes the lease on `scope` in `dir` for `run_id`; when another process holds it, waits
    /// for it (`wait`) or fails with a message naming the holder.
    pub fn acquire(dir: &Path, scope: &str, run_id: &str, wait: bool) -> Result<Lease> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(format!("{scope}.lock"));
        let mut file =
            OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&path).map_err(|e| Error::io(&path, e))?;
        let mut told = false;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) => {
                    let message = held_message(&path, scope);
                    if !wait {
                        return Err(Error::LeaseHeld(message));
                    }
                    if !told {
                        eprintln!("gemma-batch: {message}; waiting for it");
                        told = true;
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(TryLockError::Error(e)) => return Err(Error::io(&path, e)),
            }
        }
        let me = Holder { host: host_name(), pid: std::process::id(), run_id: run_id.to_string(), acquired_ms: now_ms() };
        let text = serde_json::to_string(&me).map_err(|e| Error::Sink(format!("lease: {e}")))?;
        // Who holds it, for others' messages; the lock, not this text, is the lease.
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(text.as_bytes()))
            .and_then(|()| file.flush())
            .map_err(|e| Error::io(&path, e))?;
        Ok(Lease { path, _file: file })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn held_message(path: &Path, scope: &str) -> String {
    let mut text = String::new();
    let holder = File::open(path).ok().and_then(|mut f| f.read_to_string(&mut text).ok()).and_then(|_| serde_json::from_str::<Holder>(&text).ok());
    let who = match holder {
        Some(h) => {
            let age = (now_ms() - h.acquired_ms).max(0) / 1000;
            format!("{}:{}, run {}, for {age}s", h.host, h.pid, h.run_id)
        }
        None => "a process starting up".into(),
    };
    let ignore = if scope == "commit" {
        ""
    } else {
        ", or --ignore-lease to run anyway (safe: results are merged on their key, but the work is done twice)"
    };
    format!(
        "another gemma-batch ({who}) is working on this sink ({scope}; lease {}). Wait for it to finish, pass \
         --wait to wait here{ignore}",
        path.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_releases() {
        let dir = tempfile::tempdir().unwrap();
        let first = Lease::acquire(dir.path(), "run", "a", false).unwrap();
        // Locks belong to open files: a second open, even in this process, is another holder.
        let err = Lease::acquire(dir.path(), "run", "b", false).err().expect("second acquire must fail");
        assert!(err.to_string().contains("run a"), "{err}");
        // Other scopes are independent.
        let _shard = Lease::acquire(dir.path(), "shard-0-of-2", "b", false).unwrap();
        drop(first);
        let second = Lease::acquire(dir.path(), "run", "b", false).unwrap();
        assert!(std::fs::read_to_string(second.path()).unwrap().contains("\"run_id\":\"b\""));
    }

    #[test]
    fn waiting_takes_the_lease_when_the_holder_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = Lease::acquire(dir.path(), "commit", "a", false).unwrap();
        let msg = Lease::acquire(dir.path(), "commit", "b", false).err().unwrap().to_string();
        assert!(!msg.contains("--ignore-lease"), "commit has no --ignore-lease: {msg}");
        let path = dir.path().to_path_buf();
        let waiter = std::thread::spawn(move || Lease::acquire(&path, "commit", "b", true).map(|_| ()));
        std::thread::sleep(Duration::from_millis(300));
        assert!(!waiter.is_finished(), "the waiter must wait while the lease is held");
        drop(first);
        waiter.join().unwrap().unwrap();
    }
}
