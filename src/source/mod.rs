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
//!
//! Here: the row types, [`open`], [`column_names`] and what every kind of source shares (row
//! ids and content hashes, failed rows). `tables` scans tables through polars, `lines` screens
//! JSON lines and CSV files, `columns` turns columns into JSON, `images` reads the files a row
//! names, `folders` lists folders of images and PDFs, `lance` scans Lance datasets,
//! `openai_batch` reads OpenAI Batch API request files into chat requests, `staged` reads
//! files in an object store (`s3://...`) through local copies.

mod columns;
mod folders;
mod images;
mod lance;
mod lines;
mod openai_batch;
mod staged;
mod tables;

use std::path::Path;

use crate::util::sha256_hex;

use crate::error::{Error, Result};
use crate::spec::{PipelineSpec, SourceKind, SourceSpec};

// `self::`: the module `lance` shares its name with the crate it reads.
use self::folders::{files, FolderKind, IMAGE_EXTENSIONS};
pub use self::images::read_regular_file;
use self::lance::{lance_column_names, lance_table};
pub use self::openai_batch::{CHAT_COMPLETIONS, DUPLICATE_CUSTOM_ID, INVALID_REQUEST, OPENAI_COLUMNS, OPENAI_KEPT_COLUMNS};
use self::tables::{file_column_names, table, table_files};

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
    /// The conversation a request file asks to continue (`openai_batch` sources).
    pub request: Option<std::sync::Arc<ChatRequest>>,
}

/// A chat completion request of a request file: the conversation, its images and the
/// generation parameters it sets.
#[derive(Debug, Clone, Default)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    /// The images of the messages' image parts, in order (fewer when one could not be read:
    /// the row then has an error).
    pub images: Vec<RowImage>,
    pub params: RequestParams,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChatMessage {
    pub role: ChatRole,
    pub parts: Vec<ChatPart>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatRole {
    System,
    User,
    Assistant,
}

impl ChatRole {
    /// The role as chat templates name it.
    pub fn as_str(self) -> &'static str {
        match self {
            ChatRole::System => "system",
            ChatRole::User => "user",
            ChatRole::Assistant => "assistant",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ChatPart {
    Text(String),
    /// The next of the request's images.
    Image,
}

/// Generation parameters a request sets (None: the task's).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RequestParams {
    pub max_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub seed: Option<u64>,
}

pub type RowBatches = Box<dyn Iterator<Item = Result<Vec<SourceRow>>> + Send>;

/// Opens the spec's source as an iterator of row batches.
pub fn open(spec: &PipelineSpec) -> Result<RowBatches> {
    open_source(&spec.source, &spec.resolve(&spec.source.path))
}

/// Opens a source whose path is already resolved (`path` stands for `src.path`).
pub fn open_source(src: &SourceSpec, path: &Path) -> Result<RowBatches> {
    if matches!(src.kind, SourceKind::Images | SourceKind::Pdfs) && crate::objects::is_uri(&path.display().to_string()) {
        return Err(source_err(
            path,
            "folders of images and PDFs are read from local directories; for files in an object store, list them \
             in a table (Parquet, CSV or JSON lines) whose image column holds their paths or URIs",
        ));
    }
    match src.kind {
        SourceKind::Parquet | SourceKind::Csv | SourceKind::Jsonl | SourceKind::HfParquet => table(src, path),
        SourceKind::Images => files(src, path, IMAGE_EXTENSIONS, FolderKind::Images),
        SourceKind::Pdfs => files(src, path, &["pdf"], FolderKind::Pdfs),
        SourceKind::Lance => lance_table(src, path),
        SourceKind::OpenaiBatch => openai_batch::requests(src, path),
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
/// Request files (`openai_batch`) have the fixed columns [`OPENAI_COLUMNS`].
pub fn column_names(spec: &PipelineSpec) -> Result<Option<Vec<String>>> {
    let src = &spec.source;
    let path = spec.resolve(&src.path);
    let mut names: Vec<String> = Vec::new();
    match src.kind {
        SourceKind::Images | SourceKind::Pdfs => return Ok(None),
        SourceKind::OpenaiBatch => return Ok(Some(OPENAI_COLUMNS.iter().map(|c| c.to_string()).collect())),
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

/// The content hash of a row with several images: [`content_hash`] with the images joined
/// (each length-prefixed) as its image, without copying them; equal to `content_hash(columns,
/// None)` when there are none.
pub(crate) fn content_hash_images(columns: &serde_json::Map<String, serde_json::Value>, images: &[&[u8]]) -> String {
    use sha2::{Digest, Sha256};
    let text = serde_json::to_string(columns).unwrap_or_default();
    let joined: u64 = images.iter().map(|i| 8 + i.len() as u64).sum();
    let mut h = Sha256::new();
    h.update((text.len() as u64).to_le_bytes());
    h.update(text.as_bytes());
    h.update(joined.to_le_bytes());
    for i in images {
        h.update((i.len() as u64).to_le_bytes());
        h.update(i);
    }
    format!("{:x}", h.finalize())
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

/// A row from its columns and its image (or why the image could not be read): the content
/// hash covers both, the id is the id column's value, else the hash.
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
    SourceRow { input_id, content_hash: hash, columns, image, text, error, request: None }
}

/// The message of a caught panic.
fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panicked".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A spec in `dir` with the given `[source]` keys (the helpers are shared by the tests of
    /// every module here).
    pub(super) fn spec_for(dir: &Path, source: &str) -> PipelineSpec {
        let text = format!(
            "name = \"t\"\n[source]\n{source}\n[model]\ndir = \"m\"\n[[task]]\nname = \"c\"\nkind = \"caption\"\n[sink]\ndir = \"out\"\n"
        );
        let path = dir.join("spec.toml");
        std::fs::write(&path, text).unwrap();
        PipelineSpec::load(&path).unwrap()
    }

    pub(super) fn all_rows(spec: &PipelineSpec) -> Vec<SourceRow> {
        open(spec).unwrap().flat_map(|b| b.unwrap()).collect()
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
}
