//! Orchestration: source -> prepare -> model -> (filters) -> sink, as stages joined by
//! bounded channels, so memory stays bounded whatever the corpus size. Reading and
//! preparation run on blocking threads, the model on its own thread, commits on the async
//! runtime. Reruns skip rows already committed; Ctrl-C finishes the batch in flight,
//! commits, and leaves the run resumable.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::filters::{Decision, FilterSet, Outcome, PolicyItem, Screening, Stage};
use crate::model::{
    BackendOptions, Gemma4, GenerationOptions, ImageSource, ModelOptions, Prepared, Preparer, Request, Sampling,
};
use crate::sink::{ResultRow, ResultStore, SinkLayout};
use crate::source::{self, RowImage, SourceRow};
use crate::spec::{PipelineSpec, TaskKind, TaskSpec};

/// Which slice of the rows this process handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// `I/N`, as given to `--shard`.
    pub fn parse(s: &str) -> std::result::Result<Shard, String> {
        let (i, n) = s.split_once('/').ok_or_else(|| format!("shard {s:?} is not I/N"))?;
        let index: usize = i.trim().parse().map_err(|_| format!("shard index {i:?} is not a number"))?;
        let count: usize = n.trim().parse().map_err(|_| format!("shard count {n:?} is not a number"))?;
        Shard::new(index, count)
    }

    pub fn new(index: usize, count: usize) -> std::result::Result<Shard, String> {
        if count == 0 || index >= count {
            return Err(format!("shard {index}/{count}: the index must be below the count"));
        }
        Ok(Shard { index, count })
    }

    /// The shard index from a Kubernetes Indexed Job (`JOB_COMPLETION_INDEX`) or a Slurm
    /// array (`SLURM_ARRAY_TASK_ID`, with `SLURM_ARRAY_TASK_COUNT` when `count` is not given).
    pub fn from_env(count: Option<usize>) -> std::result::Result<Option<Shard>, String> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let (index, env_count) = if let Some(i) = var("JOB_COMPLETION_INDEX") {
            (i, None)
        } else if let Some(i) = var("SLURM_ARRAY_TASK_ID") {
            let min = var("SLURM_ARRAY_TASK_MIN").and_then(|m| m.parse::<usize>().ok()).unwrap_or(0);
            let idx: usize = i.parse().map_err(|_| format!("SLURM_ARRAY_TASK_ID={i:?} is not a number"))?;
            (idx.saturating_sub(min).to_string(), var("SLURM_ARRAY_TASK_COUNT"))
        } else {
            return Ok(None);
        };
        let index: usize = index.parse().map_err(|_| format!("shard index {index:?} is not a number"))?;
        let count = match (count, env_count) {
            (Some(c), _) => c,
            (None, Some(c)) => c.parse().map_err(|_| format!("SLURM_ARRAY_TASK_COUNT={c:?} is not a number"))?,
            (None, None) => return Err("JOB_COMPLETION_INDEX is set: give the shard count with --shards N".into()),
        };
        Shard::new(index, count).map(Some)
    }

    fn owns(&self, key: &str) -> bool {
        let h = Sha256::digest(key.as_bytes());
        let v = u64::from_le_bytes(h[..8].try_into().expect("8 bytes"));
        (v % self.count as u64) as usize == self.index
    }

    fn label(&self) -> String {
        format!("{}/{}", self.index, self.count)
    }
}

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub shard: Option<Shard>,
    /// Stop after this many input rows (for trying a spec).
    pub limit: Option<usize>,
    pub quiet: bool,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RunSummary {
    pub run_id: String,
    pub rows_read: u64,
    pub items: u64,
    pub skipped: u64,
    pub done: u64,
    pub failed: u64,
    /// Rows the filters sent to the quarantine table (counted in done/failed too).
    pub quarantined: u64,
    pub interrupted: bool,
    /// The Lance version holding this run's rows (None for a shard, which commits later).
    pub version: Option<u64>,
    pub results: String,
    pub quarantine: String,
    /// The run records (spec, versions, start/end, counts of every run).
    pub runs: String,
    /// The content hash of the model files (the rows of this model carry it).
    pub model_hash: String,
    pub elapsed_s: f64,
    /// Per-task counts from the committed rows of this run (a polars group-by).
    pub by_task: Vec<TaskSummary>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TaskSummary {
    pub task: String,
    pub rows: u64,
    pub failed: u64,
    pub mean_latency_ms: Option<f64>,
    pub output_tokens: u64,
}

/// One model call to make: a row, a task, a rendered prompt.
struct WorkItem {
    input_id: String,
    content_hash: String,
    task: usize,
    prompt: String,
    system: Option<String>,
    image: Option<RowImage>,
    key: String,
    prompt_hash: String,
    error: Option<String>,
    /// Filter decisions so far (input stage).
    decisions: Vec<Decision>,
}

struct PreparedItem {
    item: WorkItem,
    prepared: Prepared,
}

fn hex(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    format!("{:x}", h.finalize())
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// A content hash of the files that define the model's behaviour, for provenance and resume.
pub fn model_hash(dir: &Path, variant: crate::model::Variant) -> Result<String> {
    let mut files: Vec<std::path::PathBuf> = [
        "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
        "preprocessor_config.json", "processor_config.json",
    ]
    .iter()
    .map(|f| dir.join(f))
    .filter(|p| p.exists())
    .collect();
    let suffix = format!("{}.onnx", variant.suffix());
    if let Ok(entries) = std::fs::read_dir(dir.join("onnx")) {
        let mut graphs: Vec<_> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                name.ends_with(&suffix) || name.contains(&format!("{suffix}_data"))
            })
            .collect();
        graphs.sort();
        files.extend(graphs);
    }
    let mut h = Sha256::new();
    for f in files {
        let mut file = std::fs::File::open(&f).map_err(|e| Error::io(&f, e))?;
        h.update(f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default().as_bytes());
        std::io::copy(&mut file, &mut h).map_err(|e| Error::io(&f, e))?;
    }
    Ok(format!("{:x}", h.finalize()))
}

