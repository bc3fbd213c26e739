//! Continuous (in-flight) batching: up to `slots` rows decode together, each on its own
//! schedule. A row that finishes leaves the batch and a waiting request is prefilled and
//! joins it, so a short answer never waits for a long one and the batch stays full.
//!
//! The KV cache of the running batch is a [`KvCache`]: the decoder's `present` outputs,
//! fed back as the next step's `past` inputs as they are (in device memory on CUDA). It is
//! copied only when rows join or leave, to regroup the rows with left-padding alignment:
//! every row's real positions sit at the right end, padding at the left is masked out, and
//! the graph derives key positions from the mask, so a row decodes exactly as it would alone.

use std::time::{Duration, Instant};

use rand_chacha::ChaCha8Rng;

use super::backend::Value;
use super::gemma4::Gemma4;
use super::tensor::Tensor;
use super::{FinishReason, Generation, GenerationOptions, Prepared};
use crate::error::{Error, Result};

/// The decoder's cache for a batch: a key and a value per cache layer, each
/// `[batch, heads, len, head_dim]`, in the decoder's layer order.
pub struct KvCache {
    pub(super) values: Vec<Value>,
    pub(super) batch: usize,
    pub(super) len: usize,
}

/// Rows taken from one cache when regrouping: (row index, real positions at its right end).
struct Part<'a> {
    cache: &'a KvCache,
    rows: Vec<(usize, usize)>,
}

impl KvCache {
    /// A new cache holding the given rows of several caches, right-aligned to the longest of
    /// them (left padding is trimmed to what that row needs). Copies through the host.
    fn regroup(parts: &[Part]) -> Result<KvCache> {
        let batch: usize = parts.iter().map(|p| p.rows.len()).sum();
        if batch == 0 {
            return Ok(KvCache { values: Vec::new(), batch: 0, len: 0 });
        }
        let len = parts.iter().flat_map(|p| p.rows.iter().map(|&(_, real)| real)).max().unwrap_or(0);
        let layers = parts.first().map_or(0, |p| p.cache.values.len());
        let mut values = Vec::with_capacity(layers);
        for layer in 0..layers {
            let mut out: Vec<f32> = Vec::new();
            let mut shape = Vec::new();
            let mut row_out = 0;
            for part in parts.iter().filter(|p| !p.rows.is_empty()) {
                let host = part.cache.values[layer].to_host()?;
                let data = host.as_f32().ok_or_else(|| Error::Ort("the KV cache is not floating point".into()))?;
                let &[_, heads, t, dim] = host.shape.as_slice() else {
                    return Err(Error::Ort(format!("a KV cache value has shape {:?}, expected 4 axes", host.shape)));
                };
                if shape.is_empty() {
                    shape = vec![batch, heads, len, dim];
                    out = vec![0f32; batch * heads * len * dim];
                }
                for &(row, real) in &part.rows {
                    for h in 0..heads {
                        let src = ((row * heads + h) * t + (t - real)) * dim;
                        let dst = ((row_out * heads + h) * len + (len - real)) * dim;
                        out[dst..dst + real * dim].copy_from_slice(&data[src..src + real * dim]);
                    }
                    row_out += 1;
                }
            }
            values.push(Value::Host(Tensor::f32(shape, out)));
        }
        Ok(KvCache { values, batch, len })
    }
}

/// A row that left the batch: its tag, its generation (or why it has none), and how long it
/// took from joining the batch.
pub struct Finished<T> {
    pub tag: T,
    pub result: Result<Generation>,
    pub latency: Duration,
}

/// A backend failure: the rows it took down (their tags), and the error.
pub struct BatchError<T> {
    pub error: Error,
    pub tags: Vec<T>,
}

struct Row<T> {
    tag: T,
    prompt_tokens: usize,
    options: GenerationOptions,
    rng: Option<ChaCha8Rng>,
    /// Generated ids; the last one is fed at the next step.
    out: Vec<u32>,
    /// Real positions in the cache (prompt plus tokens fed so far).
    cached: usize,
    joined: Instant,
    /// Finished rows stay in the cache until the next regroup.
    done: bool,
}

