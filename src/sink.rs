//! The result store: a versioned Lance dataset with one row per (input row, task) and full
//! provenance. Every append is a commit, so every commit is a version users can read back.
//! Shards write fragments without committing; `commit` turns them into one version.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{BooleanBuilder, Float64Builder, StringBuilder, UInt32Builder};
use arrow_array::{ArrayRef, RecordBatch, RecordBatchIterator, StringArray, TimestampMillisecondArray};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use futures::TryStreamExt;
use lance::dataset::transaction::Transaction;
use lance::dataset::{CommitBuilder, Dataset, InsertBuilder, WriteMode, WriteParams};
use lance::table::format::pb;
use prost::Message;

use crate::error::{Error, Result};

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
    pub run_id: String,
    pub backend: String,
    pub device: String,
    pub dtype: String,
    pub model_id: String,
    pub model_hash: String,
    pub shard: Option<String>,
    pub created_at_ms: i64,
}

pub fn result_schema() -> Arc<Schema> {
    let s = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
    Arc::new(Schema::new(vec![
        s("key", false),
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
        s("run_id", false),
        s("backend", false),
        s("device", false),
        s("dtype", false),
        s("model_id", false),
        s("model_hash", false),
        s("shard", true),
        Field::new("created_at", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), false),
    ]))
}

fn to_batch(rows: &[ResultRow]) -> Result<RecordBatch> {
    fn text<'a>(rows: &'a [ResultRow], f: impl Fn(&'a ResultRow) -> Option<&'a str>) -> ArrayRef {
        let mut b = StringBuilder::new();
        rows.iter().for_each(|r| b.append_option(f(r)));
        Arc::new(b.finish())
    }
    let mut prompt_tokens = UInt32Builder::new();
    let mut output_tokens = UInt32Builder::new();
    let mut latency = Float64Builder::new();
    let mut valid = BooleanBuilder::new();
    for r in rows {
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
        text(rows, |r| Some(&r.run_id)),
        text(rows, |r| Some(&r.backend)),
        text(rows, |r| Some(&r.device)),
        text(rows, |r| Some(&r.dtype)),
        text(rows, |r| Some(&r.model_id)),
        text(rows, |r| Some(&r.model_hash)),
        text(rows, |r| r.shard.as_deref()),
        Arc::new(TimestampMillisecondArray::from(rows.iter().map(|r| r.created_at_ms).collect::<Vec<_>>()).with_timezone("UTC")),
    ];
    RecordBatch::try_new(result_schema(), columns).map_err(|e| Error::Sink(e.to_string()))
}

fn lance_err(uri: &str) -> impl Fn(lance::Error) -> Error + '_ {
    move |e| Error::Sink(format!("{uri}: {e}"))
}

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

    async fn open(&self) -> Result<Option<Dataset>> {
        match Dataset::open(&self.uri).await {
            Ok(ds) => Ok(Some(ds)),
            Err(lance::Error::DatasetNotFound { .. }) | Err(lance::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(lance_err(&self.uri)(e)),
        }
    }

    /// Creates the dataset (version 1, no rows) when it does not exist yet, so that shards
    /// and later runs always append.
    pub async fn ensure_exists(&self) -> Result<()> {
        if self.open().await?.is_none() {
            let schema = result_schema();
            let empty = RecordBatchIterator::new(vec![Ok(RecordBatch::new_empty(schema.clone()))], schema);
            if let Err(e) = Dataset::write(empty, self.uri.as_str(), None).await {
                // Shards start together: another process may have created it first.
                if self.open().await?.is_none() {
                    return Err(lance_err(&self.uri)(e));
                }
            }
        }
        Ok(())
    }

    /// Keys of every committed row (what a rerun skips).
    pub async fn done_keys(&self) -> Result<HashSet<String>> {
        let Some(ds) = self.open().await? else { return Ok(HashSet::new()) };
        let mut scan = ds.scan();
        scan.project(&["key"]).map_err(lance_err(&self.uri))?;
        let batches: Vec<RecordBatch> = scan
            .try_into_stream()
            .await
            .map_err(lance_err(&self.uri))?
            .try_collect()
            .await
            .map_err(lance_err(&self.uri))?;
        let mut keys = HashSet::new();
        for b in batches {
            let col = b.column(0).as_any().downcast_ref::<StringArray>().ok_or_else(|| Error::Sink("key column is not text".into()))?;
            keys.extend(col.iter().flatten().map(str::to_owned));
        }
        Ok(keys)
    }

    /// Appends rows as one commit; returns the new version.
    pub async fn append(&self, rows: &[ResultRow]) -> Result<u64> {
        let batch = to_batch(rows)?;
        let schema = batch.schema();
        let reader = RecordBatchIterator::new(vec![Ok(batch)], schema);
        let params = WriteParams { mode: WriteMode::Append, ..Default::default() };
        let ds = Dataset::write(reader, self.uri.as_str(), Some(params)).await.map_err(lance_err(&self.uri))?;
        Ok(ds.version_id())
    }

    /// Writes rows as data files without committing; returns the transaction to commit later.
    pub async fn write_uncommitted(&self, rows: &[ResultRow]) -> Result<Vec<u8>> {
        let batch = to_batch(rows)?;
        let params = WriteParams { mode: WriteMode::Append, ..Default::default() };
        let txn: Transaction = InsertBuilder::new(self.uri.as_str())
            .with_params(&params)
            .execute_uncommitted(vec![batch])
            .await
            .map_err(lance_err(&self.uri))?;
        Ok(pb::Transaction::try_from(&txn).map_err(lance_err(&self.uri))?.encode_to_vec())
    }

    /// Commits pending transactions (from shards) as one version.
    pub async fn commit_pending(&self, payloads: &[Vec<u8>]) -> Result<u64> {
        let txns = payloads
            .iter()
            .map(|b| {
                let p = pb::Transaction::decode(b.as_slice()).map_err(|e| Error::Sink(format!("pending transaction: {e}")))?;
                Transaction::try_from(p).map_err(lance_err(&self.uri))
            })
            .collect::<Result<Vec<_>>>()?;
        let result = CommitBuilder::new(self.uri.as_str()).execute_batch(txns).await.map_err(lance_err(&self.uri))?;
        Ok(result.dataset.version_id())
    }

    pub async fn version(&self) -> Result<Option<u64>> {
        Ok(self.open().await?.map(|d| d.version_id()))
    }

    /// All rows of a version (latest when None), as record batches.
    pub async fn read(&self, version: Option<u64>, columns: Option<&[&str]>) -> Result<Vec<RecordBatch>> {
        let Some(mut ds) = self.open().await? else { return Ok(Vec::new()) };
        if let Some(v) = version {
            ds = ds.checkout_version(v).await.map_err(lance_err(&self.uri))?;
        }
        let mut scan = ds.scan();
        if let Some(cols) = columns {
            scan.project(cols).map_err(lance_err(&self.uri))?;
        }
        scan.try_into_stream().await.map_err(lance_err(&self.uri))?.try_collect().await.map_err(lance_err(&self.uri))
    }
}

