//! Sources: turn a corpus into batches of rows. Tables (Parquet, CSV, JSON lines, Hugging
//! Face Parquet exports) stream through polars with column selection and the row filter
//! pushed into the scan; folders of images and PDFs are listed and read a batch at a time.
//! A row that cannot be read becomes a row with an error, never a silent skip.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use polars::prelude::*;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::spec::{PipelineSpec, SourceKind, SourceSpec};

/// An image attached to a row.
#[derive(Debug, Clone)]
pub enum RowImage {
    /// Encoded bytes (read from a file or a bytes column); `name` is used in errors.
    Encoded { name: String, bytes: Vec<u8> },
    /// A rendered PDF page.
    Rendered { name: String, image: image::RgbImage },
}

#[derive(Debug, Clone)]
pub struct SourceRow {
    /// The declared id column, else the content hash.
    pub input_id: String,
    pub content_hash: String,
    /// The row's columns as JSON values (for prompt templates and questions).
    pub columns: serde_json::Map<String, serde_json::Value>,
    pub image: Option<RowImage>,
    pub text: Option<String>,
    /// Why the row could not be read; such rows are recorded as failed.
    pub error: Option<String>,
}

pub type RowBatches = Box<dyn Iterator<Item = Result<Vec<SourceRow>>> + Send>;

/// Opens the spec's source as an iterator of row batches.
pub fn open(spec: &PipelineSpec) -> Result<RowBatches> {
    let src = &spec.source;
    let path = spec.resolve(&src.path);
    match src.kind {
        SourceKind::Parquet | SourceKind::Csv | SourceKind::Jsonl | SourceKind::HfParquet => table(src, &path),
        SourceKind::Images => files(src, &path, &["png", "jpg", "jpeg", "webp", "gif", "bmp", "tif", "tiff"], image_rows),
        SourceKind::Pdfs => files(src, &path, &["pdf"], pdf_rows),
        SourceKind::Lance => lance_table(src, &path),
    }
}

fn source_err(path: &Path, message: impl std::fmt::Display) -> Error {
    Error::Source { source_name: path.display().to_string(), message: message.to_string() }
}

fn sha256_hex(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    format!("{:x}", h.finalize())
}

fn content_hash(columns: &serde_json::Map<String, serde_json::Value>, image: Option<&[u8]>) -> String {
    // serde_json maps are ordered by key, so the text is canonical.
    let text = serde_json::to_string(columns).unwrap_or_default();
    sha256_hex(&[text.as_bytes(), image.unwrap_or_default()])
}

fn id_of(columns: &serde_json::Map<String, serde_json::Value>, id_column: Option<&str>, hash: &str) -> Result<String, String> {
    match id_column {
        None => Ok(hash.to_string()),
        Some(c) => match columns.get(c) {
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            Some(serde_json::Value::Null) | None => Err(format!("id column {c:?} is missing or null")),
            Some(other) => Ok(other.to_string()),
        },
    }
}

// ---- tables through polars --------------------------------------------------------------

