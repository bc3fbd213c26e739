//! Sources: turn a corpus into batches of rows. Tables (Parquet, CSV, JSON lines, Hugging
//! Face Parquet exports) stream through polars with column selection and the row filter
//! pushed into the scan; folders of images and PDFs are listed and read a batch at a time.
//!
//! A row cannot stop a run: a row that cannot be read becomes a row with an error naming the
//! row (input id, or `FILE:LINE`) and the field, never a panic, a hang or a silent skip.
//! Every value a row supplies is bounded before it sizes an allocation:
//!
//! - files a row names (image paths) are read only when they are regular files, up to
//!   `source.max_image_bytes`, and (`source.confine_images`) only inside the source's
//!   directory;
//! - JSON lines and CSV files are screened line by line before polars reads them (lines that
//!   are not UTF-8, not JSON objects, longer than `source.max_row_bytes` or with more CSV
//!   fields than the header become failed rows; polars scans a copy without them), every file
//!   of a glob on its own;
//! - columns polars cannot write as JSON (binary, time zones it does not know, ...) are
//!   converted here, never a reason to fail;
//! - PDF pages are rendered one at a time as rows are read, up to `source.max_pdf_pages` a
//!   document and `source.max_page_pixels` a page.

use std::io::{BufRead, Read, Write};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use polars::prelude::*;
use crate::util::sha256_hex;

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
        SourceKind::Images => files(src, &path, IMAGE_EXTENSIONS, FolderKind::Images),
        SourceKind::Pdfs => files(src, &path, &["pdf"], FolderKind::Pdfs),
        SourceKind::Lance => lance_table(src, &path),
    }
}

/// The column names rows of a table source carry (Parquet, CSV, JSON lines, Hugging Face
/// Parquet, Lance), read from the schema without reading the data: Parquet and Lance from
/// their metadata, CSV from the header, JSON lines from the keys of the first 100 objects
/// (as polars infers them); for a glob, the union over its files in order of appearance.
/// When `source.columns` is set, only the selected columns (with the id, image and text
/// columns) that exist are returned. An image column of bytes or `{bytes, path}` structs is
/// listed, though rows carry it as an image, not as a template value.
///
/// `None` for folders of images and PDFs, whose rows have fixed columns: images `path`
/// (relative to the folder); PDFs `path`, `page` (1-based) and `text` (the text layer).
pub fn column_names(spec: &PipelineSpec) -> Result<Option<Vec<String>>> {
    let src = &spec.source;
    let path = spec.resolve(&src.path);
    let mut names: Vec<String> = Vec::new();
    match src.kind {
        SourceKind::Images | SourceKind::Pdfs => return Ok(None),
        SourceKind::Lance => names = lance_column_names(&path)?,
        SourceKind::Parquet | SourceKind::Csv | SourceKind::Jsonl | SourceKind::HfParquet => {
            // A file of a glob whose schema cannot be read is a failed row when the source is
            // read; it is an error here only when no file can be read.
            let mut first_error = None;
            for file in table_files(&path)?.files {
                match file_column_names(src, &file) {
                    Ok(found) => {
                        for n in found {
                            if !names.contains(&n) {
                                names.push(n);
                            }
                        }
                    }
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            if let (true, Some(e)) = (names.is_empty(), first_error) {
                return Err(e);
            }
        }
    }
    if let Some(cols) = &src.columns {
        names = selected_columns(src, cols).into_iter().filter(|c| names.contains(c)).collect();
    }
    Ok(Some(names))
}

fn source_err(path: &Path, message: impl std::fmt::Display) -> Error {
    Error::Source { source_name: path.display().to_string(), message: message.to_string() }
}


pub(crate) fn content_hash(columns: &serde_json::Map<String, serde_json::Value>, image: Option<&[u8]>) -> String {
    // The map keeps the file's column order, so the text is the same on every read.
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

/// The spec's `columns` with the id, image and text columns added.
fn selected_columns(src: &SourceSpec, cols: &[String]) -> Vec<String> {
    let mut cols = cols.to_vec();
    for extra in [&src.id_column, &src.image_column, &src.text_column].into_iter().flatten() {
        if !cols.contains(extra) {
            cols.push(extra.clone());
        }
    }
    cols
}

/// A row that could not be read: `id` names it (a file, `FILE:LINE`, a page range), `columns`
/// say what it is, `error` why it failed.
fn failed_row(src: &SourceSpec, id: String, columns: serde_json::Map<String, serde_json::Value>, error: String) -> SourceRow {
    let mut row = make_row(src, columns, None);
    row.input_id = id;
    row.error = Some(error);
    row
}

// ---- files a row names ----------------------------------------------------------------

const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp", "gif", "bmp", "tif", "tiff"];

/// `O_NONBLOCK`, so that opening a FIFO does not wait for a writer (the file type is checked
/// right after opening; reads of regular files are not affected by the flag).
#[cfg(any(target_os = "macos", target_os = "ios", target_os = "freebsd", target_os = "openbsd", target_os = "netbsd"))]
const O_NONBLOCK: Option<i32> = Some(0x4);
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "x86", target_arch = "aarch64", target_arch = "arm", target_arch = "riscv64")
))]
const O_NONBLOCK: Option<i32> = Some(0o4000);
#[cfg(not(any(
    target_os = "macos",
    target_os = "ios",
    target_os = "freebsd",
    target_os = "openbsd",
    target_os = "netbsd",
    all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "x86", target_arch = "aarch64", target_arch = "arm", target_arch = "riscv64")
    )
)))]
const O_NONBLOCK: Option<i32> = None;

fn file_type_name(meta: &std::fs::Metadata) -> &'static str {
    let t = meta.file_type();
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if t.is_dir() {
        "a directory"
    } else if t.is_file() {
        "a regular file"
    } else {
        "not a regular file"
    }
}

