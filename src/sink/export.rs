//! Parquet, JSON lines and OpenAI batch exports of a results table, streamed: the table is
//! scanned a batch of rows at a time and each batch is written out before the next is read
//! (Parquet: a row group at a time), so memory does not grow with the table. Each export is
//! written to a temporary file beside its target and renamed over it when complete, so a
//! reader (or a crash, or an overlapping run) never sees a truncated file. Parquet row groups
//! are [`PARQUET_ROW_GROUP_ROWS`] rows however small the table's commits were.
//!
//! Kept input columns (`sink.keep_columns`, stored as one JSON object a row) become columns
//! of their own in the exports, named as in the source (`input_NAME` where a result column
//! has the name). Parquet needs one type per column: a first pass over that one column finds
//! it (booleans, integers, floats, text, lists of them; mixed or nested values as JSON text).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{TimestampMillisecondType, UInt32Type};
use arrow_array::{Array, RecordBatch};
use futures::TryStreamExt;
use polars::prelude::{DataFrame, DataType as PlType, IntoColumn, JsonFormat, JsonWriter, NamedFrom, ParquetWriter, SerWriter, Series};
use serde_json::{json, Value};

use super::{to_polars, ResultStore};
use crate::error::{Error, Result};
use crate::source::{DUPLICATE_CUSTOM_ID, INVALID_REQUEST};

/// The column holding kept input columns.
const KEPT: &str = "input_columns";
/// Rows of a Parquet row group (fewer in the last one). Small groups keep what is held at once
/// small; polars' writer keeps some 100 KB of metadata per group until the file is finished
/// (about 16 MB per million rows at this size).
pub const PARQUET_ROW_GROUP_ROWS: usize = 8192;

/// Writes the latest rows of `store` to each path given.
pub async fn export(store: &ResultStore, parquet: Option<&Path>, jsonl: Option<&Path>) -> Result<()> {
    if let Some(path) = parquet {
        export_parquet(store, path).await?;
    }
    if let Some(path) = jsonl {
        export_jsonl(store, path).await?;
    }
    Ok(())
}

/// A file written under a temporary name in its target's directory and renamed over the
/// target by [`commit`](AtomicFile::commit); dropped uncommitted, it is removed. A target in an
/// object store (`s3://bucket/results.parquet`) is written to the local temporary directory and
/// uploaded by the commit: the object appears whole or not at all.
pub struct AtomicFile {
    tmp: PathBuf,
    path: PathBuf,
    /// The object-store URI the commit uploads to.
    remote: Option<String>,
    file: Option<std::fs::File>,
}

