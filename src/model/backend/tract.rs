//! tract backend: pure-Rust inference of the same ONNX graphs, on the CPU.

use std::path::Path;
use std::sync::Arc;

use half::f16;
use tract_onnx::pb;
use tract_onnx::prelude::*;

use super::{BackendOptions, Graph};
use crate::error::{Error, Result};
use crate::model::files;
use crate::model::tensor::{DType, Tensor as HostTensor, TensorData, TensorSpec};

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

    fn run(&mut self, inputs: Vec<(String, HostTensor)>) -> Result<Vec<(String, HostTensor)>> {
        let err = |e: TractError| Error::Tract(format!("{}: {e:#}", self.name));
        let mut by_name: std::collections::HashMap<String, HostTensor> = inputs.into_iter().collect();
        let mut values: TVec<TValue> = TVec::new();
        for spec in &self.inputs {
            let t = by_name.remove(&spec.name).ok_or_else(|| Error::GraphContract {
                graph: self.name.clone(),
                message: format!("input {} was not given", spec.name),
            })?;
            let tensor = match (t.data, spec.dtype) {
                (TensorData::F32(v), DType::F16) => {
                    let v: Vec<f16> = v.into_iter().map(f16::from_f32).collect();
                    Tensor::from_shape(&t.shape, &v).map_err(err)?
                }
                (TensorData::F32(v), _) => Tensor::from_shape(&t.shape, &v).map_err(err)?,
                (TensorData::I64(v), _) => Tensor::from_shape(&t.shape, &v).map_err(err)?,
            };
            values.push(tensor.into_tvalue());
        }
        let outs = self.plan.run(values).map_err(err)?;
        let mut result = Vec::with_capacity(outs.len());
        for (spec, value) in self.outputs.iter().zip(outs) {
            let shape = value.shape().to_vec();
            let plain = value.try_as_plain_ram().map_err(err)?;
            let tensor = match value.datum_type() {
                DatumType::F32 => HostTensor::f32(shape, plain.as_slice::<f32>().map_err(err)?.to_vec()),
                DatumType::F16 => HostTensor::f32(
                    shape,
                    plain.as_slice::<f16>().map_err(err)?.iter().map(|x| x.to_f32()).collect(),
                ),
                DatumType::I64 => HostTensor::i64(shape, plain.as_slice::<i64>().map_err(err)?.to_vec()),
                other => {
                    return Err(Error::GraphContract {
                        graph: self.name.clone(),
                        message: format!("output {} has element type {other:?}", spec.name),
                    })
                }
            };
            result.push((spec.name.clone(), tensor));
        }
        Ok(result)
    }
}

/// Decodes an ONNX file into its protobuf (used for metadata and safety checks).
pub(crate) fn decode_proto(bytes: &[u8]) -> std::result::Result<pb::ModelProto, String> {
    <pb::ModelProto as prost::Message>::decode(bytes).map_err(|e| e.to_string())
}