/// Reads a regular file of at most `cap` bytes. Devices, FIFOs, sockets and directories are
/// errors (checked on the opened file, so a path swapped after the check is caught too), and so
/// is a file over the cap, without allocating more than `cap + 1` bytes. `cap_key` is the spec
/// key that raises the cap, named in the error.
pub fn read_regular_file(path: &Path, cap: u64, cap_key: &str) -> std::result::Result<Vec<u8>, String> {
    let not_regular = |meta: &std::fs::Metadata| format!("is {}, not a regular file", file_type_name(meta));
    // The path first: opening a FIFO without O_NONBLOCK would wait for a writer.
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err(not_regular(&meta));
    }
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    if let Some(flag) = O_NONBLOCK {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(flag);
    }
    let file = options.open(path).map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err(not_regular(&meta));
    }
    let too_big = |n: u64| format!("is {n} bytes, over {cap_key} = {cap} (raise it to read larger files)");
    if meta.len() > cap {
        return Err(too_big(meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(cap.saturating_add(1)).read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    if bytes.len() as u64 > cap {
        return Err(too_big(bytes.len() as u64));
    }
    Ok(bytes)
}

/// How image paths found in a table's image column are read: relative to `base` (the
/// directory of the file the row came from), confined to `root` when the spec says so.
#[derive(Debug, Clone)]
struct ImagePaths {
    column: String,
    base: PathBuf,
    /// The canonical source directory (or why it could not be resolved), when confined.
    root: Option<std::result::Result<PathBuf, String>>,
    root_shown: PathBuf,
    max_bytes: u64,
}

impl ImagePaths {
    fn new(src: &SourceSpec, base: &Path, root: &Path) -> Self {
        let root_dir = if root.as_os_str().is_empty() { Path::new(".") } else { root };
        Self {
            column: src.image_column.clone().unwrap_or_default(),
            base: base.to_path_buf(),
            root: src.confine_images.then(|| std::fs::canonicalize(root_dir).map_err(|e| format!("{}: {e}", root_dir.display()))),
            root_shown: root_dir.to_path_buf(),
            max_bytes: src.max_image_bytes,
        }
    }

    /// The image named by path `p` in a row.
    fn read(&self, p: &str) -> std::result::Result<RowImage, String> {
        let col = &self.column;
        if p.is_empty() {
            return Err(format!("image column {col:?}: the path is empty"));
        }
        let full = self.base.join(p);
        let target = match &self.root {
            None => full.clone(),
            Some(Err(e)) => return Err(format!("image column {col:?}: path {p:?}: cannot resolve the source directory {e}")),
            Some(Ok(root)) => {
                let resolved = std::fs::canonicalize(&full).map_err(|e| format!("image column {col:?}: image {}: {e}", full.display()))?;
                if !resolved.starts_with(root) {
                    return Err(format!(
                        "image column {col:?}: path {p:?} resolves to {}, outside the source directory {} \
                         (set source.confine_images = false to read images anywhere)",
                        resolved.display(),
                        self.root_shown.display()
                    ));
                }
                resolved
            }
        };
        read_regular_file(&target, self.max_bytes, "source.max_image_bytes")
            .map(|bytes| RowImage::Encoded { name: p.to_string(), bytes })
            .map_err(|e| format!("image column {col:?}: image {}: {e}", full.display()))
    }
}

// ---- tables through polars --------------------------------------------------------------

/// Name of the row index added to every scan (file row numbers for error messages).
const ROW_INDEX: &str = "__gemma_batch_row";

fn is_glob(p: &str) -> bool {
    p.contains(['*', '?', '['])
}

struct TableFiles {
    files: Vec<PathBuf>,
    /// The directory images must stay inside: the file's directory, or the part of a glob
    /// before its first pattern.
    root: PathBuf,
    glob: bool,
}

/// The files of a table source: the path, or the files its glob matches (sorted).
fn table_files(path: &Path) -> Result<TableFiles> {
    let p = path.display().to_string();
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

fn table(src: &SourceSpec, path: &Path) -> Result<RowBatches> {
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
    if let Some(cols) = &src.columns {
        let mut cols: Vec<Expr> = selected_columns(src, cols).iter().map(|c| col(c.as_str())).collect();
        cols.push(col(ROW_INDEX));
        lf = lf.select(cols);
    }
    if let Some(f) = filter {
        lf = lf.filter(f.clone());
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
        let (screened, copy) = match format {
            Some(f) if path.is_file() => {
                let s = screen_lines(src, path, f)?;
                (s.bad, s.copy)
            }
            _ => (Vec::new(), None),
        };
        let scan_path = copy.as_ref().map_or(path, |c| c.path.as_path()).display().to_string();
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

/// A temporary file, removed when dropped.
struct TempCopy {
    path: PathBuf,
}

impl Drop for TempCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineFormat {
    JsonLines,
    Csv,
}

struct Screened {
    bad: Vec<SourceRow>,
    copy: Option<TempCopy>,
}

/// One record of a line-based file: for CSV a record spans lines while a quoted field is open.
struct Record {
    /// Bytes consumed from the file, line ends included.
    consumed: u64,
    /// Lines the record spans.
    lines: usize,
    /// Longer than the cap: `bytes` holds only its first `cap` bytes.
    too_long: bool,
    /// CSV: the file ended inside a quoted field.
    open_quote: bool,
}

/// Reads the next record into `buf` (line end included), keeping at most `cap` bytes of it.
/// `None` at the end of the file.
fn read_record(reader: &mut impl BufRead, buf: &mut Vec<u8>, cap: usize, csv: bool) -> std::io::Result<Option<Record>> {
    buf.clear();
    let mut rec = Record { consumed: 0, lines: 0, too_long: false, open_quote: false };
    let mut in_quotes = false;
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            rec.open_quote = in_quotes;
            if rec.consumed > 0 {
                rec.lines += 1;
            }
            return Ok((rec.consumed > 0).then_some(rec));
        }
        let mut end = None;
        for (i, &b) in chunk.iter().enumerate() {
            // An over-long record ends at the next line end, quotes or not, so that the file
            // can be read on after it.
            if csv && b == b'"' && !rec.too_long {
                in_quotes = !in_quotes;
            } else if b == b'\n' {
                rec.lines += 1;
                if !in_quotes || rec.too_long {
                    end = Some(i + 1);
                    break;
                }
            }
        }
        let take = end.unwrap_or(chunk.len());
        let room = cap.saturating_sub(buf.len());
        if take > room {
            rec.too_long = true;
        }
        buf.extend_from_slice(&chunk[..take.min(room)]);
        rec.consumed += take as u64;
        reader.consume(take);
        if end.is_some() {
            return Ok(Some(rec));
        }
    }
}

/// Fields of a CSV record (separators outside quotes, plus one).
fn csv_fields(record: &[u8]) -> usize {
    let mut in_quotes = false;
    let mut n = 1;
    for &b in record {
        match b {
            b'"' => in_quotes = !in_quotes,
            b',' if !in_quotes => n += 1,
            _ => {}
        }
    }
    n
}

/// Checks every record of a JSON lines or CSV file. Records that are not UTF-8, not a JSON
/// object (JSON lines), have more fields than the header (CSV) or are longer than
/// `source.max_row_bytes` are failed rows named `FILE:LINE`; when there are any, polars reads
/// a copy of the file without them. A CSV header that cannot be read is an error of the file.
fn screen_lines(src: &SourceSpec, path: &Path, format: LineFormat) -> Result<Screened> {
    let csv = format == LineFormat::Csv;
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader = std::io::BufReader::with_capacity(1 << 16, file);
    let cap = usize::try_from(src.max_row_bytes).unwrap_or(usize::MAX);
    let mut buf = Vec::new();
    let mut bad = Vec::new();
    let mut copy: Option<(TempCopy, std::io::BufWriter<std::fs::File>)> = None;
    let mut good_before: u64 = 0;
    let mut line_no = 0usize;
    let mut header_fields = None;
    while let Some(rec) = read_record(&mut reader, &mut buf, cap, csv).map_err(|e| Error::io(path, e))? {
        let first_line = line_no + 1;
        line_no += rec.lines;
        let content = buf.strip_suffix(b"\n").unwrap_or(&buf);
        let content = content.strip_suffix(b"\r").unwrap_or(content);
        let problem = if rec.too_long {
            Some(format!(
                "line {first_line} is longer than source.max_row_bytes = {} bytes (raise it to read longer lines)",
                src.max_row_bytes
            ))
        } else {
            match std::str::from_utf8(content) {
                Err(e) => Some(format!("line {first_line} is not valid UTF-8 (byte {} of the line)", e.valid_up_to() + 1)),
                Ok(t) if t.trim().is_empty() => None,
                Ok(t) => match format {
                    LineFormat::JsonLines => match serde_json::from_str::<serde_json::Value>(t) {
                        Ok(serde_json::Value::Object(_)) => None,
                        Ok(_) => Some(format!("line {first_line} is not a JSON object")),
                        Err(e) => Some(format!("line {first_line} is not valid JSON: {e}")),
                    },
                    LineFormat::Csv if rec.open_quote => {
                        Some(format!("line {first_line}: a quoted field is not closed before the end of the file"))
                    }
                    LineFormat::Csv => match header_fields {
                        None => {
                            header_fields = Some(csv_fields(content));
                            None
                        }
                        Some(h) => {
                            let n = csv_fields(content);
                            (n > h).then(|| format!("line {first_line} has {n} fields, the header has {h}"))
                        }
                    },
                },
            }
        };
        let Some(message) = problem else {
            match copy.as_mut() {
                Some((t, w)) => w.write_all(&buf).map_err(|e| Error::io(&t.path, e))?,
                None => good_before += rec.consumed,
            }
            continue;
        };
        if csv && header_fields.is_none() {
            return Err(source_err(path, format!("the CSV header (line {first_line}) cannot be read: {message}")));
        }
        if copy.is_none() {
            // First bad line: copy the good lines so far into a temporary file.
            let ext = if csv { "csv" } else { "jsonl" };
            // Unique in this process too: the same file may be opened twice at once.
            static COPIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let tmp = std::env::temp_dir().join(format!(
                "gemma-batch-{}-{}-{}.{ext}",
                std::process::id(),
                COPIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                &sha256_hex(&[path.display().to_string().as_bytes()])[..12]
            ));
            let f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
            let mut w = std::io::BufWriter::new(f);
            let mut src_file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
            std::io::copy(&mut (&mut src_file).take(good_before), &mut w).map_err(|e| Error::io(&tmp, e))?;
            copy = Some((TempCopy { path: tmp }, w));
        }
        let mut columns = serde_json::Map::new();
        columns.insert("line".into(), first_line.into());
        let mut row = failed_row(src, format!("{}:{first_line}", path.display()), columns, format!("{}: {message}", path.display()));
        row.content_hash = sha256_hex(&[content]);
        bad.push(row);
    }
    let copy = match copy {
        Some((t, mut w)) => {
            w.flush().map_err(|e| Error::io(&t.path, e))?;
            Some(t)
        }
        None => None,
    };
    Ok(Screened { bad, copy })
}

// ---- columns as JSON --------------------------------------------------------------------

/// A time zone polars writes as JSON itself (`UTC` or a `[-]HH:MM` offset); for others it
/// needs a time zone database it is not built with.
fn fixed_offset(tz: &str) -> bool {
    if tz == "UTC" {
        return true;
    }
    let mut parts = tz.split(':');
    let (Some(h), Some(m)) = (parts.next(), parts.next()) else { return false };
    match (h.parse::<i64>(), m.parse::<i64>()) {
        (Ok(h), Ok(m)) => (h * 3600 + m * 60).abs() < 86_400,
        _ => false,
    }
}

/// Types polars' JSON writer handles (everything else is converted here).
fn json_safe(dt: &DataType) -> bool {
    match dt {
        DataType::Boolean | DataType::String | DataType::Date | DataType::Null | DataType::Time | DataType::Duration(_) => true,
        DataType::Datetime(_, None) => true,
        DataType::Datetime(_, Some(tz)) => fixed_offset(tz.as_str()),
        DataType::List(inner) => json_safe(inner),
        DataType::Struct(fields) => fields.iter().all(|f| json_safe(f.dtype())),
        d => d.is_primitive_numeric() || d.is_categorical() || d.is_enum(),
    }
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panicked".into())
}

/// Each row of `df` as a JSON object, columns in the frame's order. Types polars writes as
/// JSON go through its writer; binary values become a description with their size and
/// SHA-256, datetimes in named time zones RFC 3339 text, anything else its display text.
fn columns_json(df: &DataFrame) -> std::result::Result<Vec<serde_json::Map<String, serde_json::Value>>, String> {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    let n = df.height();
    let (safe, other): (Vec<&Column>, Vec<&Column>) = df.columns().iter().partition(|c| json_safe(c.dtype()));
    let mut written: Vec<serde_json::Map<String, serde_json::Value>> = vec![serde_json::Map::new(); n];
    if !safe.is_empty() && n > 0 {
        let mut part = DataFrame::new(n, safe.iter().map(|c| (*c).clone()).collect()).map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        catch_unwind(AssertUnwindSafe(|| JsonWriter::new(&mut buf).with_json_format(JsonFormat::JsonLines).finish(&mut part)))
            .map_err(|p| format!("JSON conversion: {}", panic_text(p)))?
            .map_err(|e| e.to_string())?;
        let lines: Vec<&[u8]> = buf.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
        if lines.len() != n {
            return Err(format!("JSON conversion gave {} rows for {n}", lines.len()));
        }
        for (row, line) in written.iter_mut().zip(lines) {
            *row = serde_json::from_slice(line).map_err(|e| e.to_string())?;
        }
    }
    let mut converted: Vec<(String, Vec<serde_json::Value>)> = Vec::new();
    for c in other {
        let s = c.as_materialized_series();
        let values = catch_unwind(AssertUnwindSafe(|| series_json(s)))
            .map_err(|p| format!("column {:?}: {}", c.name(), panic_text(p)))?
            .map_err(|e| format!("column {:?}: {e}", c.name()))?;
        converted.push((c.name().to_string(), values));
    }
    if converted.is_empty() {
        return Ok(written);
    }
    // Rebuild each row in the frame's column order.
    let names: Vec<String> = df.get_column_names().iter().map(|s| s.to_string()).collect();
    let mut iters: Vec<(String, std::vec::IntoIter<serde_json::Value>)> = converted.into_iter().map(|(k, v)| (k, v.into_iter())).collect();
    let mut rows = Vec::with_capacity(n);
    for mut w in written {
        let mut row = serde_json::Map::new();
        for name in &names {
            let v = match iters.iter_mut().find(|(k, _)| k == name) {
                Some((_, it)) => it.next().unwrap_or(serde_json::Value::Null),
                None => w.remove(name).unwrap_or(serde_json::Value::Null),
            };
            row.insert(name.clone(), v);
        }
        rows.push(row);
    }
    Ok(rows)
}

/// A value of a binary column: its size and hash (the bytes themselves are not template text).
fn binary_json(b: &[u8]) -> serde_json::Value {
    format!("<{} bytes, sha256 {}>", b.len(), &sha256_hex(&[b])[..16]).into()
}

fn datetime_text(v: i64, unit: TimeUnit, tz: &str) -> String {
    use arrow_array::temporal_conversions::{as_datetime, as_datetime_with_timezone};
    use arrow_array::types::{TimestampMicrosecondType as Us, TimestampMillisecondType as Ms, TimestampNanosecondType as Ns};
    let zone: Option<arrow_array::timezone::Tz> = tz.parse().ok();
    let text = match (unit, zone) {
        (TimeUnit::Nanoseconds, Some(z)) => as_datetime_with_timezone::<Ns>(v, z).map(|d| d.to_rfc3339()),
        (TimeUnit::Microseconds, Some(z)) => as_datetime_with_timezone::<Us>(v, z).map(|d| d.to_rfc3339()),
        (TimeUnit::Milliseconds, Some(z)) => as_datetime_with_timezone::<Ms>(v, z).map(|d| d.to_rfc3339()),
        // A zone not known here: the instant in UTC, with the zone's name.
        (TimeUnit::Nanoseconds, None) => as_datetime::<Ns>(v).map(|d| format!("{d} UTC ({tz})")),
        (TimeUnit::Microseconds, None) => as_datetime::<Us>(v).map(|d| format!("{d} UTC ({tz})")),
        (TimeUnit::Milliseconds, None) => as_datetime::<Ms>(v).map(|d| format!("{d} UTC ({tz})")),
    };
    text.unwrap_or_else(|| format!("{v} ({unit:?} since 1970, {tz})"))
}

/// The JSON values of a series whose type polars' JSON writer does not handle.
fn series_json(s: &Series) -> std::result::Result<Vec<serde_json::Value>, String> {
    use serde_json::Value;
    let n = s.len();
    if json_safe(s.dtype()) {
        let df = DataFrame::new(n, vec![s.clone().into_column()]).map_err(|e| e.to_string())?;
        let name = s.name().to_string();
        return Ok(columns_json(&df)?.into_iter().map(|mut r| r.remove(&name).unwrap_or(Value::Null)).collect());
    }
    let err = |e: PolarsError| e.to_string();
    Ok(match s.dtype() {
        DataType::Binary => s.binary().map_err(err)?.iter().map(|b| b.map_or(Value::Null, binary_json)).collect(),
        DataType::BinaryOffset => (0..n)
            .map(|i| match s.get(i) {
                Ok(AnyValue::Binary(b)) => binary_json(b),
                Ok(AnyValue::BinaryOwned(b)) => binary_json(&b),
                _ => Value::Null,
            })
            .collect(),
        DataType::Datetime(unit, Some(tz)) => {
            let (unit, tz) = (*unit, tz.to_string());
            let phys = s.to_physical_repr();
            phys.i64().map_err(err)?.iter().map(|v| v.map_or(Value::Null, |v| datetime_text(v, unit, &tz).into())).collect()
        }
        DataType::List(_) => {
            let ca = s.list().map_err(err)?;
            (0..n)
                .map(|i| match ca.get_as_series(i) {
                None => Ok(Value::Null),
                    Some(inner) => series_json(&inner).map(Value::Array),
                })
                .collect::<std::result::Result<_, String>>()?
        }
        DataType::Struct(_) => {
            let ca = s.struct_().map_err(err)?;
            let fields = ca.fields_as_series();
            let mut values: Vec<(String, std::vec::IntoIter<Value>)> = Vec::new();
            for f in &fields {
                values.push((f.name().to_string(), series_json(f)?.into_iter()));
            }
            let valid: Vec<bool> = match ca.rechunk_validity() {
                Some(bits) => bits.iter().collect(),
                None => vec![true; n],
            };
            valid
                .into_iter()
                .map(|ok| {
                    let obj: serde_json::Map<String, Value> =
                        values.iter_mut().map(|(k, it)| (k.clone(), it.next().unwrap_or(Value::Null))).collect();
                    if ok { Value::Object(obj) } else { Value::Null }
                })
                .collect()
        }
        _ => (0..n)
            .map(|i| match s.get(i) {
                Ok(AnyValue::Null) => Value::Null,
                Ok(v) => Value::String(v.to_string()),
                Err(_) => Value::Null,
            })
            .collect(),
    })
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

/// Column names of one table file, from its schema (see [`column_names`]).
fn file_column_names(src: &SourceSpec, path: &Path) -> Result<Vec<String>> {
    if src.kind == SourceKind::Jsonl && path.is_file() {
        return json_lines_keys(src, path);
    }
    let plpath = PlRefPath::new(path.display().to_string());
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

// ---- Lance datasets -----------------------------------------------------------------

/// Field names of a Lance dataset's schema, read on a thread of its own (callable from
/// anywhere, inside an async runtime or not).
fn lance_column_names(path: &Path) -> Result<Vec<String>> {
    let uri = path.display().to_string();
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| source_err(path, e))?;
            rt.block_on(async {
                let ds = lance::dataset::Dataset::open(&uri).await.map_err(|e| source_err(path, e))?;
                Ok(ds.schema().fields.iter().map(|f| f.name.clone()).collect())
            })
        })
        .join()
        .unwrap_or_else(|p| Err(source_err(path, panic_text(p))))
    })
}

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
            scan.project(&selected_columns(src, cols)).map_err(err)?;
        }
        if let Some(f) = &src.filter {
            scan.filter(f).map_err(|e| source_err(path, format!("filter {f:?}: {e}")))?;
        }
        scan.batch_size(src.read_batch);
        scan.try_into_stream().await.map_err(err)
    })?;
    let src = src.clone();
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let images = ImagePaths::new(&src, &base, &base);
    let path = path.to_path_buf();
    let mut stream = Box::pin(stream);
    let mut rows_before = 0usize;
    Ok(Box::new(std::iter::from_fn(move || {
        let _keep_runtime = &owned;
        let batch = handle.block_on(stream.next())?;
        Some(batch.map_err(|e| source_err(&path, e)).map(|b| {
            let first = rows_before;
            rows_before += b.num_rows();
            let name = |i: usize| format!("{}#row={}", path.display(), first + i + 1);
            match arrow_rows(&src, &images, &b) {
                Ok(rows) => rows,
                // Row by row, so that one row that cannot be converted is one failed row.
                Err(_) => (0..b.num_rows())
                    .flat_map(|i| {
                        arrow_rows(&src, &images, &b.slice(i, 1)).unwrap_or_else(|e| {
                            vec![failed_row(&src, name(i), serde_json::Map::new(), format!("{}: the row cannot be read: {e}", name(i)))]
                        })
                    })
                    .collect(),
            }
        }))
    })))
}

