//! Exactly once, whatever happens: overlapping runs, duplicate shards and racing commits,
//! duplicate rows, retries of failed rows, SIGTERM, changed filter sets, exports, and the
//! model files that make up a key. Each test runs the real binary on the tiny model.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

mod common;
use common::*;

/// A string column of a frame, as a vector.
fn strings(df: &polars::prelude::DataFrame, c: &str) -> Vec<Option<String>> {
    df.column(c).unwrap().str().unwrap().iter().map(|v| v.map(str::to_owned)).collect()
}

#[test]
fn a_second_run_of_the_same_spec_is_refused_or_waits_and_overlapping_runs_store_each_row_once() {
    let tmp = tempfile::tempdir().unwrap();
    let source = text_rows(tmp.path(), 48);
    let spec = write_spec(tmp.path(), &source, ECHO_TASK, "");
    let slow = |cmd: &mut Command| {
        cmd.env("GEMMA_BATCH_TEST_COMMIT_DELAY_MS", "300");
    };

    // The lease: while one run works, a second one exits 75 naming the holder...
    let first = bin().arg("run").arg(&spec).args(["--quiet", "--json"]).stdout(Stdio::piped()).tap(slow).spawn().unwrap();
    assert!(wait_until(120, || versions(tmp.path()) >= 2), "the first run committed nothing");
    let second = run(&spec, &[]);
    assert_eq!(second.status.code(), Some(75), "{}", stderr(&second));
    assert!(stderr(&second).contains("another gemma-batch"), "{}", stderr(&second));
    // ... or, with --wait, waits and then finds everything done.
    let waiting = run(&spec, &["--wait"]);
    let first = first.wait_with_output().unwrap();
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(waiting.status.success(), "{}", stderr(&waiting));
    assert_eq!(summary(&waiting)["skipped"].as_u64(), Some(48));
    assert_eq!(committed(tmp.path()).len(), 48);

    // Without the lease, two runs at once both do all the work; the table still has each
    // key once (merges on the key), and both runs' rows agree.
    let other = tempfile::tempdir().unwrap();
    let spec = write_spec(other.path(), &source, ECHO_TASK, "");
    let start = || bin().arg("run").arg(&spec).args(["--quiet", "--json", "--ignore-lease"]).stdout(Stdio::piped()).tap(slow).spawn().unwrap();
    let (a, b) = (start(), start());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success() && b.status.success(), "{} {}", stderr(&a), stderr(&b));
    let done = summary(&a)["done"].as_u64().unwrap() + summary(&b)["done"].as_u64().unwrap();
    assert!(done > 48, "the runs did not overlap ({done} rows done by both): the test tested nothing");
    let rows = committed(other.path()); // panics on a duplicate key
    assert_eq!(rows.len(), 48);
    assert_eq!(rows, committed(tmp.path()));
}

