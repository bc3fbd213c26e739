//! A lease on a sink scope (`run`, `shard-I-of-N`, `commit`): a small JSON file naming its
//! holder, refreshed by a heartbeat and stale once the heartbeat stops. A second run of the
//! same spec (an overlapping nightly job, a replaced pod running the same shard) sees the lease
//! and waits or stops with a message naming the holder, instead of doing the work twice.
//!
//! The lease is a courtesy: the table stays right without it, because every write is an
//! idempotent merge on `key` (see the module above).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::util::now_ms;

/// How a lease is taken.
#[derive(Debug, Clone)]
pub struct LeaseOptions {
    /// A lease whose heartbeat is older than this is stale and may be taken over.
    pub ttl: Duration,
    /// Wait for a held lease (polling) instead of failing at once.
    pub wait: bool,
}

impl Default for LeaseOptions {
    fn default() -> Self {
        LeaseOptions { ttl: Duration::from_secs(60), wait: false }
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Holder {
    holder: String,
    host: String,
    pid: u32,
    run_id: String,
    acquired_ms: i64,
    heartbeat_ms: i64,
}

/// A held lease; released when dropped.
pub struct Lease {
    path: PathBuf,
    me: Holder,
    stop: Arc<AtomicBool>,
    heartbeat: Option<std::thread::JoinHandle<()>>,
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into())
}

/// Whether a process of this host is alive (on Linux; elsewhere assume it is).
fn alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new(&format!("/proc/{pid}")).exists()
    } else {
        true
    }
}

fn read_holder(path: &Path) -> Option<Holder> {
    std::fs::read_to_string(path).ok().and_then(|t| serde_json::from_str(&t).ok())
}