impl AtomicFile {
    pub fn create(path: &Path) -> Result<AtomicFile> {
        let target = path.display().to_string();
        let remote = crate::objects::is_uri(&target).then_some(target);
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "export".into());
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp_name = format!(".{name}.{}.{}.{seq}.tmp", std::process::id(), crate::util::now_ms());
        let tmp = if remote.is_some() {
            std::env::temp_dir().join(tmp_name)
        } else {
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
            // An export into a directory that does not exist yet (`jsonl = "out/results.jsonl"`)
            // must not fail after the whole run's work is committed.
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            dir.join(tmp_name)
        };
        let file = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        Ok(AtomicFile { tmp, path: path.to_path_buf(), remote, file: Some(file) })
    }

    pub fn file(&mut self) -> &mut std::fs::File {
        self.file.as_mut().expect("open until committed")
    }

    /// Where the data goes until the commit (for messages).
    pub fn tmp_path(&self) -> &Path {
        &self.tmp
    }

    /// Syncs the file and renames it over the target (or uploads it).
    pub fn commit(mut self) -> Result<()> {
        let file = self.file.take().expect("open until committed");
        file.sync_all().map_err(|e| Error::io(&self.tmp, e))?;
        drop(file);
        match self.remote.take() {
            Some(uri) => {
                let tmp = self.tmp.clone();
                crate::objects::block_on(async move { crate::objects::Location::open(&uri).await?.upload(&tmp).await })?;
                let _ = std::fs::remove_file(&self.tmp);
            }
            None => std::fs::rename(&self.tmp, &self.path).map_err(|e| Error::io(&self.path, e))?,
        }
        self.tmp = PathBuf::new();
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Calls `write` on a temporary file in `path`'s directory, syncs it and renames it to `path`.
/// On failure the temporary file is removed and `path` is untouched.
pub fn write_atomically(path: &Path, write: impl FnOnce(&mut std::fs::File) -> Result<()>) -> Result<()> {
    let mut f = AtomicFile::create(path)?;
    write(f.file())?;
    f.commit()
}

/// The name a kept column gets in an export: its own, or with `input_` in front while a
/// result column has it.
fn export_name(name: &str, result_columns: &[String]) -> String {
    let mut n = name.to_string();
    while result_columns.iter().any(|c| *c == n) {
        n = format!("input_{n}");
    }
    n
}

/// The kept columns of each row of a batch (None: the row keeps none).
fn kept_values(batch: &RecordBatch) -> Vec<Option<serde_json::Map<String, Value>>> {
    let Some(col) = batch.column_by_name(KEPT) else { return vec![None; batch.num_rows()] };
    let text = col.as_string::<i32>();
    (0..batch.num_rows())
        .map(|i| match text.is_null(i) {
            true => None,
            false => match serde_json::from_str(text.value(i)) {
                Ok(Value::Object(m)) => Some(m),
                _ => None,
            },
        })
        .collect()
}

/// Batches without the kept-columns column, as one polars frame (one chunk a column).
fn result_frame(batches: &[RecordBatch]) -> Result<DataFrame> {
    let projected = batches
        .iter()
        .map(|b| {
            let keep: Vec<usize> = (0..b.num_columns()).filter(|&i| b.schema().field(i).name() != KEPT).collect();
            b.project(&keep).map_err(Error::arrow("projecting a batch of results"))
        })
        .collect::<Result<Vec<_>>>()?;
    to_polars(&projected)
}

fn result_columns(batch: &RecordBatch) -> Vec<String> {
    batch.schema().fields().iter().map(|f| f.name().clone()).collect()
}

async fn export_jsonl(store: &ResultStore, path: &Path) -> Result<()> {
    let mut out = AtomicFile::create(path)?;
    let werr = |e: std::io::Error| Error::io(path, e);
    {
        let mut w = std::io::BufWriter::with_capacity(1 << 20, out.file());
        if let Some(mut stream) = store.stream(None).await? {
            let mut buf = Vec::new();
            while let Some(batch) = stream.try_next().await? {
                let kept = kept_values(&batch);
                let names = result_columns(&batch);
                let mut df = result_frame(std::slice::from_ref(&batch))?;
                buf.clear();
                JsonWriter::new(&mut buf)
                    .with_json_format(JsonFormat::JsonLines)
                    .finish(&mut df)
                    .map_err(Error::polars(format!("writing {}", path.display())))?;
                let lines = buf.split(|&b| b == b'\n').filter(|l| !l.is_empty());
                for (line, kept) in lines.zip(kept) {
                    match kept.filter(|k| !k.is_empty()) {
                        None => w.write_all(line).map_err(werr)?,
                        Some(k) => {
                            // `{...}` -> `{..., "name": value, ...}`
                            let body = line.strip_suffix(b"}").unwrap_or(line);
                            w.write_all(body).map_err(werr)?;
                            for (name, value) in k {
                                let entry = format!(",{}:{}", Value::String(export_name(&name, &names)), value);
                                w.write_all(entry.as_bytes()).map_err(werr)?;
                            }
                            w.write_all(b"}").map_err(werr)?;
                        }
                    }
                    w.write_all(b"\n").map_err(werr)?;
                }
            }
        }
        w.flush().map_err(werr)?;
    }
    out.commit()
}

/// The type a kept column's values share, for a Parquet column.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Scalar {
    Null,
    Bool,
    Int,
    Float,
    Text,
    /// Objects, nested lists, or values of mixed kinds: JSON text.
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum KeptType {
    Scalar(Scalar),
    List(Scalar),
}

fn scalar_of(v: &Value) -> Scalar {
    match v {
        Value::Null => Scalar::Null,
        Value::Bool(_) => Scalar::Bool,
        Value::Number(n) if n.is_i64() => Scalar::Int,
        Value::Number(_) => Scalar::Float,
        Value::String(_) => Scalar::Text,
        Value::Array(_) | Value::Object(_) => Scalar::Json,
    }
}

fn merge_scalar(a: Scalar, b: Scalar) -> Scalar {
    use Scalar::*;
    match (a, b) {
        (Null, x) | (x, Null) => x,
        (x, y) if x == y => x,
        (Int, Float) | (Float, Int) => Float,
        (Json, _) | (_, Json) => Json,
        _ => Text,
    }
}

fn merge_type(t: KeptType, v: &Value) -> KeptType {
    match (t, v) {
        (t, Value::Null) => t,
        (KeptType::Scalar(Scalar::Null), Value::Array(items)) => {
            KeptType::List(items.iter().map(scalar_of).fold(Scalar::Null, merge_scalar))
        }
        (KeptType::List(k), Value::Array(items)) => KeptType::List(items.iter().map(scalar_of).fold(k, merge_scalar)),
        (KeptType::List(_), _) => KeptType::Scalar(Scalar::Json),
        (KeptType::Scalar(s), Value::Array(_)) => KeptType::Scalar(if s == Scalar::Null { Scalar::Json } else { merge_scalar(s, Scalar::Json) }),
        (KeptType::Scalar(s), v) => KeptType::Scalar(merge_scalar(s, scalar_of(v))),
    }
}

fn scalar_dtype(s: Scalar) -> PlType {
    match s {
        Scalar::Bool => PlType::Boolean,
        Scalar::Int => PlType::Int64,
        Scalar::Float => PlType::Float64,
        Scalar::Null | Scalar::Text | Scalar::Json => PlType::String,
    }
}

fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// One kept column of a batch as a series of the column's type.
fn scalar_series(name: &str, s: Scalar, values: &[&Value]) -> Series {
    let name = name.into();
    match s {
        Scalar::Bool => Series::new(name, values.iter().map(|v| v.as_bool()).collect::<Vec<_>>()),
        Scalar::Int => Series::new(name, values.iter().map(|v| v.as_i64()).collect::<Vec<_>>()),
        Scalar::Float => Series::new(name, values.iter().map(|v| v.as_f64()).collect::<Vec<_>>()),
        Scalar::Null | Scalar::Text | Scalar::Json => Series::new(name, values.iter().map(|v| text_of(v)).collect::<Vec<_>>()),
    }
}

fn kept_series(name: &str, t: KeptType, values: &[&Value]) -> Result<Series> {
    Ok(match t {
        KeptType::Scalar(s) => scalar_series(name, s, values),
        KeptType::List(k) => {
            let lists: Vec<Option<Series>> = values
                .iter()
                .map(|v| match v {
                    Value::Array(items) => Some(scalar_series("", k, &items.iter().collect::<Vec<_>>())),
                    _ => None,
                })
                .collect();
            Series::new(name.into(), lists)
                .cast(&PlType::List(Box::new(scalar_dtype(k))))
                .map_err(Error::polars(format!("kept column {name}")))?
        }
    })
}

/// The kept columns of the table and their types, in order of first appearance.
async fn kept_types(store: &ResultStore) -> Result<Vec<(String, KeptType)>> {
    let mut types: Vec<(String, KeptType)> = Vec::new();
    let Some(mut stream) = store.stream(Some(&[KEPT])).await? else { return Ok(types) };
    while let Some(batch) = stream.try_next().await? {
        for k in kept_values(&batch).into_iter().flatten() {
            for (name, v) in k {
                match types.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, t)) => *t = merge_type(*t, &v),
                    None => types.push((name, merge_type(KeptType::Scalar(Scalar::Null), &v))),
                }
            }
        }
    }
    Ok(types)
}