#[test]
fn four_shards_a_duplicate_shard_and_racing_commits_store_each_row_once() {
    let reference = tempfile::tempdir().unwrap();
    let spec = write_spec(reference.path(), &docs_source(None), DOC_TASKS, "");
    assert!(run(&spec, &[]).status.success());
    let want = committed(reference.path());
    assert_eq!(want.len(), 80);

    let tmp = tempfile::tempdir().unwrap();
    let spec = write_spec(tmp.path(), &docs_source(None), DOC_TASKS, "");
    let shard = |i: usize, extra: &[&str]| {
        bin().arg("run").arg(&spec).args(["--quiet", "--shard", &format!("{i}/4")]).args(extra)
            .env("GEMMA_BATCH_TEST_COMMIT_DELAY_MS", "100").spawn().unwrap()
    };
    let mut children: Vec<_> = (0..4).map(|i| shard(i, &[])).collect();
    // A replaced pod running shard 1 again while the first is still at work.
    children.push(shard(1, &["--ignore-lease"]));
    // `commit` racing the shards, over and over.
    let mut commits = 0;
    while children.iter_mut().any(|c| c.try_wait().unwrap().is_none()) {
        let out = bin().arg("commit").arg(&spec).arg("--wait").output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        commits += 1;
        let partial = committed(tmp.path()); // panics on duplicates
        for (k, v) in &partial {
            assert_eq!(want.get(k), Some(v));
        }
    }
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    assert!(commits >= 2, "commit ran {commits} times while shards ran: no race was tested");
    let out = bin().arg("commit").arg(&spec).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(committed(tmp.path()), want);
    // A shard of the same index while its lease is held (here by this test, as a pod on node-7
    // would) exits 75 naming the holder instead of working twice; once released, it runs.
    let lease_dir = tmp.path().join("out/leases");
    std::fs::create_dir_all(&lease_dir).unwrap();
    let lock = lease_dir.join("shard-2-of-4.lock");
    let held = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock).unwrap();
    held.try_lock().unwrap();
    std::fs::write(&lock, serde_json::json!({"host": "node-7", "pid": 1, "run_id": "elsewhere", "acquired_ms": 0}).to_string()).unwrap();
    let out = bin().arg("run").arg(&spec).args(["--quiet", "--shard", "2/4"]).output().unwrap();
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    assert!(stderr(&out).contains("node-7:1"), "{}", stderr(&out));
    drop(held);
    let out = bin().arg("run").arg(&spec).args(["--quiet", "--shard", "2/4"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn identical_rows_and_repeated_questions_are_done_once_and_a_new_id_gets_its_own_row() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("rows.jsonl");
    let line = |id: &str, text: &str| serde_json::json!({"id": id, "text": text}).to_string() + "\n";
    let rows = [line("a", "Ünïcödé row"), line("a", "Ünïcödé row"), line("b", "Ünïcödé row"), line("c", "other")].concat();
    std::fs::write(&data, rows).unwrap();
    let source = format!("[source]\nkind = \"jsonl\"\npath = \"{}\"\nid_column = \"id\"\ntext_column = \"text\"\n", data.display());
    let tasks = "[[task]]\nname = \"qa\"\nkind = \"vqa\"\nquestions = [\"Who?\", \"When?\", \"Who?\"]\nmax_new_tokens = 3\n";
    let spec = write_spec(tmp.path(), &source, tasks, "");
    let out = run(&spec, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let s = summary(&out);
    // 4 rows x 3 questions = 12 items; the second "a" (3) and each repeated "Who?" (3 rows
    // left) are duplicates: 6 items done.
    assert_eq!((s["items"].as_u64(), s["duplicates"].as_u64(), s["done"].as_u64()), (Some(12), Some(6), Some(6)));
    let df = table(tmp.path(), "results.lance");
    let ids = strings(&df, "input_id");
    let per_id: HashMap<String, usize> = ids.iter().flatten().fold(HashMap::new(), |mut m, id| {
        *m.entry(id.clone()).or_default() += 1;
        m
    });
    assert_eq!(per_id, HashMap::from([("a".into(), 2), ("b".into(), 2), ("c".into(), 2)]));
    assert_eq!(committed(tmp.path()).len(), 6);
}

#[test]
fn a_failed_row_is_retried_replaced_when_it_succeeds_and_kept_failed_after_max_attempts() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let photo = repo().join("datasets/photos/photo_000.png");
    std::fs::copy(&photo, data.join("there.png")).unwrap();
    let line = |id: &str, img: &str| serde_json::json!({"id": id, "image": img}).to_string() + "\n";
    std::fs::write(data.join("rows.jsonl"), [line("there", "there.png"), line("later", "later.png"), line("never", "never.png")].concat()).unwrap();
    let source = format!("[source]\nkind = \"jsonl\"\npath = \"{}\"\nid_column = \"id\"\nimage_column = \"image\"\n", data.join("rows.jsonl").display());
    let tasks = "[[task]]\nname = \"cap\"\nkind = \"caption\"\nmax_new_tokens = 3\n";
    let spec = write_spec(tmp.path(), &source, tasks, "");

    let out = run(&spec, &["--max-attempts", "2"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(summary(&out)["failed"].as_u64(), Some(2));

    // The missing file appears: the rerun retries both failed rows; one now succeeds.
    std::fs::copy(&photo, data.join("later.png")).unwrap();
    let out = run(&spec, &["--max-attempts", "2"]);
    let s = summary(&out);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!((s["retried"].as_u64(), s["done"].as_u64(), s["failed"].as_u64(), s["skipped"].as_u64()), (Some(2), Some(1), Some(1), Some(1)));

    // Attempts used up: the third run does not retry, and still exits 3 because the table
    // holds a failed row of this spec.
    let out = run(&spec, &["--max-attempts", "2"]);
    assert_eq!(out.status.code(), Some(3), "a rerun that retried nothing must still report the failed row: {}", stderr(&out));
    let s = summary(&out);
    assert_eq!((s["failed"].as_u64(), s["failed_not_retried"].as_u64(), s["failed_in_table"].as_u64()), (Some(0), Some(1), Some(1)));

    // One current row per key: `later` succeeded on its 2nd attempt, `never` failed twice.
    let df = table(tmp.path(), "results.lance");
    assert_eq!(df.height(), 3, "one row per (row, task)");
    let ids = strings(&df, "input_id");
    let errors = strings(&df, "error");
    let history = strings(&df, "errors");
    let attempts: Vec<Option<u32>> = df.column("attempts").unwrap().u32().unwrap().iter().collect();
    let at = |id: &str| ids.iter().position(|i| i.as_deref() == Some(id)).unwrap();
    let (later, never) = (at("later"), at("never"));
    assert_eq!((errors[later].as_deref(), attempts[later]), (None, Some(2)));
    assert!(history[later].as_deref().unwrap().contains("later.png"), "the earlier failure is kept: {:?}", history[later]);
    assert_eq!(attempts[never], Some(2));
    let reasons: Vec<String> = serde_json::from_str(history[never].as_deref().unwrap()).unwrap();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons.iter().all(|r| r.contains("never.png")), "{reasons:?}");

    // --no-retry-failed: nothing retried even with attempts left.
    let out = run(&spec, &["--max-attempts", "5", "--no-retry-failed"]);
    assert_eq!(summary(&out)["retried"].as_u64(), Some(0));
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn sigterm_commits_the_rows_in_flight_and_exits_resumable() {
    let tmp = tempfile::tempdir().unwrap();
    let source = text_rows(tmp.path(), 200);
    let reference = tempfile::tempdir().unwrap();
    let spec = write_spec(reference.path(), &source, ECHO_TASK, "");
    assert!(run(&spec, &[]).status.success());
    let want = committed(reference.path());

    let spec = write_spec(tmp.path(), &source, ECHO_TASK, "");
    let child = bin().arg("run").arg(&spec).args(["--quiet", "--json"]).stdout(Stdio::piped()).stderr(Stdio::piped())
        .env("GEMMA_BATCH_TEST_COMMIT_DELAY_MS", "300").spawn().unwrap();
    assert!(wait_until(120, || versions(tmp.path()) >= 3), "no commit before the signal");
    kill(child.id(), "TERM");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(143), "SIGTERM exits 143 after committing: {}", stderr(&out));
    let s = summary(&out);
    assert_eq!((s["interrupted"].as_bool(), s["signal"].as_i64()), (Some(true), Some(15)));
    let partial = committed(tmp.path());
    assert!(partial.len() < 200, "the run ended before the signal: the test tested nothing");
    assert_eq!(partial.len() as u64, s["done"].as_u64().unwrap(), "every row in flight was committed");
    let out = run(&spec, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(summary(&out)["skipped"].as_u64(), Some(partial.len() as u64));
    assert_eq!(committed(tmp.path()), want);
}

#[test]
fn a_changed_filter_set_rescreens_its_rows_and_each_row_names_the_set() {
    let tmp = tempfile::tempdir().unwrap();
    let filters = tmp.path().join("filters");
    std::fs::create_dir(&filters).unwrap();
    let set = |threshold: &str| format!("description = \"test\"\n[pii]\nthreshold = {threshold}\naction = \"redact\"\n");
    std::fs::write(filters.join("mine.toml"), set("0.5")).unwrap();
    let source = text_rows(tmp.path(), 6);
    let spec = write_spec(tmp.path(), &source, ECHO_TASK, "");
    let text = std::fs::read_to_string(&spec).unwrap() + "[filters]\noutput = \"mine\"\n";
    std::fs::write(&spec, text).unwrap();

    let out = run(&spec, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let first = summary(&out)["filter_sets"].as_str().unwrap().to_string();
    assert!(first.starts_with("output=mine@"), "{first}");
    assert!(run(&spec, &[]).status.success());
    // Unchanged set: nothing to do. Changed set: every row is screened again.
    assert_eq!(summary(&run(&spec, &[]))["skipped"].as_u64(), Some(6));
    std::fs::write(filters.join("mine.toml"), set("0.3")).unwrap();
    let out = run(&spec, &[]);
    let s = summary(&out);
    assert_eq!((s["done"].as_u64(), s["skipped"].as_u64()), (Some(6), Some(0)), "{}", stderr(&out));
    let second = s["filter_sets"].as_str().unwrap().to_string();
    assert_ne!(first, second);
    let df = table(tmp.path(), "results.lance");
    let sets = strings(&df, "filter_sets");
    assert_eq!(sets.iter().filter(|s| s.as_deref() == Some(first.as_str())).count(), 6);
    assert_eq!(sets.iter().filter(|s| s.as_deref() == Some(second.as_str())).count(), 6);
}

#[test]
fn exports_replace_the_old_file_whole_instead_of_rewriting_it() {
    let tmp = tempfile::tempdir().unwrap();
    let source = text_rows(tmp.path(), 8);
    let spec = write_spec(tmp.path(), &source, ECHO_TASK, "jsonl = \"results.jsonl\"\nparquet = \"results.parquet\"");
    assert!(run(&spec, &["--limit", "4"]).status.success());
    let export = tmp.path().join("results.jsonl");
    let before = std::fs::read_to_string(&export).unwrap();
    assert_eq!(before.lines().count(), 4);
    // A reader that opened the export before the next run keeps reading the whole old file
    // (a rewrite in place would truncate it under the reader).
    let mut reader = std::fs::File::open(&export).unwrap();
    assert!(run(&spec, &[]).status.success());
    let mut old = String::new();
    reader.read_to_string(&mut old).unwrap();
    assert_eq!(old, before);
    assert_eq!(std::fs::read_to_string(&export).unwrap().lines().count(), 8);
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".tmp")).collect();
    assert!(leftovers.is_empty(), "temporary export files left behind: {leftovers:?}");
}

#[test]
fn an_over_long_prompt_fails_its_own_row_only() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("rows.jsonl");
    let long = "lorem ipsum dolor sit amet ".repeat(4000);
    let lines: String = [("short1", "A short row."), ("long", long.as_str()), ("short2", "Another short row."), ("short3", "Ünïcode row.")]
        .iter()
        .map(|(id, text)| serde_json::json!({"id": id, "text": text}).to_string() + "\n")
        .collect();
    std::fs::write(&data, lines).unwrap();
    let source = format!("[source]\nkind = \"jsonl\"\npath = \"{}\"\nid_column = \"id\"\ntext_column = \"text\"\n", data.display());
    let spec = write_spec(tmp.path(), &source, ECHO_TASK, "");
    let out = run(&spec, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let s = summary(&out);
    assert_eq!((s["done"].as_u64(), s["failed"].as_u64()), (Some(3), Some(1)));
    let df = table(tmp.path(), "results.lance");
    let (ids, errors) = (strings(&df, "input_id"), strings(&df, "error"));
    for (id, e) in ids.iter().zip(&errors) {
        match id.as_deref() {
            Some("long") => assert!(e.as_deref().is_some_and(|e| e.contains("token")), "{e:?}"),
            _ => assert!(e.is_none(), "{id:?} failed with {e:?}"),
        }
    }
}

#[test]
fn a_template_naming_a_missing_column_is_an_error_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let source = text_rows(tmp.path(), 3);
    let tasks = "[[task]]\nname = \"t\"\nkind = \"prompt\"\nprompt = \"Title: {{ titel }}\"\nmax_new_tokens = 3\n";
    let spec = write_spec(tmp.path(), &source, tasks, "");
    let out = run(&spec, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("`titel`") && stderr(&out).contains("text"), "{}", stderr(&out));
    assert!(!tmp.path().join("out/results.lance").exists() || committed(tmp.path()).is_empty());
}

#[test]
fn keys_depend_on_the_model_files_of_the_variant_in_use_only() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    copy_dir(&repo().join("models/tiny-gemma4"), &model, &|name: &str| !name.contains("_q4"));
    let source = text_rows(tmp.path(), 4);
    let spec = write_spec(tmp.path(), &source, ECHO_TASK, "");
    let text = std::fs::read_to_string(&spec).unwrap().replace(&repo().join("models/tiny-gemma4").display().to_string(), &model.display().to_string());
    std::fs::write(&spec, text).unwrap();
    let first = summary(&run(&spec, &[]));
    assert_eq!(first["done"].as_u64(), Some(4));
    // A q4 export added beside the fp32 one changes nothing the fp32 run uses.
    for f in std::fs::read_dir(repo().join("models/tiny-gemma4/onnx")).unwrap().flatten() {
        if f.file_name().to_string_lossy().contains("_q4") {
            std::fs::copy(f.path(), model.join("onnx").join(f.file_name())).unwrap();
        }
    }
    let second = summary(&run(&spec, &[]));
    assert_eq!(second["model_hash"], first["model_hash"]);
    assert_eq!(second["skipped"].as_u64(), Some(4));
    // A changed file of the variant in use is a new model: new keys.
    let config = model.join("generation_config.json");
    let mut g: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    g["note"] = "changed".into();
    std::fs::write(&config, g.to_string()).unwrap();
    let third = summary(&run(&spec, &[]));
    assert_ne!(third["model_hash"], first["model_hash"]);
    assert_eq!(third["done"].as_u64(), Some(4));
}