fn table(src: &SourceSpec, path: &Path) -> Result<RowBatches> {
    let p = path.display().to_string();
    if !p.contains(['*', '?', '[']) && !path.exists() {
        return Err(source_err(path, "file not found"));
    }
    // JSON lines: a line that is not UTF-8 or not a JSON object would fail the whole scan;
    // such lines become failed rows and polars scans a copy without them.
    let (p, bad_rows, cleaned) = match src.kind {
        SourceKind::Jsonl if path.is_file() => match screen_json_lines(src, path)? {
            Some((bad, copy)) => (copy.path.display().to_string(), bad, Some(copy)),
            None => (p, Vec::new(), None),
        },
        _ => (p, Vec::new(), None),
    };
    let plpath = PlRefPath::new(&p);
    let mut lf = match src.kind {
        SourceKind::Parquet | SourceKind::HfParquet => LazyFrame::scan_parquet(plpath, ScanArgsParquet::default()),
        SourceKind::Csv => LazyCsvReader::new(plpath).with_has_header(true).finish(),
        SourceKind::Jsonl => LazyJsonLineReader::new(plpath).finish(),
        _ => unreachable!("not a table"),
    }
    .map_err(|e| source_err(path, e))?;
    if let Some(cols) = &src.columns {
        let mut cols = cols.clone();
        for extra in [&src.id_column, &src.image_column, &src.text_column].into_iter().flatten() {
            if !cols.contains(extra) {
                cols.push(extra.clone());
            }
        }
        lf = lf.select(cols.iter().map(|c| col(c.as_str())).collect::<Vec<_>>());
    }
    if let Some(filter) = &src.filter {
        let expr = polars::sql::sql_expr(filter).map_err(|e| source_err(path, format!("filter {filter:?}: {e}")))?;
        lf = lf.filter(expr);
    }
    let batches = lf
        .collect_batches(Engine::Streaming, true, NonZeroUsize::new(src.read_batch), false)
        .map_err(|e| source_err(path, e))?;
    let src = src.clone();
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let path = path.to_path_buf();
    let bad = (!bad_rows.is_empty()).then_some(Ok(bad_rows));
    Ok(Box::new(bad.into_iter().chain(batches.map(move |df| {
        let _keep_copy = &cleaned;
        let df = df.map_err(|e| source_err(&path, e))?;
        table_rows(&src, &base, df).map_err(|e| source_err(&path, e))
    }))))
}

/// A temporary file, removed when dropped.
struct TempCopy {
    path: PathBuf,
}

impl Drop for TempCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Checks every line of a JSON lines file. When some are not UTF-8 or not a JSON object,
/// returns a failed row for each (named by file and line) and a copy of the file without them.
fn screen_json_lines(src: &SourceSpec, path: &Path) -> Result<Option<(Vec<SourceRow>, TempCopy)>> {
    use std::io::{BufRead, Write};
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader = std::io::BufReader::new(file);
    let mut line = Vec::new();
    let mut bad = Vec::new();
    let mut copy: Option<(TempCopy, std::io::BufWriter<std::fs::File>)> = None;
    let mut good_before: u64 = 0;
    let mut line_no = 0usize;
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let content = line.strip_suffix(b"\n").unwrap_or(&line);
        let content = content.strip_suffix(b"\r").unwrap_or(content);
        let problem = match std::str::from_utf8(content) {
            Err(e) => Some(format!("line {line_no} is not valid UTF-8 (byte {} of the line)", e.valid_up_to())),
            Ok(t) if t.trim().is_empty() => None,
            Ok(t) => match serde_json::from_str::<serde_json::Value>(t) {
                Ok(serde_json::Value::Object(_)) => None,
                Ok(_) => Some(format!("line {line_no} is not a JSON object")),
                Err(e) => Some(format!("line {line_no} is not valid JSON: {e}")),
            },
        };
        match problem {
            Some(message) => {
                if copy.is_none() {
                    // First bad line: copy the good lines so far into a temporary file.
                    let tmp = std::env::temp_dir().join(format!(
                        "gemma-batch-{}-{}.jsonl",
                        std::process::id(),
                        &sha256_hex(&[path.display().to_string().as_bytes()])[..12]
                    ));
                    let f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
                    let mut w = std::io::BufWriter::new(f);
                    let mut src_file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
                    std::io::copy(&mut std::io::Read::take(&mut src_file, good_before), &mut w).map_err(|e| Error::io(&tmp, e))?;
                    copy = Some((TempCopy { path: tmp }, w));
                }
                let mut columns = serde_json::Map::new();
                columns.insert("line".into(), line_no.into());
                let mut row = make_row(src, columns, None);
                row.content_hash = sha256_hex(&[content]);
                row.input_id = format!("{}:{line_no}", path.display());
                row.error = Some(format!("{}: {message}", path.display()));
                bad.push(row);
            }
            None => match copy.as_mut() {
                Some((t, w)) => w.write_all(&line).map_err(|e| Error::io(&t.path, e))?,
                None => good_before += n as u64,
            },
        }
    }
    match copy {
        Some((t, mut w)) => {
            w.flush().map_err(|e| Error::io(&t.path, e))?;
            Ok(Some((bad, t)))
        }
        None => Ok(None),
    }
}