/// Rows of an Arrow record batch: the image column as in tables, every other column as JSON.
fn arrow_rows(src: &SourceSpec, images: &ImagePaths, batch: &arrow_array::RecordBatch) -> std::result::Result<Vec<SourceRow>, String> {
    use arrow_array::cast::AsArray;
    use arrow_array::Array;
    use arrow_schema::DataType as A;
    let n = batch.num_rows();
    let mut row_images: Vec<Option<std::result::Result<RowImage, String>>> = vec![None; n];
    let mut batch = batch.clone();
    if let Some(name) = &src.image_column {
        let idx = batch.schema().index_of(name).map_err(|_| format!("image column {name:?} is not in the dataset"))?;
        let column = batch.column(idx).clone();
        let bytes = |name: &str, b: Option<&[u8]>| b.map(|b| Ok(RowImage::Encoded { name: name.to_string(), bytes: b.to_vec() }));
        let label = format!("{name} bytes");
        row_images = match column.data_type() {
            A::Utf8 => column.as_string::<i32>().iter().map(|p| p.map(|p| images.read(p))).collect(),
            A::LargeUtf8 => column.as_string::<i64>().iter().map(|p| p.map(|p| images.read(p))).collect(),
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
                            (None, Some(p)) => Some(images.read(p)),
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
    Ok(objects.into_iter().zip(row_images).map(|(columns, image)| make_row(src, columns, image)).collect())
}

// ---- folders of files ---------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FolderKind {
    Images,
    Pdfs,
}

/// The files of a folder source, read a batch of rows at a time. Entries that match but are
/// not regular files (FIFOs, devices, broken links) are failed rows, not skipped.
fn files(src: &SourceSpec, dir: &Path, extensions: &'static [&'static str], kind: FolderKind) -> Result<RowBatches> {
    if !dir.is_dir() {
        return Err(source_err(dir, "not a directory"));
    }
    let pattern = match &src.glob {
        Some(g) => dir.join(g).display().to_string(),
        None => dir.join("**/*").display().to_string(),
    };
    let mut paths: Vec<std::result::Result<PathBuf, (PathBuf, String)>> = Vec::new();
    for entry in glob::glob(&pattern).map_err(|e| source_err(dir, format!("glob {pattern:?}: {e}")))? {
        match entry {
            Ok(p) if p.is_dir() => {}
            Ok(p) => {
                let wanted = src.glob.is_some()
                    || p.extension().and_then(|e| e.to_str()).is_some_and(|e| extensions.contains(&e.to_ascii_lowercase().as_str()));
                if wanted {
                    paths.push(Ok(p));
                }
            }
            Err(e) => paths.push(Err((e.path().to_path_buf(), e.error().to_string()))),
        }
    }
    paths.sort_by(|a, b| {
        let key = |p: &std::result::Result<PathBuf, (PathBuf, String)>| match p {
            Ok(p) | Err((p, _)) => p.clone(),
        };
        key(a).cmp(&key(b))
    });
    Ok(Box::new(FolderRows { src: src.clone(), dir: dir.to_path_buf(), kind, paths: paths.into_iter(), current: None }))
}

