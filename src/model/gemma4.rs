//! Gemma 4 over three ONNX graphs (`embed_tokens`, `vision_encoder`, `decoder_model_merged`):
//! prompt preparation, batched generation with a KV cache carried between steps, and
//! candidate scoring.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::backend::{BackendInfo, BackendOptions, Graph, Loader, Value};
use super::batching::{ContinuousBatch, KvCache};
use super::config::{Gemma4Config, GenerationConfig, ImageProcessorConfig};
use super::files::{self, Variant};
use super::sampling::{self, Sampling};
use super::tensor::{Dim, Tensor};
use super::tokenizer::GemmaTokenizer;
use crate::error::{Error, Result};
use crate::prepare::chat::{ChatTemplate, Message};
use crate::prepare::image::{ImageProcessor, PreparedImage, DEFAULT_MAX_PIXELS};

#[derive(Debug, Clone)]
pub struct ModelOptions {
    pub backend: BackendOptions,
    pub variant: Variant,
    pub max_image_pixels: u64,
    /// Longest slice of a prompt fed to the decoder at once; bounds the logits buffer.
    pub prefill_chunk: usize,
}

impl Default for ModelOptions {
    fn default() -> Self {
        ModelOptions {
            backend: BackendOptions::default(),
            variant: Variant::Fp32,
            max_image_pixels: DEFAULT_MAX_PIXELS,
            prefill_chunk: 512,
        }
    }
}

#[derive(Debug, Clone)]
pub enum ImageSource {
    Path(PathBuf),
    Bytes { name: String, bytes: Vec<u8> },
    /// Already decoded pixels (a rendered PDF page).
    Decoded { name: String, image: image::DynamicImage },
}

#[derive(Debug, Clone, Default)]
pub struct Request {
    pub system: Option<String>,
    pub prompt: String,
    pub images: Vec<ImageSource>,
}

/// A request turned into model inputs: expanded prompt ids and prepared images.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub input_ids: Vec<u32>,
    pub images: Vec<PreparedImage>,
}