fn copy_dir(from: &Path, to: &Path, keep: &dyn Fn(&str) -> bool) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(&name), keep);
        } else if keep(&name) {
            std::fs::copy(e.path(), to.join(&name)).unwrap();
        }
    }
}

#[test]
fn the_policy_cache_evicts_without_panicking_when_full_with_two_image_tasks() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = repo().join("datasets/photos");
    let mut lines = String::new();
    for (i, f) in std::fs::read_dir(&photos).unwrap().flatten().filter(|f| f.path().extension().is_some_and(|e| e == "png")).take(6).enumerate() {
        lines += &(serde_json::json!({"id": format!("p{i}"), "image": f.path().display().to_string()}).to_string() + "\n");
    }
    std::fs::write(tmp.path().join("rows.jsonl"), lines).unwrap();
    let source = format!(
        "[source]\nkind = \"jsonl\"\npath = \"{}\"\nid_column = \"id\"\nimage_column = \"image\"\nconfine_images = false\n",
        tmp.path().join("rows.jsonl").display()
    );
    let tasks = "[[task]]\nname = \"a\"\nkind = \"caption\"\nmax_new_tokens = 2\n\n[[task]]\nname = \"b\"\nkind = \"vqa\"\nquestions = [\"Colour?\"]\nmax_new_tokens = 2\n";
    let spec = write_spec(tmp.path(), &source, tasks, "");
    let text = std::fs::read_to_string(&spec).unwrap().replace("batch_size = 4", "batch_size = 2") + "[filters]\ninput = \"default\"\n";
    std::fs::write(&spec, text).unwrap();
    // Two entries: every batch evicts entries the same batch looked up.
    let out = bin().arg("run").arg(&spec).args(["--quiet", "--json"]).env("GEMMA_BATCH_POLICY_CACHE_ENTRIES", "2").output().unwrap();
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(summary(&out)["done"].as_u64(), Some(12));
}

