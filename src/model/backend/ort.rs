//! ONNX Runtime backend through `ort` with `load-dynamic`: the shared library comes from the
//! `onnxruntime` (CPU) or `onnxruntime-gpu` (CUDA) Python wheel, found through
//! `ORT_DYLIB_PATH` or the default install location of `tools/setup-onnxruntime.sh`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use half::f16;
use ort::ep::{ExecutionProvider, CUDA};
use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
use ort::session::Session;
use ort::value::{DynTensorValueType, DynValue, TensorElementType, ValueType};

use super::{BackendInfo, BackendKind, BackendOptions, Device, Graph, Value};
use crate::error::{Error, Result};
use crate::model::tensor::{DType, Dim, Tensor, TensorData, TensorSpec};

const SETUP_HINT: &str = "run `bash tools/setup-onnxruntime.sh` (add `--gpu` for CUDA) or set ORT_DYLIB_PATH \
                          to a libonnxruntime.so from the onnxruntime Python wheel";

/// Where `tools/setup-onnxruntime.sh` puts the library: the [cache directory](super::cache_dir),
/// then `onnxruntime/{cpu,gpu}/`.
pub fn default_library_path(gpu: bool) -> Option<PathBuf> {
    Some(super::cache_dir()?.join("onnxruntime").join(if gpu { "gpu" } else { "cpu" }).join("libonnxruntime.so"))
}

fn library_path(device: Device) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if !p.exists() {
            return Err(Error::Ort(format!("ORT_DYLIB_PATH={} does not exist; {SETUP_HINT}", p.display())));
        }
        return Ok(p);
    }
    let gpu = default_library_path(true).filter(|p| p.exists());
    let cpu = default_library_path(false).filter(|p| p.exists());
    let chosen = match device {
        Device::Cpu => cpu.or(gpu),
        Device::Cuda | Device::Auto => gpu.or(cpu),
    };
    chosen.ok_or_else(|| Error::Ort(format!("the ONNX Runtime shared library was not found; {SETUP_HINT}")))
}

/// ONNX Runtime is loaded once per process; later loaders reuse it.
static ENVIRONMENT: OnceLock<std::result::Result<(PathBuf, ort::environment::Environment), String>> = OnceLock::new();

fn environment(device: Device) -> Result<&'static ort::environment::Environment> {
    let entry = ENVIRONMENT.get_or_init(|| {
        let path = library_path(device).map_err(|e| e.to_string())?;
        let builder = ort::init_from(&path)
            .map_err(|e| format!("ONNX Runtime: loading {}: {e}; {SETUP_HINT}", path.display()))?;
        let env = builder
            .with_name("gemma-batch")
            .build()
            .map_err(|e| format!("ONNX Runtime: creating the environment: {e}"))?;
        Ok((path, env))
    });
    match entry {
        Ok((_, env)) => Ok(env),
        Err(message) => Err(Error::Ort(message.trim_start_matches("ONNX Runtime: ").to_string())),
    }
}

pub struct OrtLoader {
    options: BackendOptions,
    /// Decided on the first graph: whether CUDA is in use, and why not if it fell back.
    use_cuda: Option<bool>,
    fallback: Option<String>,
}

impl OrtLoader {
    pub fn new(options: &BackendOptions) -> Result<Self> {
        environment(options.device)?;
        let mut loader = OrtLoader { options: options.clone(), use_cuda: None, fallback: None };
        match options.device {
            Device::Cpu => loader.use_cuda = Some(false),
            Device::Cuda | Device::Auto => {
                let available = CUDA::is_available().unwrap_or(false);
                if !available {
                    let reason = "this ONNX Runtime library has no CUDA execution provider \
                                  (`bash tools/setup-onnxruntime.sh --gpu` installs one)";
                    if options.device == Device::Cuda {
                        return Err(Error::Ort(format!("--device cuda: {reason}")));
                    }
                    loader.use_cuda = Some(false);
                    loader.fallback = Some(reason.to_string());
                }
            }
        }
        Ok(loader)
    }

    pub fn info(&self) -> BackendInfo {
        BackendInfo {
            backend: BackendKind::Ort,
            device: if self.use_cuda == Some(true) { "cuda".into() } else { "cpu".into() },
            fallback: self.fallback.clone(),
        }
    }

