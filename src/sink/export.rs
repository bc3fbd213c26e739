//! Parquet and JSON lines exports of a results table. Each export is written to a temporary
//! file beside its target and renamed over it when complete, so a reader (or a crash, or an
//! overlapping run) never sees a truncated file.

use std::path::{Path, PathBuf};

use polars::prelude::{JsonFormat, JsonWriter, ParquetWriter, SerWriter};

use super::{to_polars, ResultStore};
use crate::error::{Error, Result};

/// Writes the latest rows of `store` to each path given.
pub async fn export(store: &ResultStore, parquet: Option<&Path>, jsonl: Option<&Path>) -> Result<()> {
    if parquet.is_none() && jsonl.is_none() {
        return Ok(());
    }
    let mut df = to_polars(&store.read(None, None).await?)?;
    if let Some(path) = parquet {
        write_atomically(path, |f| {
            ParquetWriter::new(f).finish(&mut df).map(|_| ()).map_err(Error::polars(format!("writing {}", path.display())))
        })?;
    }
    if let Some(path) = jsonl {
        write_atomically(path, |f| {
            JsonWriter::new(f)
                .with_json_format(JsonFormat::JsonLines)
                .finish(&mut df)
                .map_err(Error::polars(format!("writing {}", path.display())))
        })?;
    }
    Ok(())
}

/// Calls `write` on a temporary file in `path`'s directory, syncs it and renames it to `path`.
/// On failure the temporary file is removed and `path` is untouched.
pub fn write_atomically(path: &Path, write: impl FnOnce(&mut std::fs::File) -> Result<()>) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "export".into());
    let tmp: PathBuf = dir.join(format!(".{name}.{}.{}.tmp", std::process::id(), crate::util::now_ms()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        write(&mut f)?;
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
