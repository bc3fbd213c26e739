//! What a run of a spec works on, found without loading the model or generating: every
//! (row, task, prompt) item with its prompt and, when asked, the key its result is stored
//! under. Scoring stored results reads exactly these keys (`gemma-batch score --results`).

use super::reader::row_prompts;
use super::screening::Filters;
use super::tasks::{item_key, prompt_hash, GenParams, Templates};
use crate::error::Result;
use crate::spec::PipelineSpec;

/// One (row, task, prompt) item of a spec.
#[derive(Debug, Clone)]
pub struct PlannedItem {
    pub input_id: String,
    pub task: String,
    pub prompt: String,
    /// The key a run stores its result under (empty when the plan was made without keys).
    pub key: String,
    /// Why the item fails before the model (the row could not be read, a template failed).
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// The content hash of the model files (empty without keys).
    pub model_hash: String,
    /// The filter sets as keys name them.
    pub filter_sets: Option<String>,
    pub items: Vec<PlannedItem>,
}

/// Reads the spec's source and renders its prompts. With `keyed`, the model files are hashed
/// and the filter sets read, as a run does, so that each item carries the key a run of this
/// configuration stores its result under; without, the model directory is not read at all.
pub fn plan(spec: &PipelineSpec, keyed: bool) -> Result<Plan> {
    let templates = Templates::new(spec, crate::source::column_names(spec)?.as_deref())?;
    let (model_hash, filter_sets) = if keyed {
        let dir = spec.resolve(&spec.model.dir);
        (crate::model::model_hash(&dir, spec.model.dtype)?, Filters::load(spec)?.label)
    } else {
        (String::new(), None)
    };
    let sets = filter_sets.clone().unwrap_or_default();
    let mut items = Vec::new();
    for batch in crate::source::open(spec)? {
        for row in batch? {
            for task in &spec.tasks {
                let generation = GenParams::for_row(task, &row);
                for (prompt, error) in row_prompts(&templates, task, &row) {
                    let key = if keyed {
                        item_key(&row.content_hash, &task.name, &prompt_hash(task, &generation, &prompt), &model_hash, &sets)
                    } else {
                        String::new()
                    };
                    items.push(PlannedItem { input_id: row.input_id.clone(), task: task.name.clone(), prompt, key, error });
                }
            }
        }
    }
    Ok(Plan { model_hash, filter_sets, items })
}
