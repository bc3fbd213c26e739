//! gemma-batch: run Gemma 4 (ONNX) over documents and images as batch jobs.
//!
//! Modules follow the data flow: `prepare` turns prompts and images into model inputs,
//! `model` loads a Gemma 4 ONNX export and generates or scores, `cli` is the thin binary.

pub mod cli;
pub mod error;
pub mod model;
pub mod prepare;

pub use error::{Error, Result};
