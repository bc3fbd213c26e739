//! tract backend: pure-Rust inference of the same ONNX graphs, on the CPU.

use std::path::Path;
use std::sync::Arc;

use half::f16;
use tract_onnx::pb;
use tract_onnx::prelude::*;

use super::{BackendOptions, Graph, Value};
use crate::error::{Error, Result};
use crate::model::files;
use crate::model::tensor::{DType, Tensor as HostTensor, TensorData, TensorSpec};

/// The one input with a default that the runtime feeds.
const OVERRIDABLE_INPUT: &str = "num_logits_to_keep";

pub struct TractLoader {}

impl TractLoader {
    pub fn new(_options: &BackendOptions) -> Self {
        TractLoader {}
    }

    pub fn open(&mut self, path: &Path) -> Result<Box<dyn Graph>> {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let err = |stage: &str, e: TractError| Error::Tract(format!("{name}: {stage}: {e:#}"));
        let mut proto = files::read_onnx_proto(path)?;
        // Intermediate shape annotations written by other tools (quantizers, float16
        // converters) name symbols tract cannot unify with its own inference; it infers
        // every intermediate shape itself.
        if let Some(graph) = proto.graph.as_mut() {
            graph.value_info.clear();
            // An input with a default (`num_logits_to_keep`) would be folded into a constant;
            // without its initializer it stays an input the runtime can feed.
            let inputs: Vec<String> = graph.input.iter().map(|i| i.name.clone()).collect();
            graph.initializer.retain(|t| !(t.name == OVERRIDABLE_INPUT && inputs.contains(&t.name)));
        }
        let (inputs, outputs) = files::io_specs(&proto);
        let dir = path.parent().and_then(|p| p.to_str()).map(str::to_owned);
        let parsed = tract_onnx::onnx().parse(&proto, dir.as_deref()).map_err(|e| err("parsing", e))?;
        if !parsed.unresolved_inputs.is_empty() {
            return Err(Error::Tract(format!("{name}: unresolved inputs {:?}", parsed.unresolved_inputs)));
        }
        let typed = parsed.model.into_optimized().map_err(|e| err("optimising", e))?;
        let plan = typed.into_runnable().map_err(|e| err("planning", e))?;
        Ok(Box::new(TractGraph { name, plan, inputs, outputs }))
    }
}

struct TractGraph {
    name: String,
    plan: Arc<TypedRunnableModel>,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
}

impl Graph for TractGraph {
    fn name(&self) -> &str {
        &self.name
    }
    fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }
    fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    fn run_values(&mut self, inputs: Vec<(String, Value)>, _device_outputs: &[&str]) -> Result<Vec<(String, Value)>> {
        let err = |e: TractError| Error::Tract(format!("{}: {e:#}", self.name));
        let mut by_name: std::collections::HashMap<String, Value> = inputs.into_iter().collect();
        let mut values: TVec<TValue> = TVec::new();
        for spec in &self.inputs {
            let value = by_name.remove(&spec.name).ok_or_else(|| Error::GraphContract {
                graph: self.name.clone(),
                message: format!("input {} was not given", spec.name),
            })?;
            let value = match value {
                Value::Tract(v) => v,
                Value::Host(t) => host_value(t, spec.dtype).map_err(err)?.into_tvalue(),
                Value::Ort(_) => {
                    return Err(Error::Tract(format!("{}: input {} holds an ONNX Runtime value", self.name, spec.name)));
                }
            };
            values.push(value);
        }
        if let Some(extra) = by_name.keys().next() {
            return Err(super::spec(&self.name, &self.inputs, extra).err().unwrap_or_else(|| Error::Tract(extra.clone())));
        }
        let outs = self.plan.run(values).map_err(err)?;
        for (spec, value) in self.outputs.iter().zip(&outs) {
            if !matches!(value.datum_type(), DatumType::F32 | DatumType::F16 | DatumType::I64) {
                return Err(Error::GraphContract {
                    graph: self.name.clone(),
                    message: format!("output {} has element type {:?}", spec.name, value.datum_type()),
                });
            }
        }
        Ok(self.outputs.iter().map(|s| s.name.clone()).zip(outs.into_iter().map(Value::Tract)).collect())
    }
}

fn host_value(t: HostTensor, dtype: DType) -> TractResult<Tensor> {
    match (t.data, dtype) {
        (TensorData::F32(v), DType::F16) => {
            let v: Vec<f16> = v.into_iter().map(f16::from_f32).collect();
            Tensor::from_shape(&t.shape, &v)
        }
        (TensorData::F32(v), _) => Tensor::from_shape(&t.shape, &v),
        (TensorData::I64(v), _) => Tensor::from_shape(&t.shape, &v),
    }
}

pub(super) fn to_host(value: &TValue) -> Result<HostTensor> {
    let err = |e: TractError| Error::Tract(format!("reading an output: {e:#}"));
    let shape = value.shape().to_vec();
    let plain = value.try_as_plain_ram().map_err(err)?;
    match value.datum_type() {
        DatumType::F32 => Ok(HostTensor::f32(shape, plain.as_slice::<f32>().map_err(err)?.to_vec())),
        DatumType::F16 => {
            Ok(HostTensor::f32(shape, plain.as_slice::<f16>().map_err(err)?.iter().map(|x| x.to_f32()).collect()))
        }
        DatumType::I64 => Ok(HostTensor::i64(shape, plain.as_slice::<i64>().map_err(err)?.to_vec())),
        other => Err(Error::Tract(format!("an output of element type {other:?} cannot be read"))),
    }
}

/// Decodes an ONNX file into its protobuf (used for metadata and safety checks).
pub(crate) fn decode_proto(bytes: &[u8]) -> std::result::Result<pb::ModelProto, String> {
    <pb::ModelProto as prost::Message>::decode(bytes).map_err(|e| e.to_string())
}
