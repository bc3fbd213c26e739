//! The life of a results table: which run made each version ([`history`]), a tag per run
//! (`run-<run id>`, [`tag_run`]), and maintenance ([`compact`]): compaction of the small
//! fragments every commit leaves, and removal of old versions that never touches the latest
//! or a tagged one.

use std::collections::{BTreeMap, HashMap};

use arrow_array::cast::AsArray;
use arrow_array::types::TimestampMillisecondType;
use futures::TryStreamExt;
use lance::dataset::cleanup::CleanupPolicy;
use lance::dataset::optimize::{compact_files, CompactionOptions};
use lance::dataset::Dataset;

use super::{ResultStore, SinkLayout};
use crate::error::{Error, Result};

/// The tag a run puts on the last version it wrote.
pub fn run_tag(run_id: &str) -> String {
    format!("run-{run_id}")
}

/// Tags `version` of the table at `uri` for a run. A tag that already names that version is
/// fine (a retried tag); one naming another version is an error.
pub async fn tag_run(uri: &str, version: u64, run_id: &str) -> Result<()> {
    let Some(ds) = ResultStore::new(uri).open().await? else { return Ok(()) };
    let tag = run_tag(run_id);
    let err = Error::lance(uri);
    match ds.tags().get_version(&tag).await {
        Ok(v) if v == version => Ok(()),
        Ok(v) => Err(Error::Sink(format!("{uri}: tag {tag} already names version {v}, not {version}"))),
        Err(_) => ds.tags().create(&tag, version).await.map_err(err),
    }
}

/// A run as `runs.lance` recorded it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunInfo {
    pub run_id: String,
    pub name: String,
    /// The first 16 hex digits of the SHA-256 of the spec's text.
    pub spec_hash: String,
    pub started_ms: i64,
    pub ended_ms: i64,
    /// The run's counts (done, failed, skipped, ...) as it reported them.
    pub summary: serde_json::Value,
}

/// One version of the results table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VersionInfo {
    pub version: u64,
    pub timestamp_ms: i64,
    /// What made it: Append, Merge, Delete, Rewrite (compaction), ...
    pub operation: Option<String>,
    /// Live rows and fragments in this version.
    pub rows: Option<u64>,
    pub fragments: Option<u64>,
    pub tags: Vec<String>,
    /// The run that wrote it (None: the table's creation, maintenance, or a run not recorded).
    pub run_id: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct History {
    pub table: String,
    pub versions: Vec<VersionInfo>,
    /// Every recorded run, oldest first.
    pub runs: Vec<RunInfo>,
}

/// Reads every run record of `runs.lance` (none when it does not exist).
pub async fn read_runs(uri: &str) -> Result<Vec<RunInfo>> {
    let err = Error::lance(uri);
    let ds = match Dataset::open(uri).await {
        Ok(ds) => ds,
        Err(lance::Error::DatasetNotFound { .. }) | Err(lance::Error::NotFound { .. }) => return Ok(Vec::new()),
        Err(e) => return Err(err(e)),
    };
    let mut scan = ds.scan();
    scan.project(&["run_id", "name", "spec", "summary", "started_at", "ended_at"]).map_err(&err)?;
    let batches: Vec<arrow_array::RecordBatch> = scan.try_into_stream().await.map_err(&err)?.try_collect().await.map_err(&err)?;
    let mut runs = Vec::new();
    for b in &batches {
        let s = |i: usize| b.column(i).as_string::<i32>().clone();
        let (ids, names, specs, summaries) = (s(0), s(1), s(2), s(3));
        let (started, ended) = (b.column(4).as_primitive::<TimestampMillisecondType>(), b.column(5).as_primitive::<TimestampMillisecondType>());
        for i in 0..b.num_rows() {
            let mut spec_hash = crate::util::hash_text(&[specs.value(i)]);
            spec_hash.truncate(16); // ASCII hex
            runs.push(RunInfo {
                run_id: ids.value(i).to_string(),
                name: names.value(i).to_string(),
                spec_hash,
                started_ms: started.value(i),
                ended_ms: ended.value(i),
                summary: serde_json::from_str(summaries.value(i)).unwrap_or(serde_json::Value::Null),
            });
        }
    }
    runs.sort_by_key(|r| r.started_ms);
    Ok(runs)
}

