//! Small helpers every stage uses: content hashes, the wall clock, the async runtime.

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// SHA-256 of length-prefixed parts, as lowercase hex. Length prefixes keep ("ab", "c") and
/// ("a", "bc") apart.
pub fn sha256_hex(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    format!("{:x}", h.finalize())
}

/// [`sha256_hex`] of text parts.
pub fn hash_text(parts: &[&str]) -> String {
    let bytes: Vec<&[u8]> = parts.iter().map(|p| p.as_bytes()).collect();
    sha256_hex(&bytes)
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The async runtime for Lance and the pipeline's stages: `workers` threads (0: the current
/// thread only).
pub fn runtime(workers: usize) -> Result<tokio::runtime::Runtime> {
    let mut builder = if workers == 0 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    builder.enable_all().build().map_err(|e| Error::Join { stage: "the async runtime".into(), message: e.to_string() })
}

/// The name a unit enum serialises to (`FinishReason::Length` -> "length"): the one spelling
/// used in stored rows, JSON and messages.
pub fn enum_name<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}
