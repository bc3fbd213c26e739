//! The model directory: which files exist, which ONNX variant `--dtype` picks, and checks on
//! the ONNX files themselves (external data must stay inside the model directory).

use std::path::{Component, Path, PathBuf};

use tract_onnx::pb;

use super::tensor::{DType, Dim, TensorSpec};
use crate::error::{Error, Result};

/// Which ONNX variant to load; the file suffix of the community layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    #[default]
    Fp32,
    Fp16,
    Q4,
    Q4f16,
    Quantized,
}

impl Variant {
    pub fn suffix(self) -> &'static str {
        match self {
            Variant::Fp32 => "",
            Variant::Fp16 => "_fp16",
            Variant::Q4 => "_q4",
            Variant::Q4f16 => "_q4f16",
            Variant::Quantized => "_quantized",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Variant::Fp32 => "fp32",
            Variant::Fp16 => "fp16",
            Variant::Q4 => "q4",
            Variant::Q4f16 => "q4f16",
            Variant::Quantized => "quantized",
        }
    }
}

pub const EMBED_TOKENS: &str = "embed_tokens";
pub const VISION_ENCODER: &str = "vision_encoder";
pub const DECODER: &str = "decoder_model_merged";

/// Path of `onnx/{graph}{suffix}.onnx`, or an error listing the variants that do exist.
pub fn graph_path(dir: &Path, graph: &str, variant: Variant) -> Result<PathBuf> {
    let onnx = dir.join("onnx");
    let path = onnx.join(format!("{graph}{}.onnx", variant.suffix()));
    if path.exists() {
        return Ok(path);
    }
    let mut available: Vec<&str> = [Variant::Fp32, Variant::Fp16, Variant::Q4, Variant::Q4f16, Variant::Quantized]
        .into_iter()
        .filter(|v| onnx.join(format!("{graph}{}.onnx", v.suffix())).exists())
        .map(Variant::name)
        .collect();
    available.dedup();
    let hint = if available.is_empty() {
        " (is this a Gemma 4 ONNX export? see tools/export_gemma4.py)".to_string()
    } else {
        format!(" (--dtype {} is not exported here; available: {})", variant.name(), available.join(", "))
    };
    Err(Error::MissingModelFile { dir: dir.to_path_buf(), file: format!("onnx/{graph}{}.onnx", variant.suffix()), hint })
}

pub fn require(dir: &Path, file: &str) -> Result<PathBuf> {
    let path = dir.join(file);
    if path.exists() {
        Ok(path)
    } else {
        Err(Error::MissingModelFile { dir: dir.to_path_buf(), file: file.to_string(), hint: String::new() })
    }
}

pub fn read_onnx_proto(path: &Path) -> Result<pb::ModelProto> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    super::backend::tract::decode_proto(&bytes)
        .map_err(|e| Error::InvalidModel { path: path.to_path_buf(), message: format!("not a valid ONNX file: {e}") })
}

/// Just the parts of an ONNX file that say where initializers keep their data. Decoding
/// only these fields skips the weights, so the check costs little even on large graphs.
mod header {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Model {
        #[prost(message, optional, tag = "7")]
        pub graph: Option<Graph>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Graph {
        #[prost(message, repeated, tag = "5")]
        pub initializer: Vec<Tensor>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Tensor {
        #[prost(string, tag = "8")]
        pub name: String,
        #[prost(message, repeated, tag = "13")]
        pub external_data: Vec<Entry>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Entry {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(string, tag = "2")]
        pub value: String,
    }
}

/// Refuses ONNX files whose external data points outside the model directory (absolute
/// paths, `..`, or symlinks that escape), before any runtime opens them.
pub fn check_external_data(path: &Path) -> Result<()> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the map is read-only and dropped before returning; a concurrent writer could
    // only make the decode fail.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let model = <header::Model as prost::Message>::decode(&map[..])
        .map_err(|e| Error::InvalidModel { path: path.to_path_buf(), message: format!("not a valid ONNX file: {e}") })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let root = dir.canonicalize().map_err(|e| Error::io(dir, e))?;
    let Some(graph) = model.graph else {
        return Err(Error::InvalidModel { path: path.to_path_buf(), message: "has no graph".into() });
    };
    for t in &graph.initializer {
        let Some(entry) = t.external_data.iter().find(|e| e.key == "location") else { continue };
        let bad = |why: &str| Error::InvalidModel {
            path: path.to_path_buf(),
            message: format!("initializer {}: external data location {:?} {why}", t.name, entry.value),
        };
        let loc = Path::new(&entry.value);
        if loc.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)) {
            return Err(bad("must be a relative path inside the model directory"));
        }
        let resolved = dir.join(loc).canonicalize().map_err(|_| bad("does not exist"))?;
        if !resolved.starts_with(&root) {
            return Err(bad("resolves outside the model directory"));
        }
    }
    Ok(())
}

