//! Model configuration, read straight from the model directory's JSON files.

use std::path::Path;

use serde::Deserialize;

use crate::error::{read_json, Error, Result};

/// A JSON field that is either one id or a list of ids (`eos_token_id`).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(untagged)]
pub enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
    #[default]
    None,
}

impl OneOrMany {
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            OneOrMany::One(id) => vec![*id],
            OneOrMany::Many(ids) => ids.clone(),
            OneOrMany::None => Vec::new(),
        }
    }
}

/// `config.json` of a `Gemma4ForConditionalGeneration`.
#[derive(Debug, Clone, Deserialize)]
pub struct Gemma4Config {
    pub text_config: TextConfig,
    #[serde(default)]
    pub vision_config: Option<VisionConfig>,
    pub image_token_id: Option<u32>,
    pub boi_token_id: Option<u32>,
    pub eoi_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: OneOrMany,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    #[serde(default)]
    pub hidden_size_per_layer_input: usize,
    #[serde(default)]
    pub num_kv_shared_layers: usize,
    pub sliding_window: Option<usize>,
    #[serde(default)]
    pub layer_types: Vec<String>,
    pub final_logit_softcapping: Option<f64>,
    pub max_position_embeddings: Option<usize>,
    pub pad_token_id: Option<u32>,
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: OneOrMany,
    pub use_bidirectional_attention: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct VisionConfig {
    pub hidden_size: usize,
    pub patch_size: usize,
    pub pooling_kernel_size: usize,
}

/// `generation_config.json`.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct GenerationConfig {
    #[serde(default)]
    pub eos_token_id: OneOrMany,
    pub pad_token_id: Option<u32>,
    pub bos_token_id: Option<u32>,
    pub do_sample: Option<bool>,
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
}

/// The image half of `preprocessor_config.json` / `processor_config.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct ImageProcessorConfig {
    #[serde(default = "default_patch_size")]
    pub patch_size: usize,
    #[serde(default = "default_max_soft_tokens")]
    pub max_soft_tokens: usize,
    #[serde(default = "default_pooling")]
    pub pooling_kernel_size: usize,
    #[serde(default = "default_rescale")]
    pub rescale_factor: f64,
    #[serde(default = "yes")]
    pub do_rescale: bool,
    #[serde(default = "yes")]
    pub do_resize: bool,
    #[serde(default = "yes")]
    pub do_convert_rgb: bool,
}

fn default_patch_size() -> usize {
    16
}
fn default_max_soft_tokens() -> usize {
    280
}
fn default_pooling() -> usize {
    3
}
fn default_rescale() -> f64 {
    1.0 / 255.0
}
fn yes() -> bool {
    true
}

impl Gemma4Config {
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let cfg: Gemma4Config = read_json(&path)?;
        if cfg.text_config.use_bidirectional_attention.as_deref() == Some("vision") {
            return Err(Error::Unsupported(format!(
                "{}: use_bidirectional_attention = \"vision\" needs image positions in the decoder, \
                 which the ONNX contract does not carry (only causal Gemma 4 models, such as E2B and E4B, are supported)",
                path.display()
            )));
        }
        Ok(cfg)
    }

    /// End-of-generation ids: generation_config.json wins, then config.json.
    pub fn eos_ids(&self, generation: &GenerationConfig) -> Vec<u32> {
        let mut ids = generation.eos_token_id.to_vec();
        if ids.is_empty() {
            ids = self.eos_token_id.to_vec();
        }
        if ids.is_empty() {
            ids = self.text_config.eos_token_id.to_vec();
        }
        ids
    }
}

impl GenerationConfig {
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("generation_config.json");
        if path.exists() {
            read_json(&path)
        } else {
            Ok(GenerationConfig::default())
        }
    }
}

impl ImageProcessorConfig {
    /// Reads `preprocessor_config.json`, else the `image_processor` entry of `processor_config.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        let pre = dir.join("preprocessor_config.json");
        if pre.exists() {
            return read_json(&pre);
        }
        let proc = dir.join("processor_config.json");
        if proc.exists() {
            let value: serde_json::Value = read_json(&proc)?;
            let inner = value.get("image_processor").cloned().unwrap_or(value);
            return serde_json::from_value(inner).map_err(|source| Error::Json { path: proc, source });
        }
        Err(Error::MissingModelFile {
            dir: dir.to_path_buf(),
            file: "preprocessor_config.json (or processor_config.json)".into(),
            hint: String::new(),
        })
    }

    pub fn max_patches(&self) -> usize {
        self.max_soft_tokens * self.pooling_kernel_size * self.pooling_kernel_size
    }
}
