//! The cluster recipes in pipelines/deploy/, run here as the schedulers would run them: N shard
//! processes with the variables the scheduler sets, then the commit, once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::s3::S3Server;
use common::*;

/// key -> (output, error) of a JSON lines export, panicking on a key exported twice.
fn exported(path: &Path) -> HashMap<String, (Option<String>, Option<String>)> {
    let mut rows = HashMap::new();
    for line in std::fs::read_to_string(path).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let text = |k: &str| v[k].as_str().map(str::to_owned);
        let key = text("key").unwrap();
        assert!(rows.insert(key.clone(), (text("output"), text("error"))).is_none(), "{key} is exported twice");
    }
    rows
}

/// 15 text rows and one row without an id (a failed row, wherever its shard is).
fn corpus(dir: &Path) -> String {
    let mut lines: Vec<String> =
        (0..15).map(|i| serde_json::json!({"id": format!("r{i:02}"), "text": format!("Row {i}: a short line.")}).to_string()).collect();
    lines.push(serde_json::json!({"text": "this row has no id"}).to_string());
    let data = dir.join("rows.jsonl");
    std::fs::write(&data, lines.join("\n") + "\n").unwrap();
    format!("[source]\nkind = \"jsonl\"\npath = \"{}\"\nid_column = \"id\"\ntext_column = \"text\"\n", data.display())
}

/// Every committed (row, task) exactly once: 16 rows, one of them failed.
fn check_committed_once(dir: &Path) {
    check_once(committed(dir));
}

fn check_once(rows: HashMap<String, (Option<String>, Option<String>)>) {
    assert_eq!(rows.len(), 16, "one row per (row, task): {rows:?}");
    let failed: Vec<_> = rows.values().filter(|(_, e)| e.is_some()).collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].1.as_deref().unwrap().contains("id column \"id\" is missing"), "{failed:?}");
}

/// The values of a YAML flow list on the line after `key:` in `text` (`command: [...]`).
fn flow_list(line: &str) -> Vec<String> {
    let list = &line[line.find('[').unwrap()..];
    serde_json::from_str(list).unwrap_or_else(|e| panic!("{line}: {e}"))
}

fn deploy(name: &str) -> String {
    std::fs::read_to_string(repo().join("pipelines/deploy").join(name)).unwrap()
}

fn bin_path() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_gemma-batch"))
}

#[test]
fn kubernetes_indexed_job_shards_then_commits_once_and_fails_rows_without_retrying_them() {
    let yaml = deploy("kubernetes-indexed-job.yaml");
    // The shard Job: its completions, its command, and exit 3 failing the index (no retry).
    let completions: usize = yaml.lines().find_map(|l| l.trim().strip_prefix("completions: ")).unwrap().parse().unwrap();
    let commands: Vec<Vec<String>> = yaml.lines().filter(|l| l.trim_start().starts_with("command: [\"gemma-batch\"")).map(flow_list).collect();
    assert_eq!(commands.len(), 2, "a shard command and a commit command");
    let policy = &yaml[yaml.find("podFailurePolicy:").expect("a podFailurePolicy")..];
    let fail_index = policy.lines().skip_while(|l| !l.contains("action: FailIndex")).nth(1).unwrap();
    assert!(fail_index.contains("values: [3]"), "exit 3 fails the index: {fail_index}");
    assert!(yaml.contains("backoffLimitPerIndex:") && yaml.contains("Complete|Failed"), "the commit waits for the shards to end either way");
    assert!(commands[0].contains(&format!("{completions}")), "--shards matches completions: {:?}", commands[0]);

    // The manifest's pipeline reads and writes a bucket: no shared volume.
    let embedded: String = yaml
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("pipeline.toml: |"))
        .skip(1)
        .take_while(|l| l.starts_with("    "))
        .map(|l| format!("{}\n", &l[4..]))
        .collect();
    let pipeline: toml::Value = toml::from_str(&embedded).unwrap_or_else(|e| panic!("{e}: {embedded}"));
    assert!(pipeline["sink"]["dir"].as_str().unwrap().starts_with("s3://"), "{embedded}");
    assert!(pipeline["source"]["path"].as_str().unwrap().starts_with("s3://"), "{embedded}");
    assert!(!yaml.contains("persistentVolumeClaim") && yaml.contains("secretRef"), "credentials from a Secret, no shared volume");

    // Rendered here against a local S3 server: the sink in a bucket, the export local.
    let tmp = tempfile::tempdir().unwrap();
    let server = S3Server::start(&tmp.path().join("s3-server.log"), "deploy");
    let export = tmp.path().join("results.jsonl");
    let spec = write_spec(tmp.path(), &corpus(tmp.path()), ECHO_TASK, &format!("jsonl = \"{}\"", export.display()));
    let text = std::fs::read_to_string(&spec).unwrap();
    let local_sink = format!("dir = \"{}\"", tmp.path().join("out").display());
    assert!(text.contains(&local_sink));
    std::fs::write(&spec, text.replace(&local_sink, "dir = \"s3://deploy/sink\"")).unwrap();
    let in_manifest = "/config/pipeline.toml";
    let render = |cmd: &[String]| -> Command {
        let mut c = Command::new(bin_path());
        c.args(cmd[1..].iter().map(|a| if a == in_manifest { spec.display().to_string() } else { a.clone() }));
        c.envs(server.env());
        c
    };
    let shards: Vec<_> = (0..completions)
        .map(|i| render(&commands[0]).env("JOB_COMPLETION_INDEX", i.to_string()).env_remove("SLURM_ARRAY_TASK_ID").spawn().unwrap())
        .collect();
    let codes: Vec<i32> = shards.into_iter().map(|mut c| c.wait().unwrap().code().unwrap()).collect();
    assert_eq!(codes.iter().filter(|&&c| c == 3).count(), 1, "the shard with the failed row exits 3, the others 0: {codes:?}");
    assert!(codes.iter().all(|&c| c == 0 || c == 3), "{codes:?}");
    assert!(!export.exists() && !tmp.path().join("out").exists(), "shards do not commit, and write nothing locally");
    let out = render(&commands[1]).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "the commit reports the failed row: {}", stderr(&out));
    assert!(stderr(&out).contains("1 failed rows") && stderr(&out).contains("id column \"id\" is missing"), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("committed") && stdout.contains("(16 rows)"), "{stdout}");
    check_once(exported(&export));
    // A retried commit Job adds nothing.
    let again = render(&commands[1]).output().unwrap();
    assert_eq!(again.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing to commit"));
    check_once(exported(&export));
    // Every shard's run record is kept, though all of them created `runs.lance` at once.
    let history = render(&["gemma-batch".into(), "history".into(), in_manifest.into(), "--json".into()]).output().unwrap();
    assert!(history.status.success(), "{}", stderr(&history));
    let history: serde_json::Value = serde_json::from_slice(&history.stdout).unwrap();
    assert_eq!(history["runs"].as_array().unwrap().len(), completions + 2, "8 shards and 2 commits: {history}");
}

