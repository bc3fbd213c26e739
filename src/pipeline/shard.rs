//! Shards: which slice of the rows a process handles when N processes share a job.

use sha2::{Digest, Sha256};

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

    /// Whether this shard handles `key` (a stable hash of the key, modulo the count).
    pub fn owns(&self, key: &str) -> bool {
        let h = Sha256::digest(key.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&h[..8]);
        (u64::from_le_bytes(first) % self.count as u64) as usize == self.index
    }

    /// `I/N`.
    pub fn label(&self) -> String {
        format!("{}/{}", self.index, self.count)
    }
}
