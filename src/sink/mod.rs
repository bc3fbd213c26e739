//! The result store: versioned Lance datasets with one current row per key and full
//! provenance.
//!
//! The commit protocol, in one place:
//! - Every write is a Lance `merge_insert` on `key` ([`ResultStore::upsert`]): a key already
//!   present is left alone (or, when the stored row failed, replaced by the new attempt), so
//!   no interleaving of runs, shards, retries and commits can store a key twice. Lance's own
//!   conflict detection on the table's primary key (`key`) makes concurrent writers safe.
//! - Shards stage their rows in datasets of their own under `pending/` ([`pending`]);
//!   `commit` merges them into the table as one version and only then removes them.
//! - A lease per scope ([`lease`]) keeps a second run of the same spec or shard from doing
//!   the work twice; it is a courtesy, not what keeps the table right.

pub mod export;
pub mod history;
pub mod lease;
pub mod pending;
mod results;
pub mod runs;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{BooleanBuilder, Float64Builder, StringBuilder, UInt32Builder};
use arrow_array::{ArrayRef, RecordBatch, TimestampMillisecondArray};
use arrow_schema::{DataType, Field, Schema, TimeUnit};

use crate::error::{Error, Result};

pub use results::{BatchStream, ResultStore, SinkState, STREAM_BATCH_ROWS};
pub use runs::{RunRecord, RunStore};

/// One output row. Field names are the dataset's column names.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ResultRow {
    /// Resume key: hash of (input content, task, prompt, model).
    pub key: String,
    pub input_id: String,
    pub content_hash: String,
    pub task: String,
    pub prompt_hash: String,
    pub prompt: String,
    pub output: Option<String>,
    pub finish_reason: Option<String>,
    pub prompt_tokens: Option<u32>,
    pub output_tokens: Option<u32>,
    /// From joining the running batch (prefill) to the last token.
    pub latency_ms: Option<f64>,
    /// For `extract` tasks: the parsed fields as JSON, and whether they matched the spec.
    pub extracted: Option<String>,
    pub extract_valid: Option<bool>,
    /// Every filter decision for the row, as a JSON array (null when no filter set ran).
    pub filter_decisions: Option<String>,
    /// The strongest filter action taken: pass, flag, modify, drop or quarantine.
    pub filter_outcome: Option<String>,
    /// Why a row was dropped or quarantined.
    pub filter_reason: Option<String>,
    pub error: Option<String>,
    /// How many runs have tried this key (1 for the first).
    pub attempts: u32,
    /// Every failure reason of this key so far, oldest first, as a JSON array (null if none).
    pub errors: Option<String>,
    /// The filter sets that screened the row: `stage=name@hash` for each stage, `;`-joined.
    pub filter_sets: Option<String>,
    pub run_id: String,
    pub backend: String,
    pub device: String,
    pub dtype: String,
    pub model_id: String,
    pub model_hash: String,
    pub shard: Option<String>,
    pub created_at_ms: i64,
    /// The key of a failed row this row replaces: the same row and task, whose content could
    /// not be read before and so had another key. It is deleted once this row is committed.
    pub supersedes: Option<String>,
    /// The input columns the spec keeps (`sink.keep_columns`), as one JSON object.
    pub input_columns: Option<String>,
    /// The policy filter's P("Yes") per category for everything it screened of the row, below
    /// threshold or not, as a JSON array of `{stage, item, scores}` (null when no policy
    /// filter screened it).
    pub policy_scores: Option<String>,
}

/// The columns of `results.lance` and `quarantine.lance`. `key` is the table's (unenforced)
/// primary key: Lance then checks concurrent merges for keys inserted twice.
pub fn result_schema() -> Arc<Schema> {
    let s = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
    let key = s("key", false)
        .with_metadata([("lance-schema:unenforced-primary-key".to_string(), "true".to_string())].into());
    Arc::new(Schema::new(vec![
        key,
        s("input_id", false),
        s("content_hash", false),
        s("task", false),
        s("prompt_hash", false),
        s("prompt", false),
        s("output", true),
        s("finish_reason", true),
        Field::new("prompt_tokens", DataType::UInt32, true),
        Field::new("output_tokens", DataType::UInt32, true),
        Field::new("latency_ms", DataType::Float64, true),
        s("extracted", true),
        Field::new("extract_valid", DataType::Boolean, true),
        s("filter_decisions", true),
        s("filter_outcome", true),
        s("filter_reason", true),
        s("error", true),
        Field::new("attempts", DataType::UInt32, false),
        s("errors", true),
        s("filter_sets", true),
        s("run_id", false),
        s("backend", false),
        s("device", false),
        s("dtype", false),
        s("model_id", false),
        s("model_hash", false),
        s("shard", true),
        s("supersedes", true),
        s("input_columns", true),
        s("policy_scores", true),
        Field::new("created_at", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), false),
    ]))
}