#[test]
fn slurm_script_submits_an_array_and_a_commit_after_any_and_both_run_once() {
    let script = repo().join("pipelines/deploy/slurm-array.sh");
    let text = deploy("slurm-array.sh");
    let range = text.lines().find_map(|l| l.strip_prefix("#SBATCH --array=")).unwrap();
    let (lo, hi) = range.split_once('-').unwrap();
    let (lo, hi): (usize, usize) = (lo.parse().unwrap(), hi.parse().unwrap());

    let tmp = tempfile::tempdir().unwrap();
    let spec = write_spec(tmp.path(), &corpus(tmp.path()), ECHO_TASK, "");
    // A stand-in sbatch records each submission (one argument a line, a blank line after).
    let bin_dir = tmp.path().join("bin");
    std::fs::create_dir(&bin_dir).unwrap();
    let log = tmp.path().join("sbatch.log");
    let sbatch = bin_dir.join("sbatch");
    std::fs::write(&sbatch, format!("#!/usr/bin/env bash\nfor a in \"$@\"; do printf '%s\\n' \"$a\" >> {log}; done\necho >> {log}\necho $((1000 + $(grep -c '^$' {log})))\n", log = log.display())).unwrap();
    Command::new("chmod").arg("+x").arg(&sbatch).status().unwrap();
    std::os::unix::fs::symlink(bin_path(), bin_dir.join("gemma-batch")).unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());

    let out = Command::new("bash").arg(&script).arg(&spec).env("PATH", &path).env_remove("SLURM_ARRAY_TASK_ID").output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let submitted = std::fs::read_to_string(&log).unwrap();
    let jobs: Vec<Vec<&str>> = submitted.split("\n\n").filter(|j| !j.trim().is_empty()).map(|j| j.lines().collect()).collect();
    assert_eq!(jobs.len(), 2, "{submitted}");
    assert_eq!(jobs[0], ["--parsable", script.to_str().unwrap(), spec.to_str().unwrap()], "the array job is this script");
    assert!(jobs[1].contains(&"--dependency=afterany:1001"), "the commit starts after every task ends: {:?}", jobs[1]);
    let wrap = jobs[1][jobs[1].iter().position(|a| *a == "--wrap").unwrap() + 1];

    // The array tasks, as Slurm starts them.
    let count = hi - lo + 1;
    let tasks: Vec<_> = (lo..=hi)
        .map(|i| {
            Command::new("bash")
                .arg(&script)
                .arg(&spec)
                .env("PATH", &path)
                .env("SLURM_ARRAY_TASK_ID", i.to_string())
                .env("SLURM_ARRAY_TASK_MIN", lo.to_string())
                .env("SLURM_ARRAY_TASK_COUNT", count.to_string())
                .env("SLURM_JOB_ID", "1001")
                .env_remove("JOB_COMPLETION_INDEX")
                .spawn()
                .unwrap()
        })
        .collect();
    let codes: Vec<i32> = tasks.into_iter().map(|mut c| c.wait().unwrap().code().unwrap()).collect();
    assert_eq!(codes.iter().filter(|&&c| c == 3).count(), 1, "{codes:?}");
    assert!(committed(tmp.path()).is_empty(), "tasks do not commit");
    // The commit job, as sbatch --wrap runs it.
    let out = Command::new("sh").arg("-c").arg(wrap).env("PATH", &path).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "the commit reports the failed row: {}", stderr(&out));
    assert!(stderr(&out).contains("1 failed rows"), "{}", stderr(&out));
    check_committed_once(tmp.path());
}
