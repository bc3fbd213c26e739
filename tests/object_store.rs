//! Object storage end to end, against a real S3-compatible server (moto's, started by
//! `tools/s3-server.sh`): a Parquet source and its images read from a bucket, four shards
//! staging into a sink in the bucket with their leases there, one commit, exports uploaded,
//! history read back, and every (row, task) stored exactly once.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Stdio};

use gemma_batch::objects::{block_on, Location};
use gemma_batch::sink::{to_polars, ResultStore};
use polars::prelude::*;

mod common;
use common::s3::S3Server;
use common::*;

fn upload(from: &Path, uri: &str) {
    let (from, uri) = (from.to_path_buf(), uri.to_string());
    block_on(async move { Location::open(&uri).await?.upload(&from).await }).unwrap();
}

/// Names of the objects under a prefix.
fn objects(uri: &str) -> Vec<String> {
    let uri = uri.to_string();
    block_on(async move { Location::open(&uri).await?.list().await }).unwrap().into_iter().map(|o| o.name).collect()
}

/// (input id, task) -> (output, error) of a results table, panicking on a key stored twice.
fn stored(uri: &str) -> HashMap<(String, String), (Option<String>, Option<String>)> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let batches = rt.block_on(ResultStore::new(uri.to_string()).read(None, Some(&["key", "input_id", "task", "output", "error"]))).unwrap();
    let df = to_polars(&batches).unwrap();
    let col = |c: &str| df.column(c).unwrap().str().unwrap().clone();
    let (keys, ids, tasks, outputs, errors) = (col("key"), col("input_id"), col("task"), col("output"), col("error"));
    let mut seen = std::collections::HashSet::new();
    let mut rows = HashMap::new();
    for i in 0..df.height() {
        assert!(seen.insert(keys.get(i).unwrap().to_string()), "key {:?} is stored twice", keys.get(i));
        let id = (ids.get(i).unwrap().to_string(), tasks.get(i).unwrap().to_string());
        let prev = rows.insert(id.clone(), (outputs.get(i).map(str::to_owned), errors.get(i).map(str::to_owned)));
        assert!(prev.is_none(), "{id:?} is stored twice");
    }
    rows
}

fn spec_text(kind: &str, source: &str, sink: &str, exports: &str) -> String {
    format!(
        "name = \"s3\"\n[source]\nkind = \"{kind}\"\npath = \"{source}\"\nid_column = \"id\"\nimage_column = \"image\"\n\
         [model]\ndir = \"{model}\"\ndevice = \"cpu\"\nbatch_size = 4\n{DOC_TASKS}\n[sink]\ndir = \"{sink}\"\ncommit_every = 4\n{exports}\n",
        model = repo().join("models/tiny-gemma4").display(),
    )
}

