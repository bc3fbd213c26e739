//! End-to-end: `gemma-batch run --openai-batch` on an OpenAI Batch API request file with the
//! tiny model: one output line per request, errors for the lines that cannot run, parameters
//! per request, reruns that add nothing.

use std::collections::HashMap;
use std::path::Path;
use std::process::Output;

use base64::Engine;
use serde_json::{json, Value};

mod common;
use common::*;

fn request(id: &str, messages: Value, extra: Value) -> String {
    let mut body = json!({"model": "gemma-4-tiny", "messages": messages});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    json!({"custom_id": id, "method": "POST", "url": "/v1/chat/completions", "body": body}).to_string()
}

fn run_batch(dir: &Path) -> Output {
    bin()
        .arg("run")
        .arg("--openai-batch")
        .arg(dir.join("requests.jsonl"))
        .arg("--model")
        .arg(repo().join("models/tiny-gemma4"))
        .arg("--out")
        .arg(dir.join("results.jsonl"))
        .args(["--device", "cpu", "--batch-size", "4", "--max-new-tokens", "6", "--quiet", "--json"])
        .output()
        .expect("run gemma-batch")
}

/// The output lines, and the lines of each custom_id (null for lines without one).
fn output(dir: &Path) -> (Vec<Value>, HashMap<String, Vec<Value>>) {
    let text = std::fs::read_to_string(dir.join("results.jsonl")).unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let mut by_id: HashMap<String, Vec<Value>> = HashMap::new();
    for l in &lines {
        let id = l["custom_id"].as_str().map(str::to_owned).unwrap_or_else(|| "<null>".into());
        by_id.entry(id).or_default().push(l.clone());
    }
    (lines, by_id)
}

/// Checks a response line and returns (content, prompt tokens, completion tokens, finish reason).
fn response(line: &Value) -> (String, u64, u64, String) {
    assert!(line["error"].is_null(), "{line}");
    assert!(line["id"].as_str().unwrap().starts_with("batch_req_"), "{line}");
    let r = &line["response"];
    assert_eq!(r["status_code"], 200);
    assert!(r["request_id"].as_str().is_some_and(|s| !s.is_empty()));
    let body = &r["body"];
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "gemma-4-tiny", "the request's model name");
    assert!(body["created"].as_i64().unwrap() > 1_600_000_000);
    let choice = &body["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    let usage = &body["usage"];
    let (p, c) = (usage["prompt_tokens"].as_u64().unwrap(), usage["completion_tokens"].as_u64().unwrap());
    assert_eq!(usage["total_tokens"].as_u64().unwrap(), p + c, "{usage}");
    (choice["message"]["content"].as_str().unwrap().to_string(), p, c, choice["finish_reason"].as_str().unwrap().to_string())
}

fn error(line: &Value) -> (String, String) {
    assert!(line["response"].is_null(), "{line}");
    (line["error"]["code"].as_str().unwrap().to_string(), line["error"]["message"].as_str().unwrap().to_string())
}

