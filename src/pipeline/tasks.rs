//! Tasks and prompts: what to ask of each row, the key that identifies each (row, task,
//! configuration), and the row record every stage fills in.

use std::collections::{BTreeSet, HashMap};

use crate::error::{Error, Result};
use crate::filters::{Decision, PolicyScores};
use crate::model::{Prepared, Sampling};
use crate::prepare::chat::{Content, Message};
use crate::sink::ResultRow;
use crate::source::{ChatMessage, ChatPart, ChatRequest, ChatRole, RowImage, SourceRow};
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
    /// How to generate: the task's parameters, or a request's own.
    pub generation: GenParams,
    /// A `chat` task's conversation (its messages and images; `prompt` is its transcript).
    pub chat: Option<std::sync::Arc<ChatRequest>>,
    /// The kept input columns as a JSON object (`sink.keep_columns`).
    pub input_columns: Option<String>,
    /// An extract task's fields for this row (its `fields`, or the row's `fields_column`).
    pub fields: Vec<String>,
    /// The input policy filter's scores of what it screened (every category's).
    pub policy_scores: Vec<PolicyScores>,
}

/// The generation parameters of one item: its task's, with what a request sets instead.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct GenParams {
    pub max_new_tokens: usize,
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub seed: u64,
}

impl GenParams {
    pub fn of(task: &TaskSpec) -> Self {
        GenParams { max_new_tokens: task.max_new_tokens, temperature: task.temperature, top_k: task.top_k, top_p: task.top_p, seed: task.seed }
    }

    /// A `chat` task's parameters for a row: the request's where it sets them.
    pub fn for_row(task: &TaskSpec, row: &SourceRow) -> Self {
        let mut p = Self::of(task);
        if let (TaskKind::Chat, Some(r)) = (task.kind, &row.request) {
            let r = r.params;
            p.max_new_tokens = r.max_tokens.unwrap_or(p.max_new_tokens);
            p.temperature = r.temperature.unwrap_or(p.temperature);
            p.top_k = r.top_k.unwrap_or(p.top_k);
            p.top_p = r.top_p.unwrap_or(p.top_p);
            p.seed = r.seed.unwrap_or(p.seed);
        }
        p
    }
}

/// The `prompt` text of a conversation (what is stored, hashed and screened): each turn as
/// `role: text`, parts on lines of their own, images as `<image>`, turns separated by a blank
/// line. Also returns where each text part lies in it: (message, part, byte range).
pub(crate) fn transcript(messages: &[ChatMessage]) -> (String, Vec<(usize, usize, std::ops::Range<usize>)>) {
    let mut text = String::new();
    let mut ranges = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        if i > 0 {
            text.push_str("\n\n");
        }
        text.push_str(m.role.as_str());
        text.push_str(": ");
        for (j, part) in m.parts.iter().enumerate() {
            if j > 0 {
                text.push('\n');
            }
            match part {
                ChatPart::Text(t) => {
                    ranges.push((i, j, text.len()..text.len() + t.len()));
                    text.push_str(t);
                }
                ChatPart::Image => text.push_str("<image>"),
            }
        }
    }
    (text, ranges)
}

/// A conversation as the chat template takes it; `system` (the task's) goes first when the
/// conversation has no system message.
pub(crate) fn template_messages(messages: &[ChatMessage], system: Option<&str>) -> Vec<Message> {
    let mut out = Vec::with_capacity(messages.len() + 1);
    if let (Some(s), false) = (system, messages.first().is_some_and(|m| m.role == ChatRole::System)) {
        out.push(Message::system(s));
    }
    for m in messages {
        let content = m
            .parts
            .iter()
            .map(|p| match p {
                ChatPart::Text(t) => Content::Text { text: t.clone() },
                ChatPart::Image => Content::Image {},
            })
            .collect();
        out.push(Message { role: m.role.as_str().to_string(), content });
    }
    out
}

