//! Tables through polars: Parquet, CSV, JSON lines and Hugging Face Parquet files (or a glob
//! of them), scanned a batch at a time with the column selection and the row filter pushed
//! into the scan, one file after another. A file of a glob that cannot be read is a failed
//! row; a scan stopped by a late value of another type goes on with types inferred from the
//! whole file.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use polars::prelude::*;

use crate::error::{Error, Result};
use crate::spec::{SourceKind, SourceSpec};

use super::columns::columns_json;
use super::images::ImagePaths;
use super::lines::{read_record, screen_lines, LineFormat, TempCopy};
use super::staged::{object_files, stage, Staged};
use super::{failed_row, make_row, selected_columns, source_err, RowBatches, RowImage, SourceRow};

/// Name of the row index added to every scan (file row numbers for error messages).
const ROW_INDEX: &str = "__gemma_batch_row";

pub(super) fn is_glob(p: &str) -> bool {
    p.contains(['*', '?', '['])
}

pub(super) struct TableFiles {
    pub(super) files: Vec<PathBuf>,
    /// The directory images must stay inside: the file's directory, or the part of a glob
    /// before its first pattern.
    pub(super) root: PathBuf,
    pub(super) glob: bool,
}

/// The files of a table source: the path, or the files its glob matches (sorted); in an
/// object store when the path is a URI.
pub(super) fn table_files(path: &Path) -> Result<TableFiles> {
    let p = path.display().to_string();
    if crate::objects::is_uri(&p) {
        return object_files(path);
    }
    if !is_glob(&p) {
        if !path.exists() {
            return Err(source_err(path, "file not found"));
        }
        let root = if path.is_dir() { path.to_path_buf() } else { path.parent().map(Path::to_path_buf).unwrap_or_default() };
        return Ok(TableFiles { files: vec![path.to_path_buf()], root, glob: false });
    }
    let mut root = PathBuf::new();
    for c in path.components() {
        if is_glob(&c.as_os_str().to_string_lossy()) {
            break;
        }
        root.push(c);
    }
    let mut files = Vec::new();
    for entry in glob::glob(&p).map_err(|e| source_err(path, format!("glob {p:?}: {e}")))? {
        match entry {
            Ok(f) if f.is_dir() => {}
            Ok(f) => files.push(f),
            Err(e) => return Err(source_err(path, format!("glob {p:?}: {e}"))),
        }
    }
    if files.is_empty() {
        return Err(source_err(path, "no file matches the glob"));
    }
    files.sort();
    Ok(TableFiles { files, root, glob: true })
}

pub(super) fn table(src: &SourceSpec, path: &Path) -> Result<RowBatches> {
    let TableFiles { files, root, glob: many } = table_files(path)?;
    // The filter is the spec's: a mistake in it is an error before any row.
    let filter = match &src.filter {
        Some(f) => Some(polars::sql::sql_expr(f).map_err(|e| source_err(path, format!("filter {f:?}: {e}")))?),
        None => None,
    };
    let mut files = files.into_iter();
    // One file: what stops it from being scanned (a missing column, a bad header) is an error
    // of the run. Files of a glob: one failed row for that file, and the next file.
    let current = if many {
        None
    } else {
        let file = files.next().expect("one file");
        Some(FileScan::open(src, filter.as_ref(), &file, &root)?)
    };
    Ok(Box::new(TableScan { src: src.clone(), filter, root, files, current }))
}

struct TableScan {
    src: SourceSpec,
    filter: Option<Expr>,
    root: PathBuf,
    files: std::vec::IntoIter<PathBuf>,
    current: Option<FileScan>,
}

impl Iterator for TableScan {
    type Item = Result<Vec<SourceRow>>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(scan) = &mut self.current {
                match scan.next_rows(&self.src) {
                    Some(rows) => return Some(Ok(rows)),
                    None => self.current = None,
                }
            }
            let file = self.files.next()?;
            match FileScan::open(&self.src, self.filter.as_ref(), &file, &self.root) {
                Ok(scan) => self.current = Some(scan),
                Err(e) => {
                    let mut columns = serde_json::Map::new();
                    columns.insert("path".into(), file.display().to_string().into());
                    let message = match e {
                        Error::Source { message, .. } => message,
                        other => other.to_string(),
                    };
                    let error = format!("{}: the file could not be read: {message}", file.display());
                    return Some(Ok(vec![failed_row(&self.src, file.display().to_string(), columns, error)]));
                }
            }
        }
    }
}

