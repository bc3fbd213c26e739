//! A Lance table of result rows, written only through idempotent merges on `key`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::UInt32Type;
use arrow_array::{Array, RecordBatch};
use futures::{StreamExt, TryStreamExt};
use lance::dataset::{Dataset, MergeInsertBuilder, NewColumnTransform, WhenMatched, WhenNotMatched};

use super::{result_schema, to_batch, ResultRow};
use crate::error::{Error, Result};

/// What a table already holds, read once at the start of a run (reruns skip what is done and
/// retry what failed). Writes never rely on it being current: merges are idempotent.
#[derive(Debug, Default)]
pub struct SinkState {
    /// Keys with a good (or filtered) row.
    pub done: HashSet<String>,
    /// Keys whose row failed: attempts so far and every reason, oldest first.
    pub failed: HashMap<String, FailedKey>,
}

#[derive(Debug, Clone)]
pub struct FailedKey {
    pub input_id: String,
    pub attempts: u32,
    pub errors: Vec<String>,
}

/// Rows per batch of [`ResultStore::stream`].
pub const STREAM_BATCH_ROWS: usize = 8192;
/// Bytes of storage reads a stream holds ahead of what it returned.
const STREAM_IO_BUFFER_BYTES: u64 = 16 << 20;
/// Rows of data files one scan of [`ResultStore::stream`] reads (a file is not split).
pub const STREAM_GROUP_ROWS: usize = 65_536;
/// Bytes of file metadata (and index) a stream keeps cached.
const STREAM_CACHE_BYTES: usize = 8 << 20;

/// Record batches read from a table, one at a time.
pub type BatchStream = futures::stream::BoxStream<'static, Result<RecordBatch>>;

/// A Lance dataset of result rows.
pub struct ResultStore {
    uri: String,
}

impl ResultStore {
    pub fn new(uri: impl Into<String>) -> Self {
        ResultStore { uri: uri.into() }
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    pub(crate) async fn open(&self) -> Result<Option<Dataset>> {
        match Dataset::open(&self.uri).await {
            Ok(ds) => Ok(Some(ds)),
            Err(lance::Error::DatasetNotFound { .. }) | Err(lance::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(Error::lance(&self.uri)(e)),
        }
    }

    /// Creates the dataset (version 1, no rows) when it does not exist yet. A table written
    /// by an earlier version gets the columns added since (`attempts` 1, the others null) and
    /// `key` marked as its primary key.
    pub async fn ensure_exists(&self) -> Result<()> {
        let schema = result_schema();
        let err = Error::lance(&self.uri);
        super::create_table_once(&self.uri, schema.clone()).await?;
        let mut ds = self.open().await?.ok_or_else(|| Error::Sink(format!("{}: vanished right after it was created", self.uri)))?;
        let have = arrow_schema::Schema::from(ds.schema());
        let missing: Vec<&str> =
            schema.fields().iter().filter(|f| have.field_with_name(f.name()).is_err()).map(|f| f.name().as_str()).collect();
        if !missing.is_empty() {
            let added: Vec<(String, String)> = missing
                .iter()
                .filter_map(|&name| match name {
                    "attempts" => Some((name.to_string(), "CAST(1 AS INT UNSIGNED)".to_string())),
                    "errors" | "filter_sets" | "supersedes" | "input_columns" | "policy_scores" => Some((name.to_string(), "CAST(NULL AS STRING)".to_string())),
                    _ => None,
                })
                .collect();
            if added.len() < missing.len() {
                return Err(Error::Sink(format!(
                    "{} is not a results table of this program (it lacks the columns {}); point sink.dir elsewhere",
                    self.uri,
                    missing.join(", ")
                )));
            }
            ds.add_columns(NewColumnTransform::SqlExpressions(added), None, None).await.map_err(&err)?;
        }
        // Shards starting together all find the key unmarked and race to mark it: a commit
        // that loses is fine once another has marked it.
        let mut tries = 0;
        while ds.schema().unenforced_primary_key().is_empty() {
            let marked = async {
                ds.update_field_metadata().update("key", [("lance-schema:unenforced-primary-key:position", "1")])?.await
            }
            .await;
            match marked {
                Ok(_) => break,
                Err(_) if tries < 10 => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(20 * tries)).await;
                    ds = self.open().await?.ok_or_else(|| Error::Sink(format!("{}: vanished while it was being created", self.uri)))?;
                }
                Err(e) => return Err(err(e)),
            }
        }
        Ok(())
    }

