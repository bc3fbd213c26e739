//! Another system's outputs, scored as if the suite had generated them: a JSON lines, CSV or
//! Parquet file with an id and a prediction per item (and optionally the part it answers).
//! `eval` writes its own outputs in this layout (`predictions.jsonl`), so a run can be scored
//! again from its file.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use super::suite::ResultItem;
use crate::error::{Error, Result};
use crate::filters::{Decision, FilterSet, PolicyScores, Stage};
use crate::pipeline::Plan;
use crate::spec::PipelineSpec;

/// Columns read besides the id and the prediction (all optional).
const PART: &str = "part";
const ERROR: &str = "error";
const DECISIONS: &str = "filter_decisions";
const TOKENS: &str = "output_tokens";
const POLICY: &str = "policy_scores";

#[derive(Debug, Clone, PartialEq)]
struct Prediction {
    /// None: the system produced nothing (scored as an empty answer, as a failed row is).
    output: Option<String>,
    error: Option<String>,
    decisions: Option<Vec<Decision>>,
    output_tokens: Option<u32>,
    policy_scores: Option<Vec<PolicyScores>>,
}

pub struct Predictions {
    pub path: PathBuf,
    pub sha256: String,
    /// By part (None: a row without a part), then by id.
    rows: HashMap<Option<String>, HashMap<String, Prediction>>,
    /// Rows of the file that could not be read (`FILE:LINE: why`); their ids count as missing.
    pub unreadable: Vec<String>,
    /// Which parts matched each prediction, by (part, id).
    matched: RefCell<BTreeMap<(Option<String>, String), BTreeSet<String>>>,
}

fn source_kind(path: &Path) -> Result<&'static str> {
    let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    match ext.as_str() {
        "jsonl" | "ndjson" | "json" => Ok("jsonl"),
        "csv" => Ok("csv"),
        "parquet" => Ok("parquet"),
        other => Err(Error::Source {
            source_name: path.display().to_string(),
            message: format!("cannot tell the format from the extension {other:?}: use .jsonl, .csv or .parquet"),
        }),
    }
}