/// The kept input columns of a row as a JSON object (a column the row lacks is null); None
/// when no column is kept.
pub(crate) fn kept_columns_json(kept: &[String], row: &SourceRow) -> Option<String> {
    if kept.is_empty() {
        return None;
    }
    let obj: serde_json::Map<String, serde_json::Value> =
        kept.iter().map(|c| (c.clone(), row.columns.get(c).cloned().unwrap_or(serde_json::Value::Null))).collect();
    Some(serde_json::Value::Object(obj).to_string())
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
        if let Some(columns) = columns {
            let unknown: Vec<&String> = spec.sink.keep_columns.iter().filter(|c| !columns.contains(c)).collect();
            if !unknown.is_empty() {
                return Err(spec_err(format!(
                    "sink.keep_columns names {}, which the source does not have (its columns: {})",
                    unknown.iter().map(|v| format!("`{v}`")).collect::<Vec<_>>().join(", "),
                    columns.join(", ")
                )));
            }
        } else if spec.source.kind == crate::spec::SourceKind::Images || spec.source.kind == crate::spec::SourceKind::Pdfs {
            let fixed: &[&str] = if spec.source.kind == crate::spec::SourceKind::Images { &["path"] } else { &["path", "page", "text"] };
            if let Some(c) = spec.sink.keep_columns.iter().find(|c| !fixed.contains(&c.as_str())) {
                return Err(spec_err(format!(
                    "sink.keep_columns names `{c}`, which rows of this source do not have (they have: {})",
                    fixed.join(", ")
                )));
            }
        }
        for t in spec.tasks.iter() {
            let (key, column) = match t.kind {
                TaskKind::Vqa => ("question_column", &t.question_column),
                TaskKind::Extract => ("fields_column", &t.fields_column),
                _ => continue,
            };
            if let (Some(c), Some(columns)) = (column, columns) {
                if !columns.contains(c) {
                    return Err(spec_err(format!(
                        "task {:?}: {key} {c:?} is not a column of the source (its columns: {})",
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
                let fields = extract_fields(task, row)?;
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
            TaskKind::Chat => match &row.request {
                Some(r) => Ok(vec![transcript(&r.messages).0]),
                None => Err("a chat task needs a request (an openai_batch source), and this row has none".into()),
            },
        }
    }
}

/// The fields an extract task asks of a row: the task's `fields`, or the row's `fields_column`
/// (a list of names, or the JSON text of one; names that are not strings as JSON text).
pub fn extract_fields(task: &TaskSpec, row: &SourceRow) -> std::result::Result<Vec<String>, String> {
    let Some(c) = &task.fields_column else { return Ok(task.fields.clone().unwrap_or_default()) };
    let fields = fields_value(row.columns.get(c));
    match fields {
        Some(f) if !f.is_empty() && f.iter().all(|x| !x.trim().is_empty()) => Ok(f),
        _ => Err(format!("fields column {c:?} is missing, empty or not a list of field names")),
    }
}

/// A per-row list of field names: a list, or the JSON text of one. None for anything else.
pub fn fields_value(v: Option<&serde_json::Value>) -> Option<Vec<String>> {
    use serde_json::Value;
    let list = match v? {
        Value::Array(a) => a.clone(),
        Value::String(s) => match serde_json::from_str(s) {
            Ok(Value::Array(a)) => a,
            _ => return None,
        },
        _ => return None,
    };
    Some(list.into_iter().map(|x| x.as_str().map(str::to_owned).unwrap_or_else(|| x.to_string())).collect())
}

/// The hash of everything besides the row that decides a task's output for one prompt:
/// the prompt, the system prompt and the generation parameters (a request's own, for `chat`).
pub(crate) fn prompt_hash(task: &TaskSpec, p: &GenParams, prompt: &str) -> String {
    let params = format!("{}|{}|{}|{}|{}|{}", p.max_new_tokens, p.temperature, p.top_k, p.top_p, p.seed, task.use_image);
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

pub(crate) fn sampling_of(p: &GenParams) -> Option<Sampling> {
    (p.temperature > 0.0).then_some(Sampling { temperature: p.temperature, top_k: p.top_k, top_p: p.top_p, seed: p.seed })
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
            input_columns: item.input_columns.clone(),
            policy_scores: policy_scores_json(&item.policy_scores),
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

/// The `policy_scores` column: None when the policy filter screened nothing of the row.
pub(crate) fn policy_scores_json(scores: &[PolicyScores]) -> Option<String> {
    (!scores.is_empty()).then(|| serde_json::to_string(scores).unwrap_or_else(|_| "[]".into()))
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
    fn extract_fields_from_the_task_or_a_column_of_the_row() {
        let spec = |task: &str| {
            let text = format!("name = \"x\"\n[source]\nkind = \"jsonl\"\npath = \"x.jsonl\"\n[model]\ndir = \"m\"\n[sink]\ndir = \"out\"\n[[task]]\nname = \"e\"\nkind = \"extract\"\n{task}");
            PipelineSpec::from_text(text, std::path::Path::new("x.toml"))
        };
        let row = |fields: Option<serde_json::Value>, text: Option<&str>| SourceRow {
            input_id: "r".into(),
            content_hash: "h".into(),
            columns: fields.into_iter().map(|f| ("f".to_string(), f)).collect(),
            image: None,
            text: text.map(str::to_owned),
            error: None,
            request: None,
        };
        let ask = |fields: &str| format!("Extract these fields: {fields}. Answer with one JSON object with exactly these keys and string values, and nothing else.");
        let columns = ["f".to_string()];
        let fixed = spec("fields = [\"a\", \"b\"]").unwrap();
        let t = Templates::new(&fixed, Some(&columns)).unwrap();
        assert_eq!(t.prompts(&fixed.tasks[0], &row(None, Some("Doc text"))).unwrap(), [format!("Document:\nDoc text\n\n{}", ask("a, b"))]);
        let per_row = spec("fields_column = \"f\"").unwrap();
        let t = Templates::new(&per_row, Some(&columns)).unwrap();
        let task = &per_row.tasks[0];
        for (value, want) in [(serde_json::json!(["x", "y"]), "x, y"), (serde_json::json!("[\"z\"]"), "z")] {
            let r = row(Some(value), None);
            assert_eq!(t.prompts(task, &r).unwrap(), [ask(want)]);
            assert_eq!(extract_fields(task, &r).unwrap().join(", "), want);
        }
        for bad in [None, Some(serde_json::json!([])), Some(serde_json::json!("x, y")), Some(serde_json::json!(3)), Some(serde_json::json!([""]))] {
            let e = t.prompts(task, &row(bad.clone(), None)).unwrap_err();
            assert!(e.contains("fields column \"f\" is missing, empty or not a list"), "{bad:?}: {e}");
        }
        // A column the source does not have; both keys; neither.
        let e = Templates::new(&per_row, Some(&["g".to_string()])).err().unwrap().to_string();
        assert!(e.contains("fields_column \"f\" is not a column of the source"), "{e}");
        assert!(spec("fields = [\"a\"]\nfields_column = \"f\"").unwrap_err().to_string().contains("not both"));
        assert!(spec("").unwrap_err().to_string().contains("needs fields (or fields_column)"));
    }

    #[test]
    fn prompt_hashes_of_tasks_are_unchanged_and_follow_request_parameters() {
        let task: TaskSpec = toml::from_str("name = \"c\"\nkind = \"chat\"\nmax_new_tokens = 9").unwrap();
        let params = GenParams::of(&task);
        // The text hashed is what it was before requests could set parameters (stored keys stay).
        assert_eq!(prompt_hash(&task, &params, "p"), hash_text(&["", "p", "9|0|0|1|0|true"]));
        let mut row = SourceRow {
            input_id: "r".into(),
            content_hash: "h".into(),
            columns: Default::default(),
            image: None,
            text: None,
            error: None,
            request: None,
        };
        assert_eq!(GenParams::for_row(&task, &row), params);
        let request = ChatRequest {
            params: crate::source::RequestParams { max_tokens: Some(3), seed: Some(5), ..Default::default() },
            ..Default::default()
        };
        row.request = Some(std::sync::Arc::new(request));
        let own = GenParams::for_row(&task, &row);
        assert_eq!((own.max_new_tokens, own.seed, own.temperature), (3, 5, 0.0));
        assert_ne!(prompt_hash(&task, &own, "p"), prompt_hash(&task, &params, "p"), "a changed parameter is new work");
    }

    #[test]
    fn transcripts_locate_their_text_parts() {
        let messages = vec![
            ChatMessage { role: ChatRole::System, parts: vec![ChatPart::Text("Be brief.".into())] },
            ChatMessage { role: ChatRole::User, parts: vec![ChatPart::Image, ChatPart::Text("What is it?".into())] },
        ];
        let (text, ranges) = transcript(&messages);
        assert_eq!(text, "system: Be brief.\n\nuser: <image>\nWhat is it?");
        assert_eq!(ranges.len(), 2);
        assert_eq!(&text[ranges[1].2.clone()], "What is it?");
        assert_eq!((ranges[1].0, ranges[1].1), (1, 1));
        let m = template_messages(&messages[1..], Some("Default."));
        assert_eq!(m.len(), 2, "the task's system prompt goes first when the request has none");
        assert_eq!(template_messages(&messages, Some("Default.")).len(), 2, "the request's own system message wins");
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