const CAPTION_PROMPT: &str = "Describe this image in one sentence.";

/// The prompts a task asks of a row (several for a fixed list of questions).
fn prompts_for(task: &TaskSpec, row: &SourceRow, env: &minijinja::Environment) -> std::result::Result<Vec<String>, String> {
    let with_text = |p: String| match (&row.text, task.use_image && row.image.is_some()) {
        (Some(text), false) if !text.is_empty() => format!("Document:\n{text}\n\n{p}"),
        _ => p,
    };
    match task.kind {
        TaskKind::Caption => {
            if row.image.is_none() {
                return Err("a caption task needs an image, and this row has none (set source.image_column)".into());
            }
            Ok(vec![task.prompt.clone().unwrap_or_else(|| CAPTION_PROMPT.to_string())])
        }
        TaskKind::Vqa => {
            if let Some(c) = &task.question_column {
                match row.columns.get(c) {
                    Some(serde_json::Value::String(q)) if !q.trim().is_empty() => Ok(vec![with_text(q.clone())]),
                    _ => Err(format!("question column {c:?} is missing or empty")),
                }
            } else {
                Ok(task.questions.iter().flatten().map(|q| with_text(q.clone())).collect())
            }
        }
        TaskKind::Extract => {
            let fields = task.fields.as_deref().unwrap_or_default();
            Ok(vec![with_text(format!(
                "Extract these fields: {}. Answer with one JSON object with exactly these keys and string values, \
                 and nothing else.",
                fields.join(", ")
            ))])
        }
        TaskKind::Prompt => {
            let tmpl = env.get_template(&task.name).map_err(|e| e.to_string())?;
            let mut ctx = row.columns.clone();
            ctx.insert("text".into(), row.text.clone().unwrap_or_default().into());
            ctx.insert("id".into(), row.input_id.clone().into());
            tmpl.render(ctx).map_err(|e| format!("prompt template: {e:#}"))
                .map(|p| vec![p])
        }
    }
}

/// Checks an extract task's output: the first JSON object in it, with exactly the fields.
pub fn check_extract(output: &str, fields: &[String]) -> (Option<String>, bool) {
    let start = output.find('{');
    let end = output.rfind('}');
    let (Some(s), Some(e)) = (start, end) else { return (None, false) };
    if e < s {
        return (None, false);
    }
    match serde_json::from_str::<serde_json::Value>(&output[s..=e]) {
        Ok(serde_json::Value::Object(map)) => {
            let valid = fields.iter().all(|f| map.contains_key(f)) && map.len() == fields.len();
            (Some(serde_json::Value::Object(map).to_string()), valid)
        }
        _ => (None, false),
    }
}

fn sampling_of(task: &TaskSpec) -> Option<Sampling> {
    (task.temperature > 0.0).then_some(Sampling {
        temperature: task.temperature,
        top_k: task.top_k,
        top_p: task.top_p,
        seed: task.seed,
    })
}

/// Provenance shared by every row of a run.
#[derive(Clone)]
struct Provenance {
    run_id: String,
    backend: String,
    device: String,
    dtype: String,
    model_id: String,
    model_hash: String,
    shard: Option<String>,
}

impl Provenance {
    fn row(&self, item: &WorkItem, task: &TaskSpec) -> ResultRow {
        ResultRow {
            key: item.key.clone(),
            input_id: item.input_id.clone(),
            content_hash: item.content_hash.clone(),
            task: task.name.clone(),
            prompt_hash: item.prompt_hash.clone(),
            prompt: item.prompt.clone(),
            run_id: self.run_id.clone(),
            backend: self.backend.clone(),
            device: self.device.clone(),
            dtype: self.dtype.clone(),
            model_id: self.model_id.clone(),
            model_hash: self.model_hash.clone(),
            shard: self.shard.clone(),
            created_at_ms: now_ms(),
            ..Default::default()
        }
    }
}

/// The spec's filter sets, loaded once per run.
#[derive(Clone, Default)]
struct Filters {
    input: Option<Arc<FilterSet>>,
    output: Option<Arc<FilterSet>>,
}