#[derive(Debug, Clone)]
pub struct GenerationOptions {
    pub max_new_tokens: usize,
    /// None: greedy.
    pub sampling: Option<Sampling>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// An end-of-generation token was produced.
    Stop,
    /// `max_new_tokens` was reached.
    Length,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Generation {
    pub text: String,
    pub token_ids: Vec<u32>,
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct CandidateScore {
    pub candidate: String,
    pub token_ids: Vec<u32>,
    /// Sum of the log-probabilities of the candidate's tokens after the prompt.
    pub logprob: f64,
}

/// One cache layer of the decoder, read from its input metadata.
#[derive(Debug, Clone)]
struct CacheLayer {
    key_in: String,
    value_in: String,
    key_out: String,
    value_out: String,
    heads: usize,
    head_dim: usize,
}

/// Turns requests into model inputs. Shared (it is `Sync`), so preparation runs on other
/// threads while the model generates.
pub struct Preparer {
    pub tokenizer: GemmaTokenizer,
    pub images: ImageProcessor,
    chat: ChatTemplate,
    has_vision: bool,
    /// Positions the decoder may use (prompt plus generated tokens).
    context: usize,
    /// Embedding rows; every prompt id must be below it.
    vocab: usize,
}

pub struct Gemma4 {
    pub dir: PathBuf,
    pub config: Gemma4Config,
    pub generation_config: GenerationConfig,
    preparer: Arc<Preparer>,
    embed: Box<dyn Graph>,
    vision: Option<Box<dyn Graph>>,
    decoder: Box<dyn Graph>,
    cache: Vec<CacheLayer>,
    eos: Vec<u32>,
    info: BackendInfo,
    prefill_chunk: usize,
    context: usize,
    /// The decoder takes `num_logits_to_keep` (logits of the last positions only).
    logits_to_keep: bool,
}

/// The decoder input that limits logits to the last positions (transformers' `logits_to_keep`).
const LOGITS_TO_KEEP: &str = "num_logits_to_keep";

fn contract(graph: &dyn Graph, message: String) -> Error {
    Error::GraphContract { graph: graph.name().to_string(), message }
}

fn require_io(graph: &dyn Graph, inputs: &[&str], outputs: &[&str]) -> Result<()> {
    for name in inputs {
        if !graph.inputs().iter().any(|s| s.name == *name) {
            let have: Vec<_> = graph.inputs().iter().map(|s| s.name.as_str()).collect();
            return Err(contract(graph, format!("missing input {name:?} (has: {})", have.join(", "))));
        }
    }
    for name in outputs {
        if !graph.outputs().iter().any(|s| s.name == *name) {
            let have: Vec<_> = graph.outputs().iter().map(|s| s.name.as_str()).collect();
            return Err(contract(graph, format!("missing output {name:?} (has: {})", have.join(", "))));
        }
    }
    Ok(())
}

/// Cache layers from `past_key_values.{i}.key/value` inputs; head counts and sizes must be
/// fixed numbers in the metadata (they differ between sliding and full-attention layers).
fn cache_layers(decoder: &dyn Graph) -> Result<Vec<CacheLayer>> {
    let mut layers = Vec::new();
    for spec in decoder.inputs() {
        let Some(rest) = spec.name.strip_prefix("past_key_values.") else { continue };
        let Some(index) = rest.strip_suffix(".key") else { continue };
        let index: usize = index
            .parse()
            .map_err(|_| contract(decoder, format!("cache input {:?} has no layer number", spec.name)))?;
        let (Some(heads), Some(head_dim)) = (spec.fixed(1), spec.fixed(3)) else {
            return Err(contract(
                decoder,
                format!("cache input {} must have fixed head count and head size, has {:?}", spec.name, spec.shape),
            ));
        };
        use super::config::limits::{MAX_HEADS, MAX_HEAD_DIM, MAX_LAYERS};
        if !(1..=MAX_HEADS).contains(&(heads as u64)) || !(1..=MAX_HEAD_DIM).contains(&(head_dim as u64)) {
            return Err(contract(
                decoder,
                format!(
                    "cache input {} has {heads} heads of size {head_dim}; at most {MAX_HEADS} heads of size 1 to {MAX_HEAD_DIM} are accepted",
                    spec.name
                ),
            ));
        }
        if index as u64 >= MAX_LAYERS {
            return Err(contract(decoder, format!("cache input {} names layer {index}, above {MAX_LAYERS} layers", spec.name)));
        }
        let value_in = format!("past_key_values.{index}.value");
        let key_out = format!("present.{index}.key");
        let value_out = format!("present.{index}.value");
        require_io(decoder, &[&value_in], &[&key_out, &value_out])?;
        layers.push((index, CacheLayer { key_in: spec.name.clone(), value_in, key_out, value_out, heads, head_dim }));
    }
    layers.sort_by_key(|(i, _)| *i);
    Ok(layers.into_iter().map(|(_, l)| l).collect())
}

impl Gemma4 {
    pub fn load(dir: &Path, options: &ModelOptions) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::Io {
                path: dir.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "model directory not found"),
            });
        }
        files::require(dir, "config.json")?;
        let config = Gemma4Config::load(dir)?;
        let generation_config = GenerationConfig::load(dir)?;
        let text = &config.text_config;
        let tokenizer =
            GemmaTokenizer::load(dir, text.pad_token_id, config.image_token_id, config.boi_token_id, config.eoi_token_id)?;
        let vocab = text.vocab_size;
        check_special_ids(dir, &tokenizer, &generation_config, vocab)?;
        let template_path = files::require(dir, "chat_template.jinja")?;
        let template = std::fs::read_to_string(&template_path).map_err(|e| Error::io(&template_path, e))?;
        let chat = ChatTemplate::new(template, tokenizer.special.bos_text.clone(), tokenizer.special.eos_text.clone())?;
        let mut images = ImageProcessor::new(ImageProcessorConfig::load(dir)?);
        images.max_pixels = options.max_image_pixels;

        let mut loader = Loader::new(&options.backend)?;
        let embed = loader.open(&files::graph_path(dir, files::EMBED_TOKENS, options.variant)?)?;
        let decoder = loader.open(&files::graph_path(dir, files::DECODER, options.variant)?)?;
        let vision = if config.vision_config.is_some() {
            Some(loader.open(&files::graph_path(dir, files::VISION_ENCODER, options.variant)?)?)
        } else {
            None
        };

        require_io(embed.as_ref(), &["input_ids"], &["inputs_embeds"])?;
        let has_per_layer_inputs = embed.outputs().iter().any(|s| s.name == "per_layer_inputs");
        let mut dec_inputs = vec!["inputs_embeds", "attention_mask", "position_ids"];
        if has_per_layer_inputs {
            dec_inputs.push("per_layer_inputs");
        }
        require_io(decoder.as_ref(), &dec_inputs, &["logits"])?;
        if let Some(v) = &vision {
            require_io(v.as_ref(), &["pixel_values", "pixel_position_ids"], &["image_features"])?;
            let spec = v.inputs().iter().find(|s| s.name == "pixel_values").expect("checked above");
            if let Some(Dim::Fixed(n)) = spec.shape.get(1) {
                if *n != images.config.max_patches() {
                    return Err(contract(
                        v.as_ref(),
                        format!("takes {n} patches per image but the processor config pads to {}", images.config.max_patches()),
                    ));
                }
            }
            if let Some(Dim::Fixed(n)) = spec.shape.get(2) {
                if *n != images.patch_dim() {
                    return Err(contract(
                        v.as_ref(),
                        format!(
                            "takes patches of {n} values but the processor config's patch_size {} gives {}",
                            images.config.patch_size,
                            images.patch_dim()
                        ),
                    ));
                }
            }
        }
        let cache = cache_layers(decoder.as_ref())?;
        if cache.is_empty() {
            return Err(contract(decoder.as_ref(), "has no past_key_values.{i}.key inputs".into()));
        }
        let eos = config.eos_ids(&generation_config);
        let info = loader.info();
        let context = config.context_len();
        let logits_to_keep = decoder.inputs().iter().any(|s| s.name == LOGITS_TO_KEEP);
        let preparer = Arc::new(Preparer { tokenizer, images, chat, has_vision: vision.is_some(), context, vocab });
        Ok(Gemma4 {
            dir: dir.to_path_buf(),
            config,
            generation_config,
            preparer,
            embed,
            vision,
            decoder,
            cache,
            eos,
            info,
            prefill_chunk: options.prefill_chunk.max(1),
            context,
            logits_to_keep,
        })
    }

    /// Positions the decoder may use: prompt plus generated tokens
    /// (`max_position_embeddings` in config.json).
    pub fn context_len(&self) -> usize {
        self.context
    }

    pub fn backend_info(&self) -> &BackendInfo {
        &self.info
    }

    pub fn eos_ids(&self) -> &[u32] {
        &self.eos
    }

    /// Replaces the end-of-generation ids (from generation_config.json). Benchmarks clear them
    /// to measure a fixed number of new tokens per row.
    pub fn set_eos_ids(&mut self, ids: Vec<u32>) {
        self.eos = ids;
    }

    pub fn preparer(&self) -> Arc<Preparer> {
        self.preparer.clone()
    }

    pub fn tokenizer(&self) -> &GemmaTokenizer {
        &self.preparer.tokenizer
    }

    pub fn image_processor(&self) -> &ImageProcessor {
        &self.preparer.images
    }

    /// See [`Preparer::prepare`].
    pub fn prepare(&self, request: &Request) -> Result<Prepared> {
        self.preparer.prepare(request)
    }

    /// Embeds a left-padded batch and merges image features at image-token positions.
    /// Returns (inputs_embeds, per_layer_inputs) as flat row-major buffers.
    pub(super) fn embed_batch(&mut self, ids: &[i64], batch: usize, len: usize, images: &[&PreparedImage]) -> Result<(Vec<f32>, Option<Tensor>)> {
        let out = self.embed.run(vec![("input_ids".into(), Tensor::i64(vec![batch, len], ids.to_vec()))])?;
        let mut embeds = None;
        let mut per_layer = None;
        for (name, t) in out {
            match name.as_str() {
                "inputs_embeds" => embeds = Some(t),
                "per_layer_inputs" => per_layer = Some(t),
                _ => {}
            }
        }
        let embeds = embeds.expect("checked at load");
        let hidden = *embeds.shape.last().unwrap_or(&0);
        let mut embeds = embeds
            .into_f32()
            .ok_or_else(|| contract(self.embed.as_ref(), "inputs_embeds is not floating point".into()))?;
        if !images.is_empty() {
            let features = self.encode_images(images)?;
            let image_id = self.preparer.tokenizer.special.image as i64;
            let slots = ids.iter().filter(|&&t| t == image_id).count();
            if features.len() != slots * hidden {
                return Err(Error::GraphContract {
                    graph: files::VISION_ENCODER.into(),
                    message: format!("returned {} features of size {hidden} for {slots} image tokens", features.len() / hidden.max(1)),
                });
            }
            let mut rows = features.chunks_exact(hidden);
            for (pos, _) in ids.iter().enumerate().filter(|(_, &t)| t == image_id) {
                embeds[pos * hidden..(pos + 1) * hidden].copy_from_slice(rows.next().expect("counted"));
            }
        }
        Ok((embeds, per_layer))
    }

    /// Runs the vision encoder over images in order; returns `[soft tokens, hidden]` flat.
    fn encode_images(&mut self, images: &[&PreparedImage]) -> Result<Vec<f32>> {
        let vision = self.vision.as_mut().ok_or_else(|| Error::Prompt("this model has no vision encoder".into()))?;
        let patches = self.preparer.images.config.max_patches();
        let dim = self.preparer.images.patch_dim();
        let mut pixels = Vec::with_capacity(images.len() * patches * dim);
        let mut positions = Vec::with_capacity(images.len() * patches * 2);
        for img in images {
            pixels.extend_from_slice(&img.pixel_values);
            positions.extend_from_slice(&img.position_ids);
        }
        let out = vision.run(vec![
            ("pixel_values".into(), Tensor::f32(vec![images.len(), patches, dim], pixels)),
            ("pixel_position_ids".into(), Tensor::i64(vec![images.len(), patches, 2], positions)),
        ])?;
        let (_, features) = out.into_iter().find(|(n, _)| n == "image_features").expect("checked at load");
        let expected: usize = images.iter().map(|i| i.num_soft_tokens).sum();
        if features.shape.first() != Some(&expected) {
            return Err(contract(
                vision.as_ref(),
                format!("returned image_features of shape {:?}, expected {expected} rows", features.shape),
            ));
        }
        features.into_f32().ok_or_else(|| contract(vision.as_ref(), "image_features is not floating point".into()))
    }

    /// Left-pads a batch and computes its prompt embeddings, mask and positions.
    pub(super) fn prefill_inputs(&mut self, rows: &[&[u32]], images: &[&PreparedImage]) -> Result<Batch> {
        let b = rows.len();
        let len = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        if len == 0 {
            return Err(Error::Prompt("empty prompt".into()));
        }
        let pad = self.preparer.tokenizer.special.pad as i64;
        let mut ids = vec![pad; b * len];
        let mut mask = vec![0i64; b * len];
        let mut positions = vec![1i64; b * len];
        for (r, row) in rows.iter().enumerate() {
            let offset = len - row.len();
            for (j, &t) in row.iter().enumerate() {
                ids[r * len + offset + j] = t as i64;
                mask[r * len + offset + j] = 1;
                positions[r * len + offset + j] = j as i64;
            }
        }
        let (embeds, per_layer) = self.embed_batch(&ids, b, len, images)?;
        Ok(Batch { batch: b, len, embeds, per_layer, mask, positions })
    }

    fn empty_cache(&self, batch: usize) -> KvCache {
        let mut values = Vec::with_capacity(self.cache.len() * 2);
        for l in &self.cache {
            for _ in 0..2 {
                values.push(Value::Host(Tensor::f32(vec![batch, l.heads, 0, l.head_dim], Vec::new())));
            }
        }
        KvCache { values, batch, len: 0 }
    }

    /// One decoder call over `seq` new positions. `mask` covers past + new positions.
    /// `keep` asks for the logits of the last `keep` positions only, where the graph can
    /// (`num_logits_to_keep`); the returned logits are `[batch, n, vocab]` for the last `n`
    /// positions (`n == seq` from a graph without that input). Returns them with the next
    /// cache, whose values are the graph's own outputs (no copy).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn decode(
        &mut self,
        embeds: Vec<f32>,
        per_layer: Option<Tensor>,
        mask: Vec<i64>,
        positions: Vec<i64>,
        batch: usize,
        seq: usize,
        past: KvCache,
        keep: usize,
    ) -> Result<(Value, KvCache)> {
        let hidden = embeds.len() / (batch * seq);
        let total = mask.len() / batch;
        let mut inputs: Vec<(String, Value)> = vec![
            ("inputs_embeds".to_string(), Tensor::f32(vec![batch, seq, hidden], embeds).into()),
            ("attention_mask".to_string(), Tensor::i64(vec![batch, total], mask).into()),
            ("position_ids".to_string(), Tensor::i64(vec![batch, seq], positions).into()),
        ];
        if let Some(p) = per_layer {
            inputs.push(("per_layer_inputs".to_string(), p.into()));
        }
        if self.logits_to_keep {
            inputs.push((LOGITS_TO_KEEP.to_string(), Tensor::i64(Vec::new(), vec![keep.clamp(1, seq) as i64]).into()));
        }
        let mut past_values = past.values.into_iter();
        for l in &self.cache {
            inputs.push((l.key_in.clone(), past_values.next().expect("two values per layer")));
            inputs.push((l.value_in.clone(), past_values.next().expect("two values per layer")));
        }
        let device_outputs: Vec<&str> = self.cache.iter().flat_map(|l| [l.key_out.as_str(), l.value_out.as_str()]).collect();
        let outputs = self.decoder.run_values(inputs, &device_outputs)?;
        let mut logits = None;
        let mut present = std::collections::HashMap::new();
        for (name, t) in outputs {
            if name == "logits" {
                logits = Some(t);
            } else {
                present.insert(name, t);
            }
        }
        let mut values = Vec::with_capacity(self.cache.len() * 2);
        for l in &self.cache {
            for out in [&l.key_out, &l.value_out] {
                let t = present
                    .remove(out.as_str())
                    .ok_or_else(|| contract(self.decoder.as_ref(), format!("did not return {out}")))?;
                values.push(t);
            }
        }
        let logits = logits.expect("checked at load");
        let shape = logits.shape();
        if shape.len() != 3 || shape[0] != batch || shape[1] == 0 || shape[1] > seq {
            return Err(contract(
                self.decoder.as_ref(),
                format!("returned logits of shape {shape:?} for {batch} rows of {seq} positions"),
            ));
        }
        Ok((logits, KvCache { values, batch, len: total }))
    }

    /// Runs a prompt batch through the decoder in chunks and returns the cache after the
    /// prompt. `keep_last` is how many of the last prompt positions need logits; `keep` gets
    /// each chunk's logits with the position of their first row (a chunk outside the last
    /// `keep_last` positions computes one position only, where the graph allows).
    pub(super) fn prefill(
        &mut self,
        batch: &Batch,
        keep_last: usize,
        mut keep: impl FnMut(usize, &Value) -> Result<()>,
    ) -> Result<KvCache> {
        let (b, len) = (batch.batch, batch.len);
        let hidden = batch.embeds.len() / (b * len);
        let mut past = self.empty_cache(b);
        let mut start = 0;
        let wanted_from = len.saturating_sub(keep_last.max(1));
        while start < len {
            let end = (start + self.prefill_chunk).min(len);
            let seq = end - start;
            let mut embeds = Vec::with_capacity(b * seq * hidden);
            let mut positions = Vec::with_capacity(b * seq);
            let mut mask = Vec::with_capacity(b * end);
            for r in 0..b {
                embeds.extend_from_slice(&batch.embeds[(r * len + start) * hidden..(r * len + end) * hidden]);
                positions.extend_from_slice(&batch.positions[r * len + start..r * len + end]);
                mask.extend_from_slice(&batch.mask[r * len..r * len + end]);
            }
            let per_layer = batch.per_layer.as_ref().map(|p| slice_seq(p, start, end));
            let wanted = end.saturating_sub(wanted_from.max(start)).max(1);
            let (logits, next) = self.decode(embeds, per_layer, mask, positions, b, seq, past, wanted)?;
            keep(end - logits.shape()[1], &logits)?;
            past = next;
            start = end;
        }
        Ok(past)
    }

    /// Generates for a batch of prepared prompts; each row stops on its own, at an
    /// end-of-generation token, at `max_new_tokens` or when the context is full (both
    /// `length`). Fails only when the batch cannot run at all; a prompt that leaves no room
    /// in the context (which [`Preparer::prepare`] refuses) is an error for the call, naming
    /// the row: use [`Gemma4::generate_rows`] to get such rows back one by one.
    pub fn generate(&mut self, prompts: &[Prepared], options: &GenerationOptions) -> Result<Vec<Generation>> {
        self.generate_rows(prompts, options)?.into_iter().collect()
    }

    /// [`Gemma4::generate`] with a result per row: a row whose prompt leaves no room in the
    /// context gets its error and the other rows run. The outer error is for the batch
    /// (a backend failure). All rows decode together; a finished row leaves the batch.
    pub fn generate_rows(&mut self, prompts: &[Prepared], options: &GenerationOptions) -> Result<Vec<Result<Generation>>> {
        let mut batch = ContinuousBatch::new(prompts.len().max(1));
        let requests = prompts.iter().cloned().enumerate().map(|(i, p)| (i, p, options.clone())).collect();
        let mut results: Vec<Option<Result<Generation>>> = prompts.iter().map(|_| None).collect();
        let mut take = |done: Vec<super::batching::Finished<usize>>| {
            for f in done {
                results[f.tag] = Some(f.result);
            }
        };
        take(batch.admit(self, requests).map_err(|e| e.error)?);
        while !batch.is_empty() {
            take(batch.step(self).map_err(|e| e.error)?);
        }
        Ok(results.into_iter().map(|r| r.expect("every row finishes")).collect())
    }

    /// A row of `len` tokens that must leave `room` positions free in the context.
    pub(super) fn check_fits(&self, row: usize, len: usize, room: usize) -> Result<()> {
        if len == 0 {
            return Err(Error::Prompt(format!("row {row}: empty prompt")));
        }
        if len.saturating_add(room) > self.context {
            return Err(Error::Prompt(format!("row {row}: {}", too_long(len, self.context, room, false).message())));
        }
        Ok(())
    }

    /// Samples a row's next token from its logits (greedy without sampling options).
    pub(super) fn next_token(logits: &[f32], options: &GenerationOptions, rng: Option<&mut ChaCha8Rng>) -> u32 {
        match (&options.sampling, rng) {
            (Some(s), Some(rng)) => sampling::sample(logits, s, rng),
            _ => sampling::argmax(logits),
        }
    }

    pub(super) fn new_rng(options: &GenerationOptions) -> Option<ChaCha8Rng> {
        options.sampling.map(|s| ChaCha8Rng::seed_from_u64(s.seed))
    }

    /// The finished generation of a row: its text without end-of-generation tokens.
    pub(super) fn finish(&self, ids: Vec<u32>, reason: FinishReason, prompt_tokens: usize) -> Result<Generation> {
        let text_ids: Vec<u32> = ids.iter().copied().filter(|t| !self.eos.contains(t)).collect();
        Ok(Generation {
            text: self.preparer.tokenizer.decode(&text_ids, true)?,
            token_ids: ids,
            finish_reason: reason,
            prompt_tokens,
        })
    }

    /// Log-probability of each candidate continuation after the prompt (no generation).
    /// All candidates run as one batch that shares the prompt.
    pub fn score(&mut self, prompt: &Prepared, candidates: &[String]) -> Result<Vec<CandidateScore>> {
        Ok(self.score_batch(std::slice::from_ref(prompt), candidates)?.remove(0))
    }

    /// [`Gemma4::score`] for several prompts in one batch: for each prompt, the
    /// log-probability of each candidate continuation. A prompt with no room in the context
    /// for the candidates is an error for the call, naming it; [`Gemma4::score_rows`] gives
    /// such prompts their own error and scores the rest.
    pub fn score_batch(&mut self, prompts: &[Prepared], candidates: &[String]) -> Result<Vec<Vec<CandidateScore>>> {
        self.score_rows(prompts, candidates)?.into_iter().collect()
    }

    /// [`Gemma4::score_batch`] with a result per prompt.
    pub fn score_rows(&mut self, prompts: &[Prepared], candidates: &[String]) -> Result<Vec<Result<Vec<CandidateScore>>>> {
        let cand_ids = candidates
            .iter()
            .map(|c| {
                let ids = self.preparer.tokenizer.encode(c)?;
                if ids.is_empty() {
                    return Err(Error::Prompt(format!("candidate {c:?} encodes to no tokens")));
                }
                if let Some(&bad) = ids.iter().find(|&&t| t as usize >= self.preparer.vocab) {
                    return Err(Error::Prompt(format!(
                        "candidate {c:?}: token id {bad} is outside the model's vocabulary of {}",
                        self.preparer.vocab
                    )));
                }
                Ok(ids)
            })
            .collect::<Result<Vec<_>>>()?;
        // Scoring a candidate of n tokens predicts n positions after the prompt.
        let room = cand_ids.iter().map(Vec::len).max().unwrap_or(1);
        let checks: Vec<Result<()>> =
            prompts.iter().enumerate().map(|(i, p)| self.check_fits(i, p.input_ids.len(), room)).collect();
        let runnable: Vec<&Prepared> = prompts.iter().zip(&checks).filter(|(_, c)| c.is_ok()).map(|(p, _)| p).collect();
        let mut done = self.score_fitting(&runnable, candidates, &cand_ids)?.into_iter();
        Ok(checks.into_iter().map(|c| c.map(|()| done.next().expect("one score row per runnable prompt"))).collect())
    }

    fn score_fitting(&mut self, prompts: &[&Prepared], candidates: &[String], cand_ids: &[Vec<u32>]) -> Result<Vec<Vec<CandidateScore>>> {
        if cand_ids.is_empty() || prompts.is_empty() {
            return Ok(vec![Vec::new(); prompts.len()]);
        }
        // Single-token candidates need only the prompt's last logits: one row per prompt.
        // Otherwise each candidate gets a row: prompt + all its tokens but the last.
        let single = cand_ids.iter().all(|c| c.len() == 1);
        let per_prompt = if single { 1 } else { cand_ids.len() };
        let mut rows: Vec<Vec<u32>> = Vec::with_capacity(prompts.len() * per_prompt);
        for p in prompts {
            if single {
                rows.push(p.input_ids.clone());
            } else {
                rows.extend(cand_ids.iter().map(|c| [p.input_ids.as_slice(), &c[..c.len() - 1]].concat()));
            }
        }
        let row_refs: Vec<&[u32]> = rows.iter().map(|r| r.as_slice()).collect();
        let images: Vec<&PreparedImage> =
            prompts.iter().flat_map(|p| (0..per_prompt).flat_map(move |_| p.images.iter())).collect();
        let batch = self.prefill_inputs(&row_refs, &images)?;
        let len = batch.len;
        // Rows end together (left padding): the positions scored are the last `longest` ones.
        let longest = cand_ids.iter().map(Vec::len).max().unwrap_or(1);
        let mut scores = vec![vec![0f64; cand_ids.len()]; prompts.len()];
        self.prefill(&batch, longest, |first, logits| {
            logits.read_f32(|shape, data| {
                let (seq, v) = (shape[1], shape[2]);
                for (pi, p) in prompts.iter().enumerate() {
                    let plen = p.input_ids.len();
                    for (ci, cand) in cand_ids.iter().enumerate() {
                        let r = pi * per_prompt + if single { 0 } else { ci };
                        let offset = len - rows[r].len();
                        for (j, &tok) in cand.iter().enumerate() {
                            if single && j > 0 {
                                break;
                            }
                            // Position predicting cand[j]: the last prompt token, then each candidate token.
                            let pos = offset + plen - 1 + j;
                            if pos >= first && pos < first + seq {
                                let row = &data[(r * seq + pos - first) * v..(r * seq + pos - first + 1) * v];
                                scores[pi][ci] +=
                                    if (tok as usize) < v { sampling::log_prob(row, tok as usize) } else { f64::NEG_INFINITY };
                            }
                        }
                    }
                }
            })
        })?;
        Ok(scores
            .into_iter()
            .map(|row| {
                candidates
                    .iter()
                    .zip(cand_ids)
                    .zip(row)
                    .map(|((c, ids), lp)| CandidateScore { candidate: c.clone(), token_ids: ids.clone(), logprob: lp })
                    .collect()
            })
            .collect())
    }

    /// Benchmarks: one prefill of `prompts` as one batch, as generation runs it (the last
    /// position's logits read back). `all_logits` runs it as for a graph without
    /// `num_logits_to_keep`: every position's logits are computed and returned.
    pub fn bench_prefill(&mut self, prompts: &[Prepared], all_logits: bool) -> Result<()> {
        let saved = self.logits_to_keep;
        self.logits_to_keep = saved && !all_logits;
        let refs: Vec<&Prepared> = prompts.iter().collect();
        let done = super::batching::prefill_last(self, &refs).map(|_| ());
        self.logits_to_keep = saved;
        done
    }

    /// Whether the decoder takes `num_logits_to_keep` (prefill computes last-position logits).
    pub fn has_logits_to_keep(&self) -> bool {
        self.logits_to_keep
    }

    /// The size of the vocabulary (the logits' last dimension).
    pub fn vocab_size(&self) -> usize {
        self.config.text_config.vocab_size
    }

    /// Positions a prefill runs at once (`ModelOptions::prefill_chunk`).
    pub fn prefill_chunk(&self) -> usize {
        self.prefill_chunk
    }

    /// First-step logits for one prompt (the last prompt position).
    pub fn first_step_logits(&mut self, prompt: &Prepared) -> Result<Vec<f32>> {
        self.check_fits(0, prompt.input_ids.len(), 0)?;
        let (_, last, _) = super::batching::prefill_last(self, &[prompt])?;
        Ok(last)
    }
}