    fn builder(&self) -> Result<ort::session::builder::SessionBuilder> {
        let env = environment(self.options.device)?;
        let mut b = Session::builder(env).map_err(|e| Error::Ort(e.to_string()))?;
        if self.options.threads > 0 {
            b = b.with_intra_threads(self.options.threads).map_err(|e| Error::Ort(e.to_string()))?;
        }
        Ok(b)
    }

    pub fn open(&mut self, path: &Path) -> Result<Box<dyn Graph>> {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let session = if self.use_cuda != Some(false) {
            let cuda = CUDA::default().build().error_on_failure();
            let attempt = self
                .builder()?
                .with_execution_providers([cuda])
                .map_err(|e| e.to_string())
                .and_then(|mut b| b.commit_from_file(path).map_err(|e| e.to_string()));
            match attempt {
                Ok(s) => {
                    self.use_cuda = Some(true);
                    s
                }
                Err(reason) if self.options.device == Device::Auto => {
                    self.use_cuda = Some(false);
                    self.fallback = Some(format!("CUDA execution provider failed: {reason}"));
                    self.commit_cpu(path)?
                }
                Err(reason) => {
                    return Err(Error::Ort(format!(
                        "--device cuda: {name}: {reason} (needs the onnxruntime-gpu library with CUDA 12 and cuDNN 9; \
                         or use --device cpu)"
                    )))
                }
            }
        } else {
            self.commit_cpu(path)?
        };
        // Inputs with a default (an initializer of the same name, e.g. `num_logits_to_keep`)
        // may be fed too; ONNX Runtime lists them apart.
        let inputs = session
            .inputs()
            .iter()
            .map(|o| spec_of(o.name(), o.dtype()))
            .chain(session.overridable_initializers().iter().map(|o| spec_of(o.name(), o.dtype())))
            .collect();
        let outputs = session.outputs().iter().map(|o| spec_of(o.name(), o.dtype())).collect();
        let cuda = self.use_cuda == Some(true);
        Ok(Box::new(OrtGraph { name, session, inputs, outputs, cuda }))
    }

    fn commit_cpu(&self, path: &Path) -> Result<Session> {
        self.builder()?
            .commit_from_file(path)
            .map_err(|e| Error::Ort(format!("loading {}: {e}", path.display())))
    }
}

fn spec_of(name: &str, ty: &ValueType) -> TensorSpec {
    match ty {
        ValueType::Tensor { ty, shape, dimension_symbols } => TensorSpec {
            name: name.to_string(),
            dtype: dtype_of(*ty),
            shape: shape
                .iter()
                .enumerate()
                .map(|(i, &d)| {
                    if d >= 0 {
                        Dim::Fixed(d as usize)
                    } else {
                        Dim::Symbol(dimension_symbols.get(i).cloned().unwrap_or_default())
                    }
                })
                .collect(),
        },
        _ => TensorSpec { name: name.to_string(), dtype: DType::Other, shape: Vec::new() },
    }
}

fn dtype_of(ty: TensorElementType) -> DType {
    match ty {
        TensorElementType::Float32 => DType::F32,
        TensorElementType::Float16 => DType::F16,
        TensorElementType::Int64 => DType::I64,
        _ => DType::Other,
    }
}

struct OrtGraph {
    name: String,
    session: Session,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    /// Runs on CUDA: outputs asked to stay on the device are bound to device memory.
    cuda: bool,
}