impl Filters {
    /// Looks sets up by name in `filters/` next to the spec, one level up (a project's
    /// `pipelines/` and `filters/` side by side), then in the working directory.
    fn load(spec: &PipelineSpec) -> Result<Filters> {
        let load = |name: &Option<String>| -> Result<Option<Arc<FilterSet>>> {
            match name {
                Some(n) => Ok(Some(Arc::new(FilterSet::load(&crate::filters::find_set(n, &spec.base_dir)?)?))),
                None => Ok(None),
            }
        };
        Ok(Filters { input: load(&spec.filters.input)?, output: load(&spec.filters.output)? })
    }

    fn any(&self) -> bool {
        self.input.is_some() || self.output.is_some()
    }

    /// The policy filter's own model, when a set names one.
    fn policy_model_dir(&self) -> Option<PathBuf> {
        [&self.input, &self.output].into_iter().flatten().find_map(|s| s.policy().and_then(|p| p.model.clone()))
    }
}

/// Writes the decisions, the outcome and the reason into a result row.
fn set_filter_columns(r: &mut ResultRow, decisions: &[Decision]) {
    r.filter_decisions = Some(serde_json::to_string(decisions).expect("decisions serialise"));
    r.filter_outcome = Some(crate::filters::outcome(decisions).name().to_string());
    r.filter_reason = crate::filters::reason(decisions);
}

