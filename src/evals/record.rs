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
    /// Items of a part that had no output to score: listed and counted, never scored.
    #[serde(default)]
    pub missing: Vec<MissingOutputs>,
    /// Predictions (`PART/ID` or `ID`) that no item of the suite asked for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unmatched_predictions: Vec<String>,
    /// Rows of a predictions file that could not be read (`FILE:LINE: why`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreadable_predictions: Vec<String>,
    /// What a reader must know to read the scores (what was not measured, and why).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MissingOutputs {
    pub part: String,
    /// Items the part has.
    pub expected: usize,
    /// Ids of the items without an output.
    pub ids: Vec<String>,
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

/// Per-group rates of a counterfactual probe, each tested against the pooled other groups
/// (a two-sided permutation test of the difference in means).
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
    /// The group's refusal rate minus that of the pooled other groups; None when either has
    /// no scored output (and in records written before the gap was kept).
    #[serde(default)]
    pub refusal_gap: Option<f64>,
    /// Its seeded 95% bootstrap interval [low, high] (the group's outputs and the others'
    /// resampled apart).
    #[serde(default)]
    pub refusal_gap_interval: Option<[f64; 2]>,
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
    /// ROC AUC of the input policy filter's score of each prompt (the highest P("Yes") over its
    /// categories, below threshold or not), harmful against benign (Mann-Whitney, ties 1/2),
    /// with a seeded 95% bootstrap interval (harmful and benign prompts resampled apart); `n`
    /// counts the prompts with scores. None when not measured (a note says why).
    #[serde(default)]
    pub policy_auc: Option<Estimate>,
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
    /// Why the gate failed without comparing: no such value, no scored items, not a number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

impl EvalRecord {
    pub fn failed_gates(&self) -> Vec<&GateResult> {
        self.gates.iter().filter(|g| !g.passed).collect()
    }