async fn export_parquet(store: &ResultStore, path: &Path) -> Result<()> {
    let kept = if store.has_column(KEPT).await? { kept_types(store).await? } else { Vec::new() };
    let mut out = AtomicFile::create(path)?;
    let perr = || Error::polars(format!("writing {}", path.display()));
    let mut writer = None;
    let mut empty_schema = None;
    // Batches of a row group: a table written in small commits reads in small batches, and the
    // writer keeps some metadata for every row group until it finishes.
    let mut group: Vec<RecordBatch> = Vec::new();
    let mut rows = 0;
    let mut stream = store.stream(None).await?;
    loop {
        let next = match &mut stream {
            Some(s) => s.try_next().await?,
            None => None,
        };
        let flush = match &next {
            Some(b) if b.num_rows() == 0 => {
                empty_schema.get_or_insert(b.schema());
                continue;
            }
            Some(b) => {
                rows += b.num_rows();
                group.push(b.clone());
                rows >= PARQUET_ROW_GROUP_ROWS
            }
            None => !group.is_empty(),
        };
        if flush {
            let df = with_kept(&group, &kept)?;
            group.clear();
            rows = 0;
            if writer.is_none() {
                writer = Some(ParquetWriter::new(&mut *out.file()).batched(df.schema()).map_err(perr())?);
            }
            writer.as_mut().expect("set above").write_batch(&df).map_err(perr())?;
        }
        if next.is_none() {
            break;
        }
    }
    match writer {
        Some(w) => {
            w.finish().map_err(perr())?;
        }
        None => {
            // No rows: the columns still.
            let schema = match empty_schema {
                Some(s) => s,
                None => store.schema().await?.unwrap_or_else(super::result_schema),
            };
            let mut df = with_kept(&[RecordBatch::new_empty(schema)], &kept)?;
            ParquetWriter::new(&mut *out.file()).finish(&mut df).map_err(perr())?;
        }
    }
    out.commit()
}