fn image_source(img: &RowImage) -> ImageSource {
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

/// The model stage: input policy filter, generation, output filters.
struct ModelStage {
    tasks: Vec<TaskSpec>,
    provenance: Provenance,
    filters: Filters,
    row_tx: mpsc::Sender<ResultRow>,
    /// A separate model for the policy filter, when the filter set names one.
    policy_model: Option<Gemma4>,
    policy_cache: HashMap<String, std::result::Result<Vec<f64>, String>>,
}

impl ModelStage {
    fn send(&self, r: ResultRow) -> bool {
        self.row_tx.blocking_send(r).is_ok()
    }

    /// Scores items with a set's policy filter; one result per row (decisions or an error).
    /// Each row has parts ("text"/"image", item, cache key); parts with a key (a row's image,
    /// shared by all the row's tasks) are scored once per run.
    fn policy_decisions(
        &mut self,
        model: &mut Gemma4,
        set: &FilterSet,
        rows: Vec<Vec<PolicyPart>>,
        stage: Stage,
    ) -> Vec<std::result::Result<Vec<Decision>, String>> {
        let Some(policy) = set.policy() else { return rows.iter().map(|_| Ok(Vec::new())).collect() };
        // What must be scored now: uncached parts, each cache key once.
        let mut todo: Vec<PolicyItem> = Vec::new();
        let mut slot: Vec<Vec<usize>> = Vec::with_capacity(rows.len());
        let mut keyed: HashMap<String, usize> = HashMap::new();
        for parts in &rows {
            let mut s = Vec::with_capacity(parts.len());
            for part in parts {
                match &part.key {
                    Some(k) if self.policy_cache.contains_key(k) => s.push(usize::MAX),
                    Some(k) => {
                        let i = *keyed.entry(k.clone()).or_insert_with(|| {
                            todo.push(part.item.clone());
                            todo.len() - 1
                        });
                        s.push(i);
                    }
                    None => {
                        todo.push(part.item.clone());
                        s.push(todo.len() - 1);
                    }
                }
            }
            slot.push(s);
        }
        let pm = self.policy_model.as_mut().unwrap_or(model);
        let scores = match policy.score(pm, &todo) {
            Ok(s) => s,
            Err(e) => return rows.iter().map(|_| Err(format!("policy filter: {e}"))).collect(),
        };
        if self.policy_cache.len() > 4096 {
            self.policy_cache.clear();
        }
        for (k, &i) in &keyed {
            self.policy_cache.insert(k.clone(), scores[i].clone());
        }
        rows.iter()
            .zip(slot)
            .map(|(parts, s)| {
                let mut decisions = Vec::new();
                for (part, i) in parts.iter().zip(s) {
                    let score = match &part.key {
                        Some(k) if i == usize::MAX => self.policy_cache[k].clone(),
                        _ => scores[i].clone(),
                    };
                    match score {
                        Ok(sc) => set.add_policy_decisions(&mut decisions, part.what, &sc, Some(stage)),
                        Err(e) => return Err(format!("policy filter ({}): {e}", part.what)),
                    }
                }
                Ok(decisions)
            })
            .collect()
    }

    /// Runs one batch (one task); false when the writer has gone.
    fn run_batch(&mut self, model: &mut Gemma4, batch: Vec<PreparedItem>) -> bool {
        let task = self.tasks[batch[0].item.task].clone();
        let mut batch = batch;

        // Input policy filter: the prompt text and the row's image.
        if let Some(set) = self.filters.input.clone().filter(|s| s.policy().is_some()) {
            let items = batch
                .iter()
                .map(|p| {
                    let mut parts = vec![PolicyPart { what: "text", item: PolicyItem::Text(p.item.prompt.clone()), key: None }];
                    if let Some(img) = &p.item.image {
                        let key = Some(format!("image:{}", p.item.content_hash));
                        parts.push(PolicyPart { what: "image", item: PolicyItem::Image(image_source(img)), key });
                    }
                    parts
                })
                .collect();
            let results = self.policy_decisions(model, &set, items, Stage::Input);
            let mut kept = Vec::with_capacity(batch.len());
            for (mut p, result) in batch.into_iter().zip(results) {
                match result {
                    Ok(d) => p.item.decisions.extend(d),
                    Err(e) => {
                        let mut r = self.provenance.row(&p.item, &task);
                        r.error = Some(e);
                        set_filter_columns(&mut r, &p.item.decisions);
                        if !self.send(r) {
                            return false;
                        }
                        continue;
                    }
                }
                if matches!(crate::filters::outcome(&p.item.decisions), Outcome::Drop | Outcome::Quarantine) {
                    let mut r = self.provenance.row(&p.item, &task);
                    set_filter_columns(&mut r, &p.item.decisions);
                    if !self.send(r) {
                        return false;
                    }
                } else {
                    kept.push(p);
                }
            }
            batch = kept;
            if batch.is_empty() {
                return true;
            }
        }

        let options = GenerationOptions { max_new_tokens: task.max_new_tokens, sampling: sampling_of(&task) };
        let prompts: Vec<Prepared> = batch.iter().map(|p| p.prepared.clone()).collect();
        let t0 = Instant::now();
        let result = model.generate(&prompts, &options);
        let latency = t0.elapsed().as_secs_f64() * 1000.0;
        let gens = match result {
            Ok(g) => g,
            Err(e) => {
                for p in &batch {
                    let mut r = self.provenance.row(&p.item, &task);
                    r.error = Some(format!("model: {e}"));
                    if self.filters.any() {
                        set_filter_columns(&mut r, &p.item.decisions);
                    }
                    if !self.send(r) {
                        return false;
                    }
                }
                return true;
            }
        };

        // Output filters: rules first (they may redact), then the policy filter on what is left.
        let mut outputs: Vec<(String, Vec<Decision>)> = gens.iter().map(|g| (g.text.clone(), Vec::new())).collect();
        let mut output_errors: Vec<Option<String>> = vec![None; gens.len()];
        if let Some(set) = self.filters.output.clone() {
            for (text, decisions) in outputs.iter_mut() {
                let Screening { text: t, decisions: d } = set.screen(text, Some(Stage::Output));
                *text = t;
                *decisions = d;
            }
            if set.policy().is_some() {
                let items =
                    outputs.iter().map(|(t, _)| vec![PolicyPart { what: "text", item: PolicyItem::Text(t.clone()), key: None }]).collect();
                for (i, result) in self.policy_decisions(model, &set, items, Stage::Output).into_iter().enumerate() {
                    match result {
                        Ok(d) => outputs[i].1.extend(d),
                        Err(e) => output_errors[i] = Some(e),
                    }
                }
            }
        }

        for ((p, g), ((text, out_decisions), out_error)) in batch.into_iter().zip(gens).zip(outputs.into_iter().zip(output_errors)) {
            let mut r = self.provenance.row(&p.item, &task);
            let mut decisions = p.item.decisions;
            decisions.extend(out_decisions);
            r.finish_reason = Some(format!("{:?}", g.finish_reason).to_lowercase());
            r.prompt_tokens = Some(g.prompt_tokens as u32);
            r.output_tokens = Some(g.token_ids.len() as u32);
            r.latency_ms = Some(latency);
            r.error = out_error;
            if crate::filters::outcome(&decisions) != Outcome::Drop {
                if task.kind == TaskKind::Extract {
                    let (json, valid) = check_extract(&text, task.fields.as_deref().unwrap_or_default());
                    r.extracted = json;
                    r.extract_valid = Some(valid);
                }
                r.output = Some(text);
            }
            if self.filters.any() {
                set_filter_columns(&mut r, &decisions);
            }
            if !self.send(r) {
                return false;
            }
        }
        true
    }
}

/// Runs a pipeline spec to completion (or Ctrl-C).
pub fn run(spec: &PipelineSpec, options: &RunOptions) -> Result<RunSummary> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Sink(format!("starting the async runtime: {e}")))?;
    runtime.block_on(run_async(spec, options))
}