/// A column value as text (numbers and booleans as written; null as None).
fn text(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

impl Predictions {
    /// Reads the file. `id_column` and `prediction_column` must be columns of it; `part`,
    /// `error`, `filter_decisions`, `output_tokens` and `policy_scores` are read when present. A row that
    /// cannot be read is listed (its item then counts as missing); the same (part, id) twice
    /// with different predictions is an error naming it.
    pub fn load(path: &Path, id_column: &str, prediction_column: &str) -> Result<Predictions> {
        let at = |message: String| Error::Source { source_name: path.display().to_string(), message };
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if !meta.is_file() {
            return Err(at("not a regular file".into()));
        }
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let sha256 = crate::util::sha256_hex(&[&bytes]);
        drop(bytes);
        let mut src = toml::Table::new();
        src.insert("kind".into(), source_kind(path)?.into());
        src.insert("path".into(), path.display().to_string().into());
        src.insert("id_column".into(), id_column.into());
        let src: crate::spec::SourceSpec = src.try_into().map_err(|e: toml::de::Error| at(e.to_string()))?;
        let mut rows: HashMap<Option<String>, HashMap<String, Prediction>> = HashMap::new();
        let mut unreadable = Vec::new();
        let mut seen_columns: BTreeSet<String> = BTreeSet::new();
        let mut has_prediction = false;
        for batch in crate::source::open_source(&src, path)? {
            for row in batch? {
                if let Some(e) = &row.error {
                    unreadable.push(format!("{}: {e}", row.input_id));
                    continue;
                }
                seen_columns.extend(row.columns.keys().cloned());
                has_prediction |= row.columns.contains_key(prediction_column);
                let decisions = match row.columns.get(DECISIONS) {
                    None | Some(serde_json::Value::Null) => None,
                    Some(serde_json::Value::String(s)) => Some(serde_json::from_str::<Vec<Decision>>(s).map_err(|e| at(format!("id {:?}: {DECISIONS}: {e}", row.input_id)))?),
                    Some(v) => Some(serde_json::from_value::<Vec<Decision>>(v.clone()).map_err(|e| at(format!("id {:?}: {DECISIONS}: {e}", row.input_id)))?),
                };
                let output_tokens = match row.columns.get(TOKENS) {
                    None | Some(serde_json::Value::Null) => None,
                    Some(v) => Some(v.as_u64().and_then(|t| u32::try_from(t).ok()).ok_or_else(|| at(format!("id {:?}: {TOKENS} is {v}, not a count", row.input_id)))?),
                };
                let policy_scores = match row.columns.get(POLICY) {
                    None | Some(serde_json::Value::Null) => None,
                    Some(serde_json::Value::String(s)) => Some(serde_json::from_str::<Vec<PolicyScores>>(s).map_err(|e| at(format!("id {:?}: {POLICY}: {e}", row.input_id)))?),
                    Some(v) => Some(serde_json::from_value::<Vec<PolicyScores>>(v.clone()).map_err(|e| at(format!("id {:?}: {POLICY}: {e}", row.input_id)))?),
                };
                let p = Prediction { output: text(row.columns.get(prediction_column)), error: text(row.columns.get(ERROR)), decisions, output_tokens, policy_scores };
                let part = text(row.columns.get(PART));
                let by_id = rows.entry(part.clone()).or_default();
                match by_id.get(&row.input_id) {
                    Some(earlier) if *earlier != p => {
                        let part = part.map(|p| format!(" of part {p:?}")).unwrap_or_default();
                        return Err(at(format!("id {:?}{part} appears twice with different predictions", row.input_id)));
                    }
                    Some(_) => {}
                    None => {
                        by_id.insert(row.input_id.clone(), p);
                    }
                }
            }
        }
        if !has_prediction && !(rows.is_empty() && seen_columns.is_empty()) {
            let columns: Vec<String> = seen_columns.into_iter().collect();
            return Err(at(format!("no column {prediction_column:?} (its columns: {}); name it with --prediction-column", columns.join(", "))));
        }
        Ok(Predictions { path: path.to_path_buf(), sha256, rows, unreadable, matched: Default::default() })
    }

    /// Whether the file carries filter decisions (as `eval`'s own file does).
    pub fn has_decisions(&self) -> bool {
        self.rows.values().flat_map(|m| m.values()).any(|p| p.decisions.is_some())
    }

    /// Whether the file gives output lengths in tokens.
    pub fn has_tokens(&self) -> bool {
        self.rows.values().flat_map(|m| m.values()).any(|p| p.output_tokens.is_some())
    }

    /// The outputs of one part's items, by input id: the row for (part, id), else one without
    /// a part for that id. Items with no prediction are absent (the caller lists them).
    /// Without decisions in the file, the part's rule-based filters screen the prompt and the
    /// prediction, as a run would; the policy filter needs the model and does not run.
    pub(super) fn for_part(&self, part: &str, plan: &Plan, spec: &PipelineSpec) -> Result<HashMap<String, ResultItem>> {
        let load = |name: &Option<String>| -> Result<Option<FilterSet>> {
            name.as_ref().map(|n| FilterSet::load(&crate::filters::find_set(n, &spec.base_dir)?)).transpose()
        };
        let (input_set, output_set) = (load(&spec.filters.input)?, load(&spec.filters.output)?);
        let (tagged, untagged) = (self.rows.get(&Some(part.to_string())), self.rows.get(&None));
        let mut out = HashMap::new();
        let mut matched = self.matched.borrow_mut();
        for item in &plan.items {
            if out.contains_key(&item.input_id) {
                continue;
            }
            let (p, tag) = match (tagged.and_then(|m| m.get(&item.input_id)), untagged.and_then(|m| m.get(&item.input_id))) {
                (Some(p), _) => (p, Some(part.to_string())),
                (None, Some(p)) => (p, None),
                (None, None) => continue,
            };
            matched.entry((tag, item.input_id.clone())).or_default().insert(part.to_string());
            let decisions = match &p.decisions {
                Some(d) => d.clone(),
                None => {
                    let mut d = Vec::new();
                    if let Some(set) = &input_set {
                        d.extend(set.screen(&item.prompt, Some(Stage::Input)).decisions);
                    }
                    if let (Some(set), Some(o)) = (&output_set, &p.output) {
                        d.extend(set.screen(o, Some(Stage::Output)).decisions);
                    }
                    d
                }
            };
            let output_tokens = p.output_tokens.unwrap_or_else(|| p.output.as_deref().map_or(0, |o| o.split_whitespace().count() as u32));
            out.insert(
                item.input_id.clone(),
                ResultItem { prompt: item.prompt.clone(), output: p.output.clone(), error: p.error.clone(), decisions, output_tokens, policy_scores: p.policy_scores.clone() },
            );
        }
        Ok(out)
    }

    /// After every part: predictions without a part that matched items of two parts (an error:
    /// which one they answer is unknown), and predictions no item asked for (`PART/ID` or `ID`).
    pub fn finish(&self) -> Result<Vec<String>> {
        let matched = self.matched.borrow();
        if let Some(((_, id), parts)) = matched.iter().find(|((part, _), parts)| part.is_none() && parts.len() > 1) {
            let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
            return Err(Error::Source {
                source_name: self.path.display().to_string(),
                message: format!("id {id:?} is an item of parts {}: add a {PART:?} column naming the part each row answers", parts.join(" and ")),
            });
        }
        let mut unmatched: Vec<String> = self
            .rows
            .iter()
            .flat_map(|(part, m)| m.keys().map(move |id| (part.clone(), id.clone())))
            .filter(|k| !matched.contains_key(k))
            .map(|(part, id)| match part {
                Some(p) => format!("{p}/{id}"),
                None => id,
            })
            .collect();
        unmatched.sort();
        Ok(unmatched)
    }
}
