//! Pipeline specs (`pipelines/*.toml`): where rows come from, what to ask the model, which
//! filters screen inputs and outputs, where results go. Relative paths are resolved against
//! the spec file's directory, so a spec runs the same from any working directory.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::model::{BackendKind, Device, Variant};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    pub name: String,
    pub source: SourceSpec,
    pub model: ModelSpec,
    #[serde(rename = "task")]
    pub tasks: Vec<TaskSpec>,
    #[serde(default)]
    pub filters: FilterStages,
    pub sink: SinkSpec,
    /// The spec file's text, kept for the run record.
    #[serde(skip)]
    pub text: String,
    /// Directory relative paths are resolved against.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    Parquet,
    Csv,
    Jsonl,
    /// A Hugging Face datasets Parquet export: image columns are structs of `bytes` and `path`.
    HfParquet,
    /// A folder of images (`glob` selects them).
    Images,
    /// A folder of PDFs: one row a page, with the rendered page and its text layer.
    Pdfs,
    /// A Lance dataset (a local directory or an object-store URI).
    Lance,
    /// An OpenAI Batch API / vLLM `run-batch` request file (JSON lines of `custom_id`,
    /// `method`, `url` and a chat completion `body`), for `chat` tasks.
    OpenaiBatch,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    pub kind: SourceKind,
    /// A file, a glob of files, or (images, pdfs) a directory.
    pub path: String,
    /// Row identity; when absent, a hash of the row's content.
    pub id_column: Option<String>,
    /// Columns to read (pushed down into the scan).
    pub columns: Option<Vec<String>>,
    /// A SQL boolean expression over columns, e.g. `kind = 'invoice' AND total > 10`.
    pub filter: Option<String>,
    /// Column with the image: a path (relative to the source file), bytes, or a {bytes, path} struct.
    pub image_column: Option<String>,
    /// Column with document text, available to prompt templates as `text`.
    pub text_column: Option<String>,
    /// For `images` and `pdfs`: which files inside `path` (default: common image types / `*.pdf`).
    pub glob: Option<String>,
    /// For `pdfs`: rendering resolution.
    #[serde(default = "default_dpi")]
    pub dpi: f32,
    /// Rows read and held at once (memory stays bounded by this, not by the corpus).
    #[serde(default = "default_read_batch")]
    pub read_batch: usize,
    /// Largest image file a row may name (image column paths, `images` folders); a larger
    /// file is a failed row. Only regular files are read (not devices, FIFOs or directories).
    #[serde(default = "default_max_image_bytes")]
    pub max_image_bytes: u64,
    /// Image paths in a table's image column must resolve (after `..` and symlinks) inside the
    /// source's directory; a path outside is a failed row.
    #[serde(default = "yes")]
    pub confine_images: bool,
    /// For `pdfs`: largest PDF file read; a larger one is a failed row.
    #[serde(default = "default_max_pdf_bytes")]
    pub max_pdf_bytes: u64,
    /// For `pdfs`: pages read per document; the pages beyond are one failed row saying so.
    #[serde(default = "default_max_pdf_pages")]
    pub max_pdf_pages: usize,
    /// For `pdfs`: a page whose box at `dpi` has more pixels than this is a failed row (not rendered).
    #[serde(default = "default_max_page_pixels")]
    pub max_page_pixels: u64,
    /// For tables read line by line (JSON lines, CSV): a longer line (CSV record) is a failed row.
    #[serde(default = "default_max_row_bytes")]
    pub max_row_bytes: u64,
}

fn default_dpi() -> f32 {
    96.0
}
fn default_read_batch() -> usize {
    256
}
const MIB: u64 = 1 << 20;
fn default_max_image_bytes() -> u64 {
    64 * MIB
}
fn default_max_pdf_bytes() -> u64 {
    256 * MIB
}
fn default_max_pdf_pages() -> usize {
    1000
}
fn default_max_page_pixels() -> u64 {
    40_000_000
}
fn default_max_row_bytes() -> u64 {
    64 * MIB
}

