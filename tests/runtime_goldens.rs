//! The runtime against transformers: every golden case on both backends, batching, sampling.
//! Goldens come from `tools/reference.py` (see models/tiny-gemma4/goldens/cases.json).

use std::path::{Path, PathBuf};

use gemma_batch::model::{
    BackendKind, BackendOptions, Device, Gemma4, GenerationOptions, ImageSource, ModelOptions, Prepared, Request,
    Sampling,
};

#[derive(serde::Deserialize)]
struct Goldens {
    cases: Vec<Case>,
}

#[derive(serde::Deserialize, Clone)]
struct Case {
    name: String,
    system: Option<String>,
    prompt: String,
    images: Vec<String>,
    input_ids: Vec<u32>,
    first_step_logits: Vec<f32>,
    greedy_ids: Vec<u32>,
    max_new_tokens: usize,
    pixel_values_shape: Option<Vec<usize>>,
    pixel_position_ids: Option<Vec<Vec<Vec<i64>>>>,
    num_soft_tokens: Option<Vec<usize>>,
}

/// The model under test: the bundled tiny model, or any exported model directory with
/// `goldens/` written by `tools/reference.py` (set GEMMA_BATCH_TEST_MODEL).
fn model_dir() -> PathBuf {
    external_model().unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny-gemma4"))
}

/// The externally supplied model, if any. Only such a model may lack a variant: the
/// committed tiny model ships every one the tests run.
fn external_model() -> Option<PathBuf> {
    std::env::var_os("GEMMA_BATCH_TEST_MODEL").filter(|d| !d.is_empty()).map(PathBuf::from)
}

fn goldens() -> Vec<Case> {
    let path = model_dir().join("goldens/cases.json");
    let g: Goldens = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(g.cases.len() >= 12, "expected at least 12 golden cases");
    g.cases
}

/// ONNX Runtime tests run on CUDA when GEMMA_BATCH_TEST_DEVICE=cuda (tools/gpu-check.sh).
fn device(kind: BackendKind) -> Device {
    match std::env::var("GEMMA_BATCH_TEST_DEVICE").as_deref() {
        Ok("cuda") if kind == BackendKind::Ort => Device::Cuda,
        _ => Device::Cpu,
    }
}

fn load(kind: BackendKind) -> Gemma4 {
    load_from(&model_dir(), kind, ModelOptions::default().prefill_chunk)
}

fn load_from(dir: &Path, kind: BackendKind, prefill_chunk: usize) -> Gemma4 {
    let options = ModelOptions {
        backend: BackendOptions { kind, device: device(kind), threads: 0 },
        prefill_chunk,
        ..ModelOptions::default()
    };
    Gemma4::load(dir, &options).unwrap_or_else(|e| panic!("loading {} on {kind:?}: {e}", dir.display()))
}

fn request(case: &Case) -> Request {
    let dir = model_dir().join("goldens/images");
    Request {
        system: case.system.clone(),
        prompt: case.prompt.clone(),
        images: case.images.iter().map(|n| ImageSource::Path(dir.join(n))).collect(),
    }
}

