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
}

fn default_dpi() -> f32 {
    96.0
}
fn default_read_batch() -> usize {
    256
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
}

#[derive(Debug, Clone, Deserialize)]
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
    /// Rows per commit: each commit is a Lance version; a crash loses at most this many rows of work.
    #[serde(default = "default_commit_every")]
    pub commit_every: usize,
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
                TaskKind::Extract if t.fields.as_ref().is_none_or(|f| f.is_empty()) => {
                    return Err(format!("task {:?}: an extract task needs fields", t.name));
                }
                TaskKind::Prompt if t.prompt.is_none() => {
                    return Err(format!("task {:?}: a prompt task needs prompt (a template)", t.name));
                }
                _ => {}
            }
            if !(t.top_p > 0.0 && t.top_p <= 1.0) {
                return Err(format!("task {:?}: top_p must be in (0, 1]", t.name));
            }
        }
        if self.model.batch_size == 0 || self.sink.commit_every == 0 || self.source.read_batch == 0 {
            return Err("batch_size, commit_every and read_batch must be at least 1".into());
        }
        Ok(())
    }
}