/// Batches as one polars frame with the kept columns as columns of their own.
fn with_kept(batches: &[RecordBatch], kept: &[(String, KeptType)]) -> Result<DataFrame> {
    let mut df = result_frame(batches)?;
    if df.width() == 0 || kept.is_empty() {
        return Ok(df);
    }
    let names = batches.first().map(result_columns).unwrap_or_default();
    let rows: Vec<Option<serde_json::Map<String, Value>>> = batches.iter().flat_map(kept_values).collect();
    let null = Value::Null;
    for (name, t) in kept {
        let values: Vec<&Value> = rows.iter().map(|r| r.as_ref().and_then(|m| m.get(name)).unwrap_or(&null)).collect();
        let series = kept_series(&export_name(name, &names), *t, &values)?;
        df.with_column(series.into_column()).map_err(Error::polars(format!("kept column {name}")))?;
    }
    Ok(df)
}

/// What an OpenAI batch export wrote.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct OpenaiExport {
    pub path: String,
    /// Lines written: one per request.
    pub lines: u64,
    /// Lines with a response (status 200).
    pub responses: u64,
    /// Lines with an error.
    pub errors: u64,
}

/// The error code of an OpenAI output line for a stored error.
fn error_code(error: &str) -> &'static str {
    if error.contains(&format!(": {INVALID_REQUEST}: ")) {
        "invalid_request"
    } else if error.contains(&format!(": {DUPLICATE_CUSTOM_ID} ")) {
        "duplicate_custom_id"
    } else if error.contains("in the model's context") {
        "context_length_exceeded"
    } else {
        "processing_error"
    }
}

fn key_bits(key: &str) -> Option<u128> {
    key.get(..32).and_then(|h| u128::from_str_radix(h, 16).ok())
}

