//! Stage 4: collect finished rows and commit them `commit_every` at a time, through the
//! sink's one commit protocol (idempotent merges on `key`; staged datasets for a shard).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::progress::{Counters, Progress};
use super::tasks::record_error;
use super::Finished;
use crate::error::Result;
use crate::filters::Outcome;
use crate::sink::pending::PendingDir;
use crate::sink::{ResultRow, ResultStore, SinkLayout};

/// Where a run's rows go: the tables themselves, or a shard's staging directories.
pub(crate) enum Destination {
    Tables { results: ResultStore, quarantine: ResultStore },
    Staged { results: PendingDir, quarantine: PendingDir, shard: String, run_id: String },
}

impl Destination {
    pub fn new(layout: &SinkLayout, shard: Option<String>, run_id: &str) -> Destination {
        match shard {
            None => Destination::Tables {
                results: ResultStore::new(layout.results()),
                quarantine: ResultStore::new(layout.quarantine()),
            },
            Some(shard) => Destination::Staged {
                results: PendingDir::new(layout.pending()),
                quarantine: PendingDir::new(layout.pending_quarantine()),
                shard,
                run_id: run_id.to_string(),
            },
        }
    }
}

pub(crate) struct Writer {
    pub destination: Destination,
    pub commit_every: usize,
    /// Keys that failed before this run: when one is quarantined now, its failed row leaves
    /// the results table (one current row per key across the two tables).
    pub failed_before: HashSet<String>,
    /// Failed records superseded by done rows, found by the reader.
    pub stale: Arc<Mutex<Vec<String>>>,
    /// A pause after each commit, for tests that must stop a run between two commits.
    pub commit_delay: Duration,
    buffer: Vec<ResultRow>,
    quarantined: Vec<ResultRow>,
    flushes: u64,
    /// The newest results version this run wrote.
    pub version: Option<u64>,
    /// Every results version this run wrote, oldest first.
    pub versions: Vec<u64>,
}

impl Writer {
    pub fn new(destination: Destination, commit_every: usize, failed_before: HashSet<String>, stale: Arc<Mutex<Vec<String>>>) -> Writer {
        let commit_delay = std::env::var("GEMMA_BATCH_TEST_COMMIT_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
            .unwrap_or_default();
        Writer {
            destination,
            commit_every: commit_every.max(1),
            failed_before,
            stale,
            commit_delay,
            buffer: Vec::new(),
            quarantined: Vec::new(),
            flushes: 0,
            version: None,
            versions: Vec::new(),
        }
    }

    /// Adds a finished row; commits when `commit_every` rows are waiting.
    pub async fn push(&mut self, f: Finished, counters: &Counters) -> Result<()> {
        let Finished { mut row, outcome } = f;
        if row.error.is_some() {
            record_error(&mut row);
            Counters::add(&counters.failed);
        } else {
            Counters::add(&counters.done);
        }
        // A failed row stays in the results table whatever the filters said, so that it is
        // counted and retried like any failed row.
        if outcome == Outcome::Quarantine && row.error.is_none() {
            Counters::add(&counters.quarantined);
            self.quarantined.push(row);
        } else {
            self.buffer.push(row);
        }
        if self.buffer.len() + self.quarantined.len() >= self.commit_every {
            self.flush().await?;
        }
        Ok(())
    }

    /// Commits what is waiting. Quarantined rows first: a row is never in neither table.
    pub async fn flush(&mut self) -> Result<()> {
        let stale: Vec<String> = self.stale.lock().map(|mut s| std::mem::take(&mut *s)).unwrap_or_default();
        if self.buffer.is_empty() && self.quarantined.is_empty() && stale.is_empty() {
            return Ok(());
        }
        let (rows, quarantined) = (std::mem::take(&mut self.buffer), std::mem::take(&mut self.quarantined));
        self.flushes += 1;
        match &self.destination {
            Destination::Tables { results, quarantine } => {
                quarantine.upsert(&quarantined).await?;
                if let Some(v) = results.upsert(&rows).await? {
                    self.version = Some(v);
                    self.versions.push(v);
                }
                // Only now that their replacements are committed: failed records that a row of
                // this flush supersedes, or that its key moved to the quarantine table.
                let replaced: Vec<String> = quarantined
                    .iter()
                    .filter(|r| self.failed_before.contains(&r.key))
                    .map(|r| r.key.clone())
                    .chain(rows.iter().chain(&quarantined).filter_map(|r| r.supersedes.clone()))
                    .chain(stale)
                    .collect();
                if let Some(v) = results.delete_failed(&replaced).await? {
                    self.version = Some(v);
                    self.versions.push(v);
                }
            }
            Destination::Staged { results, quarantine, shard, run_id } => {
                quarantine.write(&quarantined, shard, run_id, self.flushes).await?;
                results.write(&rows, shard, run_id, self.flushes).await?;
            }
        }
        if !self.commit_delay.is_zero() {
            tokio::time::sleep(self.commit_delay).await;
        }
        Ok(())
    }
}

/// Logs progress lines at most every 10 s when there is no progress bar.
pub(crate) struct LogEvery {
    last: Instant,
}

impl LogEvery {
    pub fn new() -> Self {
        LogEvery { last: Instant::now() }
    }

    pub fn tick(&mut self, progress: &Progress, counters: &Counters, started: Instant) {
        if progress.plain && self.last.elapsed() > Duration::from_secs(10) {
            progress.log(counters, started.elapsed());
            self.last = Instant::now();
        }
    }
}