impl Graph for OrtGraph {
    fn name(&self) -> &str {
        &self.name
    }
    fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }
    fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    fn run_values(&mut self, inputs: Vec<(String, Value)>, device_outputs: &[&str]) -> Result<Vec<(String, Value)>> {
        let name = self.name.clone();
        let err = |e: ort::Error| Error::Ort(format!("{name}: {e}"));
        let mut values: Vec<(String, DynValue)> = Vec::with_capacity(inputs.len());
        for (input, value) in inputs {
            let spec = super::spec(&self.name, &self.inputs, &input)?;
            let value = match value {
                Value::Ort(v) => v,
                Value::Host(t) => host_value(t, spec.dtype).map_err(err)?,
                Value::Tract(_) => {
                    return Err(Error::Ort(format!("{}: input {input} holds a tract value", self.name)));
                }
            };
            values.push((input, value));
        }
        // Outputs are bound by memory location: with CUDA the cache stays on the device and
        // comes back as the next step's input without passing through the host. A fresh
        // binding per run, so that no output buffer of an earlier run is written again.
        let mut binding = self.session.create_binding().map_err(err)?;
        for (input, value) in &values {
            binding.bind_input(input.as_str(), value).map_err(err)?;
        }
        let host = MemoryInfo::new(AllocationDevice::CPU, 0, AllocatorType::Device, MemoryType::Default).map_err(err)?;
        let device = if self.cuda {
            Some(MemoryInfo::new(AllocationDevice::CUDA, 0, AllocatorType::Device, MemoryType::Default).map_err(err)?)
        } else {
            None
        };
        for spec in &self.outputs {
            let on_device = device.as_ref().filter(|_| device_outputs.contains(&spec.name.as_str()));
            binding.bind_output_to_device(spec.name.as_str(), on_device.unwrap_or(&host)).map_err(err)?;
        }
        let mut outputs = self.session.run_binding(&binding).map_err(err)?;
        let mut result = Vec::with_capacity(self.outputs.len());
        for spec in &self.outputs {
            let value = outputs.remove(spec.name.as_str()).ok_or_else(|| Error::GraphContract {
                graph: self.name.clone(),
                message: format!("did not return output {}", spec.name),
            })?;
            if spec.dtype == DType::Other {
                return Err(Error::GraphContract {
                    graph: self.name.clone(),
                    message: format!("output {} has an element type this runtime does not read", spec.name),
                });
            }
            result.push((spec.name.clone(), Value::Ort(value)));
        }
        Ok(result)
    }
}

/// A host tensor as an ONNX Runtime value of the graph's element type.
fn host_value(tensor: Tensor, dtype: DType) -> ort::Result<DynValue> {
    let shape = tensor.shape;
    Ok(match (tensor.data, dtype) {
        (TensorData::F32(v), DType::F16) => {
            let v: Vec<f16> = v.into_iter().map(f16::from_f32).collect();
            ort::value::Tensor::from_array((shape, v))?.into_dyn()
        }
        (TensorData::F32(v), _) => ort::value::Tensor::from_array((shape, v))?.into_dyn(),
        (TensorData::I64(v), _) => ort::value::Tensor::from_array((shape, v))?.into_dyn(),
    })
}

pub(super) fn shape_of(value: &DynValue) -> Vec<usize> {
    match value.dtype() {
        ValueType::Tensor { shape, .. } => dims(shape),
        _ => Vec::new(),
    }
}

/// The f32 data of a value in host memory, borrowed.
pub(super) fn borrow_f32(value: &DynValue) -> Option<(Vec<usize>, &[f32])> {
    let (shape, data) = value.try_extract_tensor::<f32>().ok()?;
    Some((dims(shape), data))
}

pub(super) fn to_host(value: &DynValue) -> Result<Tensor> {
    let err = |e: ort::Error| Error::Ort(format!("reading an output: {e}"));
    let tensor = value.view().downcast::<DynTensorValueType>().map_err(err)?;
    let copied;
    let value: &DynValue = if tensor.memory_info().is_cpu_accessible() {
        value
    } else {
        copied = tensor.to(AllocationDevice::CPU, 0).map_err(err)?.into_dyn();
        &copied
    };
    match value.dtype() {
        ValueType::Tensor { ty: TensorElementType::Float32, .. } => {
            let (shape, data) = value.try_extract_tensor::<f32>().map_err(err)?;
            Ok(Tensor::f32(dims(shape), data.to_vec()))
        }
        ValueType::Tensor { ty: TensorElementType::Float16, .. } => {
            let (shape, data) = value.try_extract_tensor::<f16>().map_err(err)?;
            Ok(Tensor::f32(dims(shape), data.iter().map(|x| x.to_f32()).collect()))
        }
        ValueType::Tensor { ty: TensorElementType::Int64, .. } => {
            let (shape, data) = value.try_extract_tensor::<i64>().map_err(err)?;
            Ok(Tensor::i64(dims(shape), data.to_vec()))
        }
        other => Err(Error::Ort(format!("an output of type {other} cannot be read"))),
    }
}

fn dims(shape: &[i64]) -> Vec<usize> {
    shape.iter().map(|&d| d.max(0) as usize).collect()
}