/// Image of each row from the image column: a path, bytes, or a {bytes, path} struct.
fn image_column(df: &DataFrame, name: &str, base: &Path) -> PolarsResult<Vec<Option<std::result::Result<RowImage, String>>>> {
    let column = df.column(name)?;
    let read_path = |p: &str| read_image_path(base, p);
    Ok(match column.dtype() {
        DataType::String => column.str()?.iter().map(|p| p.map(read_path)).collect(),
        DataType::Binary => column
            .binary()?
            .iter()
            .map(|b| b.map(|b| Ok(RowImage::Encoded { name: format!("{name} bytes"), bytes: b.to_vec() })))
            .collect(),
        DataType::Struct(_) => {
            let s = column.struct_()?;
            let bytes = s.field_by_name("bytes")?;
            let paths = s.field_by_name("path")?;
            let bytes = bytes.binary()?;
            let paths = paths.str()?;
            bytes
                .iter()
                .zip(paths.iter())
                .map(|(b, p)| match (b, p) {
                    (Some(b), p) => Some(Ok(RowImage::Encoded { name: p.unwrap_or("image bytes").to_string(), bytes: b.to_vec() })),
                    (None, Some(p)) => Some(read_path(p)),
                    (None, None) => None,
                })
                .collect()
        }
        other => {
            return Err(PolarsError::ComputeError(
                format!("image column {name:?} has type {other}; expected a path, bytes or a {{bytes, path}} struct").into(),
            ))
        }
    })
}

/// An image named by a path in a row, relative to the source's directory.
fn read_image_path(base: &Path, p: &str) -> std::result::Result<RowImage, String> {
    let full = base.join(p);
    std::fs::read(&full)
        .map(|bytes| RowImage::Encoded { name: p.to_string(), bytes })
        .map_err(|e| format!("image {}: {e}", full.display()))
}

fn table_rows(src: &SourceSpec, base: &Path, mut df: DataFrame) -> PolarsResult<Vec<SourceRow>> {
    let n = df.height();
    let mut images: Vec<Option<std::result::Result<RowImage, String>>> = vec![None; n];
    if let Some(c) = &src.image_column {
        images = image_column(&df, c, base)?;
        // Bytes are hashed, not templated: keep them out of the JSON columns.
        if !matches!(df.column(c)?.dtype(), DataType::String) {
            df = df.drop(c)?;
        }
    }
    // JSON lines are the simplest faithful conversion of any column type to template values.
    let mut buf = Vec::new();
    JsonWriter::new(&mut buf).with_json_format(JsonFormat::JsonLines).finish(&mut df)?;
    let mut rows = Vec::with_capacity(n);
    for (line, image) in buf.split(|&b| b == b'\n').filter(|l| !l.is_empty()).zip(images) {
        let columns: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(line).map_err(|e| PolarsError::ComputeError(e.to_string().into()))?;
        rows.push(make_row(src, columns, image));
    }
    Ok(rows)
}

fn make_row(
    src: &SourceSpec,
    columns: serde_json::Map<String, serde_json::Value>,
    image: Option<std::result::Result<RowImage, String>>,
) -> SourceRow {
    let (image, mut error) = match image {
        Some(Ok(img)) => (Some(img), None),
        Some(Err(e)) => (None, Some(e)),
        None => (None, None),
    };
    let image_bytes = match &image {
        Some(RowImage::Encoded { bytes, .. }) => Some(bytes.as_slice()),
        Some(RowImage::Rendered { image, .. }) => Some(image.as_raw().as_slice()),
        None => None,
    };
    let hash = content_hash(&columns, image_bytes);
    let input_id = match id_of(&columns, src.id_column.as_deref(), &hash) {
        Ok(id) => id,
        Err(e) => {
            error.get_or_insert(e);
            hash.clone()
        }
    };
    let text = src.text_column.as_ref().and_then(|c| columns.get(c)).and_then(|v| v.as_str().map(str::to_owned));
    SourceRow { input_id, content_hash: hash, columns, image, text, error }
}

// ---- Lance datasets -----------------------------------------------------------------