struct FolderRows {
    src: SourceSpec,
    dir: PathBuf,
    kind: FolderKind,
    paths: std::vec::IntoIter<std::result::Result<PathBuf, (PathBuf, String)>>,
    /// The PDF whose pages are being read.
    current: Option<PdfPages>,
}

impl Iterator for FolderRows {
    type Item = Result<Vec<SourceRow>>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut batch = Vec::new();
        while batch.len() < self.src.read_batch {
            if let Some(pdf) = &mut self.current {
                let room = self.src.read_batch - batch.len();
                match pdf.next_row(&self.src, room) {
                    Some(row) => {
                        batch.push(row);
                        continue;
                    }
                    None => self.current = None,
                }
            }
            let Some(entry) = self.paths.next() else { break };
            match entry {
                Err((path, e)) => {
                    let rel = relative(&self.dir, &path);
                    let mut columns = serde_json::Map::new();
                    columns.insert("path".into(), rel.clone().into());
                    batch.push(failed_row(&self.src, rel, columns, format!("{}: cannot be listed: {e}", path.display())));
                }
                Ok(path) => match self.kind {
                    FolderKind::Images => batch.push(image_row(&self.src, &self.dir, &path)),
                    FolderKind::Pdfs => self.current = Some(PdfPages::new(&self.dir, path)),
                },
            }
        }
        (!batch.is_empty()).then_some(Ok(batch))
    }
}