pub struct ContinuousBatch<T> {
    slots: usize,
    rows: Vec<Row<T>>,
    cache: Option<KvCache>,
}

impl<T: Clone> ContinuousBatch<T> {
    pub fn new(slots: usize) -> Self {
        ContinuousBatch { slots: slots.max(1), rows: Vec::new(), cache: None }
    }

    /// Rows decoding now.
    pub fn live(&self) -> usize {
        self.rows.iter().filter(|r| !r.done).count()
    }

    /// Requests that may join now.
    pub fn free(&self) -> usize {
        self.slots.saturating_sub(self.live())
    }

    pub fn is_empty(&self) -> bool {
        self.live() == 0
    }

    /// Prefills `requests` together (at most [`ContinuousBatch::free`] of them) and adds them to
    /// the running batch. Returns the requests that are already finished: a prompt that does
    /// not fit the context, `max_new_tokens` of 0, or a first token that ends it. A backend
    /// failure fails these requests only; the running batch goes on.
    pub fn admit(
        &mut self,
        model: &mut Gemma4,
        requests: Vec<(T, Prepared, GenerationOptions)>,
    ) -> std::result::Result<Vec<Finished<T>>, BatchError<T>> {
        debug_assert!(requests.len() <= self.free(), "more requests than free slots");
        let joined = Instant::now();
        let mut finished = Vec::new();
        let mut joiners = Vec::with_capacity(requests.len());
        for (i, (tag, prepared, options)) in requests.into_iter().enumerate() {
            let early = if let Err(e) = model.check_fits(i, prepared.input_ids.len(), 1) {
                Some(Err(e))
            } else if options.max_new_tokens == 0 {
                Some(model.finish(Vec::new(), FinishReason::Length, prepared.input_ids.len()))
            } else {
                None
            };
            match early {
                Some(result) => finished.push(Finished { tag, result, latency: joined.elapsed() }),
                None => joiners.push((tag, prepared, options)),
            }
        }
        if joiners.is_empty() {
            return Ok(finished);
        }
        let prompts: Vec<&Prepared> = joiners.iter().map(|(_, p, _)| p).collect();
        let prefilled = prefill_last(model, &prompts);
        let (cache, last_logits, vocab) = match prefilled {
            Ok(p) => p,
            Err(error) => return Err(BatchError { error, tags: joiners.into_iter().map(|(t, _, _)| t).collect() }),
        };
        let mut new_rows = Vec::with_capacity(joiners.len());
        for (r, (tag, prepared, options)) in joiners.into_iter().enumerate() {
            let mut rng = Gemma4::new_rng(&options);
            let token = Gemma4::next_token(&last_logits[r * vocab..(r + 1) * vocab], &options, rng.as_mut());
            let mut row = Row {
                tag,
                prompt_tokens: prepared.input_ids.len(),
                options,
                rng,
                out: vec![token],
                cached: prepared.input_ids.len(),
                joined,
                done: false,
            };
            if let Some(reason) = stop_reason(model, &row) {
                row.done = true;
                finished.push(finish_row(model, &row, reason));
            }
            new_rows.push(row);
        }
        if let Err(error) = self.merge(cache, new_rows) {
            return Err(self.fail(error));
        }
        Ok(finished)
    }

    /// Adds prefilled rows to the batch, regrouping the cache when rows are finished or
    /// already running (a batch that starts from empty keeps the prefill's cache as it is).
    fn merge(&mut self, cache: KvCache, new_rows: Vec<Row<T>>) -> Result<()> {
        let old_live = self.live();
        if old_live == 0 && new_rows.iter().all(|r| !r.done) {
            self.rows = new_rows;
            self.cache = Some(cache);
            return Ok(());
        }
        let old_rows = std::mem::take(&mut self.rows);
        let old_cache = self.cache.take();
        let mut parts = Vec::with_capacity(2);
        if let Some(c) = &old_cache {
            parts.push(Part { cache: c, rows: live_rows(&old_rows) });
        }
        parts.push(Part { cache: &cache, rows: live_rows(&new_rows) });
        let regrouped = KvCache::regroup(&parts)?;
        self.rows = old_rows.into_iter().chain(new_rows).filter(|r| !r.done).collect();
        self.cache = (regrouped.batch > 0).then_some(regrouped);
        Ok(())
    }

