//! Stage 1: read rows, render each task's prompts, and decide for each (row, task, prompt)
//! key whether this run works on it: not another shard's, not done, not already issued by
//! this run, and (for a key that failed before) allowed another attempt.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::progress::Counters;
use super::signals::StopFlag;
use super::tasks::{extract_fields, item_key, kept_columns_json, prompt_hash, GenParams, Provenance, Templates, WorkItem};
use super::{Finished, RunOptions};
use crate::error::Result;
use crate::filters::Outcome;
use crate::sink::SinkState;
use crate::source::SourceRow;
use crate::spec::{PipelineSpec, TaskSpec};

pub(crate) struct Reader {
    pub spec: PipelineSpec,
    pub templates: Templates,
    pub state: Arc<SinkState>,
    pub counters: Arc<Counters>,
    pub stop: StopFlag,
    pub provenance: Provenance,
    pub options: RunOptions,
    pub item_tx: mpsc::Sender<WorkItem>,
    pub row_tx: mpsc::Sender<Finished>,
    /// Failed records found superseded by a done row (left by a crash); the writer deletes them.
    pub stale: Arc<Mutex<Vec<String>>>,
    /// (input id, key) of every item of this run, duplicates included, when the caller asked.
    pub keys: Option<ItemKeys>,
}

/// (input id, key) pairs collected by the reader.
pub(crate) type ItemKeys = Arc<Mutex<Vec<(String, String)>>>;

impl Reader {
    /// Runs to the end of the source, a stop signal or the row limit. Returns whether a signal
    /// stopped it before the end (rows left unread).
    pub fn run(self) -> Result<bool> {
        let Reader { spec, templates, state, counters, stop, provenance, options, item_tx, row_tx, stale, keys } = self;
        let filter_sets = provenance.filter_sets.clone().unwrap_or_default();
        // Keys issued by this run: identical rows and repeated questions are worked on once.
        // 128 bits of each (hex) key keep the set small on large corpora.
        let mut issued: HashSet<u128> = HashSet::new();
        let mut rows_seen = 0usize;
        let kept = spec.kept_columns();
        for batch in crate::source::open(&spec)? {
            for row in batch? {
                if stop.stopped() {
                    return Ok(true);
                }
                // The writer has gone (its error ends the run): stop reading.
                if row_tx.is_closed() {
                    return Ok(false);
                }
                if options.limit.is_some_and(|l| rows_seen >= l) {
                    return Ok(false);
                }
                rows_seen += 1;
                Counters::add(&counters.rows);
                let unread_hash = crate::source::content_hash(&row.columns, None);
                let input_columns = kept_columns_json(&kept, &row);
                for (ti, task) in spec.tasks.iter().enumerate() {
                    let generation = GenParams::for_row(task, &row);
                    for (prompt, error) in row_prompts(&templates, task, &row) {
                        let prompt_hash = prompt_hash(task, &generation, &prompt);
                        let key = item_key(&row.content_hash, &task.name, &prompt_hash, &provenance.model_hash, &filter_sets);
                        if options.shard.is_some_and(|s| !s.owns(&key)) {
                            continue;
                        }
                        Counters::add(&counters.items);
                        if let Some(keys) = &keys {
                            keys.lock().unwrap_or_else(|e| e.into_inner()).push((row.input_id.clone(), key.clone()));
                        }
                        if !issued.insert(key_bits(&key)) {
                            Counters::add(&counters.duplicates);
                            continue;
                        }
                        // The key this (row, task) had when its content could not be read (a
                        // missing or broken image): a failed record under it is replaced.
                        // With an id column, only a record of the same id is this row's.
                        let unread_key = (row.error.is_none() && row.content_hash != unread_hash)
                            .then(|| item_key(&unread_hash, &task.name, &prompt_hash, &provenance.model_hash, &filter_sets))
                            .filter(|k| {
                                state.failed.get(k).is_some_and(|f| spec.source.id_column.is_none() || f.input_id == row.input_id)
                            });
                        if state.done.contains(&key) {
                            Counters::add(&counters.skipped);
                            if let Some(k) = unread_key {
                                // Done, but a crash kept the old failed record: remove it now.
                                stale.lock().map_err(|_| crate::Error::Join { stage: "the reader".into(), message: "lock poisoned".into() })?.push(k);
                            }
                            continue;
                        }
                        let (attempts, earlier_errors, supersedes) = match (state.failed.get(&key), unread_key) {
                            (None, None) => (1, Vec::new(), None),
                            // New content for a row that failed to read: new work (whatever the
                            // retry settings), carrying the record's history, replacing it.
                            (None, Some(k)) => {
                                let f = &state.failed[&k];
                                Counters::add(&counters.retried);
                                (f.attempts.saturating_add(1), f.errors.clone(), Some(k))
                            }
                            (Some(f), unread) => {
                                if let Some(k) = unread {
                                    // Both records exist (a crash between commit and cleanup).
                                    stale.lock().map_err(|_| crate::Error::Join { stage: "the reader".into(), message: "lock poisoned".into() })?.push(k);
                                }
                                if !(options.retry_failed && f.attempts < options.max_attempts) {
                                    Counters::add(&counters.failed_kept);
                                    continue;
                                }
                                Counters::add(&counters.retried);
                                (f.attempts.saturating_add(1), f.errors.clone(), None)
                            }
                        };
                        let item = WorkItem {
                            input_id: row.input_id.clone(),
                            content_hash: row.content_hash.clone(),
                            task: ti,
                            prompt,
                            system: task.system.clone(),
                            image: if task.use_image { row.image.clone() } else { None },
                            key,
                            prompt_hash,
                            error,
                            decisions: Vec::new(),
                            attempts,
                            earlier_errors,
                            supersedes,
                            generation,
                            chat: if task.kind == crate::spec::TaskKind::Chat { row.request.clone() } else { None },
                            input_columns: input_columns.clone(),
                            fields: if task.kind == crate::spec::TaskKind::Extract { extract_fields(task, &row).unwrap_or_default() } else { Vec::new() },
                            policy_scores: Vec::new(),
                        };
                        let sent = if item.error.is_some() {
                            let mut r = provenance.row(&item, task);
                            r.error = item.error.clone();
                            row_tx.blocking_send(Finished::new(r, Outcome::Pass)).is_ok()
                        } else {
                            item_tx.blocking_send(item).is_ok()
                        };
                        if !sent {
                            // A later stage has gone; its error is what the run reports.
                            return Ok(false);
                        }
                    }
                }
            }
        }
        Ok(false)
    }
}

/// The prompts of one (row, task), each with the error that fails it. A row that could not
/// be read still gets the prompts (and so the keys) it will have once it reads: a retry then
/// replaces its failed record.
pub(super) fn row_prompts(templates: &Templates, task: &TaskSpec, row: &SourceRow) -> Vec<(String, Option<String>)> {
    match (templates.prompts(task, row), &row.error) {
        (Ok(p), error) => p.into_iter().map(|p| (p, error.clone())).collect(),
        (Err(e), None) => vec![(String::new(), Some(e))],
        (Err(_), Some(e)) => vec![(String::new(), Some(e.clone()))],
    }
}

/// The first 128 bits of a hex key (the whole key if it is not hex, hashed).
fn key_bits(key: &str) -> u128 {
    key.get(..32).and_then(|h| u128::from_str_radix(h, 16).ok()).unwrap_or_else(|| {
        let full = crate::util::hash_text(&[key]);
        u128::from_str_radix(&full[..32], 16).unwrap_or_default()
    })
}