/// The versions of a sink's results table, each with the run that wrote it, and the runs.
pub async fn history(layout: &SinkLayout) -> Result<History> {
    let uri = layout.results();
    let Some(ds) = ResultStore::new(&uri).open().await? else {
        return Err(Error::Sink(format!("{uri}: no results table (has this spec run?)")));
    };
    let err = Error::lance(&uri);
    let runs = read_runs(&layout.runs()).await?;
    // Which run wrote which version: each run lists its versions (older runs only their last).
    let mut by_version: HashMap<u64, String> = HashMap::new();
    for r in &runs {
        let listed = r.summary.get("versions").and_then(|v| v.as_array()).map(|a| a.iter().filter_map(|v| v.as_u64()).collect::<Vec<_>>());
        let versions = listed.unwrap_or_else(|| r.summary.get("version").and_then(|v| v.as_u64()).into_iter().collect());
        for v in versions {
            by_version.insert(v, r.run_id.clone());
        }
    }
    let mut tags: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for (name, t) in ds.tags().list().await.map_err(&err)? {
        tags.entry(t.version).or_default().push(name);
    }
    let mut versions = Vec::new();
    for v in ds.versions().await.map_err(&err)? {
        let number = |k: &str| v.metadata.get(k).and_then(|x| x.parse::<u64>().ok());
        let rows = number("total_data_file_rows").map(|r| r.saturating_sub(number("total_deletion_file_rows").unwrap_or(0)));
        // A version cleaned up by `compact` has no transaction file left to read.
        let operation = ds.read_transaction_by_version(v.version).await.ok().flatten().map(|t| t.operation.name().to_string());
        let mut t = tags.remove(&v.version).unwrap_or_default();
        t.sort();
        versions.push(VersionInfo {
            version: v.version,
            timestamp_ms: v.timestamp.timestamp_millis(),
            operation,
            rows,
            fragments: number("total_fragments"),
            tags: t,
            run_id: by_version.get(&v.version).cloned(),
        });
    }
    Ok(History { table: uri.clone(), versions, runs })
}

/// Which old versions `compact` removes. The latest version and tagged versions are always
/// kept.
#[derive(Debug, Clone, Copy)]
pub enum Retention {
    /// Keep every version.
    All,
    /// Keep the newest N versions (counting the one compaction makes).
    Versions(u64),
    /// Keep versions younger than this many days.
    Days(f64),
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TableMaintenance {
    pub table: String,
    pub fragments_before: usize,
    pub fragments_after: usize,
    pub versions_before: usize,
    pub versions_after: usize,
    pub versions_removed: u64,
    pub bytes_removed: u64,
}

/// Compacts a table's fragments and removes old versions as `retention` says. A table that
/// does not exist is left alone (None).
pub async fn compact(uri: &str, retention: Retention) -> Result<Option<TableMaintenance>> {
    let Some(mut ds) = ResultStore::new(uri).open().await? else { return Ok(None) };
    let err = Error::lance(uri);
    let mut report = TableMaintenance {
        table: uri.to_string(),
        fragments_before: ds.count_fragments(),
        versions_before: ds.versions().await.map_err(&err)?.len(),
        ..Default::default()
    };
    compact_files(&mut ds, CompactionOptions::default(), None).await.map_err(&err)?;
    let ds = ResultStore::new(uri).open().await?.ok_or_else(|| Error::Sink(format!("{uri}: vanished while compacting")))?;
    report.fragments_after = ds.count_fragments();
    let policy = match retention {
        Retention::All => None,
        Retention::Versions(n) => {
            let latest = ds.version_id();
            Some(CleanupPolicy { before_version: Some(latest.saturating_sub(n.max(1)) + 1), ..Default::default() })
        }
        Retention::Days(days) => {
            // The first version young enough to keep; versions are numbered in commit order.
            let cutoff = crate::util::now_ms() - (days * 86_400_000.0) as i64;
            let versions = ds.versions().await.map_err(&err)?;
            let first_kept = versions.iter().find(|v| v.timestamp.timestamp_millis() >= cutoff).map_or(ds.version_id(), |v| v.version);
            Some(CleanupPolicy { before_version: Some(first_kept), ..Default::default() })
        }
    };
    if let Some(mut policy) = policy {
        // Tagged versions are kept (runs tag theirs), not an error.
        policy.error_if_tagged_old_versions = false;
        let stats = lance::dataset::cleanup::cleanup_old_versions(&ds, policy).await.map_err(&err)?;
        report.versions_removed = stats.old_versions;
        report.bytes_removed = stats.bytes_removed;
    }
    report.versions_after = ds.versions().await.map_err(&err)?.len();
    Ok(Some(report))
}