/// Writes one line per item in the OpenAI Batch API output layout: `{"id", "custom_id",
/// "response": {"status_code": 200, "request_id", "body": chat.completion}, "error": null}`,
/// or `"response": null` and `"error": {"code", "message"}` for a row that failed
/// (`invalid_request`, `duplicate_custom_id`, `context_length_exceeded`, `processing_error`),
/// that a filter dropped (`content_filter`) or quarantined (`quarantined`). `items` are the
/// (input id, key) pairs of the configuration exported: rows of other configurations in the
/// tables are left out, and an item with no row in either table (not run yet) is a
/// `not_processed` error line. Lines follow the table's order, not the request file's; match
/// them by `custom_id`.
pub async fn export_openai_batch(results: &ResultStore, quarantine: &ResultStore, path: &Path, items: &[(String, String)]) -> Result<OpenaiExport> {
    // Key -> (index of its first item, written yet).
    let mut wanted: HashMap<u128, (usize, bool)> = HashMap::with_capacity(items.len());
    for (i, (_, key)) in items.iter().enumerate() {
        if let Some(bits) = key_bits(key) {
            wanted.entry(bits).or_insert((i, false));
        }
    }
    let mut out = AtomicFile::create(path)?;
    let mut counts = OpenaiExport { path: path.display().to_string(), ..Default::default() };
    let werr = |e: std::io::Error| Error::io(path, e);
    {
        let mut w = std::io::BufWriter::with_capacity(1 << 20, out.file());
        for (store, quarantined) in [(results, false), (quarantine, true)] {
            let Some(mut stream) = store.stream(Some(&OPENAI_COLUMNS)).await? else { continue };
            while let Some(batch) = stream.try_next().await? {
                let rows = OpenaiRows::new(&batch);
                for i in 0..batch.num_rows() {
                    let Some(entry) = key_bits(rows.key.value(i)).and_then(|b| wanted.get_mut(&b)) else { continue };
                    if entry.1 {
                        continue;
                    }
                    entry.1 = true;
                    let line = rows.line(i, quarantined);
                    if line["error"].is_null() {
                        counts.responses += 1;
                    } else {
                        counts.errors += 1;
                    }
                    counts.lines += 1;
                    writeln!(w, "{line}").map_err(werr)?;
                }
            }
        }
        let mut missing: Vec<usize> = wanted.values().filter(|(_, done)| !done).map(|(i, _)| *i).collect();
        missing.sort_unstable();
        for i in missing {
            let (input_id, key) = &items[i];
            let line = json!({
                "id": format!("batch_req_{}", key.get(..32).unwrap_or(key)),
                "custom_id": input_id,
                "response": null,
                "error": {"code": "not_processed", "message": "no result is stored for this request yet (the run stopped before it); run again"},
            });
            counts.lines += 1;
            counts.errors += 1;
            writeln!(w, "{line}").map_err(werr)?;
        }
        w.flush().map_err(werr)?;
    }
    out.commit()?;
    Ok(counts)
}

const OPENAI_COLUMNS: [&str; 13] = [
    "key", "input_id", "output", "finish_reason", "prompt_tokens", "output_tokens", "filter_outcome", "filter_reason", "error",
    "model_id", "model_hash", "created_at", KEPT,
];

/// The columns of a batch an OpenAI line is made from.
struct OpenaiRows<'a> {
    key: &'a arrow_array::StringArray,
    input_id: &'a arrow_array::StringArray,
    output: &'a arrow_array::StringArray,
    finish_reason: &'a arrow_array::StringArray,
    prompt_tokens: &'a arrow_array::UInt32Array,
    output_tokens: &'a arrow_array::UInt32Array,
    filter_outcome: &'a arrow_array::StringArray,
    filter_reason: &'a arrow_array::StringArray,
    error: &'a arrow_array::StringArray,
    model_id: &'a arrow_array::StringArray,
    model_hash: &'a arrow_array::StringArray,
    created: &'a arrow_array::TimestampMillisecondArray,
    kept: Vec<Option<serde_json::Map<String, Value>>>,
}