/// Graph inputs and outputs (initializers excluded) with their declared types and shapes.
pub fn io_specs(proto: &pb::ModelProto) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
    let Some(graph) = proto.graph.as_ref() else { return (Vec::new(), Vec::new()) };
    let inits: std::collections::HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let spec = |v: &pb::ValueInfoProto| {
        let mut dtype = DType::Other;
        let mut shape = Vec::new();
        if let Some(pb::type_proto::Value::TensorType(tt)) = v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            dtype = match tt.elem_type {
                1 => DType::F32,
                10 => DType::F16,
                7 => DType::I64,
                _ => DType::Other,
            };
            if let Some(s) = &tt.shape {
                shape = s
                    .dim
                    .iter()
                    .map(|d| match &d.value {
                        Some(pb::tensor_shape_proto::dimension::Value::DimValue(n)) if *n >= 0 => Dim::Fixed(*n as usize),
                        Some(pb::tensor_shape_proto::dimension::Value::DimParam(p)) => Dim::Symbol(p.clone()),
                        _ => Dim::Symbol(String::new()),
                    })
                    .collect();
            }
        }
        TensorSpec { name: v.name.clone(), dtype, shape }
    };
    let inputs = graph.input.iter().filter(|v| !inits.contains(v.name.as_str())).map(spec).collect();
    let outputs = graph.output.iter().map(spec).collect();
    (inputs, outputs)
}

/// Model files outside `onnx/` that change what a variant computes (processor configs only
/// when present).
const MODEL_FILES: [&str; 7] = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "preprocessor_config.json",
    "processor_config.json",
];

/// The files a variant's outputs depend on, relative to the model directory, in hashing
/// order: the JSON and template files that exist, then for each graph the model loads
/// (`embed_tokens`, `vision_encoder` when config.json has a vision tower,
/// `decoder_model_merged`) `onnx/{graph}{suffix}.onnx` and its external data files
/// `onnx/{graph}{suffix}.onnx_data`, `..._data_1`, .... Other variants' files are not part of it.
pub fn variant_files(dir: &Path, variant: Variant) -> Result<Vec<String>> {
    let mut files: Vec<String> = MODEL_FILES.iter().filter(|f| dir.join(f).is_file()).map(|f| f.to_string()).collect();
    // Gemma4::load opens the vision encoder only when config.json has a vision tower; an
    // unreadable config.json (which fails the load anyway) counts the encoder in if it exists.
    let has_vision = std::fs::read(dir.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .map(|v| v.get("vision_config").is_some_and(|c| !c.is_null()))
        .unwrap_or_else(|| dir.join("onnx").join(format!("{VISION_ENCODER}{}.onnx", variant.suffix())).exists());
    let graphs: &[&str] = if has_vision { &[EMBED_TOKENS, VISION_ENCODER, DECODER] } else { &[EMBED_TOKENS, DECODER] };
    let onnx = dir.join("onnx");
    let names: Vec<String> = match std::fs::read_dir(&onnx) {
        Ok(entries) => entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect(),
        Err(_) => Vec::new(),
    };
    for graph in graphs {
        let path = graph_path(dir, graph, variant)?;
        let file = path.file_name().and_then(|n| n.to_str()).expect("built from UTF-8 names").to_string();
        let base = format!("{file}_data");
        // `{file}_data` first, then `{file}_data_1`, `_2`, ... in numeric order.
        let mut data: Vec<(u64, &String)> = names
            .iter()
            .filter_map(|n| {
                let rest = n.strip_prefix(&base)?;
                if rest.is_empty() {
                    return Some((0, n));
                }
                let digits = rest.strip_prefix('_')?;
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                Some((digits.parse::<u64>().ok()?.saturating_add(1), n))
            })
            .collect();
        data.sort();
        files.push(format!("onnx/{file}"));
        files.extend(data.into_iter().map(|(_, n)| format!("onnx/{n}")));
    }
    Ok(files)
}

/// Content hash of the files of `variant` in `dir` ([`variant_files`]): it names the model in
/// result keys and provenance, so it changes exactly when one of those files does. Each
/// tree is hashed once per process and remembered on disk under
/// `CACHE_DIR/model-hash/` ([cache directory](super::backend::cache_dir)), keyed on the
/// canonical path, size and modification time (ns) of every file, so later runs do not
/// reread the weights. An unreadable or corrupt cache is ignored.
pub fn model_hash(dir: &Path, variant: Variant) -> Result<String> {
    let cache = super::backend::cache_dir().map(|d| d.join("model-hash"));
    Ok(hash_with(dir, variant, cache.as_deref(), true)?.0)
}

/// Where a hash came from (for tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HashSource {
    Memory,
    Disk,
    Computed,
}