/// Where a pipeline's outputs live: `DIR/results.lance`, `DIR/runs.lance`, `DIR/pending/`.
#[derive(Debug, Clone)]
pub struct SinkLayout {
    pub dir: PathBuf,
}

impl SinkLayout {
    pub fn new(dir: &Path) -> Self {
        SinkLayout { dir: dir.to_path_buf() }
    }
    pub fn results(&self) -> String {
        self.dir.join("results.lance").display().to_string()
    }
    pub fn runs(&self) -> String {
        self.dir.join("runs.lance").display().to_string()
    }
    pub fn quarantine(&self) -> String {
        self.dir.join("quarantine.lance").display().to_string()
    }
    pub fn pending(&self) -> PathBuf {
        self.dir.join("pending")
    }
    pub fn pending_quarantine(&self) -> PathBuf {
        self.dir.join("pending-quarantine")
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
                let v: Vec<Option<String>> = arrays.iter().flat_map(|a| a.as_string::<i32>().iter().map(|x| x.map(str::to_owned))).collect();
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
                    .map_err(|e| Error::Sink(e.to_string()))?
            }
            other => return Err(Error::Sink(format!("column {name} has type {other}, which the export does not handle"))),
        };
        columns.push(Column::from(series));
    }
    DataFrame::new_infer_height(columns).map_err(|e| Error::Sink(e.to_string()))
}

/// One line per run in `runs.lance`: what ran, with which model, and what came of it.
#[derive(Debug, Clone)]
pub struct RunRecord {
    pub run_id: String,
    pub name: String,
    pub spec: String,
    pub provenance: String,
    pub summary: String,
    pub started_ms: i64,
    pub ended_ms: i64,
}

impl RunRecord {
    pub fn new(
        spec: &crate::spec::PipelineSpec,
        provenance: &serde_json::Value,
        summary: &crate::pipeline::RunSummary,
        started_ms: i64,
        ended_ms: i64,
    ) -> Self {
        RunRecord {
            run_id: summary.run_id.clone(),
            name: spec.name.clone(),
            spec: spec.text.clone(),
            provenance: provenance.to_string(),
            summary: serde_json::to_string(summary).unwrap_or_default(),
            started_ms,
            ended_ms,
        }
    }
}

pub struct RunStore {
    uri: String,
}

impl RunStore {
    pub fn new(uri: impl Into<String>) -> Self {
        RunStore { uri: uri.into() }
    }

    pub async fn append(&self, r: &RunRecord) -> Result<u64> {
        let ts = |name: &str| Field::new(name, DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), false);
        let schema = Arc::new(Schema::new(vec![
            Field::new("run_id", DataType::Utf8, false),
            Field::new("name", DataType::Utf8, false),
            Field::new("spec", DataType::Utf8, false),
            Field::new("provenance", DataType::Utf8, false),
            Field::new("summary", DataType::Utf8, false),
            ts("started_at"),
            ts("ended_at"),
        ]));
        let s = |v: &str| Arc::new(StringArray::from(vec![v.to_string()])) as ArrayRef;
        let t = |v: i64| Arc::new(TimestampMillisecondArray::from(vec![v]).with_timezone("UTC")) as ArrayRef;
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![s(&r.run_id), s(&r.name), s(&r.spec), s(&r.provenance), s(&r.summary), t(r.started_ms), t(r.ended_ms)],
        )
        .map_err(|e| Error::Sink(e.to_string()))?;
        let params = WriteParams { mode: WriteMode::Append, ..Default::default() };
        let ds = Dataset::write(RecordBatchIterator::new(vec![Ok(batch)], schema), self.uri.as_str(), Some(params))
            .await
            .map_err(lance_err(&self.uri))?;
        Ok(ds.version_id())
    }
}
