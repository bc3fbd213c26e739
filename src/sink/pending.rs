//! Shard results waiting for `commit`: each flush of a shard is a small Lance dataset of its
//! own under `pending/` (`pending-quarantine/` for quarantined rows), in the sink's directory
//! or its object store: shards on different machines need no shared filesystem. A dataset
//! counts once its manifest exists (Lance writes it last, atomically), so `commit` and shard
//! reruns only ever see whole ones. `commit` merges them into the table (idempotently on
//! `key`) and removes them only after the merge is committed, manifest first: a commit killed
//! at any moment, or racing a shard, or run twice, never stores a key twice and never loses one.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use arrow_array::RecordBatch;

use super::{to_batch, ResultRow, ResultStore};
use crate::error::{Error, Result};
use crate::objects::{is_uri, join, Location};
use crate::util::now_ms;

/// A dataset without a manifest whose newest file is older than this belongs to a shard that
/// died while writing it.
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
    pub uris: Vec<String>,
}

/// A directory (or object-store prefix) of staged shard results.
pub struct PendingDir {
    dir: String,
}

/// What is under the directory, by top-level name.
struct Entry {
    complete: bool,
    newest_ms: i64,
}

impl PendingDir {
    pub fn new(dir: impl Into<String>) -> Self {
        PendingDir { dir: dir.into() }
    }

    /// Stages rows as one new dataset named after the shard and run; `seq` numbers a run's flushes.
    pub async fn write(&self, rows: &[ResultRow], shard: &str, run_id: &str, seq: u64) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        if !is_uri(&self.dir) {
            std::fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        }
        let uri = join(&self.dir, &format!("shard-{}-{run_id}-{seq:06}.lance", shard.replace('/', "-of-")));
        let batch = to_batch(rows)?;
        let schema = batch.schema();
        let reader = arrow_array::RecordBatchIterator::new(vec![Ok(batch)], schema);
        lance::dataset::Dataset::write(reader, uri.as_str(), None).await.map_err(Error::lance(&uri))?;
        Ok(())
    }

    async fn entries(&self) -> Result<BTreeMap<String, Entry>> {
        let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
        for object in Location::open(&self.dir).await?.list().await? {
            let (top, rest) = object.name.split_once('/').unwrap_or((object.name.as_str(), ""));
            let e = entries.entry(top.to_string()).or_insert(Entry { complete: false, newest_ms: 0 });
            e.newest_ms = e.newest_ms.max(object.modified_ms);
            e.complete |= rest.starts_with("_versions/") && rest.ends_with(".manifest");
        }
        Ok(entries)
    }

    /// The complete staged datasets (their URIs or paths), oldest name first.
    pub async fn list(&self) -> Result<Vec<String>> {
        let entries = self.entries().await?;
        if let Some(old) = entries.keys().find(|n| n.ends_with(".txn")) {
            return Err(Error::Sink(format!(
                "{} holds shard results staged by an earlier version of gemma-batch ({old}); commit them with that \
                 version, or delete the directory to redo that work",
                self.dir
            )));
        }
        Ok(entries
            .into_iter()
            .filter(|(name, e)| e.complete && !name.starts_with('.') && name.ends_with(".lance"))
            .map(|(name, _)| join(&self.dir, &name))
            .collect())
    }

    /// Keys of every staged row (a shard rerun skips them).
    pub async fn keys(&self) -> Result<HashSet<String>> {
        let mut keys = HashSet::new();
        for uri in self.list().await? {
            match ResultStore::new(uri.clone()).keys().await {
                Ok(k) => keys.extend(k),
                // A commit merged and removed it while we read: its rows are in the table (at
                // worst this shard redoes them, and the merge stores them once).
                Err(_) if !has_manifest(&uri).await? => {}
                Err(e) => return Err(e),
            }
        }
        Ok(keys)
    }

    /// Merges every staged dataset into `store` as one version. They stay until [`Self::remove`]:
    /// a commit killed before that merges them again next time, which changes nothing.
    pub async fn commit_into(&self, store: &ResultStore) -> Result<Committed> {
        self.remove_abandoned().await?;
        let staged = self.list().await?;
        let mut done = Committed { staged: staged.len(), ..Committed::default() };
        if staged.is_empty() {
            return Ok(done);
        }
        // Good rows first: when shards staged one key twice (a duplicate shard), the merge keeps
        // the first, and a success must win over a failure.
        let mut batches: Vec<RecordBatch> = Vec::new();
        for filter in ["error IS NULL", "error IS NOT NULL"] {
            for uri in &staged {
                batches.extend(ResultStore::new(uri.clone()).read_where(None, None, Some(filter)).await?);
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
        done.uris = staged;
        Ok(done)
    }

    /// Removes merged datasets.
    pub async fn remove(&self, committed: &Committed) -> Result<()> {
        for uri in &committed.uris {
            remove_dataset(uri).await?;
        }
        Ok(())
    }

    /// Removes datasets left without a manifest by shards that died while writing them.
    async fn remove_abandoned(&self) -> Result<()> {
        let now = now_ms();
        for (name, e) in self.entries().await? {
            let age = Duration::from_millis(now.saturating_sub(e.newest_ms).max(0) as u64);
            if !e.complete && age > ABANDONED_AFTER {
                Location::open(&join(&self.dir, &name)).await?.remove_all().await?;
            }
        }
        Ok(())
    }
}

async fn has_manifest(uri: &str) -> Result<bool> {
    let versions = Location::open(uri).await?.child("_versions").list().await?;
    Ok(versions.iter().any(|o| o.name.ends_with(".manifest")))
}

/// Removes a staged dataset, its manifests first: from then on it is not listed, however far
/// the removal of the rest gets. A concurrent commit that took it first is not an error.
async fn remove_dataset(uri: &str) -> Result<()> {
    let dataset = Location::open(uri).await?;
    dataset.child("_versions").remove_all().await?;
    dataset.remove_all().await
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
            let pending = PendingDir::new(dir.path().join("pending").display().to_string());
            // Shard 0 (sorts first) failed the key; its duplicate, shard 1, did it.
            pending.write(&[row("aa", Some("boom")), row("bb", None)], "0/2", "r1", 1).await.unwrap();
            pending.write(&[row("aa", None)], "1/2", "r2", 1).await.unwrap();
            assert_eq!(pending.keys().await.unwrap().len(), 2);
            let store = ResultStore::new(dir.path().join("results.lance").display().to_string());
            let done = pending.commit_into(&store).await.unwrap();
            assert_eq!((done.staged, done.keys.len()), (2, 3));
            pending.remove(&done).await.unwrap();
            assert!(pending.list().await.unwrap().is_empty());
            assert!(std::fs::read_dir(dir.path().join("pending")).unwrap().next().is_none(), "removed whole");
            let state = store.state().await.unwrap();
            assert!(state.failed.is_empty(), "{:?}", state.failed);
            assert_eq!(state.done.len(), 2);
            // Committing again (nothing staged) changes nothing.
            assert_eq!(pending.commit_into(&store).await.unwrap().version, None);
        });
    }
}