    /// What the table holds: done keys and failed keys with their attempts and reasons.
    pub async fn state(&self) -> Result<SinkState> {
        let mut state = SinkState::default();
        let Some(ds) = self.open().await? else { return Ok(state) };
        let err = Error::lance(&self.uri);
        let mut scan = ds.scan();
        scan.project(&["key", "error", "attempts", "errors", "input_id"]).map_err(&err)?;
        let mut stream = scan.try_into_stream().await.map_err(&err)?;
        while let Some(b) = stream.try_next().await.map_err(&err)? {
            let (keys, error, attempts, errors, ids) = (
                b.column(0).as_string::<i32>(),
                b.column(1).as_string::<i32>(),
                b.column(2).as_primitive::<UInt32Type>(),
                b.column(3).as_string::<i32>(),
                b.column(4).as_string::<i32>(),
            );
            for i in 0..b.num_rows() {
                let key = keys.value(i).to_string();
                if error.is_null(i) {
                    state.done.insert(key);
                } else {
                    let errors = if errors.is_null(i) {
                        vec![error.value(i).to_string()]
                    } else {
                        serde_json::from_str(errors.value(i)).unwrap_or_else(|_| vec![error.value(i).to_string()])
                    };
                    state.failed.insert(key, FailedKey { input_id: ids.value(i).to_string(), attempts: attempts.value(i), errors });
                }
            }
        }
        Ok(state)
    }

    /// Keys of every row (what a shard rerun or a quarantine table counts as done).
    pub async fn keys(&self) -> Result<HashSet<String>> {
        let mut keys = HashSet::new();
        for b in self.read(None, Some(&["key"])).await? {
            keys.extend(b.column(0).as_string::<i32>().iter().flatten().map(str::to_owned));
        }
        Ok(keys)
    }

    /// Writes rows as one version, idempotently on `key`: a new key is inserted; a stored key
    /// is left as it is, unless its row failed, when the new row (a retry) replaces it.
    /// Duplicate keys among `rows` keep the first. Returns the version, or None when nothing
    /// was written.
    pub async fn upsert(&self, rows: &[ResultRow]) -> Result<Option<u64>> {
        if rows.is_empty() {
            return Ok(None);
        }
        self.upsert_batches(vec![to_batch(rows)?]).await
    }

    pub(crate) async fn upsert_batches(&self, batches: Vec<RecordBatch>) -> Result<Option<u64>> {
        if batches.iter().all(|b| b.num_rows() == 0) {
            return Ok(None);
        }
        let err = Error::lance(&self.uri);
        let ds = match self.open().await? {
            Some(ds) => ds,
            None => {
                self.ensure_exists().await?;
                self.open().await?.ok_or_else(|| Error::Sink(format!("{}: vanished after it was created", self.uri)))?
            }
        };
        let before = ds.version_id();
        let mut builder = MergeInsertBuilder::try_new(Arc::new(ds), vec!["key".to_string()]).map_err(&err)?;
        builder
            .when_matched(WhenMatched::UpdateIf("target.error IS NOT NULL".into()))
            .when_not_matched(WhenNotMatched::InsertAll)
            .source_dedupe_behavior(lance::dataset::write::merge_insert::SourceDedupeBehavior::FirstSeen)
            .conflict_retries(20);
        let job = builder.try_build().map_err(&err)?;
        let (ds, _stats) = job.execute_batches(batches).await.map_err(&err)?;
        Ok((ds.version_id() != before).then_some(ds.version_id()))
    }