pub(crate) fn to_batch(rows: &[ResultRow]) -> Result<RecordBatch> {
    fn text<'a>(rows: &'a [ResultRow], f: impl Fn(&'a ResultRow) -> Option<&'a str>) -> ArrayRef {
        let mut b = StringBuilder::new();
        rows.iter().for_each(|r| b.append_option(f(r)));
        Arc::new(b.finish())
    }
    let mut prompt_tokens = UInt32Builder::new();
    let mut output_tokens = UInt32Builder::new();
    let mut latency = Float64Builder::new();
    let mut valid = BooleanBuilder::new();
    let mut attempts = UInt32Builder::new();
    for r in rows {
        attempts.append_value(r.attempts.max(1));
        prompt_tokens.append_option(r.prompt_tokens);
        output_tokens.append_option(r.output_tokens);
        latency.append_option(r.latency_ms);
        valid.append_option(r.extract_valid);
    }
    let columns: Vec<ArrayRef> = vec![
        text(rows, |r| Some(&r.key)),
        text(rows, |r| Some(&r.input_id)),
        text(rows, |r| Some(&r.content_hash)),
        text(rows, |r| Some(&r.task)),
        text(rows, |r| Some(&r.prompt_hash)),
        text(rows, |r| Some(&r.prompt)),
        text(rows, |r| r.output.as_deref()),
        text(rows, |r| r.finish_reason.as_deref()),
        Arc::new(prompt_tokens.finish()),
        Arc::new(output_tokens.finish()),
        Arc::new(latency.finish()),
        text(rows, |r| r.extracted.as_deref()),
        Arc::new(valid.finish()),
        text(rows, |r| r.filter_decisions.as_deref()),
        text(rows, |r| r.filter_outcome.as_deref()),
        text(rows, |r| r.filter_reason.as_deref()),
        text(rows, |r| r.error.as_deref()),
        Arc::new(attempts.finish()),
        text(rows, |r| r.errors.as_deref()),
        text(rows, |r| r.filter_sets.as_deref()),
        text(rows, |r| Some(&r.run_id)),
        text(rows, |r| Some(&r.backend)),
        text(rows, |r| Some(&r.device)),
        text(rows, |r| Some(&r.dtype)),
        text(rows, |r| Some(&r.model_id)),
        text(rows, |r| Some(&r.model_hash)),
        text(rows, |r| r.shard.as_deref()),
        text(rows, |r| r.supersedes.as_deref()),
        text(rows, |r| r.input_columns.as_deref()),
        text(rows, |r| r.policy_scores.as_deref()),
        Arc::new(TimestampMillisecondArray::from(rows.iter().map(|r| r.created_at_ms).collect::<Vec<_>>()).with_timezone("UTC")),
    ];
    RecordBatch::try_new(result_schema(), columns).map_err(Error::arrow("building a batch of result rows"))
}

/// Where a pipeline's outputs live: `DIR/results.lance`, `DIR/runs.lance`, `DIR/pending/`,
/// ... `DIR` is a local directory or an object-store URI (`s3://bucket/prefix`).
#[derive(Debug, Clone)]
pub struct SinkLayout {
    pub root: String,
}

impl SinkLayout {
    pub fn new(dir: &Path) -> Self {
        SinkLayout { root: dir.display().to_string() }
    }
    /// The sink's local directory; `None` when it is in an object store.
    pub fn local_dir(&self) -> Option<PathBuf> {
        (!crate::objects::is_uri(&self.root)).then(|| PathBuf::from(&self.root))
    }
    fn at(&self, name: &str) -> String {
        crate::objects::join(&self.root, name)
    }
    pub fn results(&self) -> String {
        self.at("results.lance")
    }
    pub fn runs(&self) -> String {
        self.at("runs.lance")
    }
    pub fn quarantine(&self) -> String {
        self.at("quarantine.lance")
    }
    pub fn pending(&self) -> String {
        self.at("pending")
    }
    pub fn pending_quarantine(&self) -> String {
        self.at("pending-quarantine")
    }
    /// Leases, one per scope (`run`, `shard-I-of-N`, `commit`).
    pub fn leases(&self) -> String {
        self.at("leases")
    }
}

