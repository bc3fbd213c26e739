//! Model configuration, read straight from the model directory's JSON files.
//!
//! Every number a model file supplies that sizes an allocation or a loop (vocabulary,
//! hidden sizes, layer and head counts, context length, patch and pooling sizes, soft-token
//! budgets) is checked against [`limits`] at load, and an error names the file and the key.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{read_json, Error, Result};

/// Upper bounds on what a model file may ask for. They are generous (the real Gemma 4
/// E2B, E4B and 31B configs are far inside them) and exist so that a corrupt or hostile
/// config cannot make the runtime allocate without bound or divide by zero.
pub mod limits {
    /// `vocab_size` (Gemma 4: 262,144). Sizes one logits row per batch row.
    pub const MAX_VOCAB: u64 = 1 << 22;
    /// `hidden_size`, `hidden_size_per_layer_input` (Gemma 4 31B: 5,376).
    pub const MAX_HIDDEN: u64 = 1 << 16;
    /// `num_hidden_layers` (Gemma 4 31B: 60).
    pub const MAX_LAYERS: u64 = 1024;
    /// Attention and key/value head counts, in config.json and in the decoder's cache inputs.
    pub const MAX_HEADS: u64 = 1024;
    /// `head_dim`, `global_head_dim` and the cache inputs' head size (Gemma 4: 256 / 512).
    pub const MAX_HEAD_DIM: u64 = 8192;
    /// `max_position_embeddings` (Gemma 4: 131,072 for E2B/E4B, 262,144 for 31B).
    pub const MAX_POSITIONS: u64 = 1 << 22;
    /// The context when config.json does not say (transformers' Gemma 4 default).
    pub const DEFAULT_POSITIONS: usize = 131_072;
    /// Vision `patch_size` (Gemma 4: 16).
    pub const MAX_PATCH_SIZE: u64 = 1024;
    /// `pooling_kernel_size` (Gemma 4: 3).
    pub const MAX_POOLING: u64 = 64;
    /// `max_soft_tokens` per image (Gemma 4 offers 70 to 1,120).
    pub const MAX_SOFT_TOKENS: u64 = 1 << 16;
    /// Floats in one image's padded pixel buffer, `max_soft_tokens * pooling^2 * 3 * patch^2`
    /// (Gemma 4 at 1,120 soft tokens: about 7.7 million).
    pub const MAX_IMAGE_FLOATS: u64 = 1 << 26;
}

/// Checks on the raw JSON of one file, so that errors name the file and the key (serde's
/// own errors name neither the key of a wrong number nor, for nested keys, where it is).
struct Checker<'a> {
    path: &'a Path,
    root: &'a Value,
    /// Prefix of key names in messages, e.g. `image_processor.` inside processor_config.json.
    prefix: &'a str,
}