/// One file of a table being scanned.
struct FileScan {
    path: PathBuf,
    /// Failed rows found by screening, returned first.
    screened: Vec<SourceRow>,
    /// What polars reads: the file, or its screened copy.
    scan_path: String,
    filter: Option<Expr>,
    batches: Option<CollectBatches>,
    /// The scan was restarted with types inferred from the whole file.
    restarted: bool,
    /// The screened copy polars reads; removed when the scan is dropped.
    _copy: Option<TempCopy>,
    /// The local copy of a file in an object store; removed when the scan is dropped.
    _staged: Staged,
    images: ImagePaths,
    /// Row index (0-based, as polars reads the file) after the last row returned.
    next_index: u64,
}

/// The polars scan of one file, from row index `from` on. Column types are inferred from the
/// first rows, or (`whole_file`) from all of them.
fn scan_batches(src: &SourceSpec, filter: Option<&Expr>, scan_path: &str, whole_file: bool, from: u64) -> PolarsResult<CollectBatches> {
    let plpath = PlRefPath::new(scan_path);
    let mut lf = match src.kind {
        SourceKind::Parquet | SourceKind::HfParquet => LazyFrame::scan_parquet(plpath, ScanArgsParquet::default()),
        SourceKind::Csv => {
            let r = LazyCsvReader::new(plpath).with_has_header(true);
            if whole_file { r.with_infer_schema_length(None) } else { r }.finish()
        }
        SourceKind::Jsonl => {
            let r = LazyJsonLineReader::new(plpath);
            if whole_file { r.with_infer_schema_length(None) } else { r }.finish()
        }
        _ => unreachable!("not a table"),
    }?
    .with_row_index(ROW_INDEX, None);
    if from > 0 {
        lf = lf.filter(col(ROW_INDEX).gt_eq(lit(from)));
    }
    // The filter before the selection: it may name columns that are not selected.
    if let Some(f) = filter {
        lf = lf.filter(f.clone());
    }
    if let Some(cols) = &src.columns {
        let mut cols: Vec<Expr> = selected_columns(src, cols).iter().map(|c| col(c.as_str())).collect();
        cols.push(col(ROW_INDEX));
        lf = lf.select(cols);
    }
    lf.collect_batches(Engine::Streaming, true, NonZeroUsize::new(src.read_batch), false)
}

impl FileScan {
    fn open(src: &SourceSpec, filter: Option<&Expr>, path: &Path, root: &Path) -> Result<Self> {
        // JSON lines and CSV: a line polars cannot read would fail the whole scan; such lines
        // become failed rows and polars scans a copy without them.
        let format = match src.kind {
            SourceKind::Jsonl => Some(LineFormat::JsonLines),
            SourceKind::Csv => Some(LineFormat::Csv),
            _ => None,
        };
        let staged = stage(path)?;
        let (screened, copy) = match format {
            Some(f) if staged.local.is_file() => {
                let s = screen_lines(src, &staged, f)?;
                (s.bad, s.copy)
            }
            _ => (Vec::new(), None),
        };
        let scan_path = copy.as_ref().map_or(staged.local.as_path(), |c| c.path.as_path()).display().to_string();
        let batches = scan_batches(src, filter, &scan_path, false, 0).map_err(|e| source_err(path, e))?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(Self {
            path: path.to_path_buf(),
            screened,
            scan_path,
            filter: filter.cloned(),
            batches: Some(batches),
            restarted: false,
            _copy: copy,
            _staged: staged,
            images: ImagePaths::new(src, &base, root),
            next_index: 0,
        })
    }

    /// The next rows of this file; `None` when it is done.
    fn next_rows(&mut self, src: &SourceSpec) -> Option<Vec<SourceRow>> {
        if !self.screened.is_empty() {
            return Some(std::mem::take(&mut self.screened));
        }
        loop {
            let e = match self.batches.as_mut()?.next() {
                None => {
                    self.batches = None;
                    return None;
                }
                Some(Ok(df)) => return Some(self.rows(src, df)),
                Some(Err(e)) => e,
            };
            self.batches = None;
            // Text formats: types were inferred from the first rows and a later value does not
            // fit (a number column with a word further down). Go on from the same row with
            // types inferred from the whole file, once.
            if !self.restarted && matches!(src.kind, SourceKind::Csv | SourceKind::Jsonl) {
                self.restarted = true;
                if let Ok(b) = scan_batches(src, self.filter.as_ref(), &self.scan_path, true, self.next_index) {
                    self.batches = Some(b);
                    continue;
                }
            }
            // The scan cannot go on: the rest of the file is one failed row saying so.
            let from = self.next_index + 1;
            let mut columns = serde_json::Map::new();
            columns.insert("path".into(), self.path.display().to_string().into());
            columns.insert("from_row".into(), from.into());
            let error = format!(
                "{}: rows from row {from} on could not be read (the rest of the file was not read): {e}",
                self.path.display()
            );
            return Some(vec![failed_row(src, format!("{}#from-row={from}", self.path.display()), columns, error)]);
        }
    }