fn relative(dir: &Path, path: &Path) -> String {
    path.strip_prefix(dir).unwrap_or(path).display().to_string()
}

fn image_row(src: &SourceSpec, dir: &Path, path: &Path) -> SourceRow {
    let rel = relative(dir, path);
    let mut columns = serde_json::Map::new();
    columns.insert("path".into(), rel.clone().into());
    let image = read_regular_file(path, src.max_image_bytes, "source.max_image_bytes")
        .map(|bytes| RowImage::Encoded { name: rel.clone(), bytes })
        .map_err(|e| format!("image {}: {e}", path.display()));
    let mut row = make_row(src, columns, Some(image));
    if src.id_column.is_none() {
        row.input_id = rel;
    }
    row
}

/// The rows of one PDF, one a page, rendered as they are asked for. A PDF that cannot be
/// opened is one failed row; pages beyond `source.max_pdf_pages` are one failed row too.
struct PdfPages {
    path: PathBuf,
    rel: String,
    state: PdfState,
}

enum PdfState {
    NotOpened,
    Open {
        doc: crate::prepare::pdf::Document,
        /// Rendered pages not yet returned (at most a batch of them).
        ready: std::collections::VecDeque<(usize, crate::prepare::pdf::Page)>,
        /// The next page to render (0-based).
        next: usize,
        count: usize,
    },
    Done,
}