/// `Command` builder helper: apply a closure and keep chaining.
trait Tap {
    fn tap(&mut self, f: impl FnOnce(&mut Self)) -> &mut Self;
}

impl Tap for Command {
    fn tap(&mut self, f: impl FnOnce(&mut Self)) -> &mut Self {
        f(self);
        self
    }
}

#[test]
fn a_shard_that_reads_a_row_it_failed_before_replaces_the_failed_record_at_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let line = |id: &str, img: &str| serde_json::json!({"id": id, "image": img}).to_string() + "\n";
    std::fs::write(data.join("rows.jsonl"), [line("later", "later.png"), line("other", "other.png")].concat()).unwrap();
    let source = format!("[source]\nkind = \"jsonl\"\npath = \"{}\"\nid_column = \"id\"\nimage_column = \"image\"\n", data.join("rows.jsonl").display());
    let spec = write_spec(tmp.path(), &source, "[[task]]\nname = \"cap\"\nkind = \"caption\"\nmax_new_tokens = 3\n", "");
    let shard_then_commit = || {
        let out = bin().arg("run").arg(&spec).args(["--quiet", "--shard", "0/1"]).output().unwrap();
        assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
        // The table holds failed rows (`other` never reads): the commit lists them and exits 3.
        let out = bin().arg("commit").arg(&spec).output().unwrap();
        assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
        assert!(stderr(&out).contains("other [cap]: image column"), "{}", stderr(&out));
    };
    shard_then_commit();
    assert_eq!(table(tmp.path(), "results.lance").height(), 2);
    std::fs::copy(repo().join("datasets/photos/photo_000.png"), data.join("later.png")).unwrap();
    shard_then_commit(); // `other` still fails: exit 3
    let df = table(tmp.path(), "results.lance");
    let (ids, errors) = (strings(&df, "input_id"), strings(&df, "error"));
    assert_eq!(df.height(), 2, "one row per (row, task): {ids:?} {errors:?}");
    let later = ids.iter().position(|i| i.as_deref() == Some("later")).unwrap();
    assert_eq!(errors[later], None);
}
