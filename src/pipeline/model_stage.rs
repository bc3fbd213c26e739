//! The model stage: the input policy filter, generation in a continuous batch, and the output
//! filters, on the model's own thread.

use std::collections::HashMap;

use tokio::sync::mpsc;

use super::policy_cache::{PolicyCache, Scores};
use super::screening::{set_filter_columns, Filters};
use super::tasks::{check_extract, sampling_of, PreparedItem, Provenance, WorkItem};
use super::Finished;
use crate::filters::{Decision, FilterSet, Outcome, PolicyItem, PolicyScores, Screening, Stage};
use crate::error::Result;
use crate::model::{Gemma4, Generation, GenerationOptions, ImageSource};
use crate::source::RowImage;
use crate::spec::{TaskKind, TaskSpec};

pub(crate) fn image_source(img: &RowImage) -> ImageSource {
    match img {
        RowImage::Encoded { name, bytes } => ImageSource::Bytes { name: name.clone(), bytes: bytes.clone() },
        RowImage::Rendered { name, image } => {
            ImageSource::Decoded { name: name.clone(), image: image::DynamicImage::ImageRgb8(image.clone()) }
        }
    }
}

/// One thing the policy filter looks at for a row.
struct PolicyPart {
    what: &'static str,
    item: PolicyItem,
    /// Parts with a key are scored once per run (a row's image, shared by its tasks).
    key: Option<String>,
}

/// Where a part's scores come from: the cache (copied out at lookup) or this call's batch.
enum ScoreSource {
    Cached(Scores),
    Batch(usize),
}

pub(crate) struct ModelStage {
    pub tasks: Vec<TaskSpec>,
    pub provenance: Provenance,
    pub filters: Filters,
    pub row_tx: mpsc::Sender<Finished>,
    /// A separate model for the policy filter, when the filter set names one.
    pub policy_model: Option<Gemma4>,
    pub policy_cache: PolicyCache,
}

impl ModelStage {
    fn send(&self, f: Finished) -> bool {
        self.row_tx.blocking_send(f).is_ok()
    }

    /// A finished row for an item that did not reach (or came back from) the model.
    fn finish(&self, item: &WorkItem, task: &TaskSpec, error: Option<String>) -> Finished {
        let mut r = self.provenance.row(item, task);
        r.error = error;
        if self.filters.any() {
            set_filter_columns(&mut r, &item.decisions);
        }
        Finished::new(r, crate::filters::outcome(&item.decisions))
    }

    /// Scores items with a set's policy filter; one result per row: its decisions (categories
    /// at or above threshold) and every part's scores, or an error.
    fn policy_decisions(
        &mut self,
        model: &mut Gemma4,
        set: &FilterSet,
        rows: Vec<Vec<PolicyPart>>,
        stage: Stage,
    ) -> Vec<std::result::Result<(Vec<Decision>, Vec<PolicyScores>), String>> {
        let Some(policy) = set.policy() else { return rows.iter().map(|_| Ok((Vec::new(), Vec::new()))).collect() };
        // What must be scored now: uncached parts, each cache key once.
        let mut todo: Vec<PolicyItem> = Vec::new();
        let mut keyed: HashMap<String, usize> = HashMap::new();
        let mut sources: Vec<Vec<ScoreSource>> = Vec::with_capacity(rows.len());
        for parts in &rows {
            let mut s = Vec::with_capacity(parts.len());
            for part in parts {
                let cached = part.key.as_ref().and_then(|k| self.policy_cache.get(k));
                s.push(match (cached, &part.key) {
                    (Some(scores), _) => ScoreSource::Cached(scores),
                    (None, Some(k)) => ScoreSource::Batch(*keyed.entry(k.clone()).or_insert_with(|| {
                        todo.push(part.item.clone());
                        todo.len() - 1
                    })),
                    (None, None) => {
                        todo.push(part.item.clone());
                        ScoreSource::Batch(todo.len() - 1)
                    }
                });
            }
            sources.push(s);
        }
        let pm = self.policy_model.as_mut().unwrap_or(model);
        let scores = match policy.score(pm, &todo) {
            Ok(s) if s.len() == todo.len() => s,
            Ok(s) => {
                let e = format!("policy filter returned {} scores for {} items", s.len(), todo.len());
                return rows.iter().map(|_| Err(e.clone())).collect();
            }
            Err(e) => return rows.iter().map(|_| Err(format!("policy filter: {e}"))).collect(),
        };
        for (k, &i) in &keyed {
            self.policy_cache.insert(k.clone(), scores[i].clone());
        }
        rows.iter()
            .zip(sources)
            .map(|(parts, s)| {
                let mut decisions = Vec::new();
                let mut all_scores = Vec::new();
                for (part, source) in parts.iter().zip(s) {
                    let score = match source {
                        ScoreSource::Cached(sc) => sc,
                        ScoreSource::Batch(i) => scores[i].clone(),
                    };
                    match score {
                        Ok(sc) => {
                            set.add_policy_decisions(&mut decisions, part.what, &sc, Some(stage));
                            all_scores.extend(set.policy_scores(part.what, &sc, stage));
                        }
                        Err(e) => return Err(format!("policy filter ({}): {e}", part.what)),
                    }
                }
                Ok((decisions, all_scores))
            })
            .collect()
    }

