//! Preparation: images to patches, prompts to token ids through the model's chat template.

pub mod chat;
pub mod image;
#[cfg(feature = "pipeline")]
pub mod pdf;
mod jpeg;