/// Allowed ranges of the numeric keys, checked when a spec is loaded (`key`, min, max).
pub const BATCH_SIZE_RANGE: (usize, usize) = (1, 256);
pub const COMMIT_EVERY_RANGE: (usize, usize) = (1, 100_000);
pub const READ_BATCH_RANGE: (usize, usize) = (1, 65_536);
pub const DPI_RANGE: (f32, f32) = (1.0, 1200.0);
pub const MAX_IMAGE_BYTES_RANGE: (u64, u64) = (1, 1 << 30);
pub const MAX_PDF_BYTES_RANGE: (u64, u64) = (1, 4 << 30);
pub const MAX_PDF_PAGES_RANGE: (usize, usize) = (1, 1_000_000);
pub const MAX_PAGE_PIXELS_RANGE: (u64, u64) = (1, 1 << 28);
pub const MAX_ROW_BYTES_RANGE: (u64, u64) = (1, 1 << 30);

/// `key = value` must lie in `range` (inclusive); the error names the key and the range.
fn check_range<T: PartialOrd + std::fmt::Display>(key: &str, value: T, (lo, hi): (T, T)) -> std::result::Result<(), String> {
    // Written so that NaN fails too.
    if value >= lo && value <= hi {
        Ok(())
    } else {
        Err(format!("{key} = {value} is out of range: allowed {lo}..={hi}"))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub dir: String,
    #[serde(default = "default_backend")]
    pub backend: BackendKind,
    #[serde(default = "default_device")]
    pub device: Device,
    #[serde(default)]
    pub dtype: Variant,
    /// Rows decoding together in the continuous batch.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    #[serde(default)]
    pub threads: usize,
    #[serde(default = "default_max_pixels")]
    pub max_image_pixels: u64,
}

fn default_backend() -> BackendKind {
    BackendKind::Ort
}
fn default_device() -> Device {
    Device::Auto
}
fn default_batch() -> usize {
    8
}
fn default_max_pixels() -> u64 {
    crate::prepare::image::DEFAULT_MAX_PIXELS
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// Describe the row's image.
    Caption,
    /// Answer a question about the row's image or text: from `question_column`, or each of `questions`.
    Vqa,
    /// Extract named `fields` as JSON; invalid output is recorded as invalid.
    Extract,
    /// A free prompt `template` (minijinja) over the row's columns.
    Prompt,
    /// The row's own conversation (an `openai_batch` source): its messages, images and
    /// generation parameters; the task's parameters are the defaults for requests without them.
    Chat,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    pub name: String,
    pub kind: TaskKind,
    pub system: Option<String>,
    /// Caption prompt, or the template of a `prompt` task.
    pub prompt: Option<String>,
    pub question_column: Option<String>,
    pub questions: Option<Vec<String>>,
    pub fields: Option<Vec<String>>,
    /// An extract task's fields from a column of each row instead of `fields`: a list of names,
    /// or the JSON text of one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields_column: Option<String>,
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
    #[serde(default)]
    pub temperature: f32,
    #[serde(default)]
    pub top_k: usize,
    #[serde(default = "default_top_p")]
    pub top_p: f32,
    #[serde(default)]
    pub seed: u64,
    /// Show the row's image to the model (when the row has one).
    #[serde(default = "yes")]
    pub use_image: bool,
}

fn default_max_new_tokens() -> usize {
    64
}
fn default_top_p() -> f32 {
    1.0
}
fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterStages {
    /// Filter set (filters/NAME.toml) screening what goes into the model.
    pub input: Option<String>,
    /// Filter set screening what the model wrote.
    pub output: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkSpec {
    /// Directory holding results.lance, runs.lance and pending shard fragments.
    pub dir: String,
    /// Also export all results as Parquet / JSON lines after the run.
    pub parquet: Option<String>,
    pub jsonl: Option<String>,
    /// Also export the results in the OpenAI Batch API output layout (one line per request,
    /// `custom_id`, `response`, `error`); needs exactly one task.
    pub openai_batch: Option<String>,
    /// Rows per commit: each commit is a Lance version; a crash loses at most this many rows of work.
    #[serde(default = "default_commit_every")]
    pub commit_every: usize,
    /// Input columns copied into every result row (stored as one JSON object in the column
    /// `input_columns`; the exports make each a column of its own).
    #[serde(default)]
    pub keep_columns: Vec<String>,
}

fn default_commit_every() -> usize {
    64
}

/// `a/b/../c` -> `a/c`, lexically (the path may not exist yet), for readable messages.
pub fn clean(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if matches!(out.components().next_back(), Some(Component::Normal(_))) => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    if out.as_os_str().is_empty() { PathBuf::from(".") } else { out }
}

impl PipelineSpec {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_text(text, path)
    }

    /// A spec from its text, as if read from `path` (relative paths resolve against its
    /// directory; errors name it).
    pub fn from_text(text: String, path: &Path) -> Result<Self> {
        let mut spec: PipelineSpec =
            toml::from_str(&text).map_err(|e| Error::Spec { path: path.to_path_buf(), message: e.to_string() })?;
        spec.text = text;
        spec.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        spec.validate().map_err(|message| Error::Spec { path: path.to_path_buf(), message })?;
        Ok(spec)
    }

    /// A path from the spec, resolved against the spec's directory; URIs (`s3://...`) stay.
    pub fn resolve(&self, p: &str) -> PathBuf {
        let is_uri = p.contains("://");
        let p = Path::new(p);
        if p.is_absolute() || is_uri {
            p.to_path_buf()
        } else {
            clean(&self.base_dir.join(p))
        }
    }

    fn validate(&self) -> std::result::Result<(), String> {
        let uris = [("source.path", Some(&self.source.path)), ("sink.dir", Some(&self.sink.dir))]
            .into_iter()
            .chain([("sink.parquet", self.sink.parquet.as_ref()), ("sink.jsonl", self.sink.jsonl.as_ref())])
            .chain([("sink.openai_batch", self.sink.openai_batch.as_ref())]);
        for (key, value) in uris {
            if let Some(v) = value {
                crate::objects::check_supported(v).map_err(|e| format!("{key} = {v:?}: {e}"))?;
            }
        }
        if self.tasks.is_empty() {
            return Err("no [[task]]: add at least one".into());
        }
        let mut names = std::collections::HashSet::new();
        for t in &self.tasks {
            if !names.insert(&t.name) {
                return Err(format!("task name {:?} is used twice", t.name));
            }
            match t.kind {
                TaskKind::Vqa if t.question_column.is_none() && t.questions.as_ref().is_none_or(|q| q.is_empty()) => {
                    return Err(format!("task {:?}: a vqa task needs question_column or questions", t.name));
                }
                TaskKind::Extract if t.fields.is_some() && t.fields_column.is_some() => {
                    return Err(format!("task {:?}: give fields or fields_column, not both", t.name));
                }
                TaskKind::Extract if t.fields_column.is_none() && t.fields.as_ref().is_none_or(|f| f.is_empty()) => {
                    return Err(format!("task {:?}: an extract task needs fields (or fields_column)", t.name));
                }
                TaskKind::Prompt if t.prompt.is_none() => {
                    return Err(format!("task {:?}: a prompt task needs prompt (a template)", t.name));
                }
                _ => {}
            }
            if !(t.top_p > 0.0 && t.top_p <= 1.0) {
                return Err(format!("task {:?}: top_p must be in (0, 1]", t.name));
            }
            if t.kind == TaskKind::Chat && self.source.kind != SourceKind::OpenaiBatch {
                return Err(format!(
                    "task {:?}: a chat task answers the conversations of an openai_batch source (source.kind = \"openai_batch\")",
                    t.name
                ));
            }
        }
        if self.source.kind == SourceKind::OpenaiBatch && !(self.tasks.len() == 1 && self.tasks[0].kind == TaskKind::Chat) {
            return Err("an openai_batch source is answered by exactly one task, of kind \"chat\" (one response per request)".into());
        }
        if self.sink.openai_batch.is_some() && self.tasks.len() != 1 {
            return Err(format!(
                "sink.openai_batch writes one line per input row, so the spec needs exactly one task (it has {})",
                self.tasks.len()
            ));
        }
        let mut kept = std::collections::HashSet::new();
        for c in &self.sink.keep_columns {
            if c.is_empty() {
                return Err("sink.keep_columns: a column name is empty".into());
            }
            if !kept.insert(c) {
                return Err(format!("sink.keep_columns: {c:?} is listed twice"));
            }
        }
        self.check_bounds()
    }

    /// The input columns each result row carries: `sink.keep_columns`, and for an
    /// `openai_batch` source always `custom_id` and `model` (its output names them).
    pub fn kept_columns(&self) -> Vec<String> {
        let mut cols = self.sink.keep_columns.clone();
        if self.source.kind == SourceKind::OpenaiBatch {
            for c in crate::source::OPENAI_KEPT_COLUMNS {
                if !cols.iter().any(|k| k == c) {
                    cols.push(c.to_string());
                }
            }
        }
        cols
    }

    /// Every numeric key that sizes an allocation or a loop is range-checked here, so a typo
    /// (`batch_size = 100000`) is a spec error naming the key, not an out-of-memory later.
    fn check_bounds(&self) -> std::result::Result<(), String> {
        let s = &self.source;
        check_range("model.batch_size", self.model.batch_size, BATCH_SIZE_RANGE)?;
        check_range("sink.commit_every", self.sink.commit_every, COMMIT_EVERY_RANGE)?;
        check_range("source.read_batch", s.read_batch, READ_BATCH_RANGE)?;
        check_range("source.dpi", s.dpi, DPI_RANGE)?;
        check_range("source.max_image_bytes", s.max_image_bytes, MAX_IMAGE_BYTES_RANGE)?;
        check_range("source.max_pdf_bytes", s.max_pdf_bytes, MAX_PDF_BYTES_RANGE)?;
        check_range("source.max_pdf_pages", s.max_pdf_pages, MAX_PDF_PAGES_RANGE)?;
        check_range("source.max_page_pixels", s.max_page_pixels, MAX_PAGE_PIXELS_RANGE)?;
        check_range("source.max_row_bytes", s.max_row_bytes, MAX_ROW_BYTES_RANGE)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
name = "t"
[source]
kind = "jsonl"
path = "rows.jsonl"
[model]
dir = "model"
[[task]]
name = "c"
kind = "caption"
[sink]
dir = "out"
"#;

    /// Loads MINIMAL with `extra` lines appended to the table `[table]`.
    fn load_with(table: &str, extra: &str) -> Result<PipelineSpec> {
        let dir = tempfile::tempdir().unwrap();
        let text = MINIMAL.replace(&format!("[{table}]\n"), &format!("[{table}]\n{extra}\n"));
        assert_ne!(text, MINIMAL, "no [{table}] in the spec");
        let path = dir.path().join("spec.toml");
        std::fs::write(&path, text).unwrap();
        PipelineSpec::load(&path)
    }

    fn spec_error(table: &str, extra: &str) -> String {
        match load_with(table, extra) {
            Err(Error::Spec { message, .. }) => message,
            Err(other) => panic!("{extra}: not a spec error: {other}"),
            Ok(_) => panic!("{extra}: should be rejected"),
        }
    }

    #[test]
    fn defaults_are_within_their_ranges() {
        let spec = load_with("source", "").unwrap();
        let s = &spec.source;
        assert_eq!((s.read_batch, s.dpi, s.confine_images), (256, 96.0, true));
        assert_eq!((s.max_image_bytes, s.max_pdf_bytes, s.max_row_bytes), (64 << 20, 256 << 20, 64 << 20));
        assert_eq!((s.max_pdf_pages, s.max_page_pixels), (1000, 40_000_000));
        assert_eq!((spec.model.batch_size, spec.sink.commit_every), (8, 64));
    }

    #[test]
    fn out_of_range_values_name_the_key_and_the_range() {
        let cases = [
            ("model", "batch_size = 0", "model.batch_size = 0 is out of range: allowed 1..=256"),
            ("model", "batch_size = 100000", "model.batch_size = 100000 is out of range: allowed 1..=256"),
            ("sink", "commit_every = 0", "sink.commit_every = 0 is out of range: allowed 1..=100000"),
            ("sink", "commit_every = 1000001", "sink.commit_every = 1000001 is out of range: allowed 1..=100000"),
            ("source", "read_batch = 0", "source.read_batch = 0 is out of range: allowed 1..=65536"),
            ("source", "read_batch = 10000000", "source.read_batch = 10000000 is out of range"),
            ("source", "dpi = 0", "source.dpi = 0 is out of range: allowed 1..=1200"),
            ("source", "dpi = 5000", "source.dpi = 5000 is out of range: allowed 1..=1200"),
            ("source", "dpi = -3.5", "source.dpi = -3.5 is out of range"),
            ("source", "dpi = nan", "source.dpi = NaN is out of range"),
            ("source", "dpi = inf", "source.dpi = inf is out of range"),
            ("source", "max_image_bytes = 0", "source.max_image_bytes = 0 is out of range"),
            ("source", "max_image_bytes = 99999999999", "source.max_image_bytes = 99999999999 is out of range"),
            ("source", "max_pdf_bytes = 0", "source.max_pdf_bytes = 0 is out of range"),
            ("source", "max_pdf_pages = 0", "source.max_pdf_pages = 0 is out of range: allowed 1..=1000000"),
            ("source", "max_page_pixels = 0", "source.max_page_pixels = 0 is out of range"),
            ("source", "max_row_bytes = 0", "source.max_row_bytes = 0 is out of range"),
        ];
        for (table, line, want) in cases {
            let e = spec_error(table, line);
            assert!(e.contains(want), "{line}: {e}");
        }
    }

    #[test]
    fn the_ends_of_each_range_are_allowed() {
        for (table, line) in [
            ("model", "batch_size = 1"),
            ("model", "batch_size = 256"),
            ("sink", "commit_every = 1"),
            ("sink", "commit_every = 100000"),
            ("source", "read_batch = 1"),
            ("source", "read_batch = 65536"),
            ("source", "dpi = 1"),
            ("source", "dpi = 1200"),
            ("source", "max_pdf_pages = 1"),
            ("source", "confine_images = false"),
        ] {
            load_with(table, line).unwrap_or_else(|e| panic!("{line}: {e}"));
        }
    }

    #[test]
    fn the_commented_example_loads() {
        let spec = PipelineSpec::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/example.toml")).unwrap();
        assert_eq!(spec.sink.keep_columns, ["question", "answers"]);
        assert_eq!(spec.kept_columns(), ["question", "answers"]);
    }

    #[test]
    fn request_files_chat_tasks_and_kept_columns_are_checked() {
        let chat_over_jsonl = MINIMAL.replace("kind = \"caption\"", "kind = \"chat\"");
        let requests_with_caption = MINIMAL.replace("kind = \"jsonl\"", "kind = \"openai_batch\"");
        let requests = requests_with_caption.replace("kind = \"caption\"", "kind = \"chat\"");
        let two_tasks = format!("{MINIMAL}\n[[task]]\nname = \"d\"\nkind = \"caption\"\n").replace("[sink]\ndir = \"out\"", "");
        let two_tasks = format!("{two_tasks}\n[sink]\ndir = \"out\"\nopenai_batch = \"o.jsonl\"\n");
        let dup = MINIMAL.replace("dir = \"out\"", "dir = \"out\"\nkeep_columns = [\"a\", \"a\"]");
        let dir = tempfile::tempdir().unwrap();
        let load = |text: &str| PipelineSpec::from_text(text.to_string(), &dir.path().join("spec.toml"));
        let message = |text: &str| match load(text) {
            Err(Error::Spec { message, .. }) => message,
            other => panic!("should be a spec error: {:?}", other.map(|s| s.name)),
        };
        assert!(message(&chat_over_jsonl).contains("openai_batch"));
        assert!(message(&requests_with_caption).contains("exactly one task, of kind \"chat\""));
        assert!(message(&two_tasks).contains("sink.openai_batch"));
        assert!(message(&dup).contains("\"a\" is listed twice"));
        let spec = load(&requests).unwrap();
        assert_eq!(spec.kept_columns(), ["custom_id", "model"], "a request row always keeps its custom_id and model");
    }

    #[test]
    fn a_negative_count_is_a_spec_error_too() {
        // usize keys: TOML's -1 does not deserialise; the message still names the key.
        let e = spec_error("model", "batch_size = -1");
        assert!(e.contains("batch_size"), "{e}");
    }
}
