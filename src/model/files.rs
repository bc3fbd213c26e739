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