/// Why a prompt of `len` tokens does not fit: it leaves fewer than `room` positions free in
/// a context of `context`; `at_least` when counting stopped early.
struct TooLong {
    len: usize,
    context: usize,
    room: usize,
    at_least: bool,
}

impl TooLong {
    fn message(&self) -> String {
        let TooLong { len, context, room, at_least } = *self;
        let count = if at_least { format!("at least {len}") } else { len.to_string() };
        let need = if room <= 1 { "room to generate".to_string() } else { format!("room for {room} more tokens") };
        format!(
            "{count} tokens (text and image soft tokens) leave no {need} in the model's context of {context} tokens \
             (max_position_embeddings in config.json); shorten the prompt or use smaller images"
        )
    }
}

fn too_long(len: usize, context: usize, room: usize, at_least: bool) -> TooLong {
    TooLong { len, context, room, at_least }
}

impl From<TooLong> for Error {
    fn from(t: TooLong) -> Error {
        Error::Prompt(t.message())
    }
}

/// Special token ids the runtime feeds to the embedding must be rows of it.
fn check_special_ids(dir: &Path, tokenizer: &GemmaTokenizer, generation: &GenerationConfig, vocab: usize) -> Result<()> {
    let s = &tokenizer.special;
    for (key, id) in [("pad_token", Some(s.pad)), ("image_token", Some(s.image)), ("boi_token", Some(s.boi)), ("eoi_token", Some(s.eoi)), ("bos_token", s.bos)] {
        if let Some(id) = id {
            if id as usize >= vocab {
                return Err(Error::InvalidModel {
                    path: dir.join("tokenizer.json"),
                    message: format!("{key} has id {id}, outside config.json text_config.vocab_size {vocab}"),
                });
            }
        }
    }
    if let Some(&id) = generation.eos_token_id.to_vec().iter().find(|&&id| id as usize >= vocab) {
        return Err(Error::InvalidModel {
            path: dir.join("generation_config.json"),
            message: format!("eos_token_id {id} is outside config.json text_config.vocab_size {vocab}"),
        });
    }
    Ok(())
}

