//! `gemma-batch history` and `compact` on a table that many small commits built.

use std::collections::HashMap;

mod common;
use common::*;

fn history(spec: &std::path::Path) -> serde_json::Value {
    let out = bin().arg("history").arg(spec).arg("--json").output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Version -> (run id, tags) from `history --json`.
fn by_version(h: &serde_json::Value) -> HashMap<u64, (Option<String>, Vec<String>)> {
    h["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let tags = v["tags"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect();
            (v["version"].as_u64().unwrap(), (v["run_id"].as_str().map(str::to_owned), tags))
        })
        .collect()
}

#[test]
fn history_names_the_run_of_every_version_and_compact_keeps_latest_and_tagged() {
    let tmp = tempfile::tempdir().unwrap();
    // 12 rows, 2 rows a commit: a run makes 6 versions.
    let source = text_rows(tmp.path(), 12);
    let spec = write_spec(tmp.path(), &source, ECHO_TASK, "");
    let text = std::fs::read_to_string(&spec).unwrap().replace("commit_every = 8", "commit_every = 2");
    std::fs::write(&spec, &text).unwrap();
    let first = summary(&run(&spec, &["--limit", "6"]));
    let second = summary(&run(&spec, &[]));
    assert_eq!((first["done"].as_u64(), second["done"].as_u64(), second["skipped"].as_u64()), (Some(6), Some(6), Some(6)));
    let want = committed(tmp.path());
    assert_eq!(want.len(), 12);

    let h = history(&spec);
    let runs: Vec<&str> = h["runs"].as_array().unwrap().iter().map(|r| r["run_id"].as_str().unwrap()).collect();
    assert_eq!(runs, [first["run_id"].as_str().unwrap(), second["run_id"].as_str().unwrap()]);
    let versions = by_version(&h);
    for (s, n) in [(&first, 3), (&second, 3)] {
        let id = s["run_id"].as_str().unwrap();
        let made: Vec<u64> = s["versions"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        assert_eq!(made.len(), n, "2 rows a commit: {s}");
        for v in &made {
            assert_eq!(versions[v].0.as_deref(), Some(id), "version {v} names the run that wrote it");
        }
        // The run's last version carries its tag, and only that one.
        let tagged: Vec<u64> = versions.iter().filter(|(_, (_, t))| t.contains(&format!("run-{id}"))).map(|(v, _)| *v).collect();
        assert_eq!(tagged, [s["version"].as_u64().unwrap()]);
    }
    let run0 = &h["runs"][0];
    assert_eq!(run0["summary"]["done"], 6);
    assert_eq!(run0["spec_hash"].as_str().unwrap().len(), 16);
    // The table view prints every version with its run.
    let out = bin().arg("history").arg(&spec).output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains(&format!("run-{}", first["run_id"].as_str().unwrap())), "{table}");
    assert_eq!(table.lines().count(), 2 + versions.len(), "{table}");

    // Compact, keeping no untagged old version: fragments merge, rows stay, the latest and the
    // tagged versions stay readable, the intermediate commits go.
    let out = bin().arg("compact").arg(&spec).args(["--older-than", "0"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("results.lance: fragments 6 -> 1"), "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(committed(tmp.path()), want, "compaction changes no row");
    let after = by_version(&history(&spec));
    let tagged: Vec<u64> = [&first, &second].iter().map(|s| s["version"].as_u64().unwrap()).collect();
    let latest = *after.keys().max().unwrap();
    let mut kept: Vec<u64> = after.keys().copied().collect();
    kept.sort();
    let mut expect = tagged.clone();
    expect.push(latest);
    assert_eq!(kept, expect, "only the tagged and the latest versions are left");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = gemma_batch::sink::ResultStore::new(tmp.path().join("out/results.lance").display().to_string());
    let rows = |v: u64| gemma_batch::sink::to_polars(&rt.block_on(store.read(Some(v), Some(&["key"]))).unwrap()).unwrap().height();
    assert_eq!((rows(tagged[0]), rows(tagged[1]), rows(latest)), (6, 12, 12), "tagged versions read as they were");

    // Later runs go on as before; --keep-versions 1 keeps only the latest and the tagged.
    let spec2 = write_spec(tmp.path(), &text_rows(tmp.path(), 14), ECHO_TASK, "");
    let third = summary(&run(&spec2, &[]));
    assert_eq!((third["done"].as_u64(), third["skipped"].as_u64()), (Some(2), Some(12)));
    let out = bin().arg("compact").arg(&spec2).args(["--keep-versions", "1"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let left = by_version(&history(&spec2));
    assert!(left.iter().filter(|(_, (_, t))| t.is_empty()).count() <= 1, "one untagged version (the latest) at most: {left:?}");
    assert_eq!(left.values().filter(|(_, t)| !t.is_empty()).count(), 3, "three runs, three tags: {left:?}");
    assert_eq!(committed(tmp.path()).len(), 14);
}
