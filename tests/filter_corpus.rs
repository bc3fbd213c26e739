//! Precision and recall of the PII and secret detectors on the labelled corpus
//! (tests/data/filters/pii_secrets.jsonl, from tools/make_filter_corpus.py): positives made
//! valid by construction and hard negatives that only look like PII or secrets. Prints the
//! table; every type must reach 0.95 precision and recall.

use std::collections::BTreeMap;
use std::path::Path;

use gemma_batch::filters::FilterSet;

#[derive(serde::Deserialize)]
struct Line {
    text: String,
    labels: Vec<Label>,
}

#[derive(serde::Deserialize)]
struct Label {
    #[serde(rename = "type")]
    kind: String,
    start: usize,
    end: usize,
}

#[derive(Default)]
struct Counts {
    gold: usize,
    found: usize,
    predicted: usize,
    correct: usize,
}

#[test]
fn pii_and_secrets_precision_recall() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let set = FilterSet::load(&root.join("filters/pii-only.toml")).unwrap();
    let text = std::fs::read_to_string(root.join("tests/data/filters/pii_secrets.jsonl")).unwrap();
    let mut counts: BTreeMap<String, Counts> = BTreeMap::new();
    let mut mistakes = Vec::new();
    let (mut positives, mut negatives) = (0, 0);
    for line in text.lines() {
        let l: Line = serde_json::from_str(line).unwrap();
        if l.labels.is_empty() {
            negatives += 1;
        }
        let screening = set.screen(&l.text, None);
        let predicted: Vec<(String, usize, usize)> = screening
            .decisions
            .iter()
            .map(|d| {
                let kind = if d.filter == "secrets" { "secret".to_string() } else { d.rule.clone() };
                let [a, b] = d.span.unwrap();
                (kind, a, b)
            })
            .collect();
        let overlaps = |a: (usize, usize), b: (usize, usize)| a.0 < b.1 && b.0 < a.1;
        for g in &l.labels {
            positives += 1;
            let c = counts.entry(g.kind.clone()).or_default();
            c.gold += 1;
            if predicted.iter().any(|(k, a, b)| *k == g.kind && overlaps((*a, *b), (g.start, g.end))) {
                c.found += 1;
            } else {
                mistakes.push(format!("missed {}: {:?}", g.kind, l.text));
            }
        }
        for (k, a, b) in &predicted {
            let c = counts.entry(k.clone()).or_default();
            c.predicted += 1;
            if l.labels.iter().any(|g| g.kind == *k && overlaps((*a, *b), (g.start, g.end))) {
                c.correct += 1;
            } else {
                mistakes.push(format!("false {k}: {:?} in {:?}", &l.text[*a..*b], l.text));
            }
        }
        // Redaction leaves nothing detectable behind.
        let again = set.screen(&screening.text, None);
        assert!(again.decisions.is_empty(), "after redaction {:?} still has {:?}", screening.text, again.decisions);
    }
    println!("corpus: {positives} labelled entities, {negatives} hard-negative lines");
    println!("{:<10} {:>6} {:>9} {:>9} {:>7}", "type", "gold", "precision", "recall", "f1");
    let mut failed = Vec::new();
    for (kind, c) in &counts {
        let p = if c.predicted == 0 { 1.0 } else { c.correct as f64 / c.predicted as f64 };
        let r = if c.gold == 0 { 1.0 } else { c.found as f64 / c.gold as f64 };
        let f1 = if p + r == 0.0 { 0.0 } else { 2.0 * p * r / (p + r) };
        println!("{kind:<10} {:>6} {p:>9.3} {r:>9.3} {f1:>7.3}", c.gold);
        if p < 0.95 || r < 0.95 {
            failed.push(kind.clone());
        }
    }
    for m in &mistakes {
        println!("  {m}");
    }
    assert!(positives >= 300 && negatives >= 300, "the corpus is too small");
    assert!(failed.is_empty(), "below 0.95 precision or recall: {failed:?}");
}
