//! The per-task summary printed at the end of a run.

use super::TaskSummary;
use crate::error::{Error, Result};
use crate::sink::ResultStore;

/// Per-task counts of this run, computed with polars over the committed rows.
pub(crate) async fn task_summary(store: &ResultStore, run_id: &str) -> Result<Vec<TaskSummary>> {
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
        .map_err(Error::polars("summarising this run's rows by task"))?;
    let err = Error::polars("reading the per-task summary");
    let tasks = out.column("task").map_err(&err)?.str().map_err(&err)?.clone();
    let rows = out.column("rows").map_err(&err)?.cast(&DataType::UInt64).map_err(&err)?;
    let failed = out.column("failed").map_err(&err)?.cast(&DataType::UInt64).map_err(&err)?;
    let latency = out.column("mean_latency_ms").map_err(&err)?.cast(&DataType::Float64).map_err(&err)?;
    let tokens = out.column("output_tokens").map_err(&err)?.cast(&DataType::UInt64).map_err(&err)?;
    let (rows, failed, latency, tokens) =
        (rows.u64().map_err(&err)?, failed.u64().map_err(&err)?, latency.f64().map_err(&err)?, tokens.u64().map_err(&err)?);
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