/// A Lance dataset, scanned with the column selection and the row filter (SQL) pushed down.
fn lance_table(src: &SourceSpec, path: &Path) -> Result<RowBatches> {
    use futures::StreamExt;
    let uri = path.display().to_string();
    let err = |e: lance::Error| source_err(path, e);
    // The reader runs on a blocking thread of the pipeline's runtime; elsewhere, make one.
    let (handle, owned) = match tokio::runtime::Handle::try_current() {
        Ok(h) => (h, None),
        Err(_) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| source_err(path, e))?;
            (rt.handle().clone(), Some(rt))
        }
    };
    let stream = handle.block_on(async {
        let ds = lance::dataset::Dataset::open(&uri).await.map_err(err)?;
        let mut scan = ds.scan();
        if let Some(cols) = &src.columns {
            let mut cols = cols.clone();
            for extra in [&src.id_column, &src.image_column, &src.text_column].into_iter().flatten() {
                if !cols.contains(extra) {
                    cols.push(extra.clone());
                }
            }
            scan.project(&cols).map_err(err)?;
        }
        if let Some(f) = &src.filter {
            scan.filter(f).map_err(|e| source_err(path, format!("filter {f:?}: {e}")))?;
        }
        scan.batch_size(src.read_batch);
        scan.try_into_stream().await.map_err(err)
    })?;
    let src = src.clone();
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let path = path.to_path_buf();
    let mut stream = Box::pin(stream);
    Ok(Box::new(std::iter::from_fn(move || {
        let _keep_runtime = &owned;
        let batch = handle.block_on(stream.next())?;
        Some(batch.map_err(|e| source_err(&path, e)).and_then(|b| arrow_rows(&src, &base, &b).map_err(|e| source_err(&path, e))))
    })))
}

/// Rows of an Arrow record batch: the image column as in tables, every other column as JSON.
fn arrow_rows(src: &SourceSpec, base: &Path, batch: &arrow_array::RecordBatch) -> std::result::Result<Vec<SourceRow>, String> {
    use arrow_array::cast::AsArray;
    use arrow_array::Array;
    use arrow_schema::DataType as A;
    let n = batch.num_rows();
    let mut images: Vec<Option<std::result::Result<RowImage, String>>> = vec![None; n];
    let mut batch = batch.clone();
    if let Some(name) = &src.image_column {
        let idx = batch.schema().index_of(name).map_err(|_| format!("image column {name:?} is not in the dataset"))?;
        let column = batch.column(idx).clone();
        let bytes = |name: &str, b: Option<&[u8]>| b.map(|b| Ok(RowImage::Encoded { name: name.to_string(), bytes: b.to_vec() }));
        let label = format!("{name} bytes");
        images = match column.data_type() {
            A::Utf8 => column.as_string::<i32>().iter().map(|p| p.map(|p| read_image_path(base, p))).collect(),
            A::LargeUtf8 => column.as_string::<i64>().iter().map(|p| p.map(|p| read_image_path(base, p))).collect(),
            A::Binary => column.as_binary::<i32>().iter().map(|b| bytes(&label, b)).collect(),
            A::LargeBinary => column.as_binary::<i64>().iter().map(|b| bytes(&label, b)).collect(),
            A::Struct(_) => {
                let s = column.as_struct();
                let b = s.column_by_name("bytes").ok_or("image struct has no `bytes` field")?;
                let p = s.column_by_name("path");
                (0..n)
                    .map(|i| {
                        let path = p.and_then(|p| p.as_string_opt::<i32>()).filter(|p| p.is_valid(i)).map(|p| p.value(i));
                        let data = match b.data_type() {
                            A::LargeBinary => b.as_binary::<i64>().is_valid(i).then(|| b.as_binary::<i64>().value(i)),
                            _ => b.as_binary_opt::<i32>().filter(|a| a.is_valid(i)).map(|a| a.value(i)),
                        };
                        match (data, path) {
                            (Some(d), p) => bytes(p.unwrap_or("image bytes"), Some(d)),
                            (None, Some(p)) => Some(read_image_path(base, p)),
                            (None, None) => None,
                        }
                    })
                    .collect()
            }
            other => return Err(format!("image column {name:?} has type {other}; expected a path, bytes or a {{bytes, path}} struct")),
        };
        if !matches!(column.data_type(), A::Utf8 | A::LargeUtf8) {
            batch.remove_column(idx);
        }
    }
    let mut writer = arrow_json::ArrayWriter::new(Vec::new());
    writer.write(&batch).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    let buf = writer.into_inner();
    let objects: Vec<serde_json::Map<String, serde_json::Value>> =
        if buf.is_empty() { Vec::new() } else { serde_json::from_slice(&buf).map_err(|e| e.to_string())? };
    Ok(objects.into_iter().zip(images).map(|(columns, image)| make_row(src, columns, image)).collect())
}