async fn run_async(spec: &PipelineSpec, options: &RunOptions) -> Result<RunSummary> {
    // Ctrl-C (SIGINT): finish the batch in flight, commit, exit resumable; a second one aborts.
    // Registered first, so an interrupt at any later moment is handled.
    let stop = Arc::new(AtomicBool::new(false));
    {
        let mut interrupts = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .map_err(|e| Error::Sink(format!("installing the Ctrl-C handler: {e}")))?;
        let stop = stop.clone();
        tokio::spawn(async move {
            if interrupts.recv().await.is_some() {
                eprintln!("\ngemma-batch: interrupted; finishing the batch in flight and committing (Ctrl-C again to abort)");
                stop.store(true, Ordering::SeqCst);
                if interrupts.recv().await.is_some() {
                    std::process::exit(130);
                }
            }
        });
    }
    let started = Instant::now();
    let started_ms = now_ms();
    let run_id = hex(&[&spec.name, &started_ms.to_string(), &std::process::id().to_string()])[..16].to_string();
    let layout = SinkLayout::new(&spec.resolve(&spec.sink.dir));
    if !spec.sink.dir.contains("://") {
        std::fs::create_dir_all(&layout.dir).map_err(|e| Error::io(&layout.dir, e))?;
    }
    let store = ResultStore::new(layout.results());

    // The model, loaded before anything is read so a bad model fails fast.
    let model_dir = spec.resolve(&spec.model.dir);
    let model_options = ModelOptions {
        backend: BackendOptions { kind: spec.model.backend, device: spec.model.device, threads: spec.model.threads },
        variant: spec.model.dtype,
        max_image_pixels: spec.model.max_image_pixels,
        ..ModelOptions::default()
    };
    // A policy model named by a filter set runs like the main one, in its default variant.
    let policy_options = ModelOptions { variant: ModelOptions::default().variant, ..model_options.clone() };
    let md = model_dir.clone();
    let model = tokio::task::spawn_blocking(move || Gemma4::load(&md, &model_options))
        .await
        .map_err(|e| Error::Sink(e.to_string()))??;
    if let Some(reason) = &model.backend_info().fallback {
        eprintln!("gemma-batch: using the CPU: {reason}");
    }
    let info = model.backend_info().clone();
    let filters = Filters::load(spec)?;
    let policy_model = match filters.policy_model_dir() {
        Some(dir) if dir != model_dir => {
            Some(tokio::task::spawn_blocking(move || Gemma4::load(&dir, &policy_options)).await.map_err(|e| Error::Sink(e.to_string()))??)
        }
        _ => None,
    };
    let provenance = Provenance {
        run_id: run_id.clone(),
        backend: format!("{:?}", info.backend).to_lowercase(),
        device: info.device.clone(),
        dtype: spec.model.dtype.name().to_string(),
        model_id: model_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        model_hash: model_hash(&model_dir, spec.model.dtype)?,
        shard: options.shard.map(|s| s.label()),
    };

    let quarantine = ResultStore::new(layout.quarantine());
    store.ensure_exists().await?;
    quarantine.ensure_exists().await?;
    // Done: committed rows in either table, and, for a shard rerun, what any shard already
    // wrote but has not committed yet.
    let mut done = store.done_keys().await?;
    done.extend(quarantine.done_keys().await?);
    let pending = [pending_files(&layout.pending())?, pending_files(&layout.pending_quarantine())?].concat();
    if options.shard.is_none() && !pending.is_empty() {
        return Err(Error::Sink(format!(
            "{} holds {} uncommitted shard results; run `gemma-batch commit` on this spec first",
            layout.dir.display(),
            pending.len()
        )));
    }
    for txn in &pending {
        done.extend(pending_keys(txn)?);
    }
    let done = Arc::new(done);

    let batch_size = spec.model.batch_size;
    let (item_tx, item_rx) = mpsc::channel::<WorkItem>(batch_size * 2);
    let (prep_tx, prep_rx) = mpsc::channel::<PreparedItem>(batch_size * 2);
    let (row_tx, mut row_rx) = mpsc::channel::<ResultRow>(batch_size * 4);
    let counters = Arc::new(Counters::default());

    // Stage 1: read rows, render prompts, drop what is done or another shard's.
    let reader = {
        let spec = spec.clone();
        let done = done.clone();
        let counters = counters.clone();
        let stop = stop.clone();
        let row_tx = row_tx.clone();
        let provenance = provenance.clone();
        let shard = options.shard;
        let limit = options.limit;
        tokio::task::spawn_blocking(move || -> Result<()> {
            let mut env = minijinja::Environment::new();
            env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
            for t in spec.tasks.iter().filter(|t| t.kind == TaskKind::Prompt) {
                env.add_template_owned(t.name.clone(), t.prompt.clone().unwrap_or_default())
                    .map_err(|e| Error::Spec { path: spec.base_dir.clone(), message: format!("task {:?}: template: {e}", t.name) })?;
            }
            let mut rows_seen = 0usize;
            for batch in source::open(&spec)? {
                for row in batch? {
                    if stop.load(Ordering::SeqCst) || limit.is_some_and(|l| rows_seen >= l) {
                        return Ok(());
                    }
                    rows_seen += 1;
                    counters.rows.fetch_add(1, Ordering::Relaxed);
                    for (ti, task) in spec.tasks.iter().enumerate() {
                        let prompts = match &row.error {
                            Some(e) => Err(e.clone()),
                            None => prompts_for(task, &row, &env),
                        };
                        let prompts = match prompts {
                            Ok(p) => p.into_iter().map(|p| (p, None)).collect::<Vec<_>>(),
                            Err(e) => vec![(String::new(), Some(e))],
                        };
                        for (prompt, error) in prompts {
                            let params = format!(
                                "{}|{}|{}|{}|{}|{}",
                                task.max_new_tokens, task.temperature, task.top_k, task.top_p, task.seed, task.use_image
                            );
                            let prompt_hash = hex(&[task.system.as_deref().unwrap_or(""), &prompt, &params]);
                            let key = hex(&[&row.content_hash, &task.name, &prompt_hash, &provenance.model_hash]);
                            if shard.is_some_and(|s| !s.owns(&key)) {
                                continue;
                            }
                            counters.items.fetch_add(1, Ordering::Relaxed);
                            if done.contains(&key) {
                                counters.skipped.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
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
                            };
                            if item.error.is_some() {
                                let mut r = provenance.row(&item, task);
                                r.error = item.error.clone();
                                if row_tx.blocking_send(r).is_err() {
                                    return Ok(());
                                }
                            } else if item_tx.blocking_send(item).is_err() {
                                return Ok(());
                            }
                        }
                    }
                }
            }
            Ok(())
        })
    };

    // Stage 2: screen the prompt with the input filters, decode images and tokenize, on a
    // blocking thread; failures become failed rows.
    let preparer = {
        let prep: Arc<Preparer> = model.preparer();
        let tasks = spec.tasks.clone();
        let row_tx = row_tx.clone();
        let provenance = provenance.clone();
        let input_filter = filters.input.clone();
        let any_filters = filters.any();
        let mut item_rx = item_rx;
        tokio::task::spawn_blocking(move || {
            while let Some(mut item) = item_rx.blocking_recv() {
                if let Some(set) = &input_filter {
                    let screening = set.screen(&item.prompt, Some(Stage::Input));
                    item.decisions = screening.decisions;
                    if matches!(crate::filters::outcome(&item.decisions), Outcome::Drop | Outcome::Quarantine) {
                        let mut r = provenance.row(&item, &tasks[item.task]);
                        r.prompt = screening.text;
                        set_filter_columns(&mut r, &item.decisions);
                        if row_tx.blocking_send(r).is_err() {
                            return;
                        }
                        continue;
                    }
                    // The model (and the stored prompt) see the redacted text.
                    item.prompt = screening.text;
                }
                let request = Request {
                    system: item.system.clone(),
                    prompt: item.prompt.clone(),
                    images: item.image.iter().map(image_source).collect(),
                };
                match prep.prepare(&request) {
                    Ok(prepared) => {
                        if prep_tx.blocking_send(PreparedItem { item, prepared }).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let mut r = provenance.row(&item, &tasks[item.task]);
                        r.error = Some(e.to_string());
                        if any_filters {
                            set_filter_columns(&mut r, &item.decisions);
                        }
                        if row_tx.blocking_send(r).is_err() {
                            return;
                        }
                    }
                }
            }
        })
    };

    // Stage 3: the model, on its own thread, in batches of one task each, with the policy
    // filters (they need the model) and the output filters.
    let model_thread = {
        let mut stage = ModelStage {
            tasks: spec.tasks.clone(),
            provenance: provenance.clone(),
            filters: filters.clone(),
            row_tx: row_tx.clone(),
            policy_model,
            policy_cache: HashMap::new(),
        };
        let mut prep_rx = prep_rx;
        let mut model = model;
        std::thread::spawn(move || {
            let mut pending: HashMap<usize, Vec<PreparedItem>> = HashMap::new();
            while let Some(p) = prep_rx.blocking_recv() {
                let task = p.item.task;
                let queue = pending.entry(task).or_default();
                queue.push(p);
                if queue.len() >= batch_size {
                    let batch = std::mem::take(queue);
                    if !stage.run_batch(&mut model, batch) {
                        return;
                    }
                }
            }
            let mut rest: Vec<_> = pending.into_iter().filter(|(_, v)| !v.is_empty()).collect();
            rest.sort_by_key(|(t, _)| *t);
            for (_, batch) in rest {
                if !stage.run_batch(&mut model, batch) {
                    return;
                }
            }
        })
    };
    drop(row_tx);

    // Stage 4: commit rows as they come, commit_every at a time. Quarantined rows go to their
    // own table, committed before the main table's rows of the same flush.
    let progress = Progress::new(options.quiet);
    let mut buffer: Vec<ResultRow> = Vec::with_capacity(spec.sink.commit_every);
    let mut quarantined: Vec<ResultRow> = Vec::new();
    let mut version = None;
    let mut last_log = Instant::now();
    loop {
        let row = row_rx.recv().await;
        let end = row.is_none();
        if let Some(row) = row {
            if row.error.is_some() {
                counters.failed.fetch_add(1, Ordering::Relaxed);
            } else {
                counters.done.fetch_add(1, Ordering::Relaxed);
            }
            if row.filter_outcome.as_deref() == Some("quarantine") {
                counters.quarantined.fetch_add(1, Ordering::Relaxed);
                quarantined.push(row);
            } else {
                buffer.push(row);
            }
            progress.update(&counters);
        }
        if end || buffer.len() + quarantined.len() >= spec.sink.commit_every {
            flush(std::mem::take(&mut quarantined), &quarantine, &layout.pending_quarantine(), options.shard).await?;
            let v = flush(std::mem::take(&mut buffer), &store, &layout.pending(), options.shard).await?;
            version = v.or(version);
            if progress.plain && last_log.elapsed() > Duration::from_secs(10) {
                progress.log(&counters, started.elapsed());
                last_log = Instant::now();
            }
        }
        if end {
            break;
        }
    }
    progress.finish();
    let reader_result = reader.await.map_err(|e| Error::Sink(e.to_string()))?;
    preparer.await.map_err(|e| Error::Sink(e.to_string()))?;
    model_thread.join().map_err(|_| Error::Sink("the model thread panicked".into()))?;
    reader_result?;

    let interrupted = stop.load(Ordering::SeqCst);
    let mut summary = RunSummary {
        run_id: run_id.clone(),
        rows_read: counters.rows.load(Ordering::Relaxed),
        items: counters.items.load(Ordering::Relaxed),
        skipped: counters.skipped.load(Ordering::Relaxed),
        done: counters.done.load(Ordering::Relaxed),
        failed: counters.failed.load(Ordering::Relaxed),
        quarantined: counters.quarantined.load(Ordering::Relaxed),
        interrupted,
        version,
        results: layout.results(),
        quarantine: layout.quarantine(),
        runs: layout.runs(),
        model_hash: provenance.model_hash.clone(),
        elapsed_s: started.elapsed().as_secs_f64(),
        by_task: Vec::new(),
    };
    if options.shard.is_none() {
        summary.by_task = task_summary(&store, &run_id).await?;
        export(spec, &store).await?;
    }
    crate::sink::RunStore::new(layout.runs()).append(&crate::sink::RunRecord::new(spec, &provenance_json(&provenance), &summary, started_ms, now_ms())).await?;
    Ok(summary)
}