#[test]
fn four_shards_read_a_parquet_source_from_a_bucket_and_commit_into_it_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let server = S3Server::start(&tmp.path().join("s3-server.log"), "corpus");
    for (k, v) in server.env() {
        // Set before any thread of this test reads the environment; the only test here.
        std::env::set_var(k, v);
    }

    // A Parquet corpus of 12 documents and one row whose image is not in the bucket.
    let docs = std::fs::read_to_string(repo().join("datasets/docs.jsonl")).unwrap();
    let mut ids = Vec::new();
    let mut images = Vec::new();
    for line in docs.lines().take(12) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        ids.push(v["id"].as_str().unwrap().to_string());
        images.push(v["image"].as_str().unwrap().to_string());
    }
    ids.push("no_image".into());
    images.push("docs/not-there.png".into());
    let mut df = df!("id" => &ids, "image" => &images).unwrap();
    let local = tmp.path().join("local");
    std::fs::create_dir_all(local.join("docs")).unwrap();
    ParquetWriter::new(std::fs::File::create(local.join("docs.parquet")).unwrap()).finish(&mut df).unwrap();
    upload(&local.join("docs.parquet"), "s3://corpus/data/docs.parquet");
    for image in &images[..12] {
        std::fs::copy(repo().join("datasets").join(image), local.join(image)).unwrap();
        upload(&local.join(image), &format!("s3://corpus/data/{image}"));
    }

    // The reference: the same corpus and spec, all local, in one run.
    let reference = tmp.path().join("reference.toml");
    let text = spec_text("parquet", &local.join("docs.parquet").display().to_string(), &tmp.path().join("ref-out").display().to_string(), "");
    std::fs::write(&reference, text).unwrap();
    let out = run(&reference, &[]);
    assert_eq!(out.status.code(), Some(3), "one row fails; {}", stderr(&out));
    let want = stored(&tmp.path().join("ref-out/results.lance").display().to_string());
    assert_eq!(want.len(), 26);

    let exports = format!("parquet = \"s3://corpus/exports/results.parquet\"\njsonl = \"{}\"\n", tmp.path().join("results.jsonl").display());
    let spec = tmp.path().join("spec.toml");
    std::fs::write(&spec, spec_text("parquet", "s3://corpus/data/docs.parquet", "s3://corpus/sink", &exports)).unwrap();
    let shard = |i: usize, slow: bool| {
        let mut cmd = bin();
        cmd.arg("run").arg(&spec).args(["--quiet", "--shard", &format!("{i}/4")]).stdout(Stdio::piped()).stderr(Stdio::piped());
        if slow {
            cmd.env("GEMMA_BATCH_TEST_COMMIT_DELAY_MS", "400");
        }
        cmd.spawn().unwrap()
    };

    // Shard 0 holds its lease in the bucket while it runs: a second shard 0 is refused.
    let first = shard(0, true);
    let lease = "s3://corpus/sink/leases/shard-0-of-4.lock";
    assert!(wait_until(120, || objects("s3://corpus/sink/leases").iter().any(|n| n == "shard-0-of-4.lock")), "no lease in the bucket");
    let twice = shard(0, false).wait_with_output().unwrap();
    assert_eq!(twice.status.code(), Some(75), "{}", stderr(&twice));
    assert!(stderr(&twice).contains("another gemma-batch") && stderr(&twice).contains(lease), "{}", stderr(&twice));
    let others: Vec<Child> = (1..4).map(|i| shard(i, false)).collect();
    let mut codes = Vec::new();
    for child in std::iter::once(first).chain(others) {
        let out = child.wait_with_output().unwrap();
        codes.push(out.status.code());
        assert!(matches!(out.status.code(), Some(0 | 3)), "{}", stderr(&out));
    }
    assert_eq!(codes.iter().filter(|c| **c == Some(3)).count(), 1, "exactly one shard has the failed row: {codes:?}");
    assert!(objects("s3://corpus/sink/leases").is_empty(), "leases are released: {:?}", objects("s3://corpus/sink/leases"));
    let staged = objects("s3://corpus/sink/pending");
    assert!(staged.iter().any(|n| n.ends_with(".manifest")), "the shards staged nothing in the bucket: {staged:?}");
    assert!(!Path::new("s3:").exists(), "nothing of the sink is written locally");

    // One commit; a second finds nothing to do.
    let out = bin().arg("commit").arg(&spec).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "the commit lists the failed row: {}", stderr(&out));
    assert!(stderr(&out).contains("s3://corpus/data/docs/not-there.png: no such object"), "{}", stderr(&out));
    assert!(objects("s3://corpus/sink/pending").is_empty(), "{:?}", objects("s3://corpus/sink/pending"));
    let again = bin().arg("commit").arg(&spec).output().unwrap();
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing"), "{}", String::from_utf8_lossy(&again.stdout));

    // Every (row, task) once, with the outputs of the local run.
    let got = stored("s3://corpus/sink/results.lance");
    assert_eq!(got.len(), 26);
    for (id, (output, error)) in &want {
        let (o, e) = &got[id];
        assert_eq!(o, output, "{id:?}");
        assert_eq!(e.is_some(), error.is_some(), "{id:?}: {e:?} vs {error:?}");
    }

    // The exports: a Parquet object in the bucket and a local JSON lines file, 26 rows each.
    let parquet = tmp.path().join("export.parquet");
    block_on({
        let to = parquet.clone();
        async move { Location::open("s3://corpus/exports/results.parquet").await?.download(&to).await }
    })
    .unwrap();
    let exported = ParquetReader::new(std::fs::File::open(&parquet).unwrap()).finish().unwrap();
    assert_eq!(exported.height(), 26);
    assert_eq!(std::fs::read_to_string(tmp.path().join("results.jsonl")).unwrap().lines().count(), 26);

    // History reads the bucket: the commit's version carries its run's tag.
    let out = bin().args(["history"]).arg(&spec).arg("--json").output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let history: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tagged = history["versions"].as_array().unwrap().iter().filter(|v| v["tags"].as_array().is_some_and(|t| !t.is_empty())).count();
    assert!(tagged >= 1, "{history}");

    // A rerun of the whole spec resumes from the bucket: nothing left to do but the failed row.
    let out = run(&spec, &["--no-retry-failed"]);
    let s = summary(&out);
    assert_eq!((s["done"].as_u64(), s["skipped"].as_u64()), (Some(0), Some(24)), "{s}");

    // Compaction and version clean-up work on the bucket too, under the same leases.
    let out = bin().arg("compact").arg(&spec).args(["--keep-versions", "1"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stored("s3://corpus/sink/results.lance"), got);

    // JSON lines from a glob of objects: a bad line is a failed row named by its URI and line.
    let lines = format!("{}\nnot json\n{}\n", docs.lines().next().unwrap(), docs.lines().nth(1).unwrap());
    std::fs::write(local.join("more.jsonl"), lines).unwrap();
    upload(&local.join("more.jsonl"), "s3://corpus/data/more.jsonl");
    let spec = tmp.path().join("lines.toml");
    std::fs::write(&spec, spec_text("jsonl", "s3://corpus/data/*.jsonl", &tmp.path().join("lines-out").display().to_string(), "")).unwrap();
    let out = run(&spec, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let rows = stored(&tmp.path().join("lines-out/results.lance").display().to_string());
    let failed: Vec<&(String, String)> = rows.iter().filter(|(_, (_, e))| e.is_some()).map(|(k, _)| k).collect();
    assert_eq!(failed.len(), 2, "{rows:?}");
    assert!(failed.iter().all(|(id, _)| id == "s3://corpus/data/more.jsonl:2"), "{failed:?}");
    assert_eq!(rows.len(), 6, "{rows:?}");
    // The images of a source in the bucket are read from beside it: the same outputs as the local run.
    assert_eq!(rows[&("invoice_000".to_string(), "qa".to_string())], want[&("invoice_000".to_string(), "qa".to_string())]);
}
