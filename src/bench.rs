//! Benchmarks that print figures (`gemma-batch bench ...`): measured in one process, so ratios
//! compare like with like on a noisy machine.

use std::time::Instant;

use crate::filters::FilterSet;

/// A single line of about `bytes` bytes: prose with PII, secrets-like strings, numbers, code
/// and multi-byte text mixed in, so every detector has work and candidates to reject.
pub fn synthetic_line(bytes: usize) -> String {
    const PIECES: &[&str] = &[
        "The quarterly report was filed on 2024-03-14 by the finance team.",
        "Contact jane.doe@example.org or call +44 20 7946 0958 for details.",
        "Card 4111 1111 1111 1111 was charged; order 4111 1111 1111 1112 was not.",
        "IBAN DE89 3704 0044 0532 0130 00, ref 1.2.3.4 (version), server 192.168.10.20.",
        "let y = weights@inputs.values; // not an email",
        "Grüße aus Zürich — naïve café, Ελληνικά, 日本語のテキスト, русский текст.",
        "api_key = \"sk_9fQ2xL7pR4mZ8vK1nB6tC3wY\" and request_id 123e4567-e89b-12d3-a456-426614174000.",
        "Ignore nothing here: this is a normal sentence about invoices, totals and dates.",
        "SSN 536-22-1234 appears once; 000-12-3456 is not valid.",
        "Ship to 1600 Main St, Springfield, IL 62704-1234 before Friday.",
    ];
    let mut out = String::with_capacity(bytes + 128);
    let mut i = 0usize;
    while out.len() < bytes {
        out.push_str(PIECES[i % PIECES.len()]);
        out.push(' ');
        i = i.wrapping_mul(7).wrapping_add(3) % 1_000_003;
    }
    out
}

pub struct FilterTiming {
    pub bytes: usize,
    pub seconds: f64,
    pub decisions: usize,
}

/// Times the set's rule-based filters on one line of each size (best of `repeats`).
pub fn filters(set: &FilterSet, sizes: &[usize], repeats: usize) -> Vec<FilterTiming> {
    sizes
        .iter()
        .map(|&bytes| {
            let line = synthetic_line(bytes);
            let mut best = f64::INFINITY;
            let mut decisions = 0;
            for _ in 0..repeats.max(1) {
                let t = Instant::now();
                let s = set.screen(&line, None);
                best = best.min(t.elapsed().as_secs_f64());
                decisions = s.decisions.len();
            }
            FilterTiming { bytes: line.len(), seconds: best, decisions }
        })
        .collect()
}

/// `n` prompts of 4 to 40 words (a fixed seed), for generation benchmarks: mixed lengths, as
/// a batch of real questions has.
pub fn generation_prompts(n: usize, seed: u64) -> Vec<String> {
    use rand::{Rng, SeedableRng};
    const WORDS: &[&str] = &[
        "invoice", "total", "the", "of", "date", "vendor", "what", "is", "amount", "due", "please", "describe", "image",
        "a", "red", "circle", "blue", "square", "on", "page", "receipt", "tax", "number", "form", "name", "address",
        "summarise", "document", "in", "one", "sentence", "which", "colour", "shape", "left", "right", "table", "row",
        "column", "how", "many", "items", "are", "listed", "and", "who", "signed", "it", "when", "was", "paid",
    ];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let words = rng.random_range(4..=40);
            (0..words).map(|_| WORDS[rng.random_range(0..WORDS.len())]).collect::<Vec<_>>().join(" ")
        })
        .collect()
}

/// One timed generation run over all prompts with `slots` rows decoding together.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GenerationRun {
    pub runner: &'static str,
    pub batch: usize,
    pub seconds: f64,
    /// Generated tokens, end-of-generation tokens included.
    pub tokens: usize,
    pub tokens_per_s: f64,
    pub items_per_s: f64,
    /// Generated ids per prompt, in prompt order.
    pub outputs: Vec<Vec<u32>>,
}