fn provenance_json(p: &Provenance) -> serde_json::Value {
    serde_json::json!({
        "backend": p.backend, "device": p.device, "dtype": p.dtype, "model_id": p.model_id,
        "model_hash": p.model_hash, "shard": p.shard, "gemma_batch": env!("CARGO_PKG_VERSION"),
    })
}

#[derive(Default)]
struct Counters {
    quarantined: AtomicU64,
    rows: AtomicU64,
    items: AtomicU64,
    skipped: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
}

/// A progress bar on a terminal; plain log lines otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    plain: bool,
}

impl Progress {
    fn new(quiet: bool) -> Self {
        let tty = std::io::stderr().is_terminal();
        if quiet || !tty {
            return Progress { bar: None, plain: !quiet };
        }
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {elapsed_precise} {pos} rows ({per_sec}) {msg}")
                .expect("valid template"),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress { bar: Some(bar), plain: false }
    }

    fn update(&self, c: &Counters) {
        if let Some(bar) = &self.bar {
            let done = c.done.load(Ordering::Relaxed) + c.failed.load(Ordering::Relaxed);
            bar.set_position(done);
            let todo = c.items.load(Ordering::Relaxed).saturating_sub(c.skipped.load(Ordering::Relaxed));
            bar.set_message(format!(
                "of {todo} so far, {} failed, {} skipped",
                c.failed.load(Ordering::Relaxed),
                c.skipped.load(Ordering::Relaxed)
            ));
        }
    }