fn write_holder(path: &Path, h: &Holder) -> Result<()> {
    let tmp = path.with_extension(format!("{}.tmp", h.pid));
    let text = serde_json::to_string(h).map_err(|e| Error::Sink(format!("lease: {e}")))?;
    std::fs::write(&tmp, text).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

impl Lease {
    /// Takes the lease on `scope` in `dir` for `run_id`, or says who holds it.
    pub fn acquire(dir: &Path, scope: &str, run_id: &str, options: &LeaseOptions) -> Result<Lease> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(format!("{scope}.json"));
        let now = now_ms();
        let host = host_name();
        let pid = std::process::id();
        let me = Holder { holder: format!("{host}:{pid}"), host, pid, run_id: run_id.to_string(), acquired_ms: now, heartbeat_ms: now };
        let mut waited = false;
        loop {
            match Self::try_take(&path, &me, options.ttl)? {
                None => break,
                Some(other) => {
                    if !options.wait {
                        return Err(Error::LeaseHeld(held_message(&path, scope, &other)));
                    }
                    if !waited {
                        eprintln!("gemma-batch: {}; waiting for it", held_message(&path, scope, &other));
                        waited = true;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let heartbeat = {
            let (path, me, stop) = (path.clone(), me.clone(), stop.clone());
            let every = (options.ttl / 4).max(Duration::from_millis(100));
            std::thread::spawn(move || {
                let mut last = std::time::Instant::now();
                while !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(50));
                    if last.elapsed() < every {
                        continue;
                    }
                    last = std::time::Instant::now();
                    // Refresh only while still ours (a holder that stalled past the ttl may
                    // have been replaced; it must not take the lease back).
                    if read_holder(&path).is_some_and(|h| h.holder == me.holder && h.run_id == me.run_id) {
                        let _ = write_holder(&path, &Holder { heartbeat_ms: now_ms(), ..me.clone() });
                    }
                }
            })
        };
        Ok(Lease { path, me, stop, heartbeat: Some(heartbeat) })
    }

    /// Creates the lease file, or takes over a stale one. Ok(None): taken; Ok(Some(holder)):
    /// held by another; Err: the lease directory cannot be used.
    fn try_take(path: &Path, me: &Holder, ttl: Duration) -> Result<Option<Holder>> {
        let text = serde_json::to_string(me).map_err(|e| Error::Sink(format!("lease: {e}")))?;
        match std::fs::OpenOptions::new().write(true).create_new(true).open(path) {
            Ok(mut f) => {
                use std::io::Write;
                f.write_all(text.as_bytes()).map_err(|e| Error::io(path, e))?;
                return Ok(None);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io(path, e)),
        }
        let current = match read_holder(path) {
            Some(h) => h,
            // Released between our create and read: try again.
            None if !path.exists() => return Self::try_take(path, me, ttl),
            // Being written this instant, or unreadable: treat as held, briefly.
            None => {
                let age = std::fs::metadata(path).and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
                if age.is_some_and(|a| a > ttl) {
                    Holder { heartbeat_ms: 0, ..me.clone() }
                } else {
                    return Ok(Some(Holder { holder: "a process starting up".into(), heartbeat_ms: now_ms(), ..me.clone() }));
                }
            }
        };
        let stale = now_ms() - current.heartbeat_ms > ttl.as_millis() as i64
            || (current.host == me.host && current.pid != me.pid && !alive(current.pid));
        if !stale {
            return Ok(Some(current));
        }
        // Take over: write ours, then read back after a moment; of two processes taking over
        // at once, the one whose write landed last keeps it.
        write_holder(path, me)?;
        std::thread::sleep(Duration::from_millis(200));
        match read_holder(path) {
            Some(h) if h.holder == me.holder && h.run_id == me.run_id => Ok(None),
            Some(h) => Ok(Some(h)),
            None => Ok(Some(current)),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn held_message(path: &Path, scope: &str, h: &Holder) -> String {
    let age = (now_ms() - h.heartbeat_ms).max(0) as f64 / 1000.0;
    let ignore = if scope == "commit" {
        ""
    } else {
        ", or --ignore-lease to run anyway (safe: results are merged on their key, but the work is done twice)"
    };
    format!(
        "another gemma-batch ({}, run {}) is working on this sink ({scope}; lease {} refreshed {age:.0}s ago). \
         Wait for it to finish, pass --wait to wait here{ignore}",
        h.holder,
        h.run_id,
        path.display()
    )
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.heartbeat.take() {
            let _ = h.join();
        }
        if read_holder(&self.path).is_some_and(|h| h.holder == self.me.holder && h.run_id == self.me.run_id) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_releases() {
        let dir = tempfile::tempdir().unwrap();
        let opts = LeaseOptions { ttl: Duration::from_secs(30), wait: false };
        let first = Lease::acquire(dir.path(), "run", "a", &opts).unwrap();
        let err = Lease::acquire(dir.path(), "run", "b", &opts).err().expect("second acquire must fail");
        assert!(err.to_string().contains("run a"), "{err}");
        // Other scopes are independent.
        let _shard = Lease::acquire(dir.path(), "shard-0-of-2", "b", &opts).unwrap();
        drop(first);
        Lease::acquire(dir.path(), "run", "b", &opts).unwrap();
    }

    #[test]
    fn a_stale_lease_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.json");
        let stale = Holder {
            holder: "elsewhere:1".into(),
            host: "elsewhere".into(),
            pid: 1,
            run_id: "old".into(),
            acquired_ms: 0,
            heartbeat_ms: now_ms() - 120_000,
        };
        write_holder(&path, &stale).unwrap();
        let opts = LeaseOptions { ttl: Duration::from_secs(60), wait: false };
        let lease = Lease::acquire(dir.path(), "run", "new", &opts).unwrap();
        assert_eq!(read_holder(lease.path()).unwrap().run_id, "new");
        // A fresh heartbeat from another host is respected.
        drop(lease);
        write_holder(&path, &Holder { heartbeat_ms: now_ms(), ..stale }).unwrap();
        assert!(Lease::acquire(dir.path(), "run", "new", &opts).is_err());
    }
}