fn read_f32(path: &Path) -> Vec<f32> {
    std::fs::read(path).unwrap().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn greedy(n: usize) -> GenerationOptions {
    GenerationOptions { max_new_tokens: n, sampling: None }
}

fn check_goldens(kind: BackendKind) {
    let mut model = load(kind);
    let mut worst_logits = 0f32;
    let mut worst_pixels = 0f32;
    let mut failures = Vec::new();
    for case in goldens() {
        let prepared = model.prepare(&request(&case)).unwrap();
        assert_eq!(prepared.input_ids, case.input_ids, "{}: prompt token ids", case.name);
        assert_eq!(case.images.is_empty(), case.pixel_values_shape.is_none(), "{}: image goldens go with images", case.name);
        assert_eq!(prepared.images.len(), case.images.len(), "{}: prepared images", case.name);
        if let Some(shape) = &case.pixel_values_shape {
            let want = read_f32(&model_dir().join(format!("goldens/pixels/{}.f32", case.name)));
            let got: Vec<f32> = prepared.images.iter().flat_map(|i| i.pixel_values.iter().copied()).collect();
            assert_eq!(got.len(), shape.iter().product::<usize>(), "{}: pixel_values size", case.name);
            let d = max_abs(&got, &want);
            assert!(d <= 2e-2, "{}: pixel_values differ by {d}", case.name);
            worst_pixels = worst_pixels.max(d);
            let positions: Vec<i64> = prepared.images.iter().flat_map(|i| i.position_ids.iter().copied()).collect();
            let want_pos: Vec<i64> = case.pixel_position_ids.as_ref().unwrap().iter().flatten().flatten().copied().collect();
            assert_eq!(positions, want_pos, "{}: position ids", case.name);
            let soft: Vec<usize> = prepared.images.iter().map(|i| i.num_soft_tokens).collect();
            assert_eq!(&soft, case.num_soft_tokens.as_ref().unwrap(), "{}: soft tokens", case.name);
        }
        let logits = model.first_step_logits(&prepared).unwrap();
        let d = max_abs(&logits, &case.first_step_logits);
        if d > 1e-3 {
            failures.push(format!("{}: first-step logits differ by {d:.3e}", case.name));
        }
        worst_logits = worst_logits.max(d);
        let out = model.generate(std::slice::from_ref(&prepared), &greedy(case.max_new_tokens)).unwrap().remove(0);
        if out.token_ids != case.greedy_ids {
            failures.push(format!("{}: greedy tokens {:?}, transformers {:?}", case.name, out.token_ids, case.greedy_ids));
        }
    }
    eprintln!("{kind:?}: max |logits diff| {worst_logits:.2e}, max |pixel diff| {worst_pixels:.2e}");
    assert!(failures.is_empty(), "{kind:?} disagrees with transformers:\n{}", failures.join("\n"));
}

#[test]
fn ort_matches_transformers_goldens() {
    check_goldens(BackendKind::Ort);
}

#[test]
fn tract_matches_transformers_goldens() {
    check_goldens(BackendKind::Tract);
}

/// 8 mixed prompts (text and images, different lengths) in one batch give exactly the tokens
/// each gives alone.
fn check_batch_equals_alone(kind: BackendKind) {
    let mut model = load(kind);
    let cases = goldens();
    let picked: Vec<&Case> = ["text_short", "image_one", "text_long", "image_two", "text_system", "image_wide", "text_unicode", "image_system_long"]
        .iter()
        .map(|n| cases.iter().find(|c| c.name == *n).unwrap())
        .collect();
    let prepared: Vec<Prepared> = picked.iter().map(|c| model.prepare(&request(c)).unwrap()).collect();
    let options = greedy(12);
    let batched = model.generate(&prepared, &options).unwrap();
    for (p, (b, case)) in prepared.iter().zip(batched.iter().zip(&picked)) {
        let alone = model.generate(std::slice::from_ref(p), &options).unwrap().remove(0);
        assert_eq!(b.token_ids, alone.token_ids, "{}: batched vs alone on {kind:?}", case.name);
        assert_eq!(b.finish_reason, alone.finish_reason);
    }
}

/// Feeds golden requests two at a time into a continuous batch of three slots, so rows
/// join while others run and leave at different lengths.
struct GoldenDriver {
    pending: Vec<(usize, Prepared, GenerationOptions)>,
    results: Vec<Option<Vec<u32>>>,
    finished_so_far: usize,
    /// Requests handed over after some row had already finished (joins into a running batch).
    late_joins: usize,
}

impl gemma_batch::model::Driver<usize> for GoldenDriver {
    fn fill(&mut self, _: &mut Gemma4, room: usize, _block: bool) -> gemma_batch::model::Fill<usize> {
        if self.pending.is_empty() {
            return gemma_batch::model::Fill::End;
        }
        let n = room.min(2).min(self.pending.len());
        let batch: Vec<_> = self.pending.drain(..n).collect();
        if self.finished_so_far > 0 {
            self.late_joins += batch.len();
        }
        gemma_batch::model::Fill::More(batch)
    }
    fn done(&mut self, _: &mut Gemma4, finished: Vec<gemma_batch::model::Finished<usize>>) -> bool {
        for f in finished {
            self.finished_so_far += 1;
            self.results[f.tag] = Some(f.result.unwrap().token_ids);
        }
        true
    }
    fn failed(&mut self, _: &mut Gemma4, e: gemma_batch::model::BatchError<usize>) -> bool {
        panic!("batch failed: {}", e.error)
    }
}

/// Every golden case through a continuous batch (3 slots, a window of 4, rows of different
/// lengths and budgets joining mid-run) gives exactly transformers' greedy tokens.
fn check_continuous_batching(kind: BackendKind) {
    check_continuous_batching_on(&mut load(kind), kind);
}

fn check_continuous_batching_on(model: &mut Gemma4, kind: BackendKind) {
    let cases = goldens();
    let pending: Vec<(usize, Prepared, GenerationOptions)> = cases
        .iter()
        .enumerate()
        .map(|(i, c)| (i, model.prepare(&request(c)).unwrap(), greedy(2 + (i * 7) % 19)))
        .collect();
    let budgets: Vec<usize> = pending.iter().map(|(_, _, o)| o.max_new_tokens).collect();
    let mut driver = GoldenDriver { pending, results: vec![None; cases.len()], finished_so_far: 0, late_joins: 0 };
    gemma_batch::model::drive(model, 3, 4, &mut driver);
    assert!(driver.late_joins >= 4, "rows should join a running batch ({} did)", driver.late_joins);
    for ((case, got), budget) in cases.iter().zip(&driver.results).zip(budgets) {
        let got = got.as_ref().unwrap_or_else(|| panic!("{}: no result", case.name));
        let want = &case.greedy_ids[..budget.min(case.greedy_ids.len())];
        assert_eq!(got, want, "{}: continuous batching on {kind:?} vs transformers", case.name);
    }
}

#[test]
fn ort_continuous_batching_matches_transformers() {
    check_continuous_batching(BackendKind::Ort);
}

#[test]
fn tract_continuous_batching_matches_transformers() {
    check_continuous_batching(BackendKind::Tract);
}

#[test]
fn ort_batch_of_eight_equals_each_alone() {
    check_batch_equals_alone(BackendKind::Ort);
}

#[test]
fn tract_batch_of_eight_equals_each_alone() {
    check_batch_equals_alone(BackendKind::Tract);
}

#[test]
fn seeded_sampling_reproduces_and_seed_matters() {
    let mut model = load(BackendKind::Ort);
    let case = goldens().into_iter().find(|c| c.name == "image_one").unwrap();
    let prepared = model.prepare(&request(&case)).unwrap();
    let run = |model: &mut Gemma4, seed| {
        let s = Sampling { temperature: 1.5, top_k: 50, top_p: 0.95, seed };
        let o = GenerationOptions { max_new_tokens: 16, sampling: Some(s) };
        model.generate(std::slice::from_ref(&prepared), &o).unwrap().remove(0).token_ids
    };
    let a = run(&mut model, 11);
    assert_eq!(a, run(&mut model, 11));
    assert_ne!(a, run(&mut model, 12), "different seeds should differ on this prompt");
    // A row samples the same inside a batch as alone.
    let s = Sampling { temperature: 1.5, top_k: 50, top_p: 0.95, seed: 11 };
    let o = GenerationOptions { max_new_tokens: 16, sampling: Some(s) };
    let other = model.prepare(&request(&goldens()[0])).unwrap();
    let batch = model.generate(&[other, prepared.clone()], &o).unwrap();
    assert_eq!(batch[1].token_ids, a);
}

#[test]
fn scoring_matches_first_step_log_probabilities() {
    let mut model = load(BackendKind::Ort);
    let case = goldens().into_iter().find(|c| c.name == "text_system").unwrap();
    let prepared = model.prepare(&request(&case)).unwrap();
    let yes = model.tokenizer().encode("Yes").unwrap();
    let scores = model.score(&prepared, &["Yes".to_string(), "No".to_string()]).unwrap();
    // Reference log-softmax of the golden first-step logits at the first token of "Yes".
    let l = &case.first_step_logits;
    let max = l.iter().cloned().fold(f32::MIN, f32::max) as f64;
    let lse = l.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln() + max;
    let mut want = l[yes[0] as usize] as f64 - lse;
    // Multi-token candidates add the later tokens' log-probabilities; check by generation-free teacher forcing.
    if yes.len() > 1 {
        let ext = Prepared { input_ids: [prepared.input_ids.clone(), yes[..1].to_vec()].concat(), images: vec![] };
        let l2 = model.first_step_logits(&ext).unwrap();
        want += gemma_batch::model::sampling::log_prob(&l2, yes[1] as usize);
    }
    assert!((scores[0].logprob - want).abs() < 1e-3, "score {} vs reference {want}", scores[0].logprob);
    assert!(scores.iter().all(|s| s.logprob < 0.0));
}

/// Every exported variant runs on both backends. fp16 stays close to the fp32 reference;
/// the quantized ones only have to produce sane distributions.
#[test]
fn every_variant_runs_on_both_backends() {
    use gemma_batch::model::Variant;
    let cases = goldens();
    for kind in [BackendKind::Ort, BackendKind::Tract] {
        for variant in [Variant::Fp16, Variant::Q4, Variant::Quantized] {
            if let Err(e) = gemma_batch::model::files::graph_path(&model_dir(), "decoder_model_merged", variant) {
                match external_model() {
                    Some(dir) => {
                        println!(
                            "SKIPPED: {kind:?} {variant:?}: GEMMA_BATCH_TEST_MODEL={} has no {variant:?} export ({e})",
                            dir.display()
                        );
                        continue;
                    }
                    None => panic!("the committed tiny model must ship the {variant:?} variant: {e}"),
                }
            }
            let options = ModelOptions {
                backend: BackendOptions { kind, device: Device::Cpu, threads: 0 },
                variant,
                ..ModelOptions::default()
            };
            let mut model = Gemma4::load(&model_dir(), &options).unwrap_or_else(|e| panic!("{kind:?} {variant:?}: {e}"));
            let mut worst = 0f32;
            for name in ["text_long", "image_two"] {
                let case = cases.iter().find(|c| c.name == name).unwrap();
                let prepared = model.prepare(&request(case)).unwrap();
                let logits = model.first_step_logits(&prepared).unwrap();
                assert!(logits.iter().all(|v| v.is_finite()), "{kind:?} {variant:?} {name}: non-finite logits");
                worst = worst.max(max_abs(&logits, &case.first_step_logits));
                let out = model.generate(std::slice::from_ref(&prepared), &greedy(6)).unwrap().remove(0);
                let stopped = out.token_ids.last().is_some_and(|t| model.eos_ids().contains(t));
                assert!(out.token_ids.len() == 6 || stopped, "{kind:?} {variant:?} {name}: {:?}", out.token_ids);
            }
            eprintln!("{kind:?} {variant:?}: max |logits - fp32 reference| {worst:.3e}");
            if variant == Variant::Fp16 {
                // float16 keeps about 3 significant digits of logits soft-capped at 30; tract also
                // accumulates in float16, so it drifts a little further than ONNX Runtime.
                assert!(worst < 0.25, "{kind:?} fp16 logits differ by {worst}");
            }
        }
    }
}

/// First-step logits of every golden case within 1e-3 of transformers'.
fn check_first_step_logits(model: &mut Gemma4, what: &str) {
    for case in goldens() {
        let prepared = model.prepare(&request(&case)).unwrap();
        let d = max_abs(&model.first_step_logits(&prepared).unwrap(), &case.first_step_logits);
        assert!(d <= 1e-3, "{what}: {}: first-step logits differ by {d:.3e}", case.name);
    }
}

/// Prompts longer than the prefill chunk run in several decoder calls; a multi-token
/// candidate whose positions straddle two chunks scores as in one call.
#[test]
fn chunked_prefill_matches_transformers_and_one_call() {
    for kind in [BackendKind::Ort, BackendKind::Tract] {
        let mut chunked = load_from(&model_dir(), kind, 5);
        check_first_step_logits(&mut chunked, "prefill chunks of 5");
        check_continuous_batching_on(&mut chunked, kind);
        let mut whole = load(kind);
        let case = goldens().into_iter().find(|c| c.name == "text_long").unwrap();
        let prepared = whole.prepare(&request(&case)).unwrap();
        let candidates = ["Yes, that is right".to_string(), "No".to_string(), "Perhaps so, I think".to_string()];
        assert!(whole.tokenizer().encode(&candidates[2]).unwrap().len() >= 3, "a candidate of several tokens");
        for offset in 0..5 {
            // Shift the prompt so chunk boundaries fall at every place within the candidates.
            let p = gemma_batch::model::Prepared { input_ids: prepared.input_ids[offset..].to_vec(), images: vec![] };
            let a = whole.score(&p, &candidates).unwrap();
            let b = chunked.score(&p, &candidates).unwrap();
            for (x, y) in a.iter().zip(&b) {
                assert!((x.logprob - y.logprob).abs() < 1e-4, "{kind:?} offset {offset}: {} scores {} vs {}", x.candidate, x.logprob, y.logprob);
            }
        }
    }
}

/// A community export whose decoder has no `num_logits_to_keep` input still runs: the
/// runtime reads the last positions of full logits instead.
#[test]
fn an_export_without_num_logits_to_keep_gives_the_same_tokens() {
    use prost::Message;
    let dir = tempfile::tempdir().unwrap();
    let src = model_dir();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    std::fs::create_dir(dir.path().join("onnx")).unwrap();
    for name in ["embed_tokens.onnx", "vision_encoder.onnx", "audio_encoder.onnx"] {
        std::fs::copy(src.join("onnx").join(name), dir.path().join("onnx").join(name)).unwrap();
    }
    let mut proto = gemma_batch::model::files::read_onnx_proto(&src.join("onnx/decoder_model_merged.onnx")).unwrap();
    let graph = proto.graph.as_mut().unwrap();
    let before = graph.input.len();
    // The default stays as a constant 0 (all positions); the input is gone.
    graph.input.retain(|i| i.name != "num_logits_to_keep");
    assert_eq!(graph.input.len(), before - 1, "the tiny export has num_logits_to_keep");
    std::fs::write(dir.path().join("onnx/decoder_model_merged.onnx"), proto.encode_to_vec()).unwrap();
    for kind in [BackendKind::Ort, BackendKind::Tract] {
        let mut model = load_from(dir.path(), kind, ModelOptions::default().prefill_chunk);
        check_first_step_logits(&mut model, "without num_logits_to_keep");
        check_continuous_batching_on(&mut model, kind);
    }
}