// ---- folders of files ---------------------------------------------------------------

type FileRows = fn(&SourceSpec, &Path, &Path) -> Vec<SourceRow>;

fn files(src: &SourceSpec, dir: &Path, extensions: &'static [&'static str], rows: FileRows) -> Result<RowBatches> {
    if !dir.is_dir() {
        return Err(source_err(dir, "not a directory"));
    }
    let pattern = match &src.glob {
        Some(g) => dir.join(g).display().to_string(),
        None => dir.join("**/*").display().to_string(),
    };
    let mut paths: Vec<PathBuf> = glob::glob(&pattern)
        .map_err(|e| source_err(dir, format!("glob {pattern:?}: {e}")))?
        .filter_map(|p| p.ok())
        .filter(|p| p.is_file())
        .filter(|p| {
            src.glob.is_some()
                || p.extension().and_then(|e| e.to_str()).is_some_and(|e| extensions.contains(&e.to_ascii_lowercase().as_str()))
        })
        .collect();
    paths.sort();
    let src = src.clone();
    let dir = dir.to_path_buf();
    let chunk = src.read_batch;
    let chunks: Vec<Vec<PathBuf>> = paths.chunks(chunk).map(|c| c.to_vec()).collect();
    Ok(Box::new(chunks.into_iter().map(move |paths| {
        Ok(paths.iter().flat_map(|p| rows(&src, &dir, p)).collect())
    })))
}

fn relative(dir: &Path, path: &Path) -> String {
    path.strip_prefix(dir).unwrap_or(path).display().to_string()
}

fn image_rows(src: &SourceSpec, dir: &Path, path: &Path) -> Vec<SourceRow> {
    let rel = relative(dir, path);
    let mut columns = serde_json::Map::new();
    columns.insert("path".into(), rel.clone().into());
    let image = std::fs::read(path)
        .map(|bytes| RowImage::Encoded { name: rel.clone(), bytes })
        .map_err(|e| format!("image {}: {e}", path.display()));
    let mut row = make_row(src, columns, Some(image));
    if src.id_column.is_none() {
        row.input_id = rel;
    }
    vec![row]
}

/// One row a page: the page rendered with hayro and its text layer from lopdf. A PDF that
/// cannot be opened is one failed row.
fn pdf_rows(src: &SourceSpec, dir: &Path, path: &Path) -> Vec<SourceRow> {
    let rel = relative(dir, path);
    let failed = |message: String| {
        let mut columns = serde_json::Map::new();
        columns.insert("path".into(), rel.clone().into());
        let mut row = make_row(src, columns, None);
        row.input_id = rel.clone();
        row.error = Some(format!("pdf {}: {message}", path.display()));
        vec![row]
    };
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => return failed(e.to_string()),
    };
    let pages = match crate::prepare::pdf::render_pages(&bytes, src.dpi) {
        Ok(p) => p,
        Err(e) => return failed(e),
    };
    pages
        .into_iter()
        .enumerate()
        .map(|(i, page)| {
            let page_no = i + 1;
            let id = format!("{rel}#page={page_no}");
            let mut columns = serde_json::Map::new();
            columns.insert("path".into(), rel.clone().into());
            columns.insert("page".into(), page_no.into());
            columns.insert("text".into(), page.text.clone().unwrap_or_default().into());
            let image = page.image.map(|image| RowImage::Rendered { name: id.clone(), image });
            let mut row = make_row(src, columns, image.map(Ok));
            if let Some(e) = page.error {
                row.error = Some(format!("pdf {} page {page_no}: {e}", path.display()));
            }
            row.text = page.text;
            if src.id_column.is_none() {
                row.input_id = id;
            }
            row
        })
        .collect()
}
