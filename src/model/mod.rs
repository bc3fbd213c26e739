//! The Gemma 4 runtime: load an ONNX export in the community layout and generate or score.

pub mod backend;
pub mod batching;
pub mod config;
pub mod files;
mod gemma4;
pub mod sampling;
pub mod tensor;
pub mod tokenizer;

pub use backend::{BackendInfo, BackendKind, BackendOptions, Device};
pub use batching::{drive, BatchError, ContinuousBatch, Driver, Fill, Finished, Request as BatchRequest, Waiting};
pub use files::{model_hash, Variant};
pub use gemma4::{
    CandidateScore, FinishReason, Gemma4, Generation, GenerationOptions, ImageSource, ModelOptions, Prepared,
    Preparer, Request,
};
pub use sampling::Sampling;
