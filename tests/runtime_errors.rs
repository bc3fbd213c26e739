//! Bad inputs give clear errors that name what is wrong, never panics.

use std::path::{Path, PathBuf};

use gemma_batch::model::{BackendKind, BackendOptions, Device, Gemma4, ImageSource, ModelOptions, Request};
use gemma_batch::Error;
use prost::Message;

fn model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny-gemma4")
}

fn options(kind: BackendKind) -> ModelOptions {
    ModelOptions { backend: BackendOptions { kind, device: Device::Cpu, threads: 0 }, ..ModelOptions::default() }
}

fn load(dir: &Path) -> Result<Gemma4, Error> {
    Gemma4::load(dir, &options(BackendKind::Tract))
}

/// A copy of the tiny model (without the HF checkpoint and goldens) to break in one place.
fn model_copy() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(model_dir()).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), tmp.path().join(entry.file_name())).unwrap();
        }
    }
    std::fs::create_dir(tmp.path().join("onnx")).unwrap();
    for name in ["embed_tokens.onnx", "vision_encoder.onnx", "decoder_model_merged.onnx"] {
        std::fs::copy(model_dir().join("onnx").join(name), tmp.path().join("onnx").join(name)).unwrap();
    }
    tmp
}

fn err_text<T>(r: Result<T, Error>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_model_directory_and_files_are_named() {
    let msg = err_text(load(Path::new("/nonexistent/model")));
    assert!(msg.contains("/nonexistent/model"), "{msg}");

    for file in ["tokenizer.json", "chat_template.jinja", "config.json"] {
        let tmp = model_copy();
        std::fs::remove_file(tmp.path().join(file)).unwrap();
        let msg = err_text(load(tmp.path()));
        assert!(msg.contains(file), "{file}: {msg}");
    }

    let tmp = model_copy();
    std::fs::remove_file(tmp.path().join("onnx/decoder_model_merged.onnx")).unwrap();
    let msg = err_text(load(tmp.path()));
    assert!(msg.contains("onnx/decoder_model_merged.onnx"), "{msg}");
}

#[test]
fn missing_variant_lists_the_exported_ones() {
    let mut o = options(BackendKind::Tract);
    o.variant = gemma_batch::model::Variant::Q4f16;
    let msg = err_text(Gemma4::load(&model_dir(), &o));
    assert!(msg.contains("_q4f16") && msg.contains("available: fp32, fp16, q4, quantized"), "{msg}");
}

#[test]
fn graph_that_breaks_the_contract_is_refused() {
    let tmp = model_copy();
    // A decoder file that is really the embedding graph.
    std::fs::copy(model_dir().join("onnx/embed_tokens.onnx"), tmp.path().join("onnx/decoder_model_merged.onnx")).unwrap();
    let msg = err_text(load(tmp.path()));
    assert!(msg.contains("decoder_model_merged.onnx") && msg.contains("missing input"), "{msg}");
}

#[test]
fn tokenizer_without_image_token_is_refused() {
    let tmp = model_copy();
    let path = tmp.path().join("tokenizer.json");
    let text = std::fs::read_to_string(&path).unwrap().replace("<|image|>", "<|imagX|>");
    std::fs::write(&path, text).unwrap();
    let msg = err_text(load(tmp.path()));
    assert!(msg.contains("image_token") && msg.contains("<|image|>"), "{msg}");
}

fn with_external_data(location: &str) -> tempfile::TempDir {
    let tmp = model_copy();
    let path = tmp.path().join("onnx/embed_tokens.onnx");
    let mut proto = tract_onnx::pb::ModelProto::decode(std::fs::read(&path).unwrap().as_slice()).unwrap();
    let init = &mut proto.graph.as_mut().unwrap().initializer[0];
    init.raw_data.clear();
    init.data_location = Some(tract_onnx::pb::tensor_proto::DataLocation::External as i32);
    init.external_data = vec![tract_onnx::pb::StringStringEntryProto { key: "location".into(), value: location.into() }];
    std::fs::write(&path, proto.encode_to_vec()).unwrap();
    tmp
}

#[test]
fn external_data_outside_the_model_directory_is_refused() {
    for location in ["/etc/passwd", "../../etc/passwd"] {
        let tmp = with_external_data(location);
        for kind in [BackendKind::Tract, BackendKind::Ort] {
            let msg = err_text(Gemma4::load(tmp.path(), &options(kind)));
            assert!(msg.contains("external data") && msg.contains(location), "{kind:?} {location}: {msg}");
        }
    }
    // A symlink inside the directory that points outside it.
    let tmp = with_external_data("weights.bin");
    std::os::unix::fs::symlink("/etc/hostname", tmp.path().join("onnx/weights.bin")).unwrap();
    let msg = err_text(load(tmp.path()));
    assert!(msg.contains("outside the model directory"), "{msg}");
}

/// A PNG that claims a huge image (a decompression bomb would carry deflated zeros; one
/// short IDAT is enough to be refused before any pixel is allocated).
fn png_bomb(width: u32, height: u32) -> Vec<u8> {
    fn crc32(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in data {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(width.to_be_bytes());
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    let idat: Vec<u8> = [&b"IDAT"[..], &[0x78, 0x01, 0x01, 0x01, 0x00, 0xFE, 0xFF, 0x00, 0x00, 0x01, 0x00, 0x01]].concat();
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    for chunk in [ihdr, idat, b"IEND".to_vec()] {
        png.extend(((chunk.len() - 4) as u32).to_be_bytes());
        png.extend(&chunk);
        png.extend(crc32(&chunk).to_be_bytes());
    }
    png
}

#[test]
fn bad_images_are_errors_that_name_the_image() {
    let model = load(&model_dir()).unwrap();
    let photo = std::fs::read(model_dir().join("goldens/images/photo.png")).unwrap();
    let jpeg = std::fs::read(model_dir().join("goldens/images/large.jpg")).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty.png", Vec::new(), "empty"),
        ("truncated.png", photo[..photo.len() / 2].to_vec(), "unexpected end of file"),
        ("truncated.jpg", jpeg[..jpeg.len() / 2].to_vec(), "truncated"),
        ("notes.txt", b"just some text, not an image".to_vec(), "unrecognised"),
        ("bomb.png", png_bomb(100_000, 100_000), "above the limit"),
    ];
    for (name, bytes, reason) in cases {
        assert!(!reason.is_empty(), "{name}: every case names its reason");
        let req = Request { prompt: "Describe.".into(), images: vec![ImageSource::Bytes { name: name.into(), bytes }], ..Default::default() };
        let msg = err_text(model.prepare(&req));
        assert!(msg.contains(name) && msg.contains(reason), "{name}: {msg}");
    }
    let missing = Request { prompt: "x".into(), images: vec![ImageSource::Path("/no/such/image.png".into())], ..Default::default() };
    assert!(err_text(model.prepare(&missing)).contains("/no/such/image.png"));

    // The pixel limit is configurable.
    let mut o = options(BackendKind::Tract);
    o.max_image_pixels = 1000;
    let model = Gemma4::load(&model_dir(), &o).unwrap();
    let req = Request { prompt: "x".into(), images: vec![ImageSource::Bytes { name: "photo.png".into(), bytes: photo }], ..Default::default() };
    let msg = err_text(model.prepare(&req));
    assert!(msg.contains("76800 pixels") && msg.contains("limit of 1000"), "{msg}");
}

#[test]
fn image_tokens_in_the_prompt_text_must_match_the_images() {
    let model = load(&model_dir()).unwrap();
    let req = Request { prompt: "look: <|image|>".into(), ..Default::default() };
    let msg = err_text(model.prepare(&req));
    assert!(msg.contains("1 image tokens but 0 images"), "{msg}");
}

/// Graphs whose weights live in `NAME.onnx_data` (as large exports store them) load and give
/// the same tokens on both backends.
#[test]
fn external_data_inside_the_model_directory_loads() {
    use std::io::Write;
    let tmp = model_copy();
    for graph in ["embed_tokens", "decoder_model_merged"] {
        let path = tmp.path().join(format!("onnx/{graph}.onnx"));
        let mut proto = tract_onnx::pb::ModelProto::decode(std::fs::read(&path).unwrap().as_slice()).unwrap();
        let data_name = format!("{graph}.onnx_data");
        let mut data = std::fs::File::create(tmp.path().join("onnx").join(&data_name)).unwrap();
        let mut offset = 0usize;
        for init in &mut proto.graph.as_mut().unwrap().initializer {
            if init.raw_data.len() < 1024 {
                continue;
            }
            data.write_all(&init.raw_data).unwrap();
            let entry = |k: &str, v: String| tract_onnx::pb::StringStringEntryProto { key: k.into(), value: v };
            init.external_data = vec![
                entry("location", data_name.clone()),
                entry("offset", offset.to_string()),
                entry("length", init.raw_data.len().to_string()),
            ];
            offset += init.raw_data.len();
            init.raw_data.clear();
            init.data_location = Some(tract_onnx::pb::tensor_proto::DataLocation::External as i32);
        }
        assert!(offset > 0);
        std::fs::write(&path, proto.encode_to_vec()).unwrap();
    }
    let reference = {
        let mut m = Gemma4::load(&model_dir(), &options(BackendKind::Ort)).unwrap();
        let p = m.prepare(&Request { prompt: "Describe the weather today.".into(), ..Default::default() }).unwrap();
        m.generate(&[p], &gemma_batch::model::GenerationOptions { max_new_tokens: 8, sampling: None }).unwrap().remove(0)
    };
    for kind in [BackendKind::Ort, BackendKind::Tract] {
        let mut m = Gemma4::load(tmp.path(), &options(kind)).unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        let p = m.prepare(&Request { prompt: "Describe the weather today.".into(), ..Default::default() }).unwrap();
        let out = m.generate(&[p], &gemma_batch::model::GenerationOptions { max_new_tokens: 8, sampling: None }).unwrap().remove(0);
        assert_eq!(out.token_ids, reference.token_ids, "{kind:?}");
    }
}

/// Rewrites one JSON file of a model copy.
fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// A model copy whose context (`max_position_embeddings`) is `context` positions.
fn with_context(context: usize) -> tempfile::TempDir {
    let tmp = model_copy();
    edit_json(&tmp.path().join("config.json"), |v| v["text_config"]["max_position_embeddings"] = context.into());
    tmp
}

fn golden_request(name: &str) -> (Request, Vec<u32>, Vec<u32>) {
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model_dir().join("goldens/cases.json")).unwrap()).unwrap();
    let case = cases["cases"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap();
    let ids = |k: &str| case[k].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect::<Vec<_>>();
    let images = case["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| ImageSource::Path(model_dir().join("goldens/images").join(n.as_str().unwrap())))
        .collect();
    let request = Request { system: case["system"].as_str().map(str::to_owned), prompt: case["prompt"].as_str().unwrap().into(), images };
    (request, ids("input_ids"), ids("greedy_ids"))
}

#[test]
fn a_prompt_longer_than_the_context_fails_only_its_own_row() {
    use gemma_batch::model::GenerationOptions;
    let (long, long_ids, _) = golden_request("text_long");
    let (short, short_ids, short_greedy) = golden_request("text_short");
    assert_eq!((long_ids.len(), short_ids.len()), (214, 28));

    // Context 200: preparing the batch row by row (as the pipeline does) refuses the long
    // prompt, naming its token count and the limit, and prepares the short one.
    let tmp = with_context(200);
    let mut model = Gemma4::load(tmp.path(), &options(BackendKind::Ort)).unwrap();
    assert_eq!(model.context_len(), 200);
    let results: Vec<_> = [&long, &short].iter().map(|r| model.prepare(r)).collect();
    let msg = match &results[0] {
        Err(e) => e.to_string(),
        Ok(p) => panic!("a prompt of {} tokens was accepted in a context of 200", p.input_ids.len()),
    };
    assert!(msg.contains("214 tokens") && msg.contains("context of 200 tokens") && msg.contains("max_position_embeddings"), "{msg}");
    let short_prepared = results[1].as_ref().unwrap().clone();
    assert_eq!(short_prepared.input_ids, short_ids);

    // A prompt that bypasses prepare is still refused per row: the other row runs.
    let long_prepared = gemma_batch::model::Prepared { input_ids: long_ids.clone(), images: vec![] };
    let greedy = |n| GenerationOptions { max_new_tokens: n, sampling: None };
    let rows = model.generate_rows(&[long_prepared.clone(), short_prepared.clone()], &greedy(20)).unwrap();
    let msg = rows[0].as_ref().map(|_| ()).unwrap_err().to_string();
    assert!(msg.contains("214 tokens") && msg.contains("200"), "{msg}");
    assert_eq!(rows[1].as_ref().unwrap().token_ids, short_greedy);
    let msg = model.generate(&[long_prepared.clone()], &greedy(4)).unwrap_err().to_string();
    assert!(msg.contains("214 tokens"), "{msg}");
    let scores = model.score_rows(&[short_prepared.clone(), long_prepared], &["Yes".to_string()]).unwrap();
    assert!(scores[0].as_ref().unwrap()[0].logprob < 0.0);
    assert!(scores[1].as_ref().unwrap_err().to_string().contains("214 tokens"));

    // Image soft tokens count: image_one is 87 tokens, 63 of them soft tokens.
    let (image, image_ids, _) = golden_request("image_one");
    assert_eq!(image_ids.len(), 87);
    let tmp = with_context(87);
    let model = Gemma4::load(tmp.path(), &options(BackendKind::Ort)).unwrap();
    let msg = err_text(model.prepare(&image));
    assert!(msg.contains("87 tokens") && msg.contains("context of 87 tokens"), "{msg}");
    let tmp = with_context(88);
    let model = Gemma4::load(tmp.path(), &options(BackendKind::Ort)).unwrap();
    assert_eq!(model.prepare(&image).unwrap().input_ids, image_ids);
}

#[test]
fn generation_near_the_context_limit_stops_at_the_limit() {
    use gemma_batch::model::{FinishReason, GenerationOptions};
    let (long, long_ids, long_greedy) = golden_request("text_long");
    let (short, short_ids, short_greedy) = golden_request("text_short");
    // Room for 5 new tokens after the long prompt; max_new_tokens far beyond it.
    let context = long_ids.len() + 5;
    let tmp = with_context(context);
    for kind in [BackendKind::Ort, BackendKind::Tract] {
        let mut model = Gemma4::load(tmp.path(), &options(kind)).unwrap();
        let prompts = vec![model.prepare(&long).unwrap(), model.prepare(&short).unwrap()];
        let far = GenerationOptions { max_new_tokens: 100_000, sampling: None };
        let out = model.generate(&prompts, &far).unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        // The long row stops when prompt + output fill the context, with the tokens
        // transformers gives.
        assert_eq!(out[0].finish_reason, FinishReason::Length, "{kind:?}");
        assert_eq!(out[0].token_ids, long_greedy[..5], "{kind:?}");
        // The short row in the same batch runs on to its own limit.
        let n = out[1].token_ids.len();
        assert_eq!(out[1].token_ids[..short_greedy.len()], short_greedy, "{kind:?}");
        match out[1].finish_reason {
            FinishReason::Length => assert_eq!(short_ids.len() + n, context, "{kind:?}"),
            FinishReason::Stop => assert!(short_ids.len() + n <= context, "{kind:?}"),
        }
        // A prompt that fills all but one position gets exactly one token.
        let tight = with_context(long_ids.len() + 1);
        let mut m = Gemma4::load(tight.path(), &options(kind)).unwrap();
        let p = m.prepare(&long).unwrap();
        let one = m.generate(&[p], &far).unwrap().remove(0);
        assert_eq!((one.token_ids.as_slice(), one.finish_reason), (&long_greedy[..1], FinishReason::Length));
    }
}

/// Loads a copy of the tiny model with one JSON file edited; returns the error text.
fn load_error_with(file: &str, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let tmp = model_copy();
    edit_json(&tmp.path().join(file), edit);
    err_text(load(tmp.path()))
}

#[test]
fn config_values_that_size_allocations_are_bounded_and_named() {
    use serde_json::json;
    let cases: Vec<(&str, &str, serde_json::Value)> = vec![
        ("config.json", "text_config.vocab_size", json!(-1)),
        ("config.json", "text_config.vocab_size", json!(0)),
        ("config.json", "text_config.vocab_size", json!(1u64 << 40)),
        ("config.json", "text_config.vocab_size", json!(1e30)),
        ("config.json", "text_config.vocab_size", json!("640")),
        ("config.json", "text_config.hidden_size", json!(10_000_000)),
        ("config.json", "text_config.hidden_size", json!(0)),
        ("config.json", "text_config.num_hidden_layers", json!(0)),
        ("config.json", "text_config.num_hidden_layers", json!(1_000_000)),
        ("config.json", "text_config.num_kv_shared_layers", json!(6)),
        ("config.json", "text_config.head_dim", json!(0)),
        ("config.json", "text_config.head_dim", json!(1 << 20)),
        ("config.json", "text_config.num_attention_heads", json!(0)),
        ("config.json", "text_config.max_position_embeddings", json!(0)),
        ("config.json", "text_config.max_position_embeddings", json!(1u64 << 40)),
        ("config.json", "text_config.pad_token_id", json!(640)),
        ("config.json", "vision_config.patch_size", json!(0)),
        ("config.json", "vision_config.pooling_kernel_size", json!(0)),
        ("preprocessor_config.json", "patch_size", json!(0)),
        ("preprocessor_config.json", "patch_size", json!(-16)),
        ("preprocessor_config.json", "pooling_kernel_size", json!(0)),
        ("preprocessor_config.json", "max_soft_tokens", json!(0)),
        ("preprocessor_config.json", "max_soft_tokens", json!(1u64 << 50)),
        ("generation_config.json", "eos_token_id", json!([1, -6])),
        ("generation_config.json", "top_p", json!(2.0)),
    ];
    for (file, key, value) in cases {
        let msg = load_error_with(file, |v| {
            let mut target = v;
            let parts: Vec<&str> = key.split('.').collect();
            for part in &parts[..parts.len() - 1] {
                target = &mut target[*part];
            }
            target[parts[parts.len() - 1]] = value.clone();
        });
        assert!(msg.contains(file) && msg.contains(key), "{file} {key} = {value}: {msg}");
    }
    // Each bounded alone, too large together: 1000 soft tokens of 3x3 patches of 64x64
    // pixels would be 110 million floats per image.
    let msg = load_error_with("preprocessor_config.json", |v| {
        v["patch_size"] = 64.into();
        v["max_soft_tokens"] = 1000.into();
    });
    assert!(msg.contains("preprocessor_config.json") && msg.contains("max_soft_tokens") && msg.contains("floats per image"), "{msg}");

    // End-of-generation ids are checked against the vocabulary: an end-of-generation id past it.
    let msg = load_error_with("generation_config.json", |v| v["eos_token_id"] = serde_json::json!([1, 640]));
    assert!(msg.contains("generation_config.json") && msg.contains("eos_token_id 640") && msg.contains("vocab_size 640"), "{msg}");

    // Without preprocessor_config.json, processor_config.json's image_processor is read.
    let tmp = model_copy();
    std::fs::remove_file(tmp.path().join("preprocessor_config.json")).unwrap();
    edit_json(&tmp.path().join("processor_config.json"), |v| v["image_processor"]["patch_size"] = 0.into());
    let msg = err_text(load(tmp.path()));
    assert!(msg.contains("processor_config.json") && msg.contains("image_processor.patch_size"), "{msg}");

    // A processor patch size that disagrees with the vision encoder's input is refused.
    let msg = load_error_with("preprocessor_config.json", |v| {
        v["patch_size"] = 2.into();
        v["max_soft_tokens"] = 280.into();
    });
    assert!(msg.contains("vision_encoder"), "{msg}");
}

/// The real Gemma 4 configs are inside the bounds (E2B's layout with 31B's sizes).
#[test]
fn real_gemma4_sizes_pass_the_bounds() {
    use gemma_batch::model::config::{Gemma4Config, ImageProcessorConfig};
    let tmp = tempfile::tempdir().unwrap();
    let config = serde_json::json!({
        "text_config": {
            "vocab_size": 262144, "vocab_size_per_layer_input": 262144, "hidden_size": 5376,
            "hidden_size_per_layer_input": 256, "num_hidden_layers": 60, "num_kv_shared_layers": 20,
            "num_attention_heads": 32, "num_key_value_heads": 16, "head_dim": 256, "global_head_dim": 512,
            "max_position_embeddings": 262144, "sliding_window": 1024, "final_logit_softcapping": 30.0,
            "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": [1, 106]
        },
        "vision_config": {"hidden_size": 1152, "patch_size": 16, "pooling_kernel_size": 3, "num_hidden_layers": 27},
        "image_token_id": 258880, "boi_token_id": 255999, "eoi_token_id": 258882, "eos_token_id": [1, 106]
    });
    std::fs::write(tmp.path().join("config.json"), config.to_string()).unwrap();
    let cfg = Gemma4Config::load(tmp.path()).unwrap();
    assert_eq!(cfg.context_len(), 262144);
    let processor = serde_json::json!({"patch_size": 16, "max_soft_tokens": 1120, "pooling_kernel_size": 3});
    std::fs::write(tmp.path().join("preprocessor_config.json"), processor.to_string()).unwrap();
    assert_eq!(ImageProcessorConfig::load(tmp.path()).unwrap().max_patches(), 10080);
}
