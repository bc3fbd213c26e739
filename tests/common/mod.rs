//! Helpers shared by the end-to-end tests: the binary, specs in temp dirs, committed rows.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use gemma_batch::sink::{to_polars, ResultStore};

pub mod s3;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gemma-batch"))
}

pub fn run(spec: &Path, extra: &[&str]) -> Output {
    bin().arg("run").arg(spec).args(["--quiet", "--json"]).args(extra).output().expect("run gemma-batch")
}

pub fn summary(out: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|_| panic!("no JSON summary; stderr: {}", String::from_utf8_lossy(&out.stderr)))
}

/// A spec in `dir` over `source` (absolute paths), with the given tasks.
pub fn write_spec(dir: &Path, source: &str, tasks: &str, extra_sink: &str) -> PathBuf {
    let spec = format!(
        r#"name = "test"
{source}
[model]
dir = "{model}"
device = "cpu"
batch_size = 4
{tasks}
[sink]
dir = "{out}"
commit_every = 8
{extra_sink}
"#,
        model = repo().join("models/tiny-gemma4").display(),
        out = dir.join("out").display(),
    );
    let path = dir.join("spec.toml");
    std::fs::write(&path, spec).unwrap();
    path
}

/// (key -> output) of every committed row; panics on a duplicate key.
pub fn committed(dir: &Path) -> HashMap<String, (Option<String>, Option<String>)> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = ResultStore::new(dir.join("out/results.lance").display().to_string());
    let batches = rt.block_on(store.read(None, Some(&["key", "output", "error"]))).unwrap();
    let df = to_polars(&batches).unwrap();
    let mut rows = HashMap::new();
    if df.height() == 0 {
        return rows;
    }
    let keys = df.column("key").unwrap().str().unwrap().clone();
    let outputs = df.column("output").unwrap().str().unwrap().clone();
    let errors = df.column("error").unwrap().str().unwrap().clone();
    for i in 0..df.height() {
        let key = keys.get(i).unwrap().to_string();
        let prev = rows.insert(key.clone(), (outputs.get(i).map(str::to_owned), errors.get(i).map(str::to_owned)));
        assert!(prev.is_none(), "row {key} is in the dataset twice");
    }
    rows
}

pub const DOC_TASKS: &str = r#"
[[task]]
name = "qa"
kind = "vqa"
questions = ["What is the total amount?"]
max_new_tokens = 6

[[task]]
name = "fields"
kind = "extract"
fields = ["total", "date"]
max_new_tokens = 8
"#;

pub fn docs_source(filter: Option<&str>) -> String {
    format!(
        "[source]\nkind = \"jsonl\"\npath = \"{}\"\nid_column = \"id\"\nimage_column = \"image\"\n{}",
        repo().join("datasets/docs.jsonl").display(),
        filter.map(|f| format!("filter = \"{f}\"\n")).unwrap_or_default()
    )
}


/// Every row of a results table as a polars frame (empty when there is none).
pub fn table(dir: &Path, name: &str) -> polars::prelude::DataFrame {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = ResultStore::new(dir.join("out").join(name).display().to_string());
    to_polars(&rt.block_on(store.read(None, None)).unwrap()).unwrap()
}

/// The committed versions of `out/results.lance` so far (0 before it exists).
pub fn versions(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("out/results.lance/_versions")).map(|d| d.count()).unwrap_or(0)
}

/// Polls `done` every 20 ms for up to `secs` seconds.
pub fn wait_until(secs: u64, mut done: impl FnMut() -> bool) -> bool {
    let t0 = std::time::Instant::now();
    while t0.elapsed().as_secs() < secs {
        if done() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    done()
}

/// A JSON lines file of `n` text rows `r000`.. in `dir`, and a source spec for it.
pub fn text_rows(dir: &Path, n: usize) -> String {
    let data = dir.join("rows.jsonl");
    let jsonl: String = (0..n)
        .map(|i| serde_json::json!({"id": format!("r{i:03}"), "text": format!("Row {i}: the quick brown fox.")}).to_string() + "\n")
        .collect();
    std::fs::write(&data, jsonl).unwrap();
    format!("[source]\nkind = \"jsonl\"\npath = \"{}\"\nid_column = \"id\"\ntext_column = \"text\"\n", data.display())
}

pub const ECHO_TASK: &str = "[[task]]\nname = \"echo\"\nkind = \"prompt\"\nprompt = \"Repeat: {{ text }}\"\nmax_new_tokens = 6\n";

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn kill(pid: u32, signal: &str) {
    assert!(Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]).status().unwrap().success());
}

/// Runs `gemma-batch run SPEC --quiet --json`, killing it (and failing) after `limit`.
pub fn run_within(spec: &Path, limit: std::time::Duration) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gemma-batch"))
        .arg("run")
        .arg(spec)
        .args(["--quiet", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run gemma-batch");
    // Drain the pipes on threads so that a chatty child cannot block on a full pipe.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut b).ok();
        b
    });
    let err_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut stderr, &mut b).ok();
        b
    });
    let t0 = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if t0.elapsed() > limit {
            child.kill().ok();
            child.wait().ok();
            let stderr = String::from_utf8_lossy(&err_t.join().unwrap()).into_owned();
            panic!("gemma-batch did not finish within {limit:?} (a hang?); stderr: {stderr}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    Output { status, stdout: out_t.join().unwrap(), stderr: err_t.join().unwrap() }
}

