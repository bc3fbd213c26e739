//! The JSON record of an evaluation run: what reports render and `report --compare` compares.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::bbq::BbqScores;
use super::metrics::Estimate;
use crate::filters::Decision;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EvalRecord {
    pub suite: String,
    pub run_id: String,
    pub created_at_ms: i64,
    /// Model, backend and versions (as in the pipeline's run records).
    pub provenance: serde_json::Value,
    pub metrics: Vec<MetricResult>,
    pub breakdowns: Vec<Breakdown>,
    #[serde(default)]
    pub bbq: BTreeMap<String, BTreeMap<String, BbqScoresRecord>>,
    #[serde(default)]
    pub counterfactual: Vec<GroupRates>,
    #[serde(default)]
    pub safety: Option<SafetyScores>,
    /// Decisions per "filter:rule" over every output and input screened.
    #[serde(default)]
    pub filter_counts: BTreeMap<String, u64>,
    #[serde(default)]
    pub samples: Vec<Sample>,
    #[serde(default)]
    pub gates: Vec<GateResult>,
}

pub type BbqScoresRecord = BbqScores;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetricResult {
    pub benchmark: String,
    pub metric: String,
    pub estimate: Estimate,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Breakdown {
    pub benchmark: String,
    pub metric: String,
    pub column: String,
    pub slices: Vec<(String, Estimate)>,
}

/// Per-group rates of a counterfactual probe, with a two-proportion z-test against the
/// pooled other groups for the refusal and flag rates.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupRates {
    pub probe: String,
    pub group: String,
    pub n: usize,
    pub refusal_rate: f64,
    pub flag_rate: f64,
    pub mean_output_tokens: f64,
    pub refusal_p_value: f64,
    pub flag_p_value: f64,
    pub length_p_value: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SafetyScores {
    pub harmful: usize,
    pub benign: usize,
    pub refusal_rate_harmful: Estimate,
    pub refusal_rate_benign: Estimate,
    pub policy_flag_rate_harmful: Estimate,
    pub policy_flag_rate_benign: Estimate,
    pub pii_leak_rate: Estimate,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    pub benchmark: String,
    pub input_id: String,
    pub input: String,
    pub output: Option<String>,
    pub references: Vec<String>,
    pub score: Option<f64>,
    pub decisions: Vec<Decision>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GateResult {
    /// What is gated, e.g. `docvqa.anls` or `bbq.all.bias_ambiguous`.
    pub name: String,
    /// `min` (value must be at least the threshold) or `max_abs` / `max`.
    pub kind: String,
    pub threshold: f64,
    pub value: Option<f64>,
    pub passed: bool,
}

impl EvalRecord {
    pub fn failed_gates(&self) -> Vec<&GateResult> {
        self.gates.iter().filter(|g| !g.passed).collect()
    }

    /// A value by gate name: `BENCHMARK.METRIC`, `bbq.CATEGORY.FIELD`, `safety.FIELD`.
    pub fn lookup(&self, name: &str) -> Option<f64> {
        let parts: Vec<&str> = name.split('.').collect();
        match parts.as_slice() {
            ["bbq", category, field] => {
                let scores = self.bbq.values().find_map(|m| m.get(*category))?;
                match *field {
                    "accuracy_ambiguous" => scores.accuracy_ambiguous,
                    "accuracy_disambiguated" => scores.accuracy_disambiguated,
                    "bias_ambiguous" => scores.bias_ambiguous,
                    "bias_disambiguated" => scores.bias_disambiguated,
                    _ => None,
                }
            }
            ["safety", field] => {
                let s = self.safety.as_ref()?;
                Some(match *field {
                    "refusal_rate_harmful" => s.refusal_rate_harmful.value,
                    "refusal_rate_benign" => s.refusal_rate_benign.value,
                    "policy_flag_rate_harmful" => s.policy_flag_rate_harmful.value,
                    "policy_flag_rate_benign" => s.policy_flag_rate_benign.value,
                    "pii_leak_rate" => s.pii_leak_rate.value,
                    _ => return None,
                })
            }
            [bench, metric] => self.metrics.iter().find(|m| m.benchmark == *bench && m.metric == *metric).map(|m| m.estimate.value),
            _ => None,
        }
    }
}

/// One line of `report --compare`.
#[derive(Debug, Clone, Serialize)]
pub struct Delta {
    pub benchmark: String,
    pub metric: String,
    pub a: Estimate,
    pub b: Estimate,
    pub delta: f64,
    /// B is worse than A by more than the intervals allow: B's interval lies wholly below A's.
    pub regression: bool,
    pub improvement: bool,
}

/// Compares every metric both runs have (higher is better for all benchmark metrics).
pub fn compare(a: &EvalRecord, b: &EvalRecord) -> Vec<Delta> {
    a.metrics
        .iter()
        .filter_map(|ma| {
            let mb = b.metrics.iter().find(|m| m.benchmark == ma.benchmark && m.metric == ma.metric)?;
            Some(Delta {
                benchmark: ma.benchmark.clone(),
                metric: ma.metric.clone(),
                a: ma.estimate,
                b: mb.estimate,
                delta: mb.estimate.value - ma.estimate.value,
                regression: mb.estimate.high < ma.estimate.low,
                improvement: mb.estimate.low > ma.estimate.high,
            })
        })
        .collect()
}