    /// Drops finished rows from the cache.
    fn compact(&mut self) -> Result<()> {
        if self.rows.iter().all(|r| !r.done) {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.rows);
        let cache = self.cache.take();
        let live = live_rows(&rows);
        if let (Some(c), false) = (&cache, live.is_empty()) {
            self.cache = Some(KvCache::regroup(&[Part { cache: c, rows: live }])?);
        }
        self.rows = rows.into_iter().filter(|r| !r.done).collect();
        Ok(())
    }

    /// Every live row fails with `error`; the batch is empty afterwards.
    fn fail(&mut self, error: Error) -> BatchError<T> {
        self.cache = None;
        let tags = std::mem::take(&mut self.rows).into_iter().filter(|r| !r.done).map(|r| r.tag).collect();
        BatchError { error, tags }
    }

    /// One decoder step for every live row; returns the rows that finished. A backend
    /// failure fails every live row (their tags are in the error).
    pub fn step(&mut self, model: &mut Gemma4) -> std::result::Result<Vec<Finished<T>>, BatchError<T>> {
        if let Err(e) = self.compact() {
            return Err(self.fail(e));
        }
        let Some(cache) = self.cache.take() else { return Ok(Vec::new()) };
        match self.decode_step(model, cache) {
            Ok(done) => Ok(done),
            Err(e) => Err(self.fail(e)),
        }
    }

    fn decode_step(&mut self, model: &mut Gemma4, cache: KvCache) -> Result<Vec<Finished<T>>> {
        let b = self.rows.len();
        let total = cache.len;
        let ids: Vec<i64> = self.rows.iter().map(|r| *r.out.last().expect("a live row has a token to feed") as i64).collect();
        let (embeds, per_layer) = model.embed_batch(&ids, b, 1, &[])?;
        let mut mask = Vec::with_capacity(b * (total + 1));
        for r in &self.rows {
            mask.extend(std::iter::repeat_n(0i64, total - r.cached));
            mask.extend(std::iter::repeat_n(1i64, r.cached + 1));
        }
        let positions: Vec<i64> = self.rows.iter().map(|r| r.cached as i64).collect();
        let (logits, next) = model.decode(embeds, per_layer, mask, positions, b, 1, cache, 1)?;
        self.cache = Some(next);
        let vocab = model.config.text_config.vocab_size;
        let tokens = logits.read_f32(|shape, data| {
            let (seq, v) = (shape[1], shape[2]);
            let width = v.min(vocab);
            self.rows
                .iter_mut()
                .enumerate()
                .map(|(r, row)| {
                    let last = &data[(r * seq + seq - 1) * v..(r * seq + seq - 1) * v + width];
                    Gemma4::next_token(last, &row.options, row.rng.as_mut())
                })
                .collect::<Vec<_>>()
        })?;
        let mut finished = Vec::new();
        for (row, token) in self.rows.iter_mut().zip(tokens) {
            row.cached += 1;
            row.out.push(token);
            if let Some(reason) = stop_reason(model, row) {
                row.done = true;
                finished.push(finish_row(model, row, reason));
            }
        }
        Ok(finished)
    }
}

