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
        ("truncated.png", photo[..photo.len() / 2].to_vec(), ""),
        ("truncated.jpg", jpeg[..jpeg.len() / 2].to_vec(), "truncated"),
        ("notes.txt", b"just some text, not an image".to_vec(), "unrecognised"),
        ("bomb.png", png_bomb(100_000, 100_000), "above the limit"),
    ];
    for (name, bytes, reason) in cases {
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
