//! Orchestration: source -> prepare -> model -> (filters) -> sink, as stages joined by
//! bounded channels, so memory stays bounded whatever the corpus size. Reading and
//! preparation run on blocking threads, the model on its own thread, commits on the async
//! runtime.
//!
//! Each step has its file: `reader` (rows to work items: skip done, dedupe, retry failed),
//! `tasks` (prompts and keys), `preparer` (input filters, images, tokens), `model_stage`
//! (policy filter, generation, output filters), `policy_cache`, `writer` (commits through
//! the sink), `shard`, `signals`, `progress` and `summary`.

mod model_stage;
mod plan;
mod policy_cache;
mod preparer;
mod progress;
mod reader;
mod screening;
mod shard;
pub mod signals;
mod summary;
mod tasks;
mod writer;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::filters::Outcome;
use crate::model::{BackendOptions, Gemma4, ModelOptions};
use crate::sink::lease::Lease;
use crate::sink::pending::PendingDir;
use crate::sink::{ResultRow, ResultStore, RunRecord, RunStore, SinkLayout, SinkState};
use crate::spec::PipelineSpec;
use crate::util::{hash_text, now_ms};

use model_stage::ModelStage;
use preparer::PrepareStage;
use progress::{Counters, Progress};
use reader::Reader;
use screening::Filters;
pub use plan::{plan, Plan, PlannedItem};
pub use shard::Shard;
pub use tasks::{check_extract, fields_value};
use tasks::{PreparedItem, Provenance, Templates, WorkItem};
use writer::{Destination, LogEvery, Writer};

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub shard: Option<Shard>,
    /// Stop after this many input rows (for trying a spec).
    pub limit: Option<usize>,
    pub quiet: bool,
    /// Try rows that failed in earlier runs again (up to `max_attempts` in all).
    pub retry_failed: bool,
    pub max_attempts: u32,
    /// Wait for another run's lease on this sink instead of stopping.
    pub wait_for_lease: bool,
    /// Run even when another run holds the lease (safe, but the work is done twice).
    pub ignore_lease: bool,
    /// Return (input id, key) of every (row, task) of this configuration in
    /// [`RunSummary::keys`] (done now or before, failed, or quarantined), so that a caller
    /// reads exactly these rows.
    pub collect_keys: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            shard: None,
            limit: None,
            quiet: false,
            retry_failed: true,
            max_attempts: 3,
            wait_for_lease: false,
            ignore_lease: false,
            collect_keys: false,
        }
    }
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RunSummary {
    pub run_id: String,
    pub rows_read: u64,
    /// (row, task, prompt) items this process is responsible for.
    pub items: u64,
    /// Items already done by earlier runs.
    pub skipped: u64,
    /// Items whose key another item of this run already had (worked on once).
    pub duplicates: u64,
    /// Items that failed in earlier runs and were tried again.
    pub retried: u64,
    pub done: u64,
    pub failed: u64,
    /// Items that failed in earlier runs and were not tried again (retries off or used up).
    pub failed_not_retried: u64,
    /// Failed items of this configuration in the table after this run: `failed` +
    /// `failed_not_retried`. The exit status is 3 when it is not 0.
    pub failed_in_table: u64,
    /// Rows the filters sent to the quarantine table (counted in done/failed too).
    pub quarantined: u64,
    pub interrupted: bool,
    /// The signal that interrupted the run (2 SIGINT, 15 SIGTERM).
    pub signal: Option<i32>,
    /// The Lance version holding this run's rows (None for a shard, which commits later).
    /// It is tagged `run-<run id>`.
    pub version: Option<u64>,
    /// Every results version this run made, oldest first.
    pub versions: Vec<u64>,
    pub results: String,
    pub quarantine: String,
    /// The run records (spec, versions, start/end, counts of every run).
    pub runs: String,
    /// The content hash of the model files (the rows of this model carry it).
    pub model_hash: String,
    /// The filter sets that screened this run's rows, with their content hashes.
    pub filter_sets: Option<String>,
    pub elapsed_s: f64,
    /// Per-task counts from the committed rows of this run (a polars group-by).
    pub by_task: Vec<TaskSummary>,
    /// With [`RunOptions::collect_keys`]: (input id, key) of this configuration's items; rows
    /// with the same content and prompt share a key (one stored result).
    #[serde(skip)]
    pub keys: Vec<(String, String)>,
    /// The OpenAI batch output written (`sink.openai_batch`), when the run finished.
    pub openai_batch: Option<crate::sink::export::OpenaiExport>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TaskSummary {
    pub task: String,
    pub rows: u64,
    pub failed: u64,
    pub mean_latency_ms: Option<f64>,
    pub output_tokens: u64,
}

/// A row that is finished, with the filters' outcome (quarantined rows go to their own table).
pub(crate) struct Finished {
    pub row: ResultRow,
    pub outcome: Outcome,
}

impl Finished {
    pub fn new(row: ResultRow, outcome: Outcome) -> Self {
        Finished { row, outcome }
    }
}

/// Runs a pipeline spec to completion (or a stop signal).
pub fn run(spec: &PipelineSpec, options: &RunOptions) -> Result<RunSummary> {
    crate::util::runtime(2)?.block_on(run_async(spec, options))
}

/// The model options a spec asks for.
fn model_options(spec: &PipelineSpec) -> ModelOptions {
    ModelOptions {
        backend: BackendOptions { kind: spec.model.backend, device: spec.model.device, threads: spec.model.threads },
        variant: spec.model.dtype,
        max_image_pixels: spec.model.max_image_pixels,
        ..ModelOptions::default()
    }
}

async fn load_model(dir: std::path::PathBuf, options: ModelOptions) -> Result<Gemma4> {
    tokio::task::spawn_blocking(move || Gemma4::load(&dir, &options)).await.map_err(Error::join("loading the model"))?
}

/// A short id for a run: 16 hex digits of (name, start time, process id).
fn new_run_id(name: &str, started_ms: i64) -> String {
    let mut id = hash_text(&[name, &started_ms.to_string(), &std::process::id().to_string()]);
    id.truncate(16); // ASCII hex: any length is a char boundary
    id
}

/// The lease scope of a run: one per spec's sink, or one per shard.
fn lease_scope(shard: Option<Shard>) -> String {
    match shard {
        None => "run".into(),
        Some(s) => format!("shard-{}-of-{}", s.index, s.count),
    }
}

fn take_lease(layout: &SinkLayout, scope: &str, run_id: &str, wait: bool, ignore: bool) -> Result<Option<Lease>> {
    if ignore {
        return Ok(None);
    }
    Lease::acquire(&layout.leases(), scope, run_id, wait).map(Some)
}

async fn run_async(spec: &PipelineSpec, options: &RunOptions) -> Result<RunSummary> {
    // First: a signal at any later moment must be handled.
    let stop = signals::install()?;
    let started = Instant::now();
    let started_ms = now_ms();
    let run_id = new_run_id(&spec.name, started_ms);
    let layout = SinkLayout::new(&spec.resolve(&spec.sink.dir));
    if let Some(dir) = layout.local_dir() {
        if dir.exists() && !dir.is_dir() {
            return Err(Error::Spec { path: spec.base_dir.clone(), message: format!("sink.dir {} is a file, not a directory", dir.display()) });
        }
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    }
    let _lease = take_lease(&layout, &lease_scope(options.shard), &run_id, options.wait_for_lease, options.ignore_lease)?;
    let store = ResultStore::new(layout.results());
    let quarantine = ResultStore::new(layout.quarantine());

    // The model, loaded before anything is read so a bad model fails fast.
    let model_dir = spec.resolve(&spec.model.dir);
    let model = load_model(model_dir.clone(), model_options(spec)).await?;
    if let Some(reason) = &model.backend_info().fallback {
        eprintln!("gemma-batch: using the CPU: {reason}");
    }
    let info = model.backend_info().clone();
    let filters = Filters::load(spec)?;
    let policy_model = match filters.policy_model_dir() {
        // A policy model named by a filter set runs like the main one, in its default variant.
        Some(dir) if dir != model_dir => {
            Some(load_model(dir, ModelOptions { variant: ModelOptions::default().variant, ..model_options(spec) }).await?)
        }
        _ => None,
    };
    let templates = Templates::new(spec, crate::source::column_names(spec)?.as_deref())?;
    let provenance = Provenance {
        run_id: run_id.clone(),
        backend: crate::util::enum_name(&info.backend),
        device: info.device.clone(),
        dtype: spec.model.dtype.name().to_string(),
        model_id: model_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        model_hash: crate::model::model_hash(&model_dir, spec.model.dtype)?,
        filter_sets: filters.label.clone(),
        shard: options.shard.map(|s| s.label()),
    };

    store.ensure_exists().await?;
    quarantine.ensure_exists().await?;
    let (state, failed_and_quarantined) = sink_state(&layout, &store, &quarantine, options.shard).await?;
    let failed_before = state.failed.keys().cloned().collect();
    let state = Arc::new(state);

    let batch_size = spec.model.batch_size;
    let (item_tx, item_rx) = mpsc::channel::<WorkItem>(batch_size * 2);
    let (prep_tx, prep_rx) = mpsc::channel::<PreparedItem>(batch_size * 2);
    let (row_tx, mut row_rx) = mpsc::channel::<Finished>(batch_size * 4);
    let counters = Arc::new(Counters::default());
    let stale = Arc::new(std::sync::Mutex::new(failed_and_quarantined));
    let keys: reader::ItemKeys = Default::default();

    // Stage 1: rows to work items.
    let reader = Reader {
        spec: spec.clone(),
        templates,
        state,
        counters: counters.clone(),
        stop: stop.clone(),
        provenance: provenance.clone(),
        options: options.clone(),
        item_tx,
        row_tx: row_tx.clone(),
        stale: stale.clone(),
        // The OpenAI export writes exactly the items of this run's configuration.
        keys: (options.collect_keys || spec.sink.openai_batch.is_some()).then(|| keys.clone()),
    };
    let reader = tokio::task::spawn_blocking(move || reader.run());

    // Stage 2: input filters, images and tokens.
    let prepare = PrepareStage {
        preparer: model.preparer(),
        tasks: spec.tasks.clone(),
        provenance: provenance.clone(),
        filters: filters.clone(),
        item_rx,
        prep_tx,
        row_tx: row_tx.clone(),
    };
    let preparer = tokio::task::spawn_blocking(move || prepare.run());

    // Stage 3: the model, on its own thread, in batches of one task each.
    let stage = ModelStage {
        tasks: spec.tasks.clone(),
        provenance: provenance.clone(),
        filters: filters.clone(),
        row_tx,
        policy_model,
        policy_cache: policy_cache::PolicyCache::from_env(),
    };
    let model_thread = std::thread::spawn(move || model_loop(stage, model, prep_rx, batch_size));

    // Stage 4: commit rows as they come.
    let progress = Progress::new(options.quiet);
    let mut writer = Writer::new(Destination::new(&layout, provenance.shard.clone(), &run_id), spec.sink.commit_every, failed_before, stale);
    let mut log = LogEvery::new();
    while let Some(f) = row_rx.recv().await {
        writer.push(f, &counters).await?;
        progress.update(&counters);
        log.tick(&progress, &counters, started);
    }
    writer.flush().await?;
    progress.finish();
    let reader_result = reader.await.map_err(Error::join("the reader"))?;
    preparer.await.map_err(Error::join("the preparer"))?;
    model_thread.join().map_err(|_| Error::Join { stage: "the model thread".into(), message: "it panicked".into() })?;
    let stopped_early = reader_result?;

    let get = |c: &std::sync::atomic::AtomicU64| Counters::get(c);
    let (failed, failed_not_retried) = (get(&counters.failed), get(&counters.failed_kept));
    let mut summary = RunSummary {
        run_id: run_id.clone(),
        rows_read: get(&counters.rows),
        items: get(&counters.items),
        skipped: get(&counters.skipped),
        duplicates: get(&counters.duplicates),
        retried: get(&counters.retried),
        done: get(&counters.done),
        failed,
        failed_not_retried,
        failed_in_table: failed + failed_not_retried,
        quarantined: get(&counters.quarantined),
        // A signal after the last row was read interrupted nothing.
        interrupted: stopped_early,
        signal: stop.signal(),
        version: writer.version,
        versions: std::mem::take(&mut writer.versions),
        results: layout.results(),
        quarantine: layout.quarantine(),
        runs: layout.runs(),
        model_hash: provenance.model_hash.clone(),
        filter_sets: provenance.filter_sets.clone(),
        elapsed_s: started.elapsed().as_secs_f64(),
        by_task: Vec::new(),
        keys: std::mem::take(&mut *keys.lock().unwrap_or_else(|e| e.into_inner())),
        openai_batch: None,
    };
    if let Some(v) = summary.version {
        crate::sink::history::tag_run(&layout.results(), v, &run_id).await?;
    }
    if options.shard.is_none() {
        summary.by_task = summary::task_summary(&store, &run_id).await?;
    }
    // Recorded before the exports: the rows are committed whatever becomes of them.
    let record = RunRecord::new(&run_id, spec, &provenance.json(), &serde_json::to_value(&summary).unwrap_or_default(), started_ms, now_ms());
    RunStore::new(layout.runs()).append(&record).await?;
    if options.shard.is_none() {
        export(spec, &store).await?;
        // One line per request: only when every request was read (not after a signal).
        if !summary.interrupted {
            if let Some(p) = &spec.sink.openai_batch {
                let written = crate::sink::export::export_openai_batch(&store, &quarantine, &spec.resolve(p), &summary.keys).await?;
                summary.openai_batch = Some(written);
            }
        }
    }
    if !options.collect_keys {
        summary.keys = Vec::new();
    }
    Ok(summary)
}

/// What the sink holds for this run: committed rows in either table and, for a shard, what
/// any shard has staged but not committed yet. Also returns failed records whose key is
/// quarantined too (left by a crash between the two tables' commits), to be deleted.
async fn sink_state(layout: &SinkLayout, store: &ResultStore, quarantine: &ResultStore, shard: Option<Shard>) -> Result<(SinkState, Vec<String>)> {
    let mut state = store.state().await?;
    let quarantined = quarantine.keys().await?;
    let both: Vec<String> = state.failed.keys().filter(|k| quarantined.contains(*k)).cloned().collect();
    for k in &both {
        state.failed.remove(k);
    }
    state.done.extend(quarantined);
    let (pending, pending_quarantine) = (PendingDir::new(layout.pending()), PendingDir::new(layout.pending_quarantine()));
    let staged = pending.list().await?.len() + pending_quarantine.list().await?.len();
    if shard.is_none() && staged > 0 {
        return Err(Error::Sink(format!(
            "{} holds {staged} uncommitted shard results; run `gemma-batch commit` on this spec first",
            layout.root
        )));
    }
    for dir in [pending, pending_quarantine] {
        for k in dir.keys().await? {
            state.failed.remove(&k);
            state.done.insert(k);
        }
    }
    Ok((state, both))
}

/// The model thread: prepared items of every task run through one continuous batch of
/// `batch_size` rows, drawn from a window of four batches' worth ordered by prompt length.
fn model_loop(stage: ModelStage, mut model: Gemma4, prep_rx: mpsc::Receiver<PreparedItem>, batch_size: usize) {
    let mut driver = ModelDriver { stage, prep_rx, items: HashMap::new(), next_tag: 0, writer_gone: false };
    crate::model::drive(&mut model, batch_size, batch_size * 4, &mut driver);
}

/// Feeds the continuous batch from the preparer and hands finished rows to the model stage.
struct ModelDriver {
    stage: ModelStage,
    prep_rx: mpsc::Receiver<PreparedItem>,
    /// Items in the batch or waiting for it, by tag.
    items: HashMap<u64, WorkItem>,
    next_tag: u64,
    writer_gone: bool,
}

impl crate::model::Driver<u64> for ModelDriver {
    fn fill(&mut self, model: &mut Gemma4, room: usize, block: bool) -> crate::model::Fill<u64> {
        use crate::model::Fill;
        use tokio::sync::mpsc::error::TryRecvError;
        if self.writer_gone {
            return Fill::End;
        }
        let mut got = Vec::new();
        if block {
            match self.prep_rx.blocking_recv() {
                Some(p) => got.push(p),
                None => return Fill::End,
            }
        }
        while got.len() < room {
            match self.prep_rx.try_recv() {
                Ok(p) => got.push(p),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) if got.is_empty() => return Fill::End,
                Err(TryRecvError::Disconnected) => break,
            }
        }
        let Some(kept) = self.stage.screen_inputs(model, got) else {
            self.writer_gone = true;
            return Fill::End;
        };
        let requests = kept
            .into_iter()
            .map(|p| {
                let tag = self.next_tag;
                self.next_tag += 1;
                let options = self.stage.options(&p.item);
                self.items.insert(tag, p.item);
                (tag, p.prepared, options)
            })
            .collect();
        Fill::More(requests)
    }

    fn done(&mut self, model: &mut Gemma4, finished: Vec<crate::model::Finished<u64>>) -> bool {
        let rows = finished
            .into_iter()
            .filter_map(|f| Some((self.items.remove(&f.tag)?, f.result, f.latency.as_secs_f64() * 1000.0)))
            .collect();
        let ok = self.stage.finish_generated(model, rows);
        self.writer_gone |= !ok;
        ok
    }

    fn failed(&mut self, _model: &mut Gemma4, error: crate::model::BatchError<u64>) -> bool {
        let message = error.error.to_string();
        for tag in error.tags {
            if let Some(item) = self.items.remove(&tag) {
                if !self.stage.fail(&item, &message) {
                    self.writer_gone = true;
                    return false;
                }
            }
        }
        true
    }
}

