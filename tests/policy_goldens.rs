//! The policy filter against transformers: same prompts (ids), same "Yes"/"No"
//! log-probabilities within 1e-3, text and image items, both backends. Goldens come from
//! `tools/reference_policy.py` (models/tiny-gemma4/goldens/policy.json).

use std::path::Path;

use gemma_batch::filters::{FilterSet, PolicyItem};
use gemma_batch::model::{BackendKind, BackendOptions, Device, Gemma4, ImageSource, ModelOptions};

#[derive(serde::Deserialize)]
struct Goldens {
    yes: String,
    no: String,
    cases: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    kind: String,
    item: String,
    category: String,
    input_ids: Vec<u32>,
    logprob_yes: f64,
    logprob_no: f64,
    p_yes: f64,
}

fn check(kind: BackendKind) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let model_dir = root.join("models/tiny-gemma4");
    let goldens: Goldens =
        serde_json::from_str(&std::fs::read_to_string(model_dir.join("goldens/policy.json")).unwrap()).unwrap();
    assert!(!goldens.cases.is_empty(), "no policy goldens");
    let set = FilterSet::load(&root.join("filters/default.toml")).unwrap();
    let policy = set.policy().expect("the default set has a policy filter");
    let options = ModelOptions { backend: BackendOptions { kind, device: Device::Cpu, threads: 0 }, ..ModelOptions::default() };
    let mut model = Gemma4::load(&model_dir, &options).unwrap();

    let item = |c: &Case| match c.kind.as_str() {
        "text" => PolicyItem::Text(c.item.clone()),
        _ => PolicyItem::Image(ImageSource::Path(model_dir.join("goldens/images").join(&c.item))),
    };
    // Prompts: the same ids as transformers.
    let mut prepared = Vec::new();
    for c in &goldens.cases {
        let requests = policy.requests(&item(c)).unwrap();
        let k = policy.categories.iter().position(|p| p.name == c.category).unwrap();
        let p = model.prepare(&requests[k]).unwrap();
        assert_eq!(p.input_ids, c.input_ids, "{} {} {}: prompt ids differ", c.kind, c.item, c.category);
        prepared.push(p);
    }
    // Log-probabilities, batched as the filter runs them.
    let candidates = [goldens.yes.clone(), goldens.no.clone()];
    let mut worst = 0f64;
    for (chunk, cases) in prepared.chunks(6).zip(goldens.cases.chunks(6)) {
        let scores = model.score_batch(chunk, &candidates).unwrap();
        assert_eq!(scores.len(), cases.len(), "one score row per prompt");
        for (s, c) in scores.iter().zip(cases) {
            assert_eq!(s.len(), 2, "one score per candidate");
            let d = (s[0].logprob - c.logprob_yes).abs().max((s[1].logprob - c.logprob_no).abs());
            worst = worst.max(d);
            assert!(d < 1e-3, "{kind:?} {} {} {}: log-prob differs by {d}", c.kind, c.item, c.category);
        }
    }
    // And through the filter itself: P(Yes) per item and category.
    let items: Vec<PolicyItem> = goldens.cases.iter().step_by(policy.categories.len()).map(item).collect();
    let scores = policy.score(&mut model, &items).unwrap();
    assert_eq!(scores.len(), items.len());
    assert_eq!(items.len() * policy.categories.len(), goldens.cases.len());
    for (i, s) in scores.iter().enumerate() {
        let s = s.as_ref().unwrap();
        assert_eq!(s.len(), policy.categories.len(), "one P(Yes) per category");
        for (k, p) in s.iter().enumerate() {
            let c = &goldens.cases[i * policy.categories.len() + k];
            assert!((p - c.p_yes).abs() < 1e-3, "{kind:?} {} {}: P(Yes) {p} vs {}", c.item, c.category, c.p_yes);
        }
    }
    println!("{kind:?}: {} policy prompts, max |log-prob diff| {worst:.2e}", goldens.cases.len());
}

#[test]
fn policy_scores_match_transformers_on_ort() {
    check(BackendKind::Ort);
}

#[test]
fn policy_scores_match_transformers_on_tract() {
    check(BackendKind::Tract);
}