impl<'a> OpenaiRows<'a> {
    fn new(b: &'a RecordBatch) -> Self {
        let s = |i: usize| b.column(i).as_string::<i32>();
        OpenaiRows {
            key: s(0),
            input_id: s(1),
            output: s(2),
            finish_reason: s(3),
            prompt_tokens: b.column(4).as_primitive::<UInt32Type>(),
            output_tokens: b.column(5).as_primitive::<UInt32Type>(),
            filter_outcome: s(6),
            filter_reason: s(7),
            error: s(8),
            model_id: s(9),
            model_hash: s(10),
            created: b.column(11).as_primitive::<TimestampMillisecondType>(),
            kept: kept_values(b),
        }
    }

    fn text(a: &arrow_array::StringArray, i: usize) -> Option<&str> {
        (!a.is_null(i)).then(|| a.value(i))
    }

    fn line(&self, i: usize, quarantined: bool) -> Value {
        let key = self.key.value(i);
        let kept = self.kept[i].as_ref();
        let custom_id = match kept.and_then(|k| k.get("custom_id")) {
            Some(v) => v.clone(),
            None => Value::String(self.input_id.value(i).to_string()),
        };
        let id = format!("batch_req_{}", key.get(..32).unwrap_or(key));
        let reason = Self::text(self.filter_reason, i).unwrap_or("a filter fired");
        let error = if let Some(e) = Self::text(self.error, i) {
            Some((error_code(e), e.to_string()))
        } else if quarantined {
            Some(("quarantined", format!("quarantined by the filters: {reason}")))
        } else if Self::text(self.filter_outcome, i) == Some("drop") {
            Some(("content_filter", format!("dropped by the filters: {reason}")))
        } else {
            None
        };
        if let Some((code, message)) = error {
            return json!({"id": id, "custom_id": custom_id, "response": null, "error": {"code": code, "message": message}});
        }
        let model = match kept.and_then(|k| k.get("model")) {
            Some(Value::String(m)) if !m.is_empty() => m.clone(),
            _ => self.model_id.value(i).to_string(),
        };
        let prompt_tokens = (!self.prompt_tokens.is_null(i)).then(|| self.prompt_tokens.value(i)).unwrap_or(0);
        let completion_tokens = (!self.output_tokens.is_null(i)).then(|| self.output_tokens.value(i)).unwrap_or(0);
        let hash = self.model_hash.value(i);
        json!({
            "id": id,
            "custom_id": custom_id,
            "response": {
                "status_code": 200,
                "request_id": format!("req_{}", key.get(32..64).unwrap_or(key)),
                "body": {
                    "id": format!("chatcmpl-{}", key.get(..32).unwrap_or(key)),
                    "object": "chat.completion",
                    "created": self.created.value(i) / 1000,
                    "model": model,
                    "choices": [{
                        "index": 0,
                        "message": {"role": "assistant", "content": Self::text(self.output, i).unwrap_or("")},
                        "logprobs": null,
                        "finish_reason": Self::text(self.finish_reason, i).unwrap_or("stop"),
                    }],
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": completion_tokens,
                        "total_tokens": u64::from(prompt_tokens) + u64::from(completion_tokens),
                    },
                    "system_fingerprint": format!("gemma-batch-{}", hash.get(..12).unwrap_or(hash)),
                },
            },
            "error": null,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::ResultRow;

    fn row(key: &str, kept: Option<Value>) -> ResultRow {
        ResultRow {
            key: key.into(),
            input_id: format!("id-{key}"),
            output: Some(format!("out {key}")),
            attempts: 1,
            input_columns: kept.map(|v| v.to_string()),
            ..Default::default()
        }
    }

    fn read_parquet(path: &Path) -> DataFrame {
        use polars::prelude::SerReader;
        polars::prelude::ParquetReader::new(std::fs::File::open(path).unwrap()).finish().unwrap()
    }

    #[test]
    fn kept_columns_become_columns_of_both_exports() {
        let dir = tempfile::tempdir().unwrap();
        let rt = crate::util::runtime(0).unwrap();
        let store = ResultStore::new(dir.path().join("r.lance").display().to_string());
        rt.block_on(async {
            store.ensure_exists().await.unwrap();
            store
                .upsert(&[
                    row("aa", Some(json!({"question": "Q1?", "answers": ["x", "y"], "n": 1, "prompt": "p1", "meta": {"a": 1}}))),
                    row("bb", Some(json!({"question": "Q2?", "answers": [], "n": 2.5, "prompt": null, "meta": "m"}))),
                    row("cc", None),
                ])
                .await
                .unwrap();
            let (pq, jl) = (dir.path().join("r.parquet"), dir.path().join("r.jsonl"));
            export(&store, Some(&pq), Some(&jl)).await.unwrap();
            let df = read_parquet(&pq);
            assert_eq!(df.height(), 3);
            assert!(df.column(KEPT).is_err(), "the JSON column is expanded");
            assert_eq!(df.column("question").unwrap().dtype(), &PlType::String);
            assert_eq!(df.column("answers").unwrap().dtype(), &PlType::List(Box::new(PlType::String)));
            assert_eq!(df.column("n").unwrap().dtype(), &PlType::Float64, "ints and floats: floats");
            assert_eq!(df.column("meta").unwrap().dtype(), &PlType::String, "mixed kinds: JSON text");
            assert_eq!(df.column("input_prompt").unwrap().dtype(), &PlType::String, "a result column's name gets input_");
            assert!(df.column("prompt").is_ok());
            let lines: Vec<Value> = std::fs::read_to_string(&jl).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
            assert_eq!(lines.len(), 3);
            let a = lines.iter().find(|l| l["key"] == "aa").unwrap();
            assert_eq!(a["question"], "Q1?");
            assert_eq!(a["answers"], json!(["x", "y"]));
            assert_eq!(a["meta"], json!({"a": 1}));
            assert_eq!(a["input_prompt"], "p1");
            assert!(a.get(KEPT).is_none());
            let c = lines.iter().find(|l| l["key"] == "cc").unwrap();
            assert!(c.get("question").is_none());
            // An empty table: the columns, no rows.
            let empty = ResultStore::new(dir.path().join("e.lance").display().to_string());
            empty.ensure_exists().await.unwrap();
            export(&empty, Some(&pq), Some(&jl)).await.unwrap();
            assert_eq!(read_parquet(&pq).height(), 0);
            assert!(read_parquet(&pq).column("key").is_ok());
            assert_eq!(std::fs::read_to_string(&jl).unwrap(), "");
        });
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".tmp")).collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn an_export_into_a_missing_directory_creates_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("exports/nightly/results.jsonl");
        write_atomically(&path, |f| std::io::Write::write_all(f, b"{}\n").map_err(|e| Error::io(&path, e))).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{}\n");
        // Only the export itself is left: no temporary file beside it.
        assert_eq!(std::fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn a_table_of_small_commits_exports_in_whole_row_groups() {
        let dir = tempfile::tempdir().unwrap();
        let rt = crate::util::runtime(0).unwrap();
        let store = ResultStore::new(dir.path().join("r.lance").display().to_string());
        let path = dir.path().join("r.parquet");
        rt.block_on(async {
            store.ensure_exists().await.unwrap();
            // 30 commits of 8 rows: 30 fragments, read in batches of 8 rows at most.
            for c in 0..30 {
                let rows: Vec<ResultRow> = (0..8).map(|i| row(&format!("{:064x}", c * 8 + i), Some(json!({"n": c})))).collect();
                store.upsert(&rows).await.unwrap();
            }
            export(&store, Some(&path), None).await.unwrap();
        });
        use polars::prelude::SerReader;
        let mut reader = polars::prelude::ParquetReader::new(std::fs::File::open(&path).unwrap());
        assert_eq!(reader.get_metadata().unwrap().row_groups.len(), 1, "one row group, not one per commit");
        assert_eq!(read_parquet(&path).height(), 240);
        assert_eq!(read_parquet(&path).column("n").unwrap().dtype(), &PlType::Int64);
    }

    #[test]
    fn type_inference_merges_values() {
        let t = [json!(1), json!(null), json!(2)].iter().fold(KeptType::Scalar(Scalar::Null), merge_type);
        assert_eq!(t, KeptType::Scalar(Scalar::Int));
        let t = [json!(1), json!("a")].iter().fold(KeptType::Scalar(Scalar::Null), merge_type);
        assert_eq!(t, KeptType::Scalar(Scalar::Text));
        let t = [json!([1]), json!([2.5, null])].iter().fold(KeptType::Scalar(Scalar::Null), merge_type);
        assert_eq!(t, KeptType::List(Scalar::Float));
        let t = [json!([1]), json!("x")].iter().fold(KeptType::Scalar(Scalar::Null), merge_type);
        assert_eq!(t, KeptType::Scalar(Scalar::Json));
        let t = [json!("x"), json!([1])].iter().fold(KeptType::Scalar(Scalar::Null), merge_type);
        assert_eq!(t, KeptType::Scalar(Scalar::Json));
    }

    #[test]
    fn openai_lines_one_per_item_with_errors_coded() {
        let dir = tempfile::tempdir().unwrap();
        let rt = crate::util::runtime(0).unwrap();
        let results = ResultStore::new(dir.path().join("r.lance").display().to_string());
        let quarantine = ResultStore::new(dir.path().join("q.lance").display().to_string());
        let k = |c: char| c.to_string().repeat(64);
        rt.block_on(async {
            results.ensure_exists().await.unwrap();
            let mut ok = row(&k('a'), Some(json!({"custom_id": "r1", "model": "gpt-x"})));
            ok.prompt_tokens = Some(10);
            ok.output_tokens = Some(3);
            ok.finish_reason = Some("length".into());
            let mut bad = row(&k('b'), Some(json!({"custom_id": null, "model": null})));
            bad.output = None;
            bad.error = Some(format!("f.jsonl:2: {INVALID_REQUEST}: line: is not valid JSON"));
            let mut dropped = row(&k('c'), Some(json!({"custom_id": "r3", "model": null})));
            dropped.output = None;
            dropped.filter_outcome = Some("drop".into());
            dropped.filter_reason = Some("input pii:email".into());
            let other_config = row(&k('d'), Some(json!({"custom_id": "r1", "model": null})));
            results.upsert(&[ok, bad, dropped, other_config]).await.unwrap();
            quarantine.upsert(&[row(&k('e'), Some(json!({"custom_id": "r4", "model": null})))]).await.unwrap();
            let items: Vec<(String, String)> =
                [("r1", 'a'), ("f.jsonl:2", 'b'), ("r3", 'c'), ("r4", 'e'), ("r5", 'f'), ("r1", 'a')].iter().map(|(i, c)| (i.to_string(), k(*c))).collect();
            let path = dir.path().join("out.jsonl");
            let counts = export_openai_batch(&results, &quarantine, &path, &items).await.unwrap();
            assert_eq!((counts.lines, counts.responses, counts.errors), (5, 1, 4));
            let lines: Vec<Value> = std::fs::read_to_string(&path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
            assert_eq!(lines.len(), 5);
            let by = |id: Value| lines.iter().find(|l| l["custom_id"] == id).unwrap().clone();
            let r1 = by(json!("r1"));
            assert!(r1["error"].is_null());
            let body = &r1["response"]["body"];
            assert_eq!(r1["response"]["status_code"], 200);
            assert_eq!(body["model"], "gpt-x");
            assert_eq!(body["choices"][0]["message"]["content"], format!("out {}", k('a')));
            assert_eq!(body["choices"][0]["finish_reason"], "length");
            assert_eq!(body["usage"], json!({"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}));
            assert_eq!(by(Value::Null)["error"]["code"], "invalid_request");
            assert_eq!(by(json!("r3"))["error"]["code"], "content_filter");
            assert_eq!(by(json!("r4"))["error"]["code"], "quarantined");
            assert_eq!(by(json!("r5"))["error"]["code"], "not_processed");
            assert!(by(json!("r5"))["response"].is_null());
        });
    }
}
