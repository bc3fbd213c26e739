//! Tasks and prompts: what to ask of each row, the key that identifies each (row, task,
//! configuration), and the row record every stage fills in.

use std::collections::{BTreeSet, HashMap};

use crate::error::{Error, Result};
use crate::filters::Decision;
use crate::model::{Prepared, Sampling};
use crate::sink::ResultRow;
use crate::source::{RowImage, SourceRow};
use crate::spec::{PipelineSpec, TaskKind, TaskSpec};
use crate::util::{hash_text, now_ms};

const CAPTION_PROMPT: &str = "Describe this image in one sentence.";

/// Variables every prompt template may use besides the row's columns.
const BUILTIN_VARIABLES: [&str; 2] = ["text", "id"];

/// One model call to make: a row, a task, a rendered prompt.
pub(crate) struct WorkItem {
    pub input_id: String,
    pub content_hash: String,
    pub task: usize,
    pub prompt: String,
    pub system: Option<String>,
    pub image: Option<RowImage>,
    pub key: String,
    pub prompt_hash: String,
    pub error: Option<String>,
    /// Filter decisions so far (input stage).
    pub decisions: Vec<Decision>,
    /// Which attempt at this key this is (1 for the first) and the reasons earlier ones failed.
    pub attempts: u32,
    pub earlier_errors: Vec<String>,
    /// The key of this (row, task)'s failed record when the row's content changed since
    /// (a missing image appeared): this item's row replaces it.
    pub supersedes: Option<String>,
}

pub(crate) struct PreparedItem {
    pub item: WorkItem,
    pub prepared: Prepared,
}

/// The spec's prompt templates, compiled once, with the variables each one uses.
pub(crate) struct Templates {
    env: minijinja::Environment<'static>,
    variables: HashMap<String, BTreeSet<String>>,
}

impl Templates {
    /// Compiles the `prompt` tasks' templates. When the source's columns are known, a template
    /// naming a column the source does not have is an error here, before any work.
    pub fn new(spec: &PipelineSpec, columns: Option<&[String]>) -> Result<Templates> {
        let spec_err = |message: String| Error::Spec { path: spec.base_dir.clone(), message };
        let mut env = minijinja::Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        // An attribute missing from a value (`{{ meta.lang }}`) is an error, not empty text.
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        let mut variables = HashMap::new();
        for t in spec.tasks.iter().filter(|t| t.kind == TaskKind::Prompt) {
            env.add_template_owned(t.name.clone(), t.prompt.clone().unwrap_or_default())
                .map_err(|e| spec_err(format!("task {:?}: template: {e}", t.name)))?;
            let tmpl = env.get_template(&t.name).map_err(|e| spec_err(format!("task {:?}: template: {e}", t.name)))?;
            let used: BTreeSet<String> = tmpl.undeclared_variables(false).into_iter().collect();
            if let Some(columns) = columns {
                let unknown: Vec<&String> =
                    used.iter().filter(|v| !BUILTIN_VARIABLES.contains(&v.as_str()) && !columns.contains(v)).collect();
                if !unknown.is_empty() {
                    return Err(spec_err(format!(
                        "task {:?}: the prompt template uses {}, which the source does not have (its columns: {}; \
                         also available: text, id)",
                        t.name,
                        unknown.iter().map(|v| format!("`{v}`")).collect::<Vec<_>>().join(", "),
                        columns.join(", ")
                    )));
                }
            }
            variables.insert(t.name.clone(), used);
        }
        for t in spec.tasks.iter().filter(|t| t.kind == TaskKind::Vqa) {
            if let (Some(c), Some(columns)) = (&t.question_column, columns) {
                if !columns.contains(c) {
                    return Err(spec_err(format!(
                        "task {:?}: question_column {c:?} is not a column of the source (its columns: {})",
                        t.name,
                        columns.join(", ")
                    )));
                }
            }
        }
        Ok(Templates { env, variables })
    }

    /// The prompts a task asks of a row (several for a fixed list of questions).
    pub fn prompts(&self, task: &TaskSpec, row: &SourceRow) -> std::result::Result<Vec<String>, String> {
        // A row whose content could not be read is prompted as if its image were there (the
        // usual cause), so that its keys are those of the row once it reads.
        let has_image = row.image.is_some() || row.error.is_some();
        let with_text = |p: String| match (&row.text, task.use_image && has_image) {
            (Some(text), false) if !text.is_empty() => format!("Document:\n{text}\n\n{p}"),
            _ => p,
        };
        match task.kind {
            TaskKind::Caption => {
                if !has_image {
                    return Err("a caption task needs an image, and this row has none (set source.image_column)".into());
                }
                Ok(vec![task.prompt.clone().unwrap_or_else(|| CAPTION_PROMPT.to_string())])
            }
            TaskKind::Vqa => {
                if let Some(c) = &task.question_column {
                    match row.columns.get(c) {
                        Some(serde_json::Value::String(q)) if !q.trim().is_empty() => Ok(vec![with_text(q.clone())]),
                        _ => Err(format!("question column {c:?} is missing or empty")),
                    }
                } else {
                    // A question listed twice yields one key; the reader keeps the first.
                    Ok(task.questions.iter().flatten().map(|q| with_text(q.clone())).collect())
                }
            }
            TaskKind::Extract => {
                let fields = task.fields.as_deref().unwrap_or_default();
                Ok(vec![with_text(format!(
                    "Extract these fields: {}. Answer with one JSON object with exactly these keys and string values, \
                     and nothing else.",
                    fields.join(", ")
                ))])
            }
            TaskKind::Prompt => {
                let mut ctx = row.columns.clone();
                ctx.insert("text".into(), row.text.clone().unwrap_or_default().into());
                ctx.insert("id".into(), row.input_id.clone().into());
                if let Some(missing) = self.variables.get(&task.name).and_then(|vars| vars.iter().find(|v| !ctx.contains_key(*v))) {
                    return Err(format!("prompt template of task {:?} uses `{missing}`, which this row does not have", task.name));
                }
                let tmpl = self.env.get_template(&task.name).map_err(|e| e.to_string())?;
                tmpl.render(ctx).map_err(|e| format!("prompt template of task {:?}: {e:#}", task.name)).map(|p| vec![p])
            }
        }
    }
}