/// Generates greedily for every prompt through the engine's continuous batch (the same path
/// as `gemma-batch run`): `slots` rows at a time, drawn from a window of four batches.
pub fn generation(
    model: &mut crate::model::Gemma4,
    prompts: &[crate::model::Prepared],
    slots: usize,
    new_tokens: usize,
    progress: &indicatif::ProgressBar,
) -> crate::error::Result<GenerationRun> {
    use crate::model::{BatchError, Driver, Fill, Finished, Gemma4, GenerationOptions};

    struct Bench<'a> {
        prompts: std::iter::Enumerate<std::slice::Iter<'a, crate::model::Prepared>>,
        options: GenerationOptions,
        outputs: Vec<Vec<u32>>,
        error: Option<crate::error::Error>,
        progress: &'a indicatif::ProgressBar,
    }
    impl Driver<usize> for Bench<'_> {
        fn fill(&mut self, _: &mut Gemma4, room: usize, _: bool) -> Fill<usize> {
            let more: Vec<_> = self.prompts.by_ref().take(room).map(|(i, p)| (i, p.clone(), self.options.clone())).collect();
            if more.is_empty() {
                Fill::End
            } else {
                Fill::More(more)
            }
        }
        fn done(&mut self, _: &mut Gemma4, finished: Vec<Finished<usize>>) -> bool {
            for f in finished {
                self.progress.inc(1);
                match f.result {
                    Ok(g) => self.outputs[f.tag] = g.token_ids,
                    Err(e) => {
                        self.error = Some(e);
                        return false;
                    }
                }
            }
            true
        }
        fn failed(&mut self, _: &mut Gemma4, e: BatchError<usize>) -> bool {
            self.error = Some(e.error);
            false
        }
    }

    let mut bench = Bench {
        prompts: prompts.iter().enumerate(),
        options: GenerationOptions { max_new_tokens: new_tokens, sampling: None },
        outputs: vec![Vec::new(); prompts.len()],
        error: None,
        progress,
    };
    let start = Instant::now();
    crate::model::drive(model, slots, slots * 4, &mut bench);
    let seconds = start.elapsed().as_secs_f64();
    if let Some(e) = bench.error {
        return Err(e);
    }
    let tokens: usize = bench.outputs.iter().map(Vec::len).sum();
    Ok(GenerationRun {
        runner: "gemma-batch",
        batch: slots,
        seconds,
        tokens,
        tokens_per_s: tokens as f64 / seconds,
        items_per_s: prompts.len() as f64 / seconds,
        outputs: bench.outputs,
    })
}

/// Read times of one results table before and after compaction.
pub struct CompactionTiming {
    pub rows: usize,
    pub commits: usize,
    pub fragments_before: usize,
    pub fragments_after: usize,
    /// Best full-table read time, seconds.
    pub read_before: f64,
    pub read_after: f64,
    /// The same table written in one commit, for reference.
    pub read_single_commit: f64,
}

/// Builds a results table of `rows` synthetic rows in `commits` commits (as a nightly run
/// that many times would), times a full read (best of `repeats`), compacts it and times the
/// read again; also times the same rows written in one commit. Tables go under `dir`.
pub fn compaction(dir: &std::path::Path, rows: usize, commits: usize, repeats: usize) -> crate::Result<CompactionTiming> {
    use crate::sink::{ResultRow, ResultStore};
    let rt = crate::util::runtime(0)?;
    let time_read = |store: &ResultStore| -> crate::Result<f64> {
        let mut best = f64::INFINITY;
        for _ in 0..repeats.max(1) {
            let t = Instant::now();
            let n: usize = rt.block_on(store.read(None, None))?.iter().map(|b| b.num_rows()).sum();
            best = best.min(t.elapsed().as_secs_f64());
            if n != rows {
                return Err(crate::Error::Sink(format!("{}: read {n} rows, wrote {rows}", store.uri())));
            }
        }
        Ok(best)
    };
    let many = ResultStore::new(dir.join("many-commits.lance").display().to_string());
    let one = ResultStore::new(dir.join("one-commit.lance").display().to_string());
    let all: Vec<ResultRow> = synthetic_results(0, rows);
    let per = rows.div_ceil(commits.max(1));
    for chunk in all.chunks(per.max(1)) {
        rt.block_on(many.upsert(chunk))?;
    }
    rt.block_on(one.upsert(&all))?;
    let fragments = |s: &ResultStore| -> crate::Result<usize> { Ok(rt.block_on(s.open())?.map_or(0, |d| d.count_fragments())) };
    let fragments_before = fragments(&many)?;
    let read_before = time_read(&many)?;
    let read_single_commit = time_read(&one)?;
    rt.block_on(crate::sink::history::compact(many.uri(), crate::sink::history::Retention::All))?;
    Ok(CompactionTiming {
        rows,
        commits: all.chunks(per.max(1)).len(),
        fragments_before,
        fragments_after: fragments(&many)?,
        read_before,
        read_after: time_read(&many)?,
        read_single_commit,
    })
}

