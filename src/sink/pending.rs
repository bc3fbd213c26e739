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
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
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
            keys.extend(ResultStore::new(p.display().to_string()).keys().await?);
        }
        Ok(keys)
    }

    /// Merges every staged dataset into `store` as one version, then removes them. Returns the
    /// new version (None when nothing changed), the number of datasets taken and their keys.
    pub async fn commit_into(&self, store: &ResultStore) -> Result<(Option<u64>, usize, Vec<String>)> {
        self.remove_abandoned();
        let staged = self.list()?;
        if staged.is_empty() {
            return Ok((None, 0, Vec::new()));
        }
        let mut batches: Vec<RecordBatch> = Vec::new();
        for p in &staged {
            batches.extend(ResultStore::new(p.display().to_string()).read(None, None).await?);
        }
        let keys = batches
            .iter()
            .flat_map(|b| {
                use arrow_array::cast::AsArray;
                b.column_by_name("key").map(|c| c.as_string::<i32>().iter().flatten().map(str::to_owned).collect::<Vec<_>>()).unwrap_or_default()
            })
            .collect();
        store.ensure_exists().await?;
        let version = store.upsert_batches(batches).await?;
        // Merged: now the staged copies may go. A commit killed before this point merges them
        // again next time, which changes nothing.
        for p in &staged {
            remove_dataset(p)?;
        }
        Ok((version, staged.len(), keys))
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