#[test]
fn a_request_file_runs_to_one_output_line_per_request_and_reruns_add_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let photo = std::fs::read(repo().join("datasets/photos/photo_000.png")).unwrap();
    std::fs::create_dir(dir.join("images")).unwrap();
    std::fs::write(dir.join("images/photo.png"), &photo).unwrap();
    let data_uri = format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(&photo));
    let lines = [
        // 1: text, with a system prompt and its own token limit.
        request("text-1", json!([{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is the capital of France?"}]), json!({"max_tokens": 3})),
        // 2: an image as a data URI, sampled with a seed.
        request(
            "image-data",
            json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_uri}}, {"type": "text", "text": "What is in this picture?"}]}]),
            json!({"max_completion_tokens": 4, "temperature": 0.8, "seed": 5}),
        ),
        // 3: not JSON.
        "{\"custom_id\": \"broken\", \"body\": {".to_string(),
        String::new(),
        // 5: an image by path, several turns; no max_tokens (the task's 6).
        request(
            "image-path",
            json!([
                {"role": "user", "content": [{"type": "text", "text": "Describe it."}, {"type": "image_url", "image_url": {"url": "images/photo.png"}}]},
                {"role": "assistant", "content": "A photo."},
                {"role": "user", "content": "Which colours?"},
            ]),
            json!({}),
        ),
        // 6: an endpoint that is not served.
        json!({"custom_id": "embed-1", "method": "POST", "url": "/v1/embeddings", "body": {"input": "x"}}).to_string(),
        // 7: the custom_id of line 1 again.
        request("text-1", json!([{"role": "user", "content": "Again?"}]), json!({"max_tokens": 2})),
        // 8: text as content parts.
        request("text-2", json!([{"role": "user", "content": [{"type": "text", "text": "Name three colours."}]}]), json!({"max_tokens": 5})),
    ];
    std::fs::write(dir.join("requests.jsonl"), lines.join("\n") + "\n").unwrap();

    let out = run_batch(dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "failed requests make status 3: {stderr}");
    let s = summary(&out);
    assert_eq!((s["done"].as_u64(), s["failed"].as_u64()), (Some(4), Some(3)), "{s}");
    assert_eq!(s["openai_batch"]["lines"], 7, "{s}");
    assert!(dir.join("results.gemma-batch/spec.toml").is_file(), "the spec is written for the user");

    let (all, by_id) = output(dir);
    assert_eq!(all.len(), 7, "one line per request (the blank line is none)");
    let ids: std::collections::HashSet<String> = all.iter().map(|l| l["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids.len(), 7, "line ids are unique");
    for id in ["image-data", "image-path", "text-2", "embed-1"] {
        assert_eq!(by_id[id].len(), 1, "{id} once");
    }
    // The good requests: content, counts within each request's own limit.
    let mut good = HashMap::new();
    for (id, limit) in [("image-data", 4), ("image-path", 6), ("text-2", 5)] {
        let (content, p, c, finish) = response(&by_id[id][0]);
        assert!(!content.is_empty(), "{id}: empty content");
        assert!((1..=limit).contains(&c), "{id}: {c} tokens, limit {limit}");
        assert!(finish == "stop" || (finish == "length" && c == limit), "{id}: finish {finish} after {c} of {limit}");
        good.insert(id, (content, p, c));
    }
    assert!(good["image-data"].1 > 64, "the image's soft tokens are counted in the prompt");
    // text-1: once as a response (line 1), once as the duplicate's error (line 7).
    let text1 = &by_id["text-1"];
    assert_eq!(text1.len(), 2, "{text1:?}");
    let (ok, dup): (Vec<&Value>, Vec<&Value>) = text1.iter().partition(|l| l["error"].is_null());
    let (content, _, c, _) = response(ok[0]);
    assert!(!content.is_empty() && c <= 3);
    let (code, message) = error(dup[0]);
    assert_eq!(code, "duplicate_custom_id");
    assert!(message.contains("requests.jsonl:7") && message.contains("line 1"), "{message}");
    // The malformed line: no custom_id could be read; the message names the file, line and field.
    let (code, message) = error(&by_id["<null>"][0]);
    assert_eq!(code, "invalid_request");
    assert!(message.contains("requests.jsonl:3: invalid request: line: is not valid JSON"), "{message}");
    let (code, message) = error(&by_id["embed-1"][0]);
    assert_eq!(code, "invalid_request");
    assert!(message.contains("requests.jsonl:6") && message.contains("url") && message.contains("/v1/embeddings"), "{message}");

    // Rerun: nothing new is generated, the same lines come out (failed ones are tried again).
    let out = run_batch(dir);
    assert_eq!(out.status.code(), Some(3));
    let s = summary(&out);
    assert_eq!((s["done"].as_u64(), s["skipped"].as_u64()), (Some(0), Some(4)), "{s}");
    let (again, _) = output(dir);
    assert_eq!(again.len(), 7);
    let sorted = |v: &[Value]| {
        let mut v: Vec<String> = v.iter().map(|l| l["response"].to_string() + &l["custom_id"].to_string()).collect();
        v.sort();
        v
    };
    assert_eq!(sorted(&again), sorted(&all), "the same responses");

    // A changed parameter is new work for that request only; the output still has one line each.
    let changed = std::fs::read_to_string(dir.join("requests.jsonl")).unwrap().replace("\"max_tokens\":5", "\"max_tokens\":2");
    assert_ne!(changed, std::fs::read_to_string(dir.join("requests.jsonl")).unwrap());
    std::fs::write(dir.join("requests.jsonl"), changed).unwrap();
    let s = summary(&run_batch(dir));
    assert_eq!((s["done"].as_u64(), s["skipped"].as_u64()), (Some(1), Some(3)), "{s}");
    let (after, by_id) = output(dir);
    assert_eq!(after.len(), 7, "the row of the old parameters is not exported");
    let (_, _, c, _) = response(&by_id["text-2"][0]);
    assert!(c <= 2, "the new max_tokens reached the model: {c}");
}

#[test]
fn the_batch_file_mode_needs_its_flags_and_a_spec_still_runs_alone() {
    let out = bin().args(["run", "--openai-batch", "requests.jsonl"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--model") && stderr.contains("--out"), "{stderr}");
    let out = bin().args(["run", "spec.toml", "--openai-batch", "r.jsonl", "--model", "m", "--out", "o"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "a spec and a request file at once");
    let out = bin().args(["run", "spec.toml", "--model", "m"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--openai-batch"), "--model belongs to the batch-file mode");
    let out = bin().args(["run"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn filters_screen_each_text_part_and_filtered_requests_are_error_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // A filter set: e-mail addresses redacted, one phrase quarantines, another drops.
    std::fs::write(dir.join("quarantined.en.txt"), "zebra crossing\n").unwrap();
    std::fs::write(dir.join("dropped.en.txt"), "purple elephant\n").unwrap();
    std::fs::write(
        dir.join("set.toml"),
        "description = \"test\"\n[pii]\ntypes = [\"email\"]\nthreshold = 0.5\naction = \"redact\"\n\
         [blocklist]\naction = \"flag\"\n[blocklist.actions]\nquarantined = \"quarantine\"\ndropped = \"drop\"\n\
         [[blocklist.list]]\nfile = \"quarantined.en.txt\"\n[[blocklist.list]]\nfile = \"dropped.en.txt\"\n",
    )
    .unwrap();
    let lines = [
        request("mail", json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Write to jane@example.org please."}]}]), json!({"max_tokens": 2})),
        request("zebra", json!([{"role": "user", "content": "Where is the zebra crossing?"}]), json!({"max_tokens": 2})),
        request("elephant", json!([{"role": "user", "content": "Draw a purple elephant."}]), json!({"max_tokens": 2})),
    ];
    std::fs::write(dir.join("requests.jsonl"), lines.join("\n") + "\n").unwrap();
    let spec = format!(
        "name = \"filtered\"\n[source]\nkind = \"openai_batch\"\npath = \"requests.jsonl\"\n[model]\ndir = \"{}\"\ndevice = \"cpu\"\n\
         [[task]]\nname = \"chat\"\nkind = \"chat\"\n[filters]\ninput = \"{}\"\n[sink]\ndir = \"out\"\nopenai_batch = \"results.jsonl\"\n",
        repo().join("models/tiny-gemma4").display(),
        dir.join("set.toml").display()
    );
    std::fs::write(dir.join("spec.toml"), spec).unwrap();
    let out = run(&dir.join("spec.toml"), &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (all, by_id) = output(dir);
    assert_eq!(all.len(), 3);
    response(&by_id["mail"][0]);
    assert_eq!(error(&by_id["zebra"][0]).0, "quarantined");
    assert!(error(&by_id["zebra"][0]).1.contains("quarantined"), "the reason names the filter");
    assert_eq!(error(&by_id["elephant"][0]).0, "content_filter");

    // The stored prompt is the redacted transcript; the decision's span points into it.
    let df = table(dir, "results.lance");
    let prompts = df.column("prompt").unwrap().str().unwrap().clone();
    let decisions = df.column("filter_decisions").unwrap().str().unwrap().clone();
    let ids = df.column("input_id").unwrap().str().unwrap().clone();
    let i = (0..df.height()).find(|&i| ids.get(i) == Some("mail")).unwrap();
    let prompt = prompts.get(i).unwrap();
    assert_eq!(prompt, "system: Be brief.\n\nuser: Write to [EMAIL] please.");
    let d: Value = serde_json::from_str(decisions.get(i).unwrap()).unwrap();
    let span = &d[0]["span"];
    let original = "system: Be brief.\n\nuser: Write to jane@example.org please.";
    let (a, b) = (span[0].as_u64().unwrap() as usize, span[1].as_u64().unwrap() as usize);
    assert_eq!(&original[a..b], "jane@example.org", "{d}");
}

#[test]
fn shards_of_a_request_file_write_the_output_at_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let lines: Vec<String> = (0..6)
        .map(|i| request(&format!("r{i}"), json!([{"role": "user", "content": format!("Name {i} colours.")}]), json!({"max_tokens": 2})))
        .chain(["not json".to_string()])
        .collect();
    std::fs::write(dir.join("requests.jsonl"), lines.join("\n") + "\n").unwrap();
    for shard in ["0/2", "1/2"] {
        let out = bin()
            .arg("run")
            .arg("--openai-batch")
            .arg(dir.join("requests.jsonl"))
            .arg("--model")
            .arg(repo().join("models/tiny-gemma4"))
            .arg("--out")
            .arg(dir.join("results.jsonl"))
            .args(["--device", "cpu", "--quiet", "--shard", shard])
            .output()
            .unwrap();
        assert!(out.status.success() || out.status.code() == Some(3), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("is written by `gemma-batch commit"), "{}", String::from_utf8_lossy(&out.stdout));
    }
    assert!(!dir.join("results.jsonl").exists(), "shards do not write the output");
    let out = bin().arg("commit").arg(dir.join("results.gemma-batch/spec.toml")).output().unwrap();
    // The malformed line is a failed row: the commit lists it and exits 3.
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 failed rows"), "{}", String::from_utf8_lossy(&out.stderr));
    let (all, by_id) = output(dir);
    assert_eq!(all.len(), 7, "one line per request after the commit");
    for i in 0..6 {
        response(&by_id[&format!("r{i}")][0]);
    }
    assert_eq!(error(&by_id["<null>"][0]).0, "invalid_request");
}
