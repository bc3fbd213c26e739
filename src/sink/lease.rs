//! A lease on a sink scope (`run`, `shard-I-of-N`, `commit`), held for the life of the run.
//! A second run of the same spec (an overlapping nightly job, a replaced pod running the same
//! shard) waits or stops with a message naming the holder instead of doing the work twice.
//!
//! - In a local directory it is an exclusive lock on `leases/SCOPE.lock`. The operating system
//!   releases it when the process ends, however it ends (a crash or SIGKILL included), so a
//!   lease is never stale. The file also names its holder, for the message.
//! - In an object store (no locks there) it is the object `leases/SCOPE.lock`, created only if
//!   absent (a conditional put), naming its holder and an expiry that the holder renews while
//!   it runs and removes when it ends. A holder killed without removing it blocks others until
//!   the expiry passes ([`OBJECT_LEASE_TTL`]).
//!
//! The lease is a courtesy: the table stays right without it, because every write is an
//! idempotent merge on `key` (see the module above).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::objects::{block_on, is_uri, join, Location};
use crate::util::now_ms;

/// How long an object-store lease lasts unless renewed.
pub const OBJECT_LEASE_TTL: Duration = Duration::from_secs(60);
const RENEW_EVERY: Duration = Duration::from_secs(15);

/// A held lease; released when dropped (or, for a local lock, when the process ends).
pub struct Lease {
    shown: String,
    _held: Held,
}

enum Held {
    /// The locked file: the lock lives as long as this handle.
    File { _lock: File },
    Object { _lease: ObjectLease },
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Holder {
    host: String,
    pid: u32,
    run_id: String,
    acquired_ms: i64,
    /// Object-store leases: when the lease lapses unless renewed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_ms: Option<i64>,
}

impl Holder {
    fn me(run_id: &str, acquired_ms: i64, expires: bool) -> Holder {
        let expires_ms = expires.then(|| now_ms() + OBJECT_LEASE_TTL.as_millis() as i64);
        Holder { host: host_name(), pid: std::process::id(), run_id: run_id.to_string(), acquired_ms, expires_ms }
    }

    fn json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
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
    /// Takes the lease on `scope` in `dir` (a local directory or an object-store URI) for
    /// `run_id`; when another process holds it, waits for it (`wait`) or fails with a message
    /// naming the holder.
    pub fn acquire(dir: &str, scope: &str, run_id: &str, wait: bool) -> Result<Lease> {
        if is_uri(dir) {
            acquire_object(dir, scope, run_id, wait)
        } else {
            acquire_file(Path::new(dir), scope, run_id, wait)
        }
    }

    /// Where the lease lives (for messages and tests).
    pub fn shown(&self) -> &str {
        &self.shown
    }
}

fn acquire_file(dir: &Path, scope: &str, run_id: &str, wait: bool) -> Result<Lease> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let path = dir.join(format!("{scope}.lock"));
    let mut file = OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&path).map_err(|e| Error::io(&path, e))?;
    let shown = path.display().to_string();
    let mut told = false;
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let holder = File::open(&path).ok().and_then(|mut f| f.read_to_string(&mut text).ok()).and_then(|_| serde_json::from_str(&text).ok());
                wait_or_refuse(held_message(holder, &shown, scope), wait, &mut told, Duration::from_millis(250))?;
            }
            Err(TryLockError::Error(e)) => return Err(Error::io(&path, e)),
        }
    }
    // Who holds it, for others' messages; the lock, not this text, is the lease.
    let me = Holder::me(run_id, now_ms(), false).json();
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| file.write_all(&me))
        .and_then(|()| file.flush())
        .map_err(|e| Error::io(&path, e))?;
    Ok(Lease { shown, _held: Held::File { _lock: file } })
}

/// Refuses with `message`, or (`wait`) says once that it waits and sleeps `pause`.
fn wait_or_refuse(message: String, wait: bool, told: &mut bool, pause: Duration) -> Result<()> {
    if !wait {
        return Err(Error::LeaseHeld(message));
    }
    if !*told {
        eprintln!("gemma-batch: {message}; waiting for it");
        *told = true;
    }
    std::thread::sleep(pause);
    Ok(())
}

/// An object-store lease: renewed by a thread of its own until dropped, then removed.
struct ObjectLease {
    location: Location,
    stop: Option<mpsc::Sender<()>>,
    renewer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for ObjectLease {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.renewer.take() {
            let _ = t.join();
        }
        let location = self.location.clone();
        if let Err(e) = block_on(async move { location.delete().await }) {
            eprintln!("gemma-batch: could not release the lease {}: {e} (it lapses by itself)", self.location.uri());
        }
    }
}