    fn rows(&mut self, src: &SourceSpec, df: DataFrame) -> Vec<SourceRow> {
        let n = df.height();
        let indices: Vec<u64> = df
            .column(ROW_INDEX)
            .ok()
            .and_then(|c| c.cast(&DataType::UInt64).ok())
            .and_then(|c| c.u64().ok().map(|a| a.iter().map(|v| v.unwrap_or(0)).collect()))
            .unwrap_or_else(|| (self.next_index..self.next_index + n as u64).collect());
        if let Some(last) = indices.last() {
            self.next_index = last + 1;
        }
        let df = df.drop(ROW_INDEX).unwrap_or(df);
        let name = |i: usize| format!("{}#row={}", self.path.display(), indices.get(i).map_or(0, |r| r + 1));
        table_rows(src, &self.images, df, &name)
    }
}

/// Rows of one batch of a table. A row whose columns cannot be converted is one failed row
/// named by `row_name(i)`; the other rows of the batch are kept.
fn table_rows(src: &SourceSpec, images: &ImagePaths, mut df: DataFrame, row_name: &dyn Fn(usize) -> String) -> Vec<SourceRow> {
    let n = df.height();
    let mut row_images: Vec<Option<std::result::Result<RowImage, String>>> = vec![None; n];
    if let Some(c) = &src.image_column {
        match image_column(&df, c, images) {
            Ok(i) => row_images = i,
            Err(e) => row_images = vec![Some(Err(e)); n],
        }
        // Bytes are hashed, not templated: keep them out of the JSON columns.
        if df.column(c).is_ok_and(|col| !matches!(col.dtype(), DataType::String)) {
            df = df.drop(c).unwrap_or(df);
        }
    }
    let columns = match columns_json(&df) {
        Ok(c) => c.into_iter().map(Ok).collect::<Vec<_>>(),
        // Row by row, so that one row that cannot be converted is one failed row.
        Err(_) => (0..n).map(|i| columns_json(&df.slice(i as i64, 1)).and_then(|mut r| r.pop().ok_or_else(|| "no row".into()))).collect(),
    };
    columns
        .into_iter()
        .zip(row_images)
        .enumerate()
        .map(|(i, (columns, image))| match columns {
            Ok(columns) => make_row(src, columns, image),
            Err(e) => failed_row(src, row_name(i), serde_json::Map::new(), format!("{}: the row's columns cannot be read: {e}", row_name(i))),
        })
        .collect()
}

/// Image of each row from the image column: a path, bytes, or a {bytes, path} struct. A column
/// of another type is an error for every row.
fn image_column(df: &DataFrame, name: &str, images: &ImagePaths) -> std::result::Result<Vec<Option<std::result::Result<RowImage, String>>>, String> {
    let err = |e: PolarsError| format!("image column {name:?}: {e}");
    let column = df.column(name).map_err(err)?;
    let read_path = |p: &str| images.read(p);
    Ok(match column.dtype() {
        DataType::String => column.str().map_err(err)?.iter().map(|p| p.map(read_path)).collect(),
        DataType::Binary => column
            .binary()
            .map_err(err)?
            .iter()
            .map(|b| b.map(|b| Ok(RowImage::Encoded { name: format!("{name} bytes"), bytes: b.to_vec() })))
            .collect(),
        DataType::Struct(_) => {
            let s = column.struct_().map_err(err)?;
            let bytes = s.field_by_name("bytes").map_err(err)?;
            let paths = s.field_by_name("path").ok();
            let bytes = bytes.binary().map_err(err)?;
            let paths: Vec<Option<&str>> = match &paths {
                Some(p) => p.str().map_err(err)?.iter().collect(),
                None => vec![None; bytes.len()],
            };
            bytes
                .iter()
                .zip(paths)
                .map(|(b, p)| match (b, p) {
                    (Some(b), p) => Some(Ok(RowImage::Encoded { name: p.unwrap_or("image bytes").to_string(), bytes: b.to_vec() })),
                    (None, Some(p)) => Some(read_path(p)),
                    (None, None) => None,
                })
                .collect()
        }
        other => return Err(format!("image column {name:?} has type {other}; expected a path, bytes or a {{bytes, path}} struct")),
    })
}

/// Column names of one table file, from its schema (see [`column_names`](super::column_names)).
pub(super) fn file_column_names(src: &SourceSpec, path: &Path) -> Result<Vec<String>> {
    let staged = stage(path)?;
    if src.kind == SourceKind::Jsonl && staged.local.is_file() {
        return json_lines_keys(src, &staged.local);
    }
    let plpath = PlRefPath::new(staged.local.display().to_string());
    let lf = match src.kind {
        SourceKind::Parquet | SourceKind::HfParquet => LazyFrame::scan_parquet(plpath, ScanArgsParquet::default()),
        // The header only: every column read as text, no row parsed.
        SourceKind::Csv => LazyCsvReader::new(plpath).with_has_header(true).with_infer_schema_length(Some(0)).finish(),
        SourceKind::Jsonl => LazyJsonLineReader::new(plpath).finish(),
        _ => unreachable!("not a table"),
    };
    let schema = lf.and_then(|mut lf| lf.collect_schema()).map_err(|e| source_err(path, e))?;
    Ok(schema.iter_names().map(|n| n.to_string()).collect())
}