/// Prefills prompts as one left-padded batch; returns their cache and the logits of each
/// row's last prompt position (`[rows, vocab]`) with the vocabulary size.
pub(super) fn prefill_last(model: &mut Gemma4, prompts: &[&Prepared]) -> Result<(KvCache, Vec<f32>, usize)> {
    let rows: Vec<&[u32]> = prompts.iter().map(|p| p.input_ids.as_slice()).collect();
    let images: Vec<_> = prompts.iter().flat_map(|p| p.images.iter()).collect();
    let batch = model.prefill_inputs(&rows, &images)?;
    let (b, len) = (batch.batch, batch.len);
    let vocab = model.config.text_config.vocab_size;
    let mut last = vec![0f32; b * vocab];
    let cache = model.prefill(&batch, 1, |first, logits| {
        logits.read_f32(|shape, data| {
            let (seq, v) = (shape[1], shape[2]);
            if first + seq == len {
                let width = v.min(vocab);
                for r in 0..b {
                    let row = &data[(r * seq + seq - 1) * v..(r * seq + seq - 1) * v + width];
                    last[r * vocab..r * vocab + width].copy_from_slice(row);
                }
            }
        })
    })?;
    Ok((cache, last, vocab))
}

fn live_rows<T>(rows: &[Row<T>]) -> Vec<(usize, usize)> {
    rows.iter().enumerate().filter(|(_, r)| !r.done).map(|(i, r)| (i, r.cached)).collect()
}

/// Why a row stops after its newest token: an end-of-generation id, `max_new_tokens`, or no
/// position left in the context to feed the token at.
fn stop_reason<T>(model: &Gemma4, row: &Row<T>) -> Option<FinishReason> {
    let token = *row.out.last()?;
    if model.eos_ids().contains(&token) {
        Some(FinishReason::Stop)
    } else if row.out.len() >= row.options.max_new_tokens || row.cached + 1 >= model.context_len() {
        Some(FinishReason::Length)
    } else {
        None
    }
}

fn finish_row<T: Clone>(model: &Gemma4, row: &Row<T>, reason: FinishReason) -> Finished<T> {
    Finished {
        tag: row.tag.clone(),
        result: model.finish(row.out.clone(), reason, row.prompt_tokens),
        latency: row.joined.elapsed(),
    }
}

/// A request waiting for a slot: its tag, its prompt and its options.
pub type Request<T> = (T, Prepared, GenerationOptions);

/// Requests waiting to join, at most `capacity` of them. Joiners are the oldest request and
/// the ones nearest to it in prompt length, so that a prefill pads little and no request
/// waits behind an endless run of shorter ones.
pub struct Waiting<T> {
    items: std::collections::VecDeque<Request<T>>,
    capacity: usize,
}