/// Hashes computed in this process, by the key of the files' metadata.
static MEMORY: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<String, String>>> =
    std::sync::OnceLock::new();

fn memory() -> std::sync::MutexGuard<'static, std::collections::HashMap<String, String>> {
    MEMORY.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(serde::Serialize, serde::Deserialize)]
struct CacheEntry {
    key: String,
    hash: String,
}

fn is_hex_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Key of the files' identity and metadata: canonical path, size and mtime in ns of each
/// file. None when a modification time cannot be read (then nothing is cached).
fn metadata_key(dir: &Path, variant: Variant, files: &[String]) -> Result<Option<String>> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(variant.name().as_bytes());
    let mut complete = true;
    for rel in files {
        let path = dir.join(rel);
        let canonical = path.canonicalize().map_err(|e| Error::io(&path, e))?;
        let meta = std::fs::metadata(&canonical).map_err(|e| Error::io(&path, e))?;
        let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
        let Some(mtime) = mtime else {
            complete = false;
            break;
        };
        h.update([0]);
        h.update(canonical.as_os_str().as_encoded_bytes());
        h.update([0]);
        h.update(meta.len().to_le_bytes());
        h.update(mtime.as_nanos().to_le_bytes());
    }
    Ok(complete.then(|| format!("{:x}", h.finalize())))
}

/// Reads every file: each contributes its relative name, its size and its bytes.
fn content_hash(dir: &Path, files: &[String]) -> Result<String> {
    use sha2::Digest;
    use std::io::Read;
    let mut h = sha2::Sha256::new();
    h.update(b"gemma-batch model files v2\n");
    let mut buffer = vec![0u8; 1 << 20];
    for rel in files {
        let path = dir.join(rel);
        let mut file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
        let size = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        h.update(rel.as_bytes());
        h.update([0]);
        h.update(size.to_le_bytes());
        loop {
            let n = file.read(&mut buffer).map_err(|e| Error::io(&path, e))?;
            if n == 0 {
                break;
            }
            h.update(&buffer[..n]);
        }
    }
    Ok(format!("{:x}", h.finalize()))
}