/// Synthetic result rows `from..to`, as a VQA run over document pages stores them, with kept
/// input columns (a question and a list of answers).
pub fn synthetic_results(from: usize, to: usize) -> Vec<crate::sink::ResultRow> {
    use crate::util::hash_text;
    let model_hash = hash_text(&["bench model"]);
    (from..to)
        .map(|i| {
            let n = i.to_string();
            let key = hash_text(&["key", &n]);
            let question = format!("Question {i}: what is the total amount due on this invoice page?");
            let total = format!("{}.{:02} EUR", i * 7 % 10_000, i % 100);
            crate::sink::ResultRow {
                content_hash: hash_text(&["content", &n]),
                prompt_hash: hash_text(&["prompt", &n]),
                input_id: format!("doc-{:07}-page-{}", i / 4, i % 4 + 1),
                task: "qa".into(),
                prompt: format!("Document:\nInvoice {i}, issued 2024-03-14, total {total}.\n\n{question}"),
                output: Some(format!("The total amount due is {total}.")),
                finish_reason: Some("stop".into()),
                prompt_tokens: Some(40 + (i % 50) as u32),
                output_tokens: Some(9),
                latency_ms: Some(12.5 + (i % 17) as f64),
                attempts: 1,
                run_id: "0123456789abcdef".into(),
                backend: "ort".into(),
                device: "cpu".into(),
                dtype: "fp32".into(),
                model_id: "tiny-gemma4".into(),
                model_hash: model_hash.clone(),
                created_at_ms: 1_700_000_000_000 + i as i64,
                input_columns: Some(serde_json::json!({"question": question, "answers": [total, format!("{} EUR", i * 7 % 10_000)]}).to_string()),
                key,
                ..Default::default()
            }
        })
        .collect()
}

/// Writes a results table of `rows` synthetic rows at `uri`, 10,000 rows a batch (memory does
/// not grow with `rows`), in data files of at most `rows_per_file` rows. A run's table is made
/// of one fragment per commit (`sink.commit_every` rows at most); a compacted table has large
/// files, whose pages a scan holds one per column at a time.
pub fn write_results_table(uri: &str, rows: usize, rows_per_file: usize) -> crate::Result<()> {
    const CHUNK: usize = 10_000;
    let schema = crate::sink::result_schema();
    let batches = (0..rows.div_ceil(CHUNK)).map(move |c| {
        let rows = synthetic_results(c * CHUNK, ((c + 1) * CHUNK).min(rows));
        crate::sink::to_batch(&rows).map_err(|e| arrow_schema::ArrowError::ExternalError(Box::new(e)))
    });
    let reader = arrow_array::RecordBatchIterator::new(batches, schema);
    let params = lance::dataset::WriteParams {
        mode: lance::dataset::WriteMode::Overwrite,
        max_rows_per_file: rows_per_file.max(1),
        ..Default::default()
    };
    crate::util::runtime(2)?.block_on(async {
        lance::dataset::Dataset::write(reader, uri, Some(params)).await.map_err(crate::Error::lance(uri))?;
        crate::sink::ResultStore::new(uri).ensure_exists().await
    })
}

/// This process's peak resident memory so far (`VmHWM`), in KiB; None where /proc has none.
pub fn peak_rss_kib() -> Option<u64> {
    proc_status_kib("VmHWM:")
}

/// This process's resident memory now (`VmRSS`), in KiB.
pub fn rss_kib() -> Option<u64> {
    proc_status_kib("VmRSS:")
}

fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].trim().trim_end_matches("kB").trim().parse().ok()
}

/// One export of a results table, measured in a process that did nothing else.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ExportFigure {
    pub rows: u64,
    pub format: String,
    pub seconds: f64,
    /// Resident memory before the export started (the program itself), KiB.
    pub rss_before_kib: Option<u64>,
    /// Peak resident memory of the process, KiB (with the program's own pages: VmHWM).
    pub peak_rss_kib: Option<u64>,
    /// Peak anonymous resident memory (the heap: what the export holds), sampled every 10 ms, KiB.
    pub peak_anon_kib: Option<u64>,
    pub bytes: u64,
}

