//! The model's tokenizer (`tokenizer.json` through the `tokenizers` crate) and the special
//! tokens named in `tokenizer_config.json`.

use std::path::{Path, PathBuf};

use crate::error::{read_json, Error, Result};

/// Ids of the tokens the runtime needs to know by role.
#[derive(Debug, Clone)]
pub struct SpecialTokens {
    pub bos: Option<u32>,
    pub pad: u32,
    pub image: u32,
    pub boi: u32,
    pub eoi: u32,
    pub bos_text: String,
    pub eos_text: String,
}

pub struct GemmaTokenizer {
    inner: tokenizers::Tokenizer,
    pub special: SpecialTokens,
    path: PathBuf,
}

/// A token field of tokenizer_config.json: a string or an AddedToken object.
fn token_field(cfg: &serde_json::Value, key: &str) -> Option<String> {
    match cfg.get(key)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_owned),
        _ => None,
    }
}

impl GemmaTokenizer {
    pub fn load(dir: &Path, pad_id: Option<u32>, image_id: Option<u32>, boi_id: Option<u32>, eoi_id: Option<u32>) -> Result<Self> {
        let path = super::files::require(dir, "tokenizer.json")?;
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| Error::Tokenizer { path: path.clone(), message: e.to_string() })?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: serde_json::Value = if cfg_path.exists() { read_json(&cfg_path)? } else { serde_json::Value::Null };
        let err = |message: String| Error::Tokenizer { path: path.clone(), message };
        // The tokenizer must carry the token itself (the chat template writes it as text);
        // config.json, where it names an id, must agree.
        let lookup = |key: &str, default: &str, config_id: Option<u32>| -> Result<u32> {
            let text = token_field(&cfg, key).unwrap_or_else(|| default.to_string());
            let id = inner.token_to_id(&text).ok_or_else(|| {
                err(format!(
                    "has no {key} {text:?}; a Gemma 4 tokenizer must carry its image tokens (see tokenizer_config.json)"
                ))
            })?;
            match config_id {
                Some(cid) if cid != id => Err(err(format!("{key} {text:?} has id {id}, but config.json says {cid}"))),
                _ => Ok(id),
            }
        };
        let image = lookup("image_token", "<|image|>", image_id)?;
        let boi = lookup("boi_token", "<|image>", boi_id)?;
        let eoi = lookup("eoi_token", "<image|>", eoi_id)?;
        let bos_text = token_field(&cfg, "bos_token").unwrap_or_else(|| "<bos>".into());
        let eos_text = token_field(&cfg, "eos_token").unwrap_or_else(|| "<eos>".into());
        let pad_text = token_field(&cfg, "pad_token").unwrap_or_else(|| "<pad>".into());
        let pad = pad_id.or_else(|| inner.token_to_id(&pad_text)).unwrap_or(0);
        let special = SpecialTokens { bos: inner.token_to_id(&bos_text), pad, image, boi, eoi, bos_text, eos_text };
        Ok(GemmaTokenizer { inner, special, path })
    }

    /// Encodes text that already carries its special tokens (a rendered chat template).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Tokenizer { path: self.path.clone(), message: e.to_string() })?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| Error::Tokenizer { path: self.path.clone(), message: e.to_string() })
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}