    /// Deletes the failed rows of these keys (a key that a retry sent to another table).
    /// Returns the new version, or None when nothing changed.
    pub async fn delete_failed(&self, keys: &[String]) -> Result<Option<u64>> {
        if keys.is_empty() {
            return Ok(None);
        }
        let Some(mut ds) = self.open().await? else { return Ok(None) };
        // Keys are lowercase hex digests: nothing to escape, but refuse anything else.
        if let Some(bad) = keys.iter().find(|k| !k.chars().all(|c| c.is_ascii_hexdigit())) {
            return Err(Error::Sink(format!("refusing to delete by key {bad:?}: not a key this program writes")));
        }
        let before = ds.version_id();
        for chunk in keys.chunks(1000) {
            let list = chunk.iter().map(|k| format!("'{k}'")).collect::<Vec<_>>().join(", ");
            ds.delete(&format!("error IS NOT NULL AND key IN ({list})")).await.map_err(Error::lance(&self.uri))?;
        }
        Ok((ds.version_id() != before).then_some(ds.version_id()))
    }

    pub async fn version(&self) -> Result<Option<u64>> {
        Ok(self.open().await?.map(|d| d.version_id()))
    }

    /// The rows of the latest version as a stream of record batches of at most
    /// [`STREAM_BATCH_ROWS`] rows, so that reading a table of any size holds a few batches at
    /// a time: the data files are scanned a group of about [`STREAM_GROUP_ROWS`] rows after
    /// another (a scan keeps what it opened until it ends), with the read-ahead and the caches
    /// bounded. None when the table does not exist.
    pub async fn stream(&self, columns: Option<&[&str]>) -> Result<Option<BatchStream>> {
        if self.open().await?.is_none() {
            return Ok(None);
        }
        // Small caches: the default metadata cache (1 GiB) keeps every data file's metadata
        // read, and so grows with the table.
        let ds = lance::dataset::builder::DatasetBuilder::from_uri(&self.uri)
            .with_metadata_cache_size_bytes(STREAM_CACHE_BYTES)
            .with_index_cache_size_bytes(STREAM_CACHE_BYTES)
            .load()
            .await
            .map_err(Error::lance(&self.uri))?;
        let mut groups: Vec<Vec<lance::table::format::Fragment>> = Vec::new();
        let mut rows = usize::MAX;
        for f in ds.get_fragments() {
            let f = f.metadata().clone();
            let n = f.physical_rows.unwrap_or(STREAM_GROUP_ROWS);
            match groups.last_mut() {
                Some(g) if rows < STREAM_GROUP_ROWS => {
                    rows += n;
                    g.push(f);
                }
                _ => {
                    rows = n;
                    groups.push(vec![f]);
                }
            }
        }
        let ds = Arc::new(ds);
        let columns: Option<Vec<String>> = columns.map(|c| c.iter().map(|s| s.to_string()).collect());
        let uri = self.uri.clone();
        let stream = futures::stream::iter(groups)
            .then(move |group| {
                let (ds, columns, uri) = (ds.clone(), columns.clone(), uri.clone());
                async move {
                    let mut scan = ds.scan();
                    scan.with_fragments(group);
                    if let Some(cols) = &columns {
                        scan.project(cols).map_err(Error::lance(&uri))?;
                    }
                    scan.batch_size(STREAM_BATCH_ROWS).batch_readahead(2).fragment_readahead(1).io_buffer_size(STREAM_IO_BUFFER_BYTES);
                    let batches = scan.try_into_stream().await.map_err(Error::lance(&uri))?;
                    Ok::<_, Error>(batches.map(move |b| b.map_err(Error::lance(&uri))))
                }
            })
            .try_flatten();
        Ok(Some(stream.boxed()))
    }