impl Checker<'_> {
    fn error(&self, key: &str, message: String) -> Error {
        Error::InvalidModel { path: self.path.to_path_buf(), message: format!("{}{key}: {message}", self.prefix) }
    }

    /// The value at a dotted key; JSON `null` counts as absent.
    fn get(&self, key: &str) -> Option<&Value> {
        key.split('.').try_fold(self.root, |v, k| v.get(k)).filter(|v| !v.is_null())
    }

    /// An optional non-negative integer in `lo..=hi`.
    fn uint(&self, key: &str, lo: u64, hi: u64) -> Result<Option<u64>> {
        let Some(v) = self.get(key) else { return Ok(None) };
        match v.as_u64() {
            Some(n) if (lo..=hi).contains(&n) => Ok(Some(n)),
            _ => Err(self.error(key, format!("must be an integer from {lo} to {hi}, found {v}"))),
        }
    }

    fn required_uint(&self, key: &str, lo: u64, hi: u64) -> Result<u64> {
        self.uint(key, lo, hi)?
            .ok_or_else(|| self.error(key, format!("is missing (an integer from {lo} to {hi})")))
    }

    /// An optional number in `lo..=hi`.
    fn number(&self, key: &str, lo: f64, hi: f64) -> Result<Option<f64>> {
        let Some(v) = self.get(key) else { return Ok(None) };
        match v.as_f64() {
            Some(x) if x.is_finite() && (lo..=hi).contains(&x) => Ok(Some(x)),
            _ => Err(self.error(key, format!("must be a number from {lo} to {hi}, found {v}"))),
        }
    }

    /// Token ids: one id or a list of ids, each below `vocab` when it is known.
    fn ids(&self, key: &str, vocab: Option<u64>) -> Result<()> {
        let Some(v) = self.get(key) else { return Ok(()) };
        let items: Vec<&Value> = match v {
            Value::Array(a) => a.iter().collect(),
            other => vec![other],
        };
        let hi = vocab.map(|v| v.saturating_sub(1)).unwrap_or(u32::MAX as u64);
        for item in items {
            match item.as_u64() {
                Some(n) if n <= hi => {}
                _ => {
                    let within = match vocab {
                        Some(v) => format!("below the vocabulary size {v}"),
                        None => "a token id".to_string(),
                    };
                    return Err(self.error(key, format!("must be {within}, found {item}")));
                }
            }
        }
        Ok(())
    }

    /// Parses into `T` after the checks; what serde still refuses names the file.
    fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_value(self.root.clone()).map_err(|source| Error::Json { path: self.path.to_path_buf(), source })
    }
}

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
        let raw: Value = read_json(&path)?;
        let cfg: Gemma4Config = validate_config(&path, &raw)?;
        if cfg.text_config.use_bidirectional_attention.as_deref() == Some("vision") {
            return Err(Error::Unsupported(format!(
                "{}: use_bidirectional_attention = \"vision\" needs image positions in the decoder, \
                 which the ONNX contract does not carry (only causal Gemma 4 models, such as E2B and E4B, are supported)",
                path.display()
            )));
        }
        Ok(cfg)
    }

    /// Positions the decoder may use: prompt plus generated tokens.
    pub fn context_len(&self) -> usize {
        self.text_config.max_position_embeddings.unwrap_or(limits::DEFAULT_POSITIONS)
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

/// Bounds every sizing key of config.json, then parses it.
fn validate_config(path: &Path, raw: &Value) -> Result<Gemma4Config> {
    use limits::*;
    let c = Checker { path, root: raw, prefix: "" };
    if !raw.get("text_config").is_some_and(Value::is_object) {
        return Err(c.error("text_config", "is missing (a Gemma 4 config.json has a text_config object)".into()));
    }
    let vocab = c.required_uint("text_config.vocab_size", 1, MAX_VOCAB)?;
    c.required_uint("text_config.hidden_size", 1, MAX_HIDDEN)?;
    let layers = c.required_uint("text_config.num_hidden_layers", 1, MAX_LAYERS)?;
    c.uint("text_config.hidden_size_per_layer_input", 0, MAX_HIDDEN)?;
    c.uint("text_config.vocab_size_per_layer_input", 0, MAX_VOCAB)?;
    // At least one layer must keep its own cache.
    c.uint("text_config.num_kv_shared_layers", 0, layers - 1)?;
    c.uint("text_config.num_attention_heads", 1, MAX_HEADS)?;
    c.uint("text_config.num_key_value_heads", 1, MAX_HEADS)?;
    c.uint("text_config.num_global_key_value_heads", 1, MAX_HEADS)?;
    c.uint("text_config.head_dim", 1, MAX_HEAD_DIM)?;
    c.uint("text_config.global_head_dim", 1, MAX_HEAD_DIM)?;
    c.uint("text_config.max_position_embeddings", 2, MAX_POSITIONS)?;
    c.uint("text_config.sliding_window", 1, u32::MAX as u64)?;
    c.number("text_config.final_logit_softcapping", 0.0, f64::MAX)?;
    if let Some(types) = c.get("text_config.layer_types") {
        match types.as_array() {
            Some(a) if a.len() as u64 <= MAX_LAYERS => {}
            _ => return Err(c.error("text_config.layer_types", format!("must be a list of at most {MAX_LAYERS} names"))),
        }
    }
    for key in ["pad_token_id", "bos_token_id", "eos_token_id"] {
        c.ids(&format!("text_config.{key}"), Some(vocab))?;
    }
    for key in ["image_token_id", "boi_token_id", "eoi_token_id", "eos_token_id", "pad_token_id", "bos_token_id"] {
        c.ids(key, Some(vocab))?;
    }
    if c.get("vision_config").is_some() {
        c.required_uint("vision_config.hidden_size", 1, MAX_HIDDEN)?;
        c.required_uint("vision_config.patch_size", 1, MAX_PATCH_SIZE)?;
        c.required_uint("vision_config.pooling_kernel_size", 1, MAX_POOLING)?;
        c.uint("vision_config.num_hidden_layers", 1, MAX_LAYERS)?;
        c.uint("vision_config.num_attention_heads", 1, MAX_HEADS)?;
        c.uint("vision_config.head_dim", 1, MAX_HEAD_DIM)?;
    }
    c.parse()
}

impl GenerationConfig {
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("generation_config.json");
        if !path.exists() {
            return Ok(GenerationConfig::default());
        }
        let raw: Value = read_json(&path)?;
        let c = Checker { path: &path, root: &raw, prefix: "" };
        for key in ["eos_token_id", "pad_token_id", "bos_token_id"] {
            // Checked against the vocabulary once config.json is known (Gemma4::load).
            c.ids(key, None)?;
        }
        c.number("temperature", 0.0, f64::MAX)?;
        c.number("top_p", 0.0, 1.0)?;
        c.uint("top_k", 0, limits::MAX_VOCAB)?;
        c.parse()
    }
}