impl Preparer {
    /// Renders the chat template; images appear as the template's image token.
    pub fn render_prompt(&self, system: Option<&str>, prompt: &str, num_images: usize) -> Result<String> {
        let mut messages = Vec::new();
        if let Some(s) = system {
            messages.push(Message::system(s));
        }
        messages.push(Message::user(prompt, num_images));
        self.chat.render(&messages, true)
    }

    /// Positions the decoder may use (prompt plus generated tokens).
    pub fn context_len(&self) -> usize {
        self.context
    }

    /// Renders, tokenizes and expands each image token to `boi + image * n + eoi`.
    /// A prompt whose tokens (text and image soft tokens) leave no room to generate in the
    /// model's context is refused here, naming the count and the limit, so that only its own
    /// row fails; images are prepared one by one and counting stops as soon as the prompt
    /// cannot fit.
    pub fn prepare(&self, request: &Request) -> Result<Prepared> {
        if !request.images.is_empty() && !self.has_vision {
            return Err(Error::Prompt("this model has no vision encoder, but images were given".into()));
        }
        let text = self.render_prompt(request.system.as_deref(), &request.prompt, request.images.len())?;
        self.prepare_rendered(&text, &request.images)
    }

    /// [`prepare`](Self::prepare) for a whole conversation (system, user and assistant turns,
    /// rendered by the chat template); `images` fill its image parts in order.
    pub fn prepare_chat(&self, messages: &[Message], images: &[ImageSource]) -> Result<Prepared> {
        if !images.is_empty() && !self.has_vision {
            return Err(Error::Prompt("this model has no vision encoder, but images were given".into()));
        }
        let parts = messages.iter().flat_map(|m| &m.content).filter(|c| matches!(c, crate::prepare::chat::Content::Image {})).count();
        if parts != images.len() {
            return Err(Error::Prompt(format!("the conversation has {parts} image parts but {} images were given", images.len())));
        }
        let text = self.chat.render(messages, true)?;
        self.prepare_rendered(&text, images)
    }

