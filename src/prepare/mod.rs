//! Preparation: images to patches, prompts to token ids through the model's chat template.

pub mod chat;
pub mod image;
pub mod pdf;
mod jpeg;