    fn log(&self, c: &Counters, elapsed: Duration) {
        let done = c.done.load(Ordering::Relaxed) + c.failed.load(Ordering::Relaxed);
        eprintln!(
            "gemma-batch: {done} rows committed ({} failed, {} skipped), {:.1} rows/s",
            c.failed.load(Ordering::Relaxed),
            c.skipped.load(Ordering::Relaxed),
            done as f64 / elapsed.as_secs_f64().max(1e-9)
        );
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Per-task counts of this run, computed with polars over the committed rows.
async fn task_summary(store: &ResultStore, run_id: &str) -> Result<Vec<TaskSummary>> {
    use polars::prelude::*;
    let batches = store.read(None, Some(&["run_id", "task", "error", "latency_ms", "output_tokens"])).await?;
    let df = crate::sink::to_polars(&batches)?;
    if df.height() == 0 {
        return Ok(Vec::new());
    }
    let out = df
        .lazy()
        .filter(col("run_id").eq(lit(run_id)))
        .group_by([col("task")])
        .agg([
            len().alias("rows"),
            col("error").is_not_null().sum().alias("failed"),
            col("latency_ms").mean().alias("mean_latency_ms"),
            col("output_tokens").sum().alias("output_tokens"),
        ])
        .sort(["task"], Default::default())
        .collect()
        .map_err(|e| Error::Sink(e.to_string()))?;
    let err = |e: PolarsError| Error::Sink(e.to_string());
    let tasks = out.column("task").map_err(err)?.str().map_err(err)?.clone();
    let rows = out.column("rows").map_err(err)?.cast(&DataType::UInt64).map_err(err)?;
    let failed = out.column("failed").map_err(err)?.cast(&DataType::UInt64).map_err(err)?;
    let latency = out.column("mean_latency_ms").map_err(err)?.cast(&DataType::Float64).map_err(err)?;
    let tokens = out.column("output_tokens").map_err(err)?.cast(&DataType::UInt64).map_err(err)?;
    let (rows, failed, latency, tokens) =
        (rows.u64().map_err(err)?, failed.u64().map_err(err)?, latency.f64().map_err(err)?, tokens.u64().map_err(err)?);
    Ok((0..out.height())
        .map(|i| TaskSummary {
            task: tasks.get(i).unwrap_or_default().to_string(),
            rows: rows.get(i).unwrap_or(0),
            failed: failed.get(i).unwrap_or(0),
            mean_latency_ms: latency.get(i),
            output_tokens: tokens.get(i).unwrap_or(0),
        })
        .collect())
}

/// Writes the spec's Parquet / JSON lines exports of all results.
async fn export(spec: &PipelineSpec, store: &ResultStore) -> Result<()> {
    use polars::prelude::*;
    if spec.sink.parquet.is_none() && spec.sink.jsonl.is_none() {
        return Ok(());
    }
    let mut df = crate::sink::to_polars(&store.read(None, None).await?)?;
    if let Some(p) = &spec.sink.parquet {
        let path = spec.resolve(p);
        let f = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
        ParquetWriter::new(f).finish(&mut df).map_err(|e| Error::Sink(format!("{}: {e}", path.display())))?;
    }
    if let Some(p) = &spec.sink.jsonl {
        let path = spec.resolve(p);
        let f = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
        JsonWriter::new(f)
            .with_json_format(JsonFormat::JsonLines)
            .finish(&mut df)
            .map_err(|e| Error::Sink(format!("{}: {e}", path.display())))?;
    }
    Ok(())
}

/// Commits rows (a single process: one new version) or, for a shard, writes them as a pending
/// transaction for `commit`.
async fn flush(rows: Vec<ResultRow>, store: &ResultStore, pending: &Path, shard: Option<Shard>) -> Result<Option<u64>> {
    if rows.is_empty() {
        return Ok(None);
    }
    match shard {
        None => store.append(&rows).await.map(Some),
        Some(s) => write_pending(store, &rows, pending, s).await.map(|_| None),
    }
}

/// Writes rows as an uncommitted Lance transaction under `dir`, with the row keys beside it
/// (`NAME.keys`, written first), so that reruns and `commit` know which rows it holds.
async fn write_pending(store: &ResultStore, rows: &[ResultRow], dir: &Path, shard: Shard) -> Result<()> {
    let txn = store.write_uncommitted(rows).await?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let name = format!("shard-{}-of-{}-{}", shard.index, shard.count, hex(&[&now_ms().to_string(), &rows[0].key]));
    let keys: String = rows.iter().map(|r| format!("{}\n", r.key)).collect();
    // Each file is renamed into place only when complete, the transaction last: a killed
    // shard leaves no half file, and a transaction always has its keys.
    for (ext, bytes) in [("keys", keys.into_bytes()), ("txn", txn)] {
        let tmp = dir.join(format!(".{name}.{ext}.tmp"));
        std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, dir.join(format!("{name}.{ext}"))).map_err(|e| Error::io(dir, e))?;
    }
    Ok(())
}

/// The keys of the rows in a pending transaction file.
fn pending_keys(txn: &Path) -> Result<Vec<String>> {
    let keys = txn.with_extension("keys");
    let text = std::fs::read_to_string(&keys).map_err(|e| Error::io(&keys, e))?;
    Ok(text.lines().filter(|l| !l.is_empty()).map(str::to_owned).collect())
}

fn pending_files(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "txn"))
        .collect();
    files.sort();
    Ok(files)
}