impl ImageProcessorConfig {
    /// Reads `preprocessor_config.json`, else the `image_processor` entry of `processor_config.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        let pre = dir.join("preprocessor_config.json");
        if pre.exists() {
            let value: Value = read_json(&pre)?;
            return Self::validate(&pre, &value, "");
        }
        let proc = dir.join("processor_config.json");
        if proc.exists() {
            let value: Value = read_json(&proc)?;
            return match value.get("image_processor").filter(|v| !v.is_null()) {
                Some(inner) => Self::validate(&proc, inner, "image_processor."),
                None => Self::validate(&proc, &value, ""),
            };
        }
        Err(Error::MissingModelFile {
            dir: dir.to_path_buf(),
            file: "preprocessor_config.json (or processor_config.json)".into(),
            hint: String::new(),
        })
    }

    /// Bounds the sizing keys (absent ones take Gemma 4's defaults), then parses.
    fn validate(path: &Path, raw: &Value, prefix: &str) -> Result<Self> {
        use limits::*;
        let c = Checker { path, root: raw, prefix };
        let patch = c.uint("patch_size", 1, MAX_PATCH_SIZE)?.unwrap_or(default_patch_size() as u64);
        let soft = c.uint("max_soft_tokens", 1, MAX_SOFT_TOKENS)?.unwrap_or(default_max_soft_tokens() as u64);
        let pooling = c.uint("pooling_kernel_size", 1, MAX_POOLING)?.unwrap_or(default_pooling() as u64);
        c.number("rescale_factor", f64::MIN, f64::MAX)?;
        // Each factor is bounded above, so the product cannot overflow.
        let floats = soft * pooling * pooling * 3 * patch * patch;
        if floats > MAX_IMAGE_FLOATS {
            return Err(c.error(
                "max_soft_tokens",
                format!(
                    "{soft} soft tokens of {pooling}x{pooling} patches of {patch}x{patch} pixels need {floats} floats per image, \
                     above the limit of {MAX_IMAGE_FLOATS}"
                ),
            ));
        }
        c.parse()
    }

    pub fn max_patches(&self) -> usize {
        self.max_soft_tokens * self.pooling_kernel_size * self.pooling_kernel_size
    }
}