    /// Tokenizes a rendered prompt and expands its image tokens with the prepared images.
    fn prepare_rendered(&self, text: &str, request_images: &[ImageSource]) -> Result<Prepared> {
        let ids = self.tokenizer.encode(text)?;
        let special = &self.tokenizer.special;
        let found = ids.iter().filter(|&&t| t == special.image).count();
        if found != request_images.len() {
            return Err(Error::Prompt(format!(
                "the rendered prompt has {found} image tokens but {} images were given \
                 (does the prompt text contain an image token itself?)",
                request_images.len()
            )));
        }
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= self.vocab) {
            return Err(Error::Prompt(format!("token id {bad} is outside the model's vocabulary of {}", self.vocab)));
        }
        // Each image token becomes boi + soft tokens + eoi.
        let mut count = ids.len() + request_images.len();
        if count >= self.context {
            // Soft tokens are not counted yet: the prompt is at least this long.
            return Err(too_long(count, self.context, 1, !request_images.is_empty()).into());
        }
        let mut images = Vec::with_capacity(request_images.len());
        for src in request_images {
            let img = match src {
                ImageSource::Path(p) => self.images.prepare_path(p),
                ImageSource::Bytes { name, bytes } => self.images.prepare_bytes(bytes, name),
                ImageSource::Decoded { name, image } => self.images.prepare(image, name),
            }?;
            count += img.num_soft_tokens;
            images.push(img);
            if count >= self.context {
                return Err(too_long(count, self.context, 1, images.len() < request_images.len()).into());
            }
        }
        let mut input_ids = Vec::with_capacity(count);
        let mut next = images.iter();
        for t in ids {
            if t == special.image {
                let img = next.next().expect("counted above");
                input_ids.push(special.boi);
                input_ids.extend(std::iter::repeat_n(special.image, img.num_soft_tokens));
                input_ids.push(special.eoi);
            } else {
                input_ids.push(t);
            }
        }
        debug_assert_eq!(input_ids.len(), count);
        Ok(Prepared { input_ids, images })
    }
}

/// A left-padded prompt batch ready for the decoder.
pub(super) struct Batch {
    pub(super) batch: usize,
    pub(super) len: usize,
    embeds: Vec<f32>,
    per_layer: Option<Tensor>,
    pub(super) mask: Vec<i64>,
    positions: Vec<i64>,
}

/// Positions `start..end` of axis 1 of a `[batch, seq, ...]` tensor.
fn slice_seq(t: &Tensor, start: usize, end: usize) -> Tensor {
    let (b, seq) = (t.shape[0], t.shape[1]);
    if start == 0 && end == seq {
        return t.clone();
    }
    let inner: usize = t.shape[2..].iter().product();
    let data = t.as_f32().expect("per_layer_inputs is float");
    let mut out = Vec::with_capacity(b * (end - start) * inner);
    for r in 0..b {
        out.extend_from_slice(&data[(r * seq + start) * inner..(r * seq + end) * inner]);
    }
    let mut shape = t.shape.clone();
    shape[1] = end - start;
    Tensor::f32(shape, out)
}
