//! Execution backends: ONNX Runtime (CPU or CUDA) and tract (pure Rust, CPU).

pub mod ort;
pub mod tract;

use std::path::{Path, PathBuf};

use super::tensor::{Tensor, TensorSpec};
use crate::error::{Error, Result};

/// A tensor as a backend holds it: on the host in our own type, or as the backend's own value
/// (for ONNX Runtime possibly in device memory). A backend value is fed back into a graph
/// without a copy; that is how the KV cache moves from one decoder step to the next.
pub enum Value {
    Host(Tensor),
    Ort(::ort::value::DynValue),
    Tract(tract_onnx::prelude::TValue),
}

impl Value {
    pub fn shape(&self) -> Vec<usize> {
        match self {
            Value::Host(t) => t.shape.clone(),
            Value::Ort(v) => self::ort::shape_of(v),
            Value::Tract(v) => v.shape().to_vec(),
        }
    }

    /// A host copy in f32 / i64 (float16 widened), copied from the device first if needed.
    pub fn to_host(&self) -> Result<Tensor> {
        match self {
            Value::Host(t) => Ok(t.clone()),
            Value::Ort(v) => self::ort::to_host(v),
            Value::Tract(v) => self::tract::to_host(v),
        }
    }

    /// Calls `f` with the shape and f32 data, borrowed when the value is f32 in host memory
    /// (logits are read this way every step), else from a converted copy.
    pub fn read_f32<R>(&self, f: impl FnOnce(&[usize], &[f32]) -> R) -> Result<R> {
        if let Value::Host(t) = self {
            let data = t.as_f32().ok_or_else(|| Error::Ort("expected a float tensor".into()))?;
            return Ok(f(&t.shape, data));
        }
        if let Value::Ort(v) = self {
            if let Some((shape, data)) = self::ort::borrow_f32(v) {
                return Ok(f(&shape, data));
            }
        }
        let t = self.to_host()?;
        let data = t.as_f32().ok_or_else(|| Error::Ort("expected a float tensor".into()))?;
        Ok(f(&t.shape, data))
    }
}

impl From<Tensor> for Value {
    fn from(t: Tensor) -> Self {
        Value::Host(t)
    }
}

/// gemma-batch's cache directory: `$GEMMA_BATCH_CACHE`, else `$XDG_CACHE_HOME/gemma-batch`,
/// else `~/.cache/gemma-batch` (empty variables count as unset, as in the shell scripts).
/// Holds the ONNX Runtime library and the model-hash cache.
pub fn cache_dir() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("GEMMA_BATCH_CACHE")
        .or_else(|| var("XDG_CACHE_HOME").map(|p| p.join("gemma-batch")))
        .or_else(|| var("HOME").map(|p| p.join(".cache/gemma-batch")))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Ort,
    Tract,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// CUDA when available, else CPU (and say so).
    Auto,
    Cpu,
    Cuda,
}

/// What a loaded backend actually runs on, for provenance and messages.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BackendInfo {
    pub backend: BackendKind,
    pub device: String,
    /// Set when `--device auto` fell back from CUDA, with the reason.
    pub fallback: Option<String>,
}

/// One loaded ONNX graph.
pub trait Graph: Send {
    fn name(&self) -> &str;
    fn inputs(&self) -> &[TensorSpec];
    fn outputs(&self) -> &[TensorSpec];
    /// Runs the graph; inputs are matched by name and returned outputs keep graph order.
    /// Outputs named in `device_outputs` may stay in device memory (the KV cache on CUDA);
    /// every other output is in host memory.
    fn run_values(&mut self, inputs: Vec<(String, Value)>, device_outputs: &[&str]) -> Result<Vec<(String, Value)>>;

    /// [`Graph::run_values`] with host tensors in and out.
    fn run(&mut self, inputs: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>> {
        let inputs = inputs.into_iter().map(|(n, t)| (n, Value::Host(t))).collect();
        self.run_values(inputs, &[])?.into_iter().map(|(n, v)| Ok((n, v.to_host()?))).collect()
    }
}

#[derive(Debug, Clone)]
pub struct BackendOptions {
    pub kind: BackendKind,
    pub device: Device,
    /// Intra-op threads; 0 lets the backend decide.
    pub threads: usize,
}

impl Default for BackendOptions {
    fn default() -> Self {
        BackendOptions { kind: BackendKind::Ort, device: Device::Auto, threads: 0 }
    }
}

/// Opens graphs for one backend and device.
pub enum Loader {
    Ort(ort::OrtLoader),
    Tract(tract::TractLoader),
}

impl Loader {
    pub fn new(options: &BackendOptions) -> Result<Self> {
        match options.kind {
            BackendKind::Ort => Ok(Loader::Ort(ort::OrtLoader::new(options)?)),
            BackendKind::Tract => {
                if options.device == Device::Cuda {
                    return Err(Error::Unsupported(
                        "the tract backend runs on the CPU only; use --backend ort for --device cuda".into(),
                    ));
                }
                Ok(Loader::Tract(tract::TractLoader::new(options)))
            }
        }
    }

    pub fn open(&mut self, path: &Path) -> Result<Box<dyn Graph>> {
        super::files::check_external_data(path)?;
        match self {
            Loader::Ort(l) => l.open(path),
            Loader::Tract(l) => l.open(path),
        }
    }

    pub fn info(&self) -> BackendInfo {
        match self {
            Loader::Ort(l) => l.info(),
            Loader::Tract(_) => {
                BackendInfo { backend: BackendKind::Tract, device: "cpu".into(), fallback: None }
            }
        }
    }
}

/// Finds the spec of a named input, or says which graph lacks it.
pub(crate) fn spec<'a>(graph: &str, specs: &'a [TensorSpec], name: &str) -> Result<&'a TensorSpec> {
    specs.iter().find(|s| s.name == name).ok_or_else(|| Error::GraphContract {
        graph: graph.to_string(),
        message: format!(
            "has no input named {name:?} (inputs: {})",
            specs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
        ),
    })
}