impl<T> Waiting<T> {
    pub fn new(capacity: usize) -> Self {
        Waiting { items: Default::default(), capacity: capacity.max(1) }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Room left in the window.
    pub fn room(&self) -> usize {
        self.capacity.saturating_sub(self.items.len())
    }

    pub fn push(&mut self, request: Request<T>) {
        self.items.push_back(request);
    }

    /// Takes up to `k` requests: the oldest and the `k - 1` nearest to it in prompt length
    /// (ties go to the older one), in their order of arrival.
    pub fn take(&mut self, k: usize) -> Vec<Request<T>> {
        let Some(oldest) = self.items.front().filter(|_| k > 0) else { return Vec::new() };
        let anchor = oldest.1.input_ids.len();
        let mut order: Vec<usize> = (1..self.items.len()).collect();
        order.sort_by_key(|&i| (self.items[i].1.input_ids.len().abs_diff(anchor), i));
        let mut chosen: Vec<usize> = std::iter::once(0).chain(order.into_iter().take(k.saturating_sub(1))).collect();
        chosen.sort_unstable();
        let mut taken = Vec::with_capacity(chosen.len());
        for (n, i) in chosen.into_iter().enumerate() {
            taken.push(self.items.remove(i - n).expect("index in range"));
        }
        taken
    }
}

/// What a [`drive`] source gives: more requests, or none ever again.
pub enum Fill<T> {
    More(Vec<Request<T>>),
    End,
}

/// The caller's side of [`drive`]: where requests come from and where finished rows go.
pub trait Driver<T> {
    /// Up to `room` more requests. May block only when `block` is set (nothing is running
    /// or waiting).
    fn fill(&mut self, model: &mut Gemma4, room: usize, block: bool) -> Fill<T>;
    /// Rows that finished; false stops the run.
    fn done(&mut self, model: &mut Gemma4, finished: Vec<Finished<T>>) -> bool;
    /// Rows a backend failure took down; false stops the run.
    fn failed(&mut self, model: &mut Gemma4, error: BatchError<T>) -> bool;
}

/// Runs requests through a continuous batch of `slots` rows, drawing them into a window of
/// `window` waiting requests, until the driver has no more and every row has finished.
pub fn drive<T: Clone>(model: &mut Gemma4, slots: usize, window: usize, driver: &mut impl Driver<T>) {
    let mut batch = ContinuousBatch::new(slots);
    let mut waiting = Waiting::new(window.max(slots));
    let mut open = true;
    loop {
        if open && waiting.room() > 0 {
            let block = batch.is_empty() && waiting.is_empty();
            match driver.fill(model, waiting.room(), block) {
                Fill::More(requests) => requests.into_iter().for_each(|r| waiting.push(r)),
                Fill::End => open = false,
            }
        }
        // Rows join a running batch in groups of at least half its slots (or whatever is left
        // to run): each join is a prefill call and a regroup of the cache, which cost as much
        // as a decode step on a small model.
        let group = (slots / 2).max(1).min(waiting.len() + usize::from(open) * slots);
        if batch.free() > 0 && !waiting.is_empty() && (batch.is_empty() || batch.free() >= group) {
            let joiners = waiting.take(batch.free());
            let keep_going = match batch.admit(model, joiners) {
                Ok(f) => f.is_empty() || driver.done(model, f),
                Err(e) => driver.failed(model, e),
            };
            if !keep_going {
                return;
            }
        }
        if batch.is_empty() {
            if !open && waiting.is_empty() {
                return;
            }
            continue;
        }
        let keep_going = match batch.step(model) {
            Ok(f) => f.is_empty() || driver.done(model, f),
            Err(e) => driver.failed(model, e),
        };
        if !keep_going {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(tag: usize, len: usize) -> Request<usize> {
        (tag, Prepared { input_ids: vec![7; len], images: Vec::new() }, GenerationOptions { max_new_tokens: 1, sampling: None })
    }

    fn tags(v: &[Request<usize>]) -> Vec<usize> {
        v.iter().map(|r| r.0).collect()
    }

    #[test]
    fn joiners_are_the_oldest_and_its_nearest_in_length_in_arrival_order() {
        let mut w = Waiting::new(8);
        for (tag, len) in [(0, 50), (1, 10), (2, 48), (3, 90), (4, 55), (5, 11)] {
            w.push(request(tag, len));
        }
        assert_eq!(w.room(), 2);
        assert_eq!(tags(&w.take(3)), [0, 2, 4]);
        // The oldest left is 1 (10 tokens): its neighbour 5 (11) goes with it, not 3 (90).
        assert_eq!(tags(&w.take(2)), [1, 5]);
        assert_eq!(tags(&w.take(0)), Vec::<usize>::new());
        assert_eq!(tags(&w.take(5)), [3]);
        assert!(w.is_empty() && w.take(1).is_empty());
    }

    #[test]
    fn a_long_request_is_not_starved_by_shorter_ones() {
        let mut w = Waiting::new(4);
        w.push(request(0, 500));
        let mut taken_at = None;
        for round in 0..10 {
            while w.room() > 0 {
                w.push(request(100 + round, 5));
            }
            if tags(&w.take(1)).contains(&0) {
                taken_at = Some(round);
                break;
            }
        }
        assert_eq!(taken_at, Some(0), "the oldest request joins first");
    }

    #[test]
    fn ties_in_length_go_to_the_older_request() {
        let mut w = Waiting::new(8);
        for (tag, len) in [(0, 20), (1, 25), (2, 15), (3, 25)] {
            w.push(request(tag, len));
        }
        assert_eq!(tags(&w.take(2)), [0, 1]);
    }
}