impl PdfPages {
    fn new(dir: &Path, path: PathBuf) -> Self {
        Self { rel: relative(dir, &path), path, state: PdfState::NotOpened }
    }

    /// The next row; `room` (rows left in the batch being filled) is how many pages are
    /// rendered at once when none is ready.
    fn next_row(&mut self, src: &SourceSpec, room: usize) -> Option<SourceRow> {
        let path_column = || {
            let mut columns = serde_json::Map::new();
            columns.insert("path".into(), self.rel.clone().into());
            columns
        };
        if matches!(self.state, PdfState::NotOpened) {
            let opened = read_regular_file(&self.path, src.max_pdf_bytes, "source.max_pdf_bytes")
                .and_then(crate::prepare::pdf::Document::open);
            match opened {
                Ok(doc) => {
                    let count = doc.page_count();
                    self.state = PdfState::Open { doc, ready: Default::default(), next: 0, count };
                }
                Err(e) => {
                    self.state = PdfState::Done;
                    return Some(failed_row(src, self.rel.clone(), path_column(), format!("pdf {}: {e}", self.path.display())));
                }
            }
        }
        let PdfState::Open { doc, ready, next, count } = &mut self.state else { return None };
        let (count, cap) = (*count, src.max_pdf_pages);
        let last = count.min(cap);
        if ready.is_empty() && *next < last {
            let end = (*next + room.max(1)).min(last);
            ready.extend((*next..end).zip(doc.pages(*next..end, src.dpi, src.max_page_pixels)));
            *next = end;
        }
        let Some((i, page)) = ready.pop_front() else {
            self.state = PdfState::Done;
            if count <= cap {
                return None;
            }
            let (first, skipped) = (cap + 1, count - cap);
            let mut columns = path_column();
            columns.insert("pages".into(), format!("{first}-{count}").into());
            let error = format!(
                "pdf {}: has {count} pages; pages {first}-{count} ({skipped} pages) were not read because \
                 source.max_pdf_pages = {cap} (raise it to read them)",
                self.path.display()
            );
            return Some(failed_row(src, format!("{}#pages={first}-{count}", self.rel), columns, error));
        };
        let page_no = i + 1;
        let id = format!("{}#page={page_no}", self.rel);
        let mut columns = path_column();
        columns.insert("page".into(), page_no.into());
        columns.insert("text".into(), page.text.clone().unwrap_or_default().into());
        let image = page.image.map(|image| RowImage::Rendered { name: id.clone(), image });
        let mut row = make_row(src, columns, image.map(Ok));
        if let Some(e) = page.error {
            row.error = Some(format!("pdf {} page {page_no}: {e}", self.path.display()));
        }
        row.text = page.text;
        if src.id_column.is_none() {
            row.input_id = id;
        }
        Some(row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_for(dir: &Path, source: &str) -> PipelineSpec {
        let text = format!(
            "name = \"t\"\n[source]\n{source}\n[model]\ndir = \"m\"\n[[task]]\nname = \"c\"\nkind = \"caption\"\n[sink]\ndir = \"out\"\n"
        );
        let path = dir.join("spec.toml");
        std::fs::write(&path, text).unwrap();
        PipelineSpec::load(&path).unwrap()
    }

    fn all_rows(spec: &PipelineSpec) -> Vec<SourceRow> {
        open(spec).unwrap().flat_map(|b| b.unwrap()).collect()
    }

    #[test]
    fn only_regular_files_up_to_the_cap_are_read() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("f.bin");
        std::fs::write(&f, vec![7u8; 100]).unwrap();
        assert_eq!(read_regular_file(&f, 100, "k").unwrap().len(), 100);
        let e = read_regular_file(&f, 99, "source.max_image_bytes").unwrap_err();
        assert!(e.contains("100 bytes") && e.contains("source.max_image_bytes = 99"), "{e}");
        assert!(read_regular_file(tmp.path(), 100, "k").unwrap_err().contains("a directory"));
        #[cfg(unix)]
        {
            assert!(read_regular_file(Path::new("/dev/zero"), 100, "k").unwrap_err().contains("character device"));
            let fifo = tmp.path().join("fifo");
            if std::process::Command::new("mkfifo").arg(&fifo).status().is_ok_and(|s| s.success()) {
                assert!(read_regular_file(&fifo, 100, "k").unwrap_err().contains("FIFO"));
            }
        }
        assert!(read_regular_file(&tmp.path().join("missing"), 100, "k").is_err());
    }

    #[test]
    fn image_paths_stay_inside_the_source_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir_all(data.join("sub")).unwrap();
        std::fs::write(data.join("sub/a.png"), b"png").unwrap();
        std::fs::write(tmp.path().join("outside.png"), b"png").unwrap();
        let spec = spec_for(tmp.path(), "kind = \"jsonl\"\npath = \"x.jsonl\"\nimage_column = \"image\"");
        let paths = ImagePaths::new(&spec.source, &data, &data);
        assert!(paths.read("sub/a.png").is_ok());
        assert!(paths.read("sub/../sub/a.png").is_ok());
        for p in ["../outside.png", "sub/../../outside.png", &tmp.path().join("outside.png").display().to_string()] {
            let e = paths.read(p).unwrap_err();
            assert!(e.contains("outside the source directory") && e.contains("source.confine_images"), "{p}: {e}");
        }
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(tmp.path().join("outside.png"), data.join("link.png")).unwrap();
            assert!(paths.read("link.png").unwrap_err().contains("outside"));
        }
        assert!(paths.read("").unwrap_err().contains("empty"));
        let mut open_spec = spec.source.clone();
        open_spec.confine_images = false;
        assert!(ImagePaths::new(&open_spec, &data, &data).read("../outside.png").is_ok());
    }

    #[test]
    fn csv_records_span_quoted_newlines_and_bad_lines_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let mut csv = b"id,text\n1,\"two\nlines\"\n2,plain\n3,caf\xe9\n4,a,b,c\n5,\"quoted, comma\"\n".to_vec();
        csv.extend_from_slice(b"6,ok\r\n");
        std::fs::write(tmp.path().join("t.csv"), &csv).unwrap();
        let spec = spec_for(tmp.path(), "kind = \"csv\"\npath = \"t.csv\"\nid_column = \"id\"");
        let rows = all_rows(&spec);
        let failed: Vec<(&str, &str)> =
            rows.iter().filter_map(|r| r.error.as_deref().map(|e| (r.input_id.as_str(), e))).collect();
        assert_eq!(failed.len(), 2, "{failed:?}");
        assert!(failed[0].0.ends_with("t.csv:5") && failed[0].1.contains("line 5 is not valid UTF-8"), "{failed:?}");
        assert!(failed[1].0.ends_with("t.csv:6") && failed[1].1.contains("line 6 has 4 fields, the header has 2"), "{failed:?}");
        let ok: Vec<&str> = rows.iter().filter(|r| r.error.is_none()).map(|r| r.input_id.as_str()).collect();
        assert_eq!(ok, ["1", "2", "5", "6"]);
        let first = rows.iter().find(|r| r.input_id == "1").unwrap();
        assert_eq!(first.columns["text"], "two\nlines");
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

    #[test]
    fn over_long_lines_are_failed_rows() {
        let tmp = tempfile::tempdir().unwrap();
        let long = format!("{{\"id\": \"long\", \"text\": \"{}\"}}\n", "x".repeat(5000));
        std::fs::write(tmp.path().join("t.jsonl"), format!("{{\"id\": \"a\"}}\n{long}{{\"id\": \"b\"}}\n")).unwrap();
        let spec = spec_for(tmp.path(), "kind = \"jsonl\"\npath = \"t.jsonl\"\nid_column = \"id\"\nmax_row_bytes = 1000");
        let rows = all_rows(&spec);
        let failed: Vec<&SourceRow> = rows.iter().filter(|r| r.error.is_some()).collect();
        assert_eq!(failed.len(), 1);
        assert!(failed[0].input_id.ends_with("t.jsonl:2"));
        assert!(failed[0].error.as_ref().unwrap().contains("source.max_row_bytes = 1000"));
        let ok: Vec<&str> = rows.iter().filter(|r| r.error.is_none()).map(|r| r.input_id.as_str()).collect();
        assert_eq!(ok, ["a", "b"]);
    }

    #[test]
    fn binary_and_time_zone_columns_become_text() {
        let tmp = tempfile::tempdir().unwrap();
        let blob: Vec<Option<&[u8]>> = vec![Some(b"\x00\x01\x02"), None];
        let mut df = df!("id" => ["a", "b"], "blob" => blob, "ts" => [1_700_000_000_000i64, 0]).unwrap();
        df = df
            .lazy()
            .with_column(col("ts").cast(DataType::Datetime(TimeUnit::Milliseconds, TimeZone::opt_try_new(Some("Europe/Paris")).unwrap())))
            .collect()
            .unwrap();
        let f = std::fs::File::create(tmp.path().join("t.parquet")).unwrap();
        ParquetWriter::new(f).finish(&mut df).unwrap();
        let spec = spec_for(tmp.path(), "kind = \"parquet\"\npath = \"t.parquet\"\nid_column = \"id\"");
        let rows = all_rows(&spec);
        assert_eq!(rows.len(), 2);
        assert!(rows.iter().all(|r| r.error.is_none()), "{:?}", rows.iter().map(|r| &r.error).collect::<Vec<_>>());
        let a = &rows[0].columns;
        assert_eq!(a.keys().collect::<Vec<_>>(), ["id", "blob", "ts"], "the file's column order");
        assert!(a["blob"].as_str().unwrap().starts_with("<3 bytes, sha256 "), "{a:?}");
        assert_eq!(a["ts"], "2023-11-14T23:13:20+01:00");
        assert_eq!(rows[1].columns["blob"], serde_json::Value::Null);
        assert_eq!(column_names(&spec).unwrap(), Some(vec!["id".into(), "blob".into(), "ts".into()]));
    }

    #[test]
    fn column_names_come_from_the_schema() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("u.csv"), b"id,question\n1,\"a\"\n").unwrap();
        std::fs::write(tmp.path().join("a.jsonl"), b"{\"id\": 1, \"q\": \"x\"}\nnot json\n{\"id\": 2, \"extra\": true}\n").unwrap();
        let spec = spec_for(tmp.path(), "kind = \"csv\"\npath = \"u.csv\"");
        assert_eq!(column_names(&spec).unwrap(), Some(vec!["id".into(), "question".into()]));
        let spec = spec_for(tmp.path(), "kind = \"jsonl\"\npath = \"*.jsonl\"");
        assert_eq!(column_names(&spec).unwrap(), Some(vec!["id".into(), "q".into(), "extra".into()]));
        let spec = spec_for(tmp.path(), "kind = \"jsonl\"\npath = \"a.jsonl\"\ncolumns = [\"q\", \"nope\"]\nid_column = \"id\"");
        assert_eq!(column_names(&spec).unwrap(), Some(vec!["q".into(), "id".into()]));
        let spec = spec_for(tmp.path(), "kind = \"pdfs\"\npath = \".\"");
        assert_eq!(column_names(&spec).unwrap(), None);
        let spec = spec_for(tmp.path(), "kind = \"csv\"\npath = \"missing.csv\"");
        assert!(column_names(&spec).is_err());
    }

    #[test]
    fn pdf_pages_are_capped_with_one_failed_row_for_the_rest() {
        let tmp = tempfile::tempdir().unwrap();
        let boxes = vec![(20.0, 20.0); 12];
        std::fs::write(tmp.path().join("many.pdf"), crate::prepare::pdf::tests::pdf_with_pages(&boxes)).unwrap();
        let spec = spec_for(tmp.path(), "kind = \"pdfs\"\npath = \".\"\nmax_pdf_pages = 5\nread_batch = 2");
        let batches: Vec<Vec<SourceRow>> = open(&spec).unwrap().map(|b| b.unwrap()).collect();
        assert!(batches.iter().all(|b| b.len() <= 2), "batches hold at most read_batch rows");
        let rows: Vec<SourceRow> = batches.into_iter().flatten().collect();
        assert_eq!(rows.len(), 6);
        assert!(rows[..5].iter().all(|r| r.error.is_none() && r.image.is_some()));
        assert_eq!(rows[5].input_id, "many.pdf#pages=6-12");
        let e = rows[5].error.as_deref().unwrap();
        assert!(e.contains("has 12 pages") && e.contains("(7 pages) were not read") && e.contains("source.max_pdf_pages = 5"), "{e}");
    }
}