    /// Input policy filter over newly prepared items (the prompt text and the row's image):
    /// items it stops are finished here; returns the rest, or None when the writer has gone.
    pub fn screen_inputs(&mut self, model: &mut Gemma4, batch: Vec<PreparedItem>) -> Option<Vec<PreparedItem>> {
        let Some(set) = self.filters.input.clone().filter(|s| s.policy().is_some()) else { return Some(batch) };
        if batch.is_empty() {
            return Some(batch);
        }
        let items = batch
            .iter()
            .map(|p| {
                let mut parts = vec![PolicyPart { what: "text", item: PolicyItem::Text(p.item.prompt.clone()), key: None }];
                if let Some(img) = &p.item.image {
                    let key = Some(format!("image:{}", p.item.content_hash));
                    parts.push(PolicyPart { what: "image", item: PolicyItem::Image(image_source(img)), key });
                }
                // A conversation's images, each scored once per row.
                for (i, img) in p.item.chat.iter().flat_map(|c| c.images.iter()).enumerate() {
                    let key = Some(format!("image:{}:{i}", p.item.content_hash));
                    parts.push(PolicyPart { what: "image", item: PolicyItem::Image(image_source(img)), key });
                }
                parts
            })
            .collect();
        let results = self.policy_decisions(model, &set, items, Stage::Input);
        let mut kept = Vec::with_capacity(batch.len());
        for (mut p, result) in batch.into_iter().zip(results) {
            let task = &self.tasks[p.item.task];
            let stopped = match result {
                Ok((d, scores)) => {
                    p.item.decisions.extend(d);
                    p.item.policy_scores.extend(scores);
                    matches!(crate::filters::outcome(&p.item.decisions), Outcome::Drop | Outcome::Quarantine)
                        .then(|| self.finish(&p.item, task, None))
                }
                Err(e) => Some(self.finish(&p.item, task, Some(e))),
            };
            match stopped {
                Some(f) => {
                    if !self.send(f) {
                        return None;
                    }
                }
                None => kept.push(p),
            }
        }
        Some(kept)
    }

    /// Generation options of an item (its task's, or its request's own).
    pub fn options(&self, item: &WorkItem) -> GenerationOptions {
        GenerationOptions { max_new_tokens: item.generation.max_new_tokens, sampling: sampling_of(&item.generation) }
    }

    /// A row the model could not run (its own error, or its batch's backend failure).
    pub fn fail(&self, item: &WorkItem, error: &str) -> bool {
        self.send(self.finish(item, &self.tasks[item.task], Some(format!("model: {error}"))))
    }

    /// Output filters over generated rows, then the rows go to the writer: rules first (they
    /// may redact), then the policy filter on what is left. False when the writer has gone.
    pub fn finish_generated(&mut self, model: &mut Gemma4, rows: Vec<(WorkItem, Result<Generation>, f64)>) -> bool {
        let mut generated = Vec::with_capacity(rows.len());
        for (item, result, latency) in rows {
            match result {
                Ok(g) => generated.push((item, g, latency)),
                Err(e) => {
                    if !self.fail(&item, &e.to_string()) {
                        return false;
                    }
                }
            }
        }
        let mut outputs: Vec<(String, Vec<Decision>)> = generated.iter().map(|(_, g, _)| (g.text.clone(), Vec::new())).collect();
        let mut output_scores: Vec<Vec<PolicyScores>> = vec![Vec::new(); generated.len()];
        let mut output_errors: Vec<Option<String>> = vec![None; generated.len()];
        if let Some(set) = self.filters.output.clone() {
            for (text, decisions) in outputs.iter_mut() {
                let Screening { text: t, decisions: d } = set.screen(text, Some(Stage::Output));
                *text = t;
                *decisions = d;
            }
            if set.policy().is_some() && !outputs.is_empty() {
                let items =
                    outputs.iter().map(|(t, _)| vec![PolicyPart { what: "text", item: PolicyItem::Text(t.clone()), key: None }]).collect();
                for (i, result) in self.policy_decisions(model, &set, items, Stage::Output).into_iter().enumerate() {
                    match result {
                        Ok((d, scores)) => {
                            outputs[i].1.extend(d);
                            output_scores[i] = scores;
                        }
                        Err(e) => output_errors[i] = Some(e),
                    }
                }
            }
        }

        let finished = generated.into_iter().zip(outputs.into_iter().zip(output_errors)).zip(output_scores);
        for (((item, g, latency), ((text, out_decisions), out_error)), out_scores) in finished {
            let task = &self.tasks[item.task];
            let mut r = self.provenance.row(&item, task);
            if !out_scores.is_empty() {
                let all: Vec<PolicyScores> = item.policy_scores.iter().cloned().chain(out_scores).collect();
                r.policy_scores = super::tasks::policy_scores_json(&all);
            }
            let mut decisions = item.decisions;
            decisions.extend(out_decisions);
            let outcome = crate::filters::outcome(&decisions);
            r.finish_reason = Some(crate::util::enum_name(&g.finish_reason));
            r.prompt_tokens = Some(g.prompt_tokens as u32);
            r.output_tokens = Some(g.token_ids.len() as u32);
            r.latency_ms = Some(latency);
            r.error = out_error;
            if outcome != Outcome::Drop {
                if task.kind == TaskKind::Extract {
                    let (json, valid) = check_extract(&text, &item.fields);
                    r.extracted = json;
                    r.extract_valid = Some(valid);
                }
                r.output = Some(text);
            }
            if self.filters.any() {
                set_filter_columns(&mut r, &decisions);
            }
            if !self.send(Finished::new(r, outcome)) {
                return false;
            }
        }
        true
    }
}
