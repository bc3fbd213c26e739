//! Source files in an object store (`s3://bucket/data/*.parquet`): listed through the store,
//! and each read through a local copy in the temporary directory, made when the file is
//! opened and removed when its scan is done (polars and the line screening read local files).
//! Rows and errors always name the URI, never the copy, so ids and keys do not depend on it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::Result;
use crate::objects::{block_on, is_uri, parent_uri, Location};
use crate::util::sha256_hex;

use super::lines::TempCopy;
use super::source_err;
use super::tables::{is_glob, TableFiles};

/// A source file ready to read: `local` is the file itself, or its local copy.
pub(super) struct Staged {
    /// The file as the source names it (a path or a URI): what rows and errors say.
    pub(super) name: PathBuf,
    pub(super) local: PathBuf,
    _copy: Option<Arc<TempCopy>>,
}

/// The newest copy, kept while it may be asked for again: the column names are read before
/// the scan opens the same file.
static LAST: Mutex<Option<(String, Arc<TempCopy>)>> = Mutex::new(None);

/// `path` ready to read; an object is downloaded first.
pub(super) fn stage(path: &Path) -> Result<Staged> {
    let uri = path.display().to_string();
    if !is_uri(&uri) {
        return Ok(Staged { name: path.to_path_buf(), local: path.to_path_buf(), _copy: None });
    }
    if let Some((last, copy)) = LAST.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
        if *last == uri && copy.path.exists() {
            return Ok(Staged { name: path.to_path_buf(), local: copy.path.clone(), _copy: Some(copy.clone()) });
        }
    }
    static COPIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let ext = path.extension().map(|e| e.to_string_lossy().into_owned()).unwrap_or_else(|| "data".into());
    // Named apart from the screened copies of `lines`, which are made from these.
    let local = std::env::temp_dir().join(format!(
        "gemma-batch-object-{}-{}-{}.{ext}",
        std::process::id(),
        COPIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        &sha256_hex(&[uri.as_bytes()])[..12]
    ));
    let copy = Arc::new(TempCopy { path: local.clone() });
    let (from, to) = (uri.clone(), local.clone());
    block_on(async move { Location::open(&from).await?.download(&to).await }).map_err(|e| source_err(path, e))?;
    *LAST.lock().unwrap_or_else(|p| p.into_inner()) = Some((uri, copy.clone()));
    Ok(Staged { name: path.to_path_buf(), local, _copy: Some(copy) })
}

/// The objects a table source URI names: the object, or those its glob matches (sorted; `*`
/// does not cross a `/`, as in a local glob).
pub(super) fn object_files(path: &Path) -> Result<TableFiles> {
    let uri = path.display().to_string();
    if !is_glob(&uri) {
        let found = block_on({
            let uri = uri.clone();
            async move { Location::open(&uri).await?.size().await }
        })
        .map_err(|e| source_err(path, e))?;
        if found.is_none() {
            return Err(source_err(path, "no such object (name one object, or a glob such as s3://bucket/data/*.parquet)"));
        }
        return Ok(TableFiles { files: vec![path.to_path_buf()], root: PathBuf::from(parent_uri(&uri)), glob: false });
    }
    // The listing starts at the last `/` before the first pattern character.
    let first = uri.find(['*', '?', '[']).unwrap_or(uri.len());
    let prefix = uri[..first].rfind('/').map_or(uri.as_str(), |i| &uri[..i]).to_string();
    let pattern = glob::Pattern::new(&uri).map_err(|e| source_err(path, format!("glob {uri:?}: {e}")))?;
    let options = glob::MatchOptions { require_literal_separator: true, ..glob::MatchOptions::new() };
    let listed = block_on({
        let prefix = prefix.clone();
        async move { Location::open(&prefix).await?.list().await }
    })
    .map_err(|e| source_err(path, e))?;
    let files: Vec<PathBuf> = listed
        .into_iter()
        .map(|o| format!("{prefix}/{}", o.name))
        .filter(|u| pattern.matches_with(u, options))
        .map(PathBuf::from)
        .collect();
    if files.is_empty() {
        return Err(source_err(path, "no object matches the glob"));
    }
    Ok(TableFiles { files, root: PathBuf::from(prefix), glob: true })
}