/// Writes the spec's Parquet / JSON lines exports of all results.
async fn export(spec: &PipelineSpec, store: &ResultStore) -> Result<()> {
    let parquet = spec.sink.parquet.as_ref().map(|p| spec.resolve(p));
    let jsonl = spec.sink.jsonl.as_ref().map(|p| spec.resolve(p));
    crate::sink::export::export(store, parquet.as_deref(), jsonl.as_deref()).await
}

/// The versions of the spec's results table with the run that made each (`gemma-batch history`).
pub fn history(spec: &PipelineSpec) -> Result<crate::sink::history::History> {
    let layout = SinkLayout::new(&spec.resolve(&spec.sink.dir));
    crate::util::runtime(0)?.block_on(crate::sink::history::history(&layout))
}

/// Compacts the spec's tables (results, quarantine, runs) and removes old versions as
/// `retention` says, never the latest or a tagged one. Holds the sink's run and commit leases
/// meanwhile, so no run or commit writes the tables while their files are rewritten.
pub fn compact(spec: &PipelineSpec, retention: crate::sink::history::Retention, wait_for_lease: bool) -> Result<Vec<crate::sink::history::TableMaintenance>> {
    crate::util::runtime(0)?.block_on(async {
        let layout = SinkLayout::new(&spec.resolve(&spec.sink.dir));
        let run_id = new_run_id("compact", now_ms());
        let _run = take_lease(&layout, "run", &run_id, wait_for_lease, false)?;
        let _commit = take_lease(&layout, "commit", &run_id, wait_for_lease, false)?;
        let mut done = Vec::new();
        for uri in [layout.results(), layout.quarantine(), layout.runs()] {
            done.extend(crate::sink::history::compact(&uri, retention).await?);
        }
        Ok(done)
    })
}