/// Commits the pending transactions under `dir` to `store` as one version. Transactions whose
/// rows are already in the store (a commit that was killed before it could delete its files)
/// are deleted instead, so a row never lands twice.
async fn commit_dir(store: &ResultStore, dir: &Path) -> Result<(Option<u64>, usize)> {
    let files = pending_files(dir)?;
    if files.is_empty() {
        return Ok((None, 0));
    }
    store.ensure_exists().await?;
    let done = store.done_keys().await?;
    let mut payloads = Vec::new();
    let mut committed_before = Vec::new();
    for f in &files {
        let keys = pending_keys(f)?;
        if keys.iter().any(|k| done.contains(k)) {
            committed_before.push(f);
        } else {
            payloads.push(std::fs::read(f).map_err(|e| Error::io(f, e))?);
        }
    }
    let version = if payloads.is_empty() { None } else { Some(store.commit_pending(&payloads).await?) };
    // Committed: the pending files must go, or a second commit would add the rows twice.
    for f in &files {
        for p in [f.to_path_buf(), f.with_extension("keys")] {
            std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
        }
    }
    Ok((version, payloads.len()))
}

/// Commits every shard's pending results (and quarantined rows) as one new version each;
/// returns the results version and how many shard files it took.
pub fn commit(spec: &PipelineSpec) -> Result<(Option<u64>, usize)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Sink(format!("starting the async runtime: {e}")))?;
    let layout = SinkLayout::new(&spec.resolve(&spec.sink.dir));
    let store = ResultStore::new(layout.results());
    let quarantine = ResultStore::new(layout.quarantine());
    runtime.block_on(async {
        commit_dir(&quarantine, &layout.pending_quarantine()).await?;
        let (version, files) = commit_dir(&store, &layout.pending()).await?;
        if version.is_some() {
            export(spec, &store).await?;
        }
        Ok((version, files))
    })
}