fn acquire_object(dir: &str, scope: &str, run_id: &str, wait: bool) -> Result<Lease> {
    let uri = join(dir, &format!("{scope}.lock"));
    let location = block_on({
        let uri = uri.clone();
        async move { Location::open(&uri).await }
    })?;
    let acquired_ms = now_ms();
    let mut told = false;
    loop {
        let (me, l) = (Holder::me(run_id, acquired_ms, true).json(), location.clone());
        if block_on(async move { l.create(me).await })? {
            break;
        }
        let l = location.clone();
        let holder: Option<Holder> = match block_on(async move { l.read(1 << 16, "the lease size").await }) {
            Ok(bytes) => serde_json::from_slice(&bytes).ok(),
            // Released between the two requests: try again.
            Err(_) => continue,
        };
        if holder.as_ref().and_then(|h| h.expires_ms).is_some_and(|t| t < now_ms()) {
            // Its holder stopped renewing it (killed, or cut off from the store).
            let l = location.clone();
            block_on(async move { l.delete().await })?;
            continue;
        }
        wait_or_refuse(held_message(holder, &uri, scope), wait, &mut told, Duration::from_secs(1))?;
    }
    let (stop, stopped) = mpsc::channel::<()>();
    let renewed = location.clone();
    let run_id = run_id.to_string();
    let renewer = std::thread::Builder::new()
        .name("lease-renewer".into())
        .spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(RENEW_EVERY) {
                let (me, l) = (Holder::me(&run_id, acquired_ms, true).json(), renewed.clone());
                if let Err(e) = block_on(async move { l.put(me).await }) {
                    eprintln!("gemma-batch: could not renew the lease {}: {e}", renewed.uri());
                }
            }
        })
        .map_err(|e| Error::Sink(format!("lease {uri}: {e}")))?;
    Ok(Lease { shown: uri, _held: Held::Object { _lease: ObjectLease { location, stop: Some(stop), renewer: Some(renewer) } } })
}

fn held_message(holder: Option<Holder>, shown: &str, scope: &str) -> String {
    let who = match holder {
        Some(h) => {
            let age = (now_ms() - h.acquired_ms).max(0) / 1000;
            let lapses = h.expires_ms.map(|t| format!(", lapsing in {}s unless renewed", ((t - now_ms()).max(0) + 999) / 1000)).unwrap_or_default();
            format!("{}:{}, run {}, for {age}s{lapses}", h.host, h.pid, h.run_id)
        }
        None => "a process starting up".into(),
    };
    let ignore = if scope == "commit" {
        ""
    } else {
        ", or --ignore-lease to run anyway (safe: results are merged on their key, but the work is done twice)"
    };
    format!(
        "another gemma-batch ({who}) is working on this sink ({scope}; lease {shown}). Wait for it to finish, pass \
         --wait to wait here{ignore}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_releases() {
        let dir = tempfile::tempdir().unwrap();
        let first = Lease::acquire(&dir.path().display().to_string(), "run", "a", false).unwrap();
        // Locks belong to open files: a second open, even in this process, is another holder.
        let err = Lease::acquire(&dir.path().display().to_string(), "run", "b", false).err().expect("second acquire must fail");
        assert!(err.to_string().contains("run a"), "{err}");
        // Other scopes are independent.
        let _shard = Lease::acquire(&dir.path().display().to_string(), "shard-0-of-2", "b", false).unwrap();
        drop(first);
        let second = Lease::acquire(&dir.path().display().to_string(), "run", "b", false).unwrap();
        assert!(std::fs::read_to_string(second.shown()).unwrap().contains("\"run_id\":\"b\""));
    }

    #[test]
    fn waiting_takes_the_lease_when_the_holder_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = Lease::acquire(&dir.path().display().to_string(), "commit", "a", false).unwrap();
        let msg = Lease::acquire(&dir.path().display().to_string(), "commit", "b", false).err().unwrap().to_string();
        assert!(!msg.contains("--ignore-lease"), "commit has no --ignore-lease: {msg}");
        let path = dir.path().display().to_string();
        let waiter = std::thread::spawn(move || Lease::acquire(&path, "commit", "b", true).map(|_| ()));
        std::thread::sleep(Duration::from_millis(300));
        assert!(!waiter.is_finished(), "the waiter must wait while the lease is held");
        drop(first);
        waiter.join().unwrap().unwrap();
    }

    #[test]
    fn object_store_leases_are_exclusive_renewed_released_and_lapse() {
        let tmp = tempfile::tempdir().unwrap();
        // A file:// URI goes through the object-store path (conditional puts, no locks).
        let dir = format!("file://{}", tmp.path().join("leases").display());
        let first = Lease::acquire(&dir, "run", "a", false).unwrap();
        let lock = tmp.path().join("leases/run.lock");
        let held: Holder = serde_json::from_slice(&std::fs::read(&lock).unwrap()).unwrap();
        assert!(held.expires_ms.is_some_and(|t| t > now_ms()), "{held:?}");
        let err = Lease::acquire(&dir, "run", "b", false).err().expect("second acquire must fail").to_string();
        assert!(err.contains("run a") && err.contains("lapsing in"), "{err}");
        drop(first);
        assert!(!lock.exists(), "a dropped lease is removed");
        // A holder killed without removing its lease: once the expiry passes, it is taken over.
        let dead = Holder { expires_ms: Some(now_ms() - 1), ..Holder::me("dead", 0, true) };
        std::fs::write(&lock, dead.json()).unwrap();
        let taken = Lease::acquire(&dir, "run", "c", false).unwrap();
        let now: Holder = serde_json::from_slice(&std::fs::read(&lock).unwrap()).unwrap();
        assert_eq!(now.run_id, "c");
        drop(taken);
    }
}
