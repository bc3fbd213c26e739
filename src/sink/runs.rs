//! `runs.lance`: one record per run (spec, provenance, counts, start and end).

use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch, RecordBatchIterator, StringArray, TimestampMillisecondArray};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use lance::dataset::{Dataset, WriteMode, WriteParams};

use crate::error::{Error, Result};

/// One line per run in `runs.lance`: what ran, with which model, and what came of it.
#[derive(Debug, Clone)]
pub struct RunRecord {
    pub run_id: String,
    pub name: String,
    pub spec: String,
    pub provenance: String,
    pub summary: String,
    pub started_ms: i64,
    pub ended_ms: i64,
}

impl RunRecord {
    /// `summary` is whatever the caller reports about the run, as JSON.
    pub fn new(
        run_id: &str,
        spec: &crate::spec::PipelineSpec,
        provenance: &serde_json::Value,
        summary: &serde_json::Value,
        started_ms: i64,
        ended_ms: i64,
    ) -> Self {
        RunRecord {
            run_id: run_id.to_string(),
            name: spec.name.clone(),
            spec: spec.text.clone(),
            provenance: provenance.to_string(),
            summary: summary.to_string(),
            started_ms,
            ended_ms,
        }
    }
}

pub struct RunStore {
    uri: String,
}

impl RunStore {
    pub fn new(uri: impl Into<String>) -> Self {
        RunStore { uri: uri.into() }
    }

    pub async fn append(&self, r: &RunRecord) -> Result<u64> {
        let ts = |name: &str| Field::new(name, DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), false);
        let schema = Arc::new(Schema::new(vec![
            Field::new("run_id", DataType::Utf8, false),
            Field::new("name", DataType::Utf8, false),
            Field::new("spec", DataType::Utf8, false),
            Field::new("provenance", DataType::Utf8, false),
            Field::new("summary", DataType::Utf8, false),
            ts("started_at"),
            ts("ended_at"),
        ]));
        let s = |v: &str| Arc::new(StringArray::from(vec![v.to_string()])) as ArrayRef;
        let t = |v: i64| Arc::new(TimestampMillisecondArray::from(vec![v]).with_timezone("UTC")) as ArrayRef;
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![s(&r.run_id), s(&r.name), s(&r.spec), s(&r.provenance), s(&r.summary), t(r.started_ms), t(r.ended_ms)],
        )
        .map_err(Error::arrow("building the run record"))?;
        // Created by one process; appends of runs finishing together then merge.
        super::create_table_once(&self.uri, schema.clone()).await?;
        let params = WriteParams { mode: WriteMode::Append, ..Default::default() };
        let reader = RecordBatchIterator::new(vec![Ok(batch)], schema);
        let ds = Dataset::write(reader, self.uri.as_str(), Some(params)).await.map_err(Error::lance(&self.uri))?;
        Ok(ds.version_id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_creating_the_table_together_keep_every_record() {
        let dir = tempfile::tempdir().unwrap();
        let uri = dir.path().join("runs.lance").display().to_string();
        let spec = crate::spec::PipelineSpec::from_text(
            "name = \"t\"\n[source]\nkind = \"jsonl\"\npath = \"x\"\n[model]\ndir = \"m\"\n[[task]]\nname = \"c\"\nkind = \"caption\"\n[sink]\ndir = \"o\"\n".into(),
            &dir.path().join("spec.toml"),
        )
        .unwrap();
        let writers: Vec<_> = (0..8)
            .map(|i| {
                let (uri, spec) = (uri.clone(), spec.clone());
                std::thread::spawn(move || {
                    let record = RunRecord::new(&format!("run{i}"), &spec, &serde_json::json!({}), &serde_json::json!({}), i, i);
                    crate::util::runtime(0).unwrap().block_on(RunStore::new(uri).append(&record))
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap().unwrap();
        }
        let runs = crate::util::runtime(0).unwrap().block_on(super::super::history::read_runs(&uri)).unwrap();
        assert_eq!(runs.len(), 8, "{runs:?}");
        assert!(!std::path::Path::new(&format!("{uri}.creating")).exists(), "the creation marker is removed");
    }
}