/// Creates the empty table `uri` with `schema` unless it exists. One process creates it: Lance
/// lets a table's first commit (an overwrite) land over another creator's first commits, so
/// shards creating `runs.lance` together lost run records. The creator is elected with a
/// conditional put of `URI.creating` beside the table; the others wait for the table. A
/// marker older than a minute belongs to a creator that died, and is taken over.
pub(crate) async fn create_table_once(uri: &str, schema: Arc<Schema>) -> Result<()> {
    use lance::dataset::Dataset;
    let exists = |uri: String| async move {
        match Dataset::open(&uri).await {
            Ok(_) => Ok(true),
            Err(lance::Error::DatasetNotFound { .. }) | Err(lance::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(Error::lance(&uri)(e)),
        }
    };
    let marker = crate::objects::Location::open(&format!("{}.creating", uri.trim_end_matches('/'))).await?;
    loop {
        if exists(uri.to_string()).await? {
            return Ok(());
        }
        if marker.create(crate::util::now_ms().to_string().into_bytes()).await? {
            // Checked again: the last creator may have finished between the two steps.
            let created = match exists(uri.to_string()).await {
                Ok(true) => Ok(()),
                Ok(false) => {
                    let empty = arrow_array::RecordBatchIterator::new(vec![Ok(RecordBatch::new_empty(schema.clone()))], schema.clone());
                    Dataset::write(empty, uri, None).await.map(|_| ()).map_err(Error::lance(uri))
                }
                Err(e) => Err(e),
            };
            marker.delete().await?;
            return created;
        }
        let since: Option<i64> = marker.read(64, "the marker size").await.ok().and_then(|b| String::from_utf8_lossy(&b).trim().parse().ok());
        if since.is_some_and(|t| crate::util::now_ms() - t > 60_000) {
            marker.delete().await?;
            continue;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Lance record batches as one polars DataFrame (the column types our tables use).
pub fn to_polars(batches: &[RecordBatch]) -> Result<polars::prelude::DataFrame> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float64Type, TimestampMillisecondType, UInt32Type};
    use polars::prelude::{Column, DataFrame, NamedFrom, Series};
    let schema = match batches.first() {
        Some(b) => b.schema(),
        None => return Ok(DataFrame::empty()),
    };
    let mut columns = Vec::with_capacity(schema.fields().len());
    for (i, field) in schema.fields().iter().enumerate() {
        let name = field.name().as_str();
        let arrays: Vec<&ArrayRef> = batches.iter().map(|b| b.column(i)).collect();
        let series = match field.data_type() {
            DataType::Utf8 => {
                // Borrowed: one copy of the text (polars'), not two.
                let v: Vec<Option<&str>> = arrays.iter().flat_map(|a| a.as_string::<i32>().iter()).collect();
                Series::new(name.into(), v)
            }
            DataType::UInt32 => {
                let v: Vec<Option<u32>> = arrays.iter().flat_map(|a| a.as_primitive::<UInt32Type>().iter()).collect();
                Series::new(name.into(), v)
            }
            DataType::UInt64 => {
                let v: Vec<Option<u64>> =
                    arrays.iter().flat_map(|a| a.as_primitive::<arrow_array::types::UInt64Type>().iter()).collect();
                Series::new(name.into(), v)
            }
            DataType::Float64 => {
                let v: Vec<Option<f64>> = arrays.iter().flat_map(|a| a.as_primitive::<Float64Type>().iter()).collect();
                Series::new(name.into(), v)
            }
            DataType::Boolean => {
                let v: Vec<Option<bool>> = arrays.iter().flat_map(|a| a.as_boolean().iter()).collect();
                Series::new(name.into(), v)
            }
            DataType::Timestamp(TimeUnit::Millisecond, _) => {
                let v: Vec<Option<i64>> =
                    arrays.iter().flat_map(|a| a.as_primitive::<TimestampMillisecondType>().iter()).collect();
                Series::new(name.into(), v)
                    .cast(&polars::prelude::DataType::Datetime(polars::prelude::TimeUnit::Milliseconds, None))
                    .map_err(Error::polars(format!("column {name}")))?
            }
            other => return Err(Error::Sink(format!("column {name} has type {other}, which the export does not handle"))),
        };
        columns.push(Column::from(series));
    }
    DataFrame::new_infer_height(columns).map_err(Error::polars("joining result columns"))
}