/// Writes `bytes` to `path` through a temporary file and a rename, so readers see the old
/// file or the new one, never a part. Best effort: the cache is an optimisation.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.{nanos}.tmp", std::process::id()));
    let result = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn hash_with(dir: &Path, variant: Variant, cache: Option<&Path>, use_memory: bool) -> Result<(String, HashSource)> {
    use sha2::Digest;
    let files = variant_files(dir, variant)?;
    let key = metadata_key(dir, variant, &files)?;
    if let (true, Some(k)) = (use_memory, &key) {
        if let Some(hash) = memory().get(k) {
            return Ok((hash.clone(), HashSource::Memory));
        }
    }
    // One cache file per (model directory, variant), replaced when the files change.
    let cache_file = match (cache, dir.canonicalize()) {
        (Some(c), Ok(canonical)) => {
            let mut h = sha2::Sha256::new();
            h.update(canonical.as_os_str().as_encoded_bytes());
            h.update([0]);
            h.update(variant.name().as_bytes());
            let id = format!("{:x}", h.finalize());
            Some(c.join(format!("{}.json", &id[..32])))
        }
        _ => None,
    };
    if let (Some(k), Some(f)) = (&key, &cache_file) {
        let cached = std::fs::read(f).ok().and_then(|b| serde_json::from_slice::<CacheEntry>(&b).ok());
        if let Some(entry) = cached.filter(|e| &e.key == k && is_hex_digest(&e.hash)) {
            if use_memory {
                memory().insert(k.clone(), entry.hash.clone());
            }
            return Ok((entry.hash, HashSource::Disk));
        }
    }
    let hash = content_hash(dir, &files)?;
    // Remember it only if no file changed while it was read.
    if let Some(k) = key.filter(|k| metadata_key(dir, variant, &files).ok().flatten().as_ref() == Some(k)) {
        if let Some(f) = &cache_file {
            let entry = serde_json::to_vec(&CacheEntry { key: k.clone(), hash: hash.clone() }).expect("serialisable");
            let _ = write_atomically(f, &entry);
        }
        if use_memory {
            memory().insert(k, hash.clone());
        }
    }
    Ok((hash, HashSource::Computed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny-gemma4")
    }

    /// The tiny model's JSON files and its fp32 graphs.
    fn fp32_copy() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(tiny()).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), tmp.path().join(entry.file_name())).unwrap();
            }
        }
        std::fs::create_dir(tmp.path().join("onnx")).unwrap();
        for name in ["embed_tokens.onnx", "vision_encoder.onnx", "decoder_model_merged.onnx"] {
            std::fs::copy(tiny().join("onnx").join(name), tmp.path().join("onnx").join(name)).unwrap();
        }
        tmp
    }

    fn hash(dir: &Path, variant: Variant, cache: &Path) -> (String, HashSource) {
        hash_with(dir, variant, Some(cache), false).unwrap()
    }

    #[test]
    fn variant_files_are_exactly_those_the_variant_loads() {
        let files = variant_files(&tiny(), Variant::Fp32).unwrap();
        assert_eq!(
            files,
            [
                "config.json",
                "generation_config.json",
                "tokenizer.json",
                "tokenizer_config.json",
                "chat_template.jinja",
                "preprocessor_config.json",
                "processor_config.json",
                "onnx/embed_tokens.onnx",
                "onnx/vision_encoder.onnx",
                "onnx/decoder_model_merged.onnx",
            ]
        );
        let q4 = variant_files(&tiny(), Variant::Q4).unwrap();
        assert_eq!(&q4[7..], ["onnx/embed_tokens_q4.onnx", "onnx/vision_encoder_q4.onnx", "onnx/decoder_model_merged_q4.onnx"]);
        // External data: the variant's own, in numeric order; another variant's or a
        // look-alike name is not part of it.
        let tmp = fp32_copy();
        for name in ["decoder_model_merged.onnx_data_10", "decoder_model_merged.onnx_data", "decoder_model_merged.onnx_data_2",
            "decoder_model_merged_q4.onnx_data", "decoder_model_merged.onnx_data_x", "decoder_model_merged.onnx_data.bak"]
        {
            std::fs::write(tmp.path().join("onnx").join(name), b"x").unwrap();
        }
        let files = variant_files(tmp.path(), Variant::Fp32).unwrap();
        assert_eq!(
            &files[9..],
            ["onnx/decoder_model_merged.onnx", "onnx/decoder_model_merged.onnx_data", "onnx/decoder_model_merged.onnx_data_2",
                "onnx/decoder_model_merged.onnx_data_10"]
        );
        // A missing graph of the variant is an error naming it.
        let msg = variant_files(tmp.path(), Variant::Fp16).unwrap_err().to_string();
        assert!(msg.contains("onnx/embed_tokens_fp16.onnx"), "{msg}");
    }

    #[test]
    fn hash_ignores_other_variants_and_follows_the_variant_files() {
        let tmp = fp32_copy();
        let cache = tempfile::tempdir().unwrap();
        let (h1, _) = hash(tmp.path(), Variant::Fp32, cache.path());
        assert!(is_hex_digest(&h1));
        // A q4 export added beside it does not change the fp32 hash.
        std::fs::copy(tiny().join("onnx/decoder_model_merged_q4.onnx"), tmp.path().join("onnx/decoder_model_merged_q4.onnx")).unwrap();
        std::fs::write(tmp.path().join("onnx/decoder_model_merged_q4.onnx_data"), b"q4 weights").unwrap();
        assert_eq!(hash(tmp.path(), Variant::Fp32, cache.path()).0, h1);
        // The variant's own external data does.
        let data = tmp.path().join("onnx/decoder_model_merged.onnx_data");
        std::fs::write(&data, b"weights").unwrap();
        let h2 = hash(tmp.path(), Variant::Fp32, cache.path()).0;
        assert_ne!(h2, h1);
        std::fs::remove_file(&data).unwrap();
        assert_eq!(hash(tmp.path(), Variant::Fp32, cache.path()).0, h1);
        // So does config.json.
        let config = tmp.path().join("config.json");
        let text = std::fs::read_to_string(&config).unwrap();
        std::fs::write(&config, text.replace("\"sliding_window\": 24", "\"sliding_window\": 25")).unwrap();
        assert_ne!(hash(tmp.path(), Variant::Fp32, cache.path()).0, h1);
        // The hash is of content, not of where the model lives.
        let other = fp32_copy();
        assert_eq!(hash(other.path(), Variant::Fp32, cache.path()).0, h1);
    }

    #[test]
    fn an_unchanged_tree_is_read_from_the_cache() {
        let tmp = fp32_copy();
        let cache = tempfile::tempdir().unwrap();
        let (h1, source) = hash(tmp.path(), Variant::Fp32, cache.path());
        assert_eq!(source, HashSource::Computed);
        let cached: Vec<_> = std::fs::read_dir(cache.path()).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(cached.len(), 1, "one cache file, no temporary left: {cached:?}");
        assert_eq!(hash(tmp.path(), Variant::Fp32, cache.path()), (h1.clone(), HashSource::Disk));

        // Replace the weights with different bytes of the same size and restore the mtime:
        // the cache is trusted on (path, size, mtime), so the hash does not move...
        let weights = tmp.path().join("onnx/decoder_model_merged.onnx");
        let mtime = std::fs::metadata(&weights).unwrap().modified().unwrap();
        let mut bytes = std::fs::read(&weights).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&weights, &bytes).unwrap();
        std::fs::File::options().write(true).open(&weights).unwrap().set_modified(mtime).unwrap();
        assert_eq!(hash(tmp.path(), Variant::Fp32, cache.path()), (h1.clone(), HashSource::Disk));
        // ...while reading the files shows the change (so the check above can fail).
        let fresh = tempfile::tempdir().unwrap();
        let (h2, source) = hash(tmp.path(), Variant::Fp32, fresh.path());
        assert_eq!(source, HashSource::Computed);
        assert_ne!(h2, h1);

        // A corrupt cache file is ignored and replaced.
        std::fs::write(&cached[0], b"{\"key\": 1, garbage").unwrap();
        assert_eq!(hash(tmp.path(), Variant::Fp32, cache.path()), (h2.clone(), HashSource::Computed));
        assert_eq!(hash(tmp.path(), Variant::Fp32, cache.path()), (h2.clone(), HashSource::Disk));
        // An unwritable cache location is no error.
        let blocked = cache.path().join("file");
        std::fs::write(&blocked, b"").unwrap();
        assert_eq!(hash(tmp.path(), Variant::Fp32, &blocked.join("sub")).0, h2);

        // Within a process, a second call does not touch the disk cache or the files.
        let (h3, _) = hash_with(tmp.path(), Variant::Fp32, Some(fresh.path()), true).unwrap();
        assert_eq!(hash_with(tmp.path(), Variant::Fp32, None, true).unwrap(), (h3, HashSource::Memory));
    }
}