/// The failed rows of the spec's results table: (input id, task, error), in input id order.
pub fn failed_rows(spec: &PipelineSpec) -> Result<Vec<(String, String, String)>> {
    use arrow_array::cast::AsArray;
    let layout = SinkLayout::new(&spec.resolve(&spec.sink.dir));
    let store = ResultStore::new(layout.results());
    let batches = crate::util::runtime(0)?.block_on(store.read_where(None, Some(&["input_id", "task", "error"]), Some("error IS NOT NULL")))?;
    let mut rows = Vec::new();
    for b in &batches {
        let (ids, tasks, errors) = (b.column(0).as_string::<i32>(), b.column(1).as_string::<i32>(), b.column(2).as_string::<i32>());
        for i in 0..b.num_rows() {
            rows.push((ids.value(i).to_string(), tasks.value(i).to_string(), errors.value(i).to_string()));
        }
    }
    rows.sort();
    Ok(rows)
}

/// What `commit` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CommitSummary {
    /// The commit's id (its run record and the tag `run-<id>` on its version).
    pub run_id: String,
    /// The new results version (None when nothing changed).
    pub version: Option<u64>,
    /// Every results version the commit made, oldest first.
    pub versions: Vec<u64>,
    /// Staged datasets merged (results and quarantine).
    pub staged: usize,
    /// Rows in them (a key staged twice counts twice; it is stored once).
    pub rows: usize,
}

