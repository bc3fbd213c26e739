//! gemma-batch: run Gemma 4 (ONNX) over documents and images as batch jobs.
//!
//! Modules follow the data flow: `spec` describes a job, `source` reads rows, `prepare`
//! turns prompts and images into model inputs, `model` runs Gemma 4 (ONNX), `sink` stores
//! results in Lance, `pipeline` joins the stages, `cli` is the thin binary.

pub mod bench;
pub mod cli;
pub mod error;
pub mod evals;
pub mod filters;
pub mod model;
pub mod objects;
pub mod pipeline;
pub mod prepare;
pub mod reports;
pub mod sink;
pub mod source;
pub mod spec;
pub mod util;

pub use error::{Error, Result};