    /// The table's columns (None when it does not exist).
    pub async fn schema(&self) -> Result<Option<Arc<arrow_schema::Schema>>> {
        Ok(self.open().await?.map(|ds| Arc::new(arrow_schema::Schema::from(ds.schema()))))
    }

    pub async fn has_column(&self, name: &str) -> Result<bool> {
        Ok(self.schema().await?.is_some_and(|s| s.field_with_name(name).is_ok()))
    }

    /// All rows of a version (latest when None), as record batches.
    pub async fn read(&self, version: Option<u64>, columns: Option<&[&str]>) -> Result<Vec<RecordBatch>> {
        self.read_where(version, columns, None).await
    }

    /// The rows matching a Lance SQL filter (all rows when None).
    pub async fn read_where(&self, version: Option<u64>, columns: Option<&[&str]>, filter: Option<&str>) -> Result<Vec<RecordBatch>> {
        let Some(mut ds) = self.open().await? else { return Ok(Vec::new()) };
        let err = Error::lance(&self.uri);
        if let Some(v) = version {
            ds = ds.checkout_version(v).await.map_err(&err)?;
        }
        let mut scan = ds.scan();
        if let Some(cols) = columns {
            scan.project(cols).map_err(&err)?;
        }
        if let Some(f) = filter {
            scan.filter(f).map_err(&err)?;
        }
        scan.try_into_stream().await.map_err(&err)?.try_collect().await.map_err(&err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(key: &str, error: Option<&str>) -> ResultRow {
        ResultRow { key: key.into(), input_id: key.into(), error: error.map(str::to_owned), attempts: 1, ..Default::default() }
    }

    #[test]
    fn merges_insert_once_replace_only_failed_rows_and_upgrade_old_tables() {
        let dir = tempfile::tempdir().unwrap();
        let rt = crate::util::runtime(0).unwrap();
        rt.block_on(async {
            // A table as an earlier version wrote it: no attempts/errors/filter_sets, no primary key.
            let uri = dir.path().join("old.lance").display().to_string();
            let full = to_batch(&[row("aa", None), row("bb", Some("missing image"))]).unwrap();
            let keep: Vec<usize> = (0..full.num_columns())
                .filter(|&i| !["attempts", "errors", "filter_sets", "supersedes", "input_columns", "policy_scores"].contains(&full.schema().field(i).name().as_str()))
                .collect();
            let old = full.project(&keep).unwrap();
            let plain = arrow_schema::Schema::new(old.schema().fields().iter().map(|f| f.as_ref().clone().with_metadata(Default::default())).collect::<Vec<_>>());
            let old = RecordBatch::try_new(Arc::new(plain), old.columns().to_vec()).unwrap();
            let reader = arrow_array::RecordBatchIterator::new(vec![Ok(old.clone())], old.schema());
            Dataset::write(reader, uri.as_str(), None).await.unwrap();

            let store = ResultStore::new(&uri);
            store.ensure_exists().await.unwrap();
            let ds = store.open().await.unwrap().unwrap();
            assert_eq!(ds.schema().unenforced_primary_key().len(), 1);
            let state = store.state().await.unwrap();
            assert!(state.done.contains("aa"));
            assert_eq!(state.failed["bb"].attempts, 1);

            // Same keys again: the good row stays, the failed one is replaced, a new one added.
            store.upsert(&[row("aa", Some("should not replace")), row("bb", None), row("cc", None), row("cc", None)]).await.unwrap();
            let state = store.state().await.unwrap();
            assert_eq!(state.done, ["aa", "bb", "cc"].into_iter().map(String::from).collect());
            assert!(state.failed.is_empty());
            assert_eq!(store.keys().await.unwrap().len(), 3);
            let rows: usize = store.read(None, Some(&["key"])).await.unwrap().iter().map(|b| b.num_rows()).sum();
            assert_eq!(rows, 3, "one row per key");
        });
    }
}