/// Commits every shard's staged results (and quarantined rows) into the tables. Safe to run
/// at any time, also while shards are running, and twice.
pub fn commit(spec: &PipelineSpec, wait_for_lease: bool) -> Result<CommitSummary> {
    let summary = commit_staged(spec, wait_for_lease)?;
    if let (Some(p), Some(_)) = (&spec.sink.openai_batch, summary.version) {
        // The items of this configuration, found as a run finds them (outside the runtime:
        // some sources make their own).
        let items: Vec<(String, String)> = plan(spec, true)?.items.into_iter().map(|i| (i.input_id, i.key)).collect();
        let layout = SinkLayout::new(&spec.resolve(&spec.sink.dir));
        let (store, quarantine) = (ResultStore::new(layout.results()), ResultStore::new(layout.quarantine()));
        crate::util::runtime(0)?
            .block_on(crate::sink::export::export_openai_batch(&store, &quarantine, &spec.resolve(p), &items))?;
    }
    Ok(summary)
}

fn commit_staged(spec: &PipelineSpec, wait_for_lease: bool) -> Result<CommitSummary> {
    crate::util::runtime(0)?.block_on(async {
        let layout = SinkLayout::new(&spec.resolve(&spec.sink.dir));
        let started_ms = now_ms();
        let run_id = new_run_id("commit", started_ms);
        let _lease = take_lease(&layout, "commit", &run_id, wait_for_lease, false)?;
        let store = ResultStore::new(layout.results());
        let quarantine = ResultStore::new(layout.quarantine());
        let (q_dir, r_dir) = (PendingDir::new(layout.pending_quarantine()), PendingDir::new(layout.pending()));
        let q = q_dir.commit_into(&quarantine).await?;
        let r = r_dir.commit_into(&store).await?;
        // Failed records replaced by what was just committed: a key now quarantined, or a row
        // whose content reads now. Deleted after their replacements are in and before the
        // staged copies go, so a commit killed at any point redoes this next time.
        let replaced: Vec<String> = q.keys.iter().chain(&q.superseded).chain(&r.superseded).cloned().collect();
        let deleted = store.delete_failed(&replaced).await?;
        q_dir.remove(&q).await?;
        r_dir.remove(&r).await?;
        let versions: Vec<u64> = r.version.into_iter().chain(deleted).collect();
        let summary = CommitSummary { run_id: run_id.clone(), version: versions.last().copied(), versions, staged: r.staged + q.staged, rows: r.keys.len() + q.keys.len() };
        if let Some(v) = summary.version {
            crate::sink::history::tag_run(&layout.results(), v, &run_id).await?;
            export(spec, &store).await?;
        }
        // The commit is a run of the table's history too.
        let provenance = serde_json::json!({"run_id": run_id, "kind": "commit"});
        let record = RunRecord::new(&run_id, spec, &provenance, &serde_json::to_value(&summary).unwrap_or_default(), started_ms, now_ms());
        RunStore::new(layout.runs()).append(&record).await?;
        Ok(summary)
    })
}
