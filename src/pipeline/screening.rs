//! The spec's filter sets as a run uses them, and how their decisions land in a row.

use std::path::PathBuf;
use std::sync::Arc;

use crate::error::Result;
use crate::filters::{Decision, FilterSet};
use crate::sink::ResultRow;
use crate::spec::PipelineSpec;

/// The spec's filter sets, loaded once per run.
#[derive(Clone, Default)]
pub(crate) struct Filters {
    pub input: Option<Arc<FilterSet>>,
    pub output: Option<Arc<FilterSet>>,
    /// `input=NAME@HASH;output=NAME@HASH` for the stages that have a set (None: no filters).
    /// Part of every key, so a changed set re-screens (and regenerates) the rows it screens.
    pub label: Option<String>,
}

impl Filters {
    /// Looks sets up by name in `filters/` next to the spec, one level up (a project's
    /// `pipelines/` and `filters/` side by side), then in the working directory.
    pub fn load(spec: &PipelineSpec) -> Result<Filters> {
        let load = |name: &Option<String>| -> Result<Option<Arc<FilterSet>>> {
            match name {
                Some(n) => Ok(Some(Arc::new(FilterSet::load(&crate::filters::find_set(n, &spec.base_dir)?)?))),
                None => Ok(None),
            }
        };
        let (input, output) = (load(&spec.filters.input)?, load(&spec.filters.output)?);
        let parts: Vec<String> = [("input", &spec.filters.input, &input), ("output", &spec.filters.output, &output)]
            .into_iter()
            .filter_map(|(stage, name, set)| {
                let (name, set) = (name.as_ref()?, set.as_ref()?);
                // The name as written, without directories: moving the sets does not change keys.
                let short = std::path::Path::new(name).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                Some(format!("{stage}={short}@{}", set.content_hash()))
            })
            .collect();
        let label = (!parts.is_empty()).then(|| parts.join(";"));
        Ok(Filters { input, output, label })
    }

    pub fn any(&self) -> bool {
        self.input.is_some() || self.output.is_some()
    }

    /// The policy filter's own model, when a set names one.
    pub fn policy_model_dir(&self) -> Option<PathBuf> {
        [&self.input, &self.output].into_iter().flatten().find_map(|s| s.policy().and_then(|p| p.model.clone()))
    }
}

/// Writes the decisions, the outcome and the reason into a result row.
pub(crate) fn set_filter_columns(r: &mut ResultRow, decisions: &[Decision]) {
    r.filter_decisions = Some(serde_json::to_string(decisions).unwrap_or_else(|_| "[]".into()));
    r.filter_outcome = Some(crate::filters::outcome(decisions).as_str().to_string());
    r.filter_reason = crate::filters::reason(decisions);
}