/// The hash of everything besides the row that decides a task's output for one prompt.
pub(crate) fn prompt_hash(task: &TaskSpec, prompt: &str) -> String {
    let params = format!(
        "{}|{}|{}|{}|{}|{}",
        task.max_new_tokens, task.temperature, task.top_k, task.top_p, task.seed, task.use_image
    );
    hash_text(&[task.system.as_deref().unwrap_or(""), prompt, &params])
}

/// The unit of idempotence: one (row content, task, prompt and parameters, model files,
/// filter sets). A change to any of them is new work; the same key is never stored twice.
pub(crate) fn item_key(content_hash: &str, task: &str, prompt_hash: &str, model_hash: &str, filter_sets: &str) -> String {
    hash_text(&[content_hash, task, prompt_hash, model_hash, filter_sets])
}

/// Checks an extract task's output: the first JSON object in it, with exactly the fields.
pub fn check_extract(output: &str, fields: &[String]) -> (Option<String>, bool) {
    // `find`/`rfind` of ASCII braces return char boundaries, so the slice is safe.
    let (Some(s), Some(e)) = (output.find('{'), output.rfind('}')) else { return (None, false) };
    if e < s {
        return (None, false);
    }
    match serde_json::from_str::<serde_json::Value>(&output[s..=e]) {
        Ok(serde_json::Value::Object(map)) => {
            let valid = fields.iter().all(|f| map.contains_key(f)) && map.len() == fields.len();
            (Some(serde_json::Value::Object(map).to_string()), valid)
        }
        _ => (None, false),
    }
}

pub(crate) fn sampling_of(task: &TaskSpec) -> Option<Sampling> {
    (task.temperature > 0.0).then_some(Sampling {
        temperature: task.temperature,
        top_k: task.top_k,
        top_p: task.top_p,
        seed: task.seed,
    })
}

/// Provenance shared by every row of a run.
#[derive(Clone)]
pub(crate) struct Provenance {
    pub run_id: String,
    pub backend: String,
    pub device: String,
    pub dtype: String,
    pub model_id: String,
    pub model_hash: String,
    pub filter_sets: Option<String>,
    pub shard: Option<String>,
}

impl Provenance {
    /// A row record for an item, with provenance filled in and no outcome yet.
    pub fn row(&self, item: &WorkItem, task: &TaskSpec) -> ResultRow {
        ResultRow {
            key: item.key.clone(),
            input_id: item.input_id.clone(),
            content_hash: item.content_hash.clone(),
            task: task.name.clone(),
            prompt_hash: item.prompt_hash.clone(),
            prompt: item.prompt.clone(),
            attempts: item.attempts,
            errors: (!item.earlier_errors.is_empty()).then(|| serde_json::Value::from(item.earlier_errors.clone()).to_string()),
            filter_sets: self.filter_sets.clone(),
            run_id: self.run_id.clone(),
            backend: self.backend.clone(),
            device: self.device.clone(),
            dtype: self.dtype.clone(),
            model_id: self.model_id.clone(),
            model_hash: self.model_hash.clone(),
            shard: self.shard.clone(),
            created_at_ms: now_ms(),
            supersedes: item.supersedes.clone(),
            ..Default::default()
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "backend": self.backend, "device": self.device, "dtype": self.dtype, "model_id": self.model_id,
            "model_hash": self.model_hash, "filter_sets": self.filter_sets, "shard": self.shard,
            "gemma_batch": env!("CARGO_PKG_VERSION"),
        })
    }
}

/// Adds a failure reason to a row's history of reasons (`errors`, oldest first).
pub(crate) fn record_error(r: &mut ResultRow) {
    if let Some(e) = &r.error {
        let mut all: Vec<String> = r.errors.as_deref().and_then(|t| serde_json::from_str(t).ok()).unwrap_or_default();
        all.push(e.clone());
        r.errors = Some(serde_json::Value::from(all).to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extract_finds_the_object_among_multibyte_text() {
        let (json, valid) = check_extract("Voilà 👍 {\"total\": \"12,50 €\"} fin", &["total".to_string()]);
        assert_eq!(json.as_deref(), Some("{\"total\":\"12,50 €\"}"));
        assert!(valid);
        assert_eq!(check_extract("} é {", &["a".to_string()]), (None, false));
    }

    #[test]
    fn keys_change_with_every_part_of_the_configuration() {
        let base = item_key("c", "t", "p", "m", "f");
        for k in [item_key("c2", "t", "p", "m", "f"), item_key("c", "t2", "p", "m", "f"), item_key("c", "t", "p2", "m", "f"),
            item_key("c", "t", "p", "m2", "f"), item_key("c", "t", "p", "m", "f2")] {
            assert_ne!(k, base);
        }
        assert_eq!(item_key("c", "t", "p", "m", "f"), base);
    }
}