    /// A value by gate name (`BENCHMARK.METRIC`, `bbq.CATEGORY.FIELD`, `safety.FIELD`) and
    /// the number of scored items behind it (BBQ accuracies: the category's items whose
    /// answer picked an option; bias scores: the items of that context condition the score
    /// counts, an option picked and a target determined).
    pub fn lookup(&self, name: &str) -> Option<(f64, usize)> {
        let parts: Vec<&str> = name.split('.').collect();
        match parts.as_slice() {
            ["bbq", category, field] => {
                let scores = self.bbq.values().find_map(|m| m.get(*category))?;
                let answered = scores.items.saturating_sub(scores.unparsed);
                let (value, n) = match *field {
                    "accuracy_ambiguous" => (scores.accuracy_ambiguous, answered),
                    "accuracy_disambiguated" => (scores.accuracy_disambiguated, answered),
                    "bias_ambiguous" => (scores.bias_ambiguous, scores.scored_ambiguous),
                    "bias_disambiguated" => (scores.bias_disambiguated, scores.scored_disambiguated),
                    _ => return None,
                };
                Some((value?, n))
            }
            ["safety", field] => {
                let s = self.safety.as_ref()?;
                if *field == "policy_auc" {
                    // Not measured: nothing scored (a gate on it fails for that reason).
                    return Some(s.policy_auc.map_or((f64::NAN, 0), |e| (e.value, e.n)));
                }
                let e = match *field {
                    "refusal_rate_harmful" => s.refusal_rate_harmful,
                    "refusal_rate_benign" => s.refusal_rate_benign,
                    "policy_flag_rate_harmful" => s.policy_flag_rate_harmful,
                    "policy_flag_rate_benign" => s.policy_flag_rate_benign,
                    "pii_leak_rate" => s.pii_leak_rate,
                    _ => return None,
                };
                Some((e.value, e.n))
            }
            [bench, metric] => self.metrics.iter().find(|m| m.benchmark == *bench && m.metric == *metric).map(|m| (m.estimate.value, m.estimate.n)),
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
    /// None: B lacks the metric.
    pub b: Option<Estimate>,
    pub delta: Option<f64>,
    /// B is worse than A by more than the intervals allow (B's interval lies wholly below
    /// A's), or there is no evidence that it is not (see `problem`).
    pub regression: bool,
    pub improvement: bool,
    /// Why the two could not be compared: missing in B, no scored items, not a number.
    pub problem: Option<String>,
}

/// What makes an estimate no evidence: no items, or a value or bound that is not a number.
fn no_evidence(e: &Estimate) -> Option<&'static str> {
    if e.n == 0 {
        Some("no scored items")
    } else if ![e.value, e.low, e.high].iter().all(|v| v.is_finite()) {
        Some("not a number")
    } else {
        None
    }
}

/// Compares every metric of A with B's (higher is better for all benchmark metrics). A
/// metric A has and B lacks, or one without evidence on either side, is a regression: no
/// data is not a pass.
pub fn compare(a: &EvalRecord, b: &EvalRecord) -> Vec<Delta> {
    a.metrics
        .iter()
        .map(|ma| {
            let mb = b.metrics.iter().find(|m| m.benchmark == ma.benchmark && m.metric == ma.metric).map(|m| m.estimate);
            let problem = match mb {
                None => Some("missing in B".to_string()),
                Some(eb) => no_evidence(&eb).map(|p| format!("{p} in B")).or_else(|| no_evidence(&ma.estimate).map(|p| format!("{p} in A"))),
            };
            let ea = ma.estimate;
            Delta {
                benchmark: ma.benchmark.clone(),
                metric: ma.metric.clone(),
                a: ea,
                b: mb,
                delta: mb.map(|eb| eb.value - ea.value),
                regression: problem.is_some() || mb.is_some_and(|eb| eb.high < ea.low),
                improvement: problem.is_none() && mb.is_some_and(|eb| eb.low > ea.high),
                problem,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metric(benchmark: &str, metric: &str, value: f64, n: usize) -> MetricResult {
        MetricResult { benchmark: benchmark.into(), metric: metric.into(), estimate: Estimate { value, low: value - 0.05, high: value + 0.05, n } }
    }

    #[test]
    fn record_json_is_valid_for_any_string() {
        // NUL and the JavaScript line separators are valid in Rust strings (lone surrogates
        // are not); serde_json escapes or keeps them, and the record reads back the same.
        let s = "nul\u{0} ls\u{2028} ps\u{2029} del\u{7f} \"q\" \\ </script> <!--";
        let record = EvalRecord { suite: s.into(), metrics: vec![metric(s, s, 0.5, 1)], ..Default::default() };
        let text = serde_json::to_string_pretty(&record).unwrap();
        assert!(text.contains("nul\\u0000"), "{text}");
        let back: EvalRecord = serde_json::from_str(&text).unwrap();
        assert_eq!((back.suite.as_str(), back.metrics[0].benchmark.as_str()), (s, s));
    }

    #[test]
    fn compare_counts_a_metric_missing_in_b_as_a_regression() {
        let a = EvalRecord { metrics: vec![metric("qa", "anls", 0.8, 50), metric("qa", "exact_match", 0.5, 50)], ..Default::default() };
        let b = EvalRecord { metrics: vec![metric("qa", "anls", 0.8, 50)], ..Default::default() };
        let deltas = compare(&a, &b);
        assert_eq!(deltas.len(), 2, "{deltas:?}");
        let missing = &deltas[1];
        assert_eq!((missing.benchmark.as_str(), missing.metric.as_str()), ("qa", "exact_match"));
        assert!(missing.regression, "{missing:?}");
        assert_eq!((missing.b, missing.delta, missing.problem.as_deref()), (None, None, Some("missing in B")));
        assert!(!deltas[0].regression && deltas[0].problem.is_none());
    }

    #[test]
    fn compare_without_evidence_in_b_is_a_regression() {
        let a = EvalRecord { metrics: vec![metric("qa", "anls", 0.0, 50), metric("qa", "bleu4", 0.3, 50)], ..Default::default() };
        // An empty benchmark (n = 0 scores 0 with a [0, 0] interval) and a NaN.
        let b = EvalRecord { metrics: vec![metric("qa", "anls", 0.0, 0), metric("qa", "bleu4", f64::NAN, 50)], ..Default::default() };
        let deltas = compare(&a, &b);
        assert_eq!(deltas.len(), 2);
        for d in &deltas {
            assert!(d.regression, "{d:?}");
            assert!(!d.improvement, "{d:?}");
        }
        assert_eq!(deltas[0].problem.as_deref(), Some("no scored items in B"));
        assert_eq!(deltas[1].problem.as_deref(), Some("not a number in B"));
        // A baseline without evidence cannot show that B holds up either.
        let deltas = compare(&b, &a);
        assert!(deltas.iter().all(|d| d.regression), "{deltas:?}");
        assert_eq!(deltas[0].problem.as_deref(), Some("no scored items in A"));
    }
}