/// Keys of the first 100 JSON objects of a JSON lines file, in order of appearance (lines
/// that are not objects are skipped, as the scan makes them failed rows).
fn json_lines_keys(src: &SourceSpec, path: &Path) -> Result<Vec<String>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader = std::io::BufReader::new(file);
    let cap = usize::try_from(src.max_row_bytes).unwrap_or(usize::MAX);
    let mut buf = Vec::new();
    let mut names: Vec<String> = Vec::new();
    let mut objects = 0;
    while objects < 100 {
        let Some(rec) = read_record(&mut reader, &mut buf, cap, false).map_err(|e| Error::io(path, e))? else { break };
        if rec.too_long {
            continue;
        }
        if let Ok(serde_json::Value::Object(m)) = serde_json::from_slice::<serde_json::Value>(&buf) {
            objects += 1;
            for k in m.keys() {
                if !names.contains(k) {
                    names.push(k.clone());
                }
            }
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use crate::source::tests::{all_rows, spec_for};

    #[test]
    fn the_filter_may_name_columns_that_are_not_selected() {
        let tmp = tempfile::tempdir().unwrap();
        let jsonl: String = (0..6).map(|i| serde_json::json!({"id": format!("r{i}"), "kind": if i % 2 == 0 { "even" } else { "odd" }, "v": i}).to_string() + "\n").collect();
        std::fs::write(tmp.path().join("t.jsonl"), jsonl).unwrap();
        let csv: String = std::iter::once("id,kind,v\n".to_string()).chain((0..6).map(|i| format!("r{i},{},{i}\n", if i % 2 == 0 { "even" } else { "odd" }))).collect();
        std::fs::write(tmp.path().join("t.csv"), csv).unwrap();
        for (kind, file) in [("jsonl", "t.jsonl"), ("csv", "t.csv")] {
            let spec = spec_for(tmp.path(), &format!("kind = \"{kind}\"\npath = \"{file}\"\nid_column = \"id\"\ncolumns = [\"v\"]\nfilter = \"kind = 'odd'\""));
            let rows = all_rows(&spec);
            let errors: Vec<_> = rows.iter().filter_map(|r| r.error.as_ref()).collect();
            assert!(errors.is_empty(), "{kind}: {errors:?}");
            let ids: Vec<&str> = rows.iter().map(|r| r.input_id.as_str()).collect();
            assert_eq!(ids, ["r1", "r3", "r5"], "{kind}");
            assert!(rows.iter().all(|r| !r.columns.contains_key("kind") && r.columns.contains_key("v")), "{kind}: only the selected columns");
        }
    }

    #[test]
    fn a_late_value_of_another_type_does_not_stop_the_file() {
        // Types are inferred from the first 100 rows; row 141 does not fit them.
        let tmp = tempfile::tempdir().unwrap();
        let jsonl: String = (0..150)
            .map(|i| {
                let score = if i == 140 { serde_json::json!("abc") } else { serde_json::json!(i) };
                serde_json::json!({"id": format!("r{i}"), "score": score}).to_string() + "\n"
            })
            .collect();
        std::fs::write(tmp.path().join("t.jsonl"), jsonl).unwrap();
        let csv: String = std::iter::once("id,score\n".to_string())
            .chain((0..150).map(|i| if i == 140 { format!("r{i},abc\n") } else { format!("r{i},{i}\n") }))
            .collect();
        std::fs::write(tmp.path().join("t.csv"), csv).unwrap();
        for (kind, file) in [("jsonl", "t.jsonl"), ("csv", "t.csv")] {
            let spec = spec_for(tmp.path(), &format!("kind = \"{kind}\"\npath = \"{file}\"\nid_column = \"id\"\nread_batch = 16"));
            let rows = all_rows(&spec);
            let errors: Vec<_> = rows.iter().filter_map(|r| r.error.as_ref()).collect();
            assert!(errors.is_empty(), "{kind}: {errors:?}");
            let ids: Vec<&str> = rows.iter().map(|r| r.input_id.as_str()).collect();
            let want: Vec<String> = (0..150).map(|i| format!("r{i}")).collect();
            assert_eq!(ids, want, "{kind}: every row once, in order");
            let late = rows.iter().find(|r| r.input_id == "r140").unwrap();
            assert_eq!(late.columns["score"], "abc", "{kind}");
        }
    }
}
