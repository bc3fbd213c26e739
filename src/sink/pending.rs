//! Shard results waiting for `commit`: each flush of a shard is a small Lance dataset of its
//! own under `pending/` (`pending-quarantine/` for quarantined rows). A dataset is written
//! under a hidden temporary name and renamed into place when complete, so `commit` and shard
//! reruns only ever see whole ones. `commit` merges them into the table (idempotently on
//! `key`) and removes them only after the merge is committed: a commit killed at any moment,
//! or racing a shard, or run twice, never stores a key twice and never loses one.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use arrow_array::RecordBatch;

use super::{to_batch, ResultRow, ResultStore};
use crate::error::{Error, Result};

const TEMP_PREFIX: &str = ".writing-";
/// A temporary dataset older than this belongs to a shard that died while writing it.
const ABANDONED_AFTER: Duration = Duration::from_secs(3600);

/// What a commit of staged results did.
#[derive(Debug, Default)]
pub struct Committed {
    /// The new version (None when nothing changed).
    pub version: Option<u64>,
    /// How many staged datasets were merged.
    pub staged: usize,
    /// Keys of their rows, and the failed records those rows replace.
    pub keys: Vec<String>,
    pub superseded: Vec<String>,
    /// The merged datasets, to remove with [`PendingDir::remove`] once nothing else needs them.
    pub paths: Vec<PathBuf>,
}

/// A directory of staged shard results.
pub struct PendingDir {
    dir: PathBuf,
}

impl PendingDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        PendingDir { dir: dir.into() }
    }

    /// Stages rows as one new dataset named after the shard and run; `seq` numbers a run's flushes.
    pub async fn write(&self, rows: &[ResultRow], shard: &str, run_id: &str, seq: u64) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        let name = format!("shard-{}-{run_id}-{seq:06}.lance", shard.replace('/', "-of-"));
        let tmp = self.dir.join(format!("{TEMP_PREFIX}{name}"));
        let uri = tmp.display().to_string();
        let batch = to_batch(rows)?;
        let schema = batch.schema();
        let reader = arrow_array::RecordBatchIterator::new(vec![Ok(batch)], schema);
        lance::dataset::Dataset::write(reader, uri.as_str(), None).await.map_err(Error::lance(&uri))?;
        let dest = self.dir.join(&name);
        std::fs::rename(&tmp, &dest).map_err(|e| Error::io(&dest, e))
    }

    /// The complete staged datasets, oldest name first.
    pub fn list(&self) -> Result<Vec<PathBuf>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(&self.dir, e)),
        };
        let paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        if let Some(old) = paths.iter().find(|p| p.extension().is_some_and(|e| e == "txn")) {
            return Err(Error::Sink(format!(
                "{} holds shard results staged by an earlier version of gemma-batch ({}); commit them with that \
                 version, or delete the directory to redo that work",
                self.dir.display(),
                old.display()
            )));
        }
        let mut found: Vec<PathBuf> = paths
            .into_iter()
            .filter(|p| {
                let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                !name.starts_with('.') && name.ends_with(".lance") && p.is_dir()
            })
            .collect();
        found.sort();
        Ok(found)
    }

    /// Keys of every staged row (a shard rerun skips them).
    pub async fn keys(&self) -> Result<HashSet<String>> {
        let mut keys = HashSet::new();
        for p in self.list()? {
            match ResultStore::new(p.display().to_string()).keys().await {
                Ok(k) => keys.extend(k),
                // A commit merged and removed it while we read: its rows are in the table (at
                // worst this shard redoes them, and the merge stores them once).
                Err(_) if !p.exists() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(keys)
    }

    /// Merges every staged dataset into `store` as one version. They stay until [`Self::remove`]:
    /// a commit killed before that merges them again next time, which changes nothing.
    pub async fn commit_into(&self, store: &ResultStore) -> Result<Committed> {
        self.remove_abandoned();
        let staged = self.list()?;
        let mut done = Committed { staged: staged.len(), ..Committed::default() };
        if staged.is_empty() {
            return Ok(done);
        }
        // Good rows first: when shards staged one key twice (a duplicate shard), the merge keeps
        // the first, and a success must win over a failure.
        let mut batches: Vec<RecordBatch> = Vec::new();
        for filter in ["error IS NULL", "error IS NOT NULL"] {
            for p in &staged {
                batches.extend(ResultStore::new(p.display().to_string()).read_where(None, None, Some(filter)).await?);
            }
        }
        let text = |b: &RecordBatch, name: &str| -> Vec<String> {
            use arrow_array::cast::AsArray;
            b.column_by_name(name).map(|c| c.as_string::<i32>().iter().flatten().map(str::to_owned).collect()).unwrap_or_default()
        };
        for b in &batches {
            done.keys.extend(text(b, "key"));
            done.superseded.extend(text(b, "supersedes"));
        }
        store.ensure_exists().await?;
        done.version = store.upsert_batches(batches).await?;
        done.paths = staged;
        Ok(done)
    }

    /// Removes merged datasets.
    pub fn remove(&self, committed: &Committed) -> Result<()> {
        committed.paths.iter().try_for_each(|p| remove_dataset(p))
    }

    /// Removes temporary datasets left by shards that died while writing them.
    fn remove_abandoned(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        for e in entries.flatten() {
            let old = e.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok()).is_some_and(|age| age > ABANDONED_AFTER);
            if e.file_name().to_string_lossy().starts_with(TEMP_PREFIX) && old {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

fn remove_dataset(p: &Path) -> Result<()> {
    match std::fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        // A concurrent commit took it first: the rows are in the table either way.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(p, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(key: &str, error: Option<&str>) -> ResultRow {
        ResultRow { key: key.into(), input_id: key.into(), error: error.map(str::to_owned), attempts: 1, ..Default::default() }
    }

    #[test]
    fn a_key_staged_twice_is_stored_once_and_a_success_beats_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        crate::util::runtime(0).unwrap().block_on(async {
            let pending = PendingDir::new(dir.path().join("pending"));
            // Shard 0 (sorts first) failed the key; its duplicate, shard 1, did it.
            pending.write(&[row("aa", Some("boom")), row("bb", None)], "0/2", "r1", 1).await.unwrap();
            pending.write(&[row("aa", None)], "1/2", "r2", 1).await.unwrap();
            assert_eq!(pending.keys().await.unwrap().len(), 2);
            let store = ResultStore::new(dir.path().join("results.lance").display().to_string());
            let done = pending.commit_into(&store).await.unwrap();
            assert_eq!((done.staged, done.keys.len()), (2, 3));
            pending.remove(&done).unwrap();
            assert!(pending.list().unwrap().is_empty());
            let state = store.state().await.unwrap();
            assert!(state.failed.is_empty(), "{:?}", state.failed);
            assert_eq!(state.done.len(), 2);
            // Committing again (nothing staged) changes nothing.
            assert_eq!(pending.commit_into(&store).await.unwrap().version, None);
        });
    }
}