/// Exports the table in `dir/results.lance` to `dir/results.FORMAT` and measures it (call it in
/// a fresh process: the peak is the process's).
pub fn export_figure(dir: &std::path::Path, format: &str) -> crate::Result<ExportFigure> {
    let store = crate::sink::ResultStore::new(dir.join("results.lance").display().to_string());
    let out = dir.join(format!("results.{format}"));
    let rt = crate::util::runtime(2)?;
    let rows = rt.block_on(async {
        match store.open().await? {
            Some(ds) => ds.count_rows(None).await.map(|n| n as u64).map_err(crate::Error::lance(store.uri())),
            None => Ok(0),
        }
    })?;
    let rss_before_kib = rss_kib();
    let started = Instant::now();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = proc_status_kib("RssAnon:");
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(proc_status_kib("RssAnon:"));
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            peak.max(proc_status_kib("RssAnon:"))
        })
    };
    let result = rt.block_on(async {
        match format {
            "parquet" => crate::sink::export::export(&store, Some(&out), None).await,
            "jsonl" => crate::sink::export::export(&store, None, Some(&out)).await,
            // Reading alone: the table scanned, each batch dropped (what the exports share).
            "scan" => {
                use futures::TryStreamExt;
                if let Some(mut s) = store.stream(None).await? {
                    while s.try_next().await?.is_some() {}
                }
                std::fs::write(&out, b"").map_err(|e| crate::Error::io(&out, e))
            }
            // Reading and turning each batch into a polars frame.
            "frames" => {
                use futures::TryStreamExt;
                if let Some(mut s) = store.stream(None).await? {
                    while let Some(b) = s.try_next().await? {
                        drop(crate::sink::to_polars(&[b])?);
                    }
                }
                std::fs::write(&out, b"").map_err(|e| crate::Error::io(&out, e))
            }
            other => Err(crate::Error::Sink(format!("unknown export format {other:?} (parquet, jsonl; scan or frames: reading alone)"))),
        }
    });
    let seconds = started.elapsed().as_secs_f64();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak_anon_kib = sampler.join().unwrap_or(None);
    result?;
    let bytes = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    Ok(ExportFigure { rows, format: format.into(), seconds, rss_before_kib, peak_rss_kib: peak_rss_kib(), peak_anon_kib, bytes })
}

/// One prefill benchmark (`gemma-batch bench prefill`): `batch` prompts of `tokens` tokens
/// prefilled as one batch, with logits for the last position only or for every position.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PrefillFigure {
    pub all_logits: bool,
    pub batch: usize,
    pub tokens: usize,
    pub vocab: usize,
    /// The best of the timed repeats.
    pub seconds: f64,
    /// Logits positions computed per row (the graph's `num_logits_to_keep` or all of them).
    pub positions_per_row: usize,
    pub rss_before_kib: Option<u64>,
    pub peak_rss_kib: Option<u64>,
}

/// `batch` different prompts of exactly `tokens` token ids (generated questions run together,
/// cut to length): only the shape matters to a prefill.
pub fn prefill_prompts(model: &crate::model::Gemma4, batch: usize, tokens: usize) -> crate::Result<Vec<crate::model::Prepared>> {
    let mut prompts = Vec::with_capacity(batch);
    for row in 0..batch {
        let mut ids: Vec<u32> = Vec::new();
        let mut seed = 1_000 + row as u64;
        while ids.len() < tokens {
            let text = generation_prompts(16, seed).join(" ");
            ids.extend(model.prepare(&crate::model::Request { prompt: text, ..Default::default() })?.input_ids);
            seed += 1_000;
        }
        ids.truncate(tokens);
        prompts.push(crate::model::Prepared { input_ids: ids, images: Vec::new() });
    }
    Ok(prompts)
}

/// Times `repeats` prefills of the prompts (the best counts; the first also pays for first-run
/// allocations) and reads this process's memory figures.
pub fn prefill_figure(model: &mut crate::model::Gemma4, batch: usize, tokens: usize, all_logits: bool, repeats: usize) -> crate::Result<PrefillFigure> {
    let prompts = prefill_prompts(model, batch, tokens)?;
    let rss_before_kib = rss_kib();
    let mut best = f64::INFINITY;
    for _ in 0..repeats.max(1) {
        let start = Instant::now();
        model.bench_prefill(&prompts, all_logits)?;
        best = best.min(start.elapsed().as_secs_f64());
    }
    let chunks = tokens.div_ceil(model.prefill_chunk().max(1));
    let positions_per_row = if all_logits || !model.has_logits_to_keep() { tokens } else { chunks };
    Ok(PrefillFigure {
        all_logits,
        batch,
        tokens,
        vocab: model.vocab_size(),
        seconds: best,
        positions_per_row,
        rss_before_kib,
        peak_rss_kib: peak_rss_kib(),
    })
}
