//! Object storage: `s3://` URIs (and any scheme Lance's object stores know) beside local
//! paths, for what is not a Lance dataset: shard results waiting for `commit`, leases,
//! exports, source files and the images rows name.
//!
//! Credentials and endpoints come from the environment, as Lance reads them for its datasets
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT` for an
//! S3-compatible store, `AWS_ALLOW_HTTP=true` for a plain-HTTP one, or the AWS SDK's chain).
//!
//! Every request runs on one runtime of its own ([`io_runtime`]): object-store clients keep
//! connections that belong to the runtime that made them, and callers here are both async
//! (the pipeline) and plain threads (source readers, `Drop`).

use std::future::Future;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use futures::StreamExt;
use lance::io::{ObjectStore, ObjectStoreParams, ObjectStoreRegistry};
use object_store::path::Path as Key;
use object_store::ObjectStoreExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::{Error, Result};

/// Whether `p` is a URI of an object store (`s3://bucket/key`) rather than a local path.
/// `file://` URIs count as local paths' spelling and are URIs too.
pub fn is_uri(p: &str) -> bool {
    match p.find("://") {
        Some(i) if i > 0 => p[..i].chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')),
        _ => false,
    }
}

/// Whether this build reads and writes `p`: local paths and `file://` always, `s3://` with the
/// cargo feature `s3`. The error says what to do instead.
pub fn check_supported(p: &str) -> std::result::Result<(), String> {
    if !is_uri(p) {
        return Ok(());
    }
    match p.split_once("://").map(|(scheme, _)| scheme.to_ascii_lowercase()).as_deref() {
        Some("file") => Ok(()),
        Some("s3") if cfg!(feature = "s3") => Ok(()),
        Some("s3") => Err("this build has no S3 support; build it with the cargo feature s3 (on by default)".into()),
        Some(other) => Err(format!("{other}:// is not supported (object stores: s3://, and S3-compatible ones through AWS_ENDPOINT)")),
        None => Ok(()),
    }
}

/// `base` and a relative `name` joined with one `/` (URIs) or as paths (local).
pub fn join(base: &str, name: &str) -> String {
    if is_uri(base) {
        format!("{}/{}", base.trim_end_matches('/'), name.trim_start_matches('/'))
    } else {
        Path::new(base).join(name).display().to_string()
    }
}

/// The runtime every object-store request runs on (one worker; the work is waiting on the
/// network).
fn io_runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("object-store")
            .enable_all()
            .build()
            .expect("the object-store runtime starts")
    })
}

/// Runs `f` on the object-store runtime and waits for it; callable from any thread, in an
/// async runtime or not.
pub fn block_on<T: Send + 'static>(f: impl Future<Output = T> + Send + 'static) -> T {
    let handle = io_runtime().spawn(f);
    futures::executor::block_on(handle).unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// Runs `f` on the object-store runtime; for async callers.
async fn on_io<T: Send + 'static>(f: impl Future<Output = T> + Send + 'static) -> T {
    io_runtime().spawn(f).await.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

fn registry() -> Arc<ObjectStoreRegistry> {
    static REGISTRY: OnceLock<Arc<ObjectStoreRegistry>> = OnceLock::new();
    REGISTRY.get_or_init(|| Arc::new(ObjectStoreRegistry::default())).clone()
}

/// One object (or a prefix of objects: a "directory") in a store, local or remote.
#[derive(Clone)]
pub struct Location {
    store: Arc<ObjectStore>,
    key: Key,
    uri: String,
}

/// An object found by [`Location::list`].
#[derive(Debug, Clone)]
pub struct Listed {
    /// Its key relative to the listed prefix (`a/b.txt`).
    pub name: String,
    pub size: u64,
    pub modified_ms: i64,
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.uri)
    }
}

/// What went wrong, briefly: a missing object is "no such object", not the server's reply.
fn describe(e: object_store::Error) -> String {
    match e {
        object_store::Error::NotFound { .. } => "no such object".into(),
        other => other.to_string(),
    }
}

fn store_err(uri: &str) -> impl Fn(String) -> Error + '_ {
    move |message| Error::Store { uri: uri.to_string(), message }
}

impl Location {
    /// The location of `uri` (an object-store URI or a local path).
    pub async fn open(uri: &str) -> Result<Location> {
        check_supported(uri).map_err(|message| Error::Store { uri: uri.to_string(), message })?;
        let owned = uri.to_string();
        on_io(async move {
            let (store, key) = ObjectStore::from_uri_and_params(registry(), &owned, &ObjectStoreParams::default())
                .await
                .map_err(|e| store_err(&owned)(e.to_string()))?;
            Ok(Location { store, key, uri: owned })
        })
        .await
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The location `name` (a relative key, `/`-separated) under this one.
    pub fn child(&self, name: &str) -> Location {
        let key = name.split('/').filter(|p| !p.is_empty()).fold(self.key.clone(), |k, part| k.join(part));
        Location { store: self.store.clone(), key, uri: join(&self.uri, name) }
    }

    /// The object's size; `None` when there is no such object.
    pub async fn size(&self) -> Result<Option<u64>> {
        let me = self.clone();
        on_io(async move {
            match me.store.inner.head(&me.key).await {
                Ok(meta) => Ok(Some(meta.size)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(store_err(&me.uri)(describe(e))),
            }
        })
        .await
    }

    /// The whole object; an error when it is missing or larger than `cap` bytes (`cap_key`
    /// names the setting that raises the cap).
    pub async fn read(&self, cap: u64, cap_key: &str) -> Result<Vec<u8>> {
        let me = self.clone();
        let cap_key = cap_key.to_string();
        on_io(async move {
            let err = store_err(&me.uri);
            let got = me.store.inner.get(&me.key).await.map_err(|e| err(describe(e)))?;
            let too_big = |n: u64| err(format!("is {n} bytes, over {cap_key} = {cap} (raise it to read larger objects)"));
            if got.meta.size > cap {
                return Err(too_big(got.meta.size));
            }
            let mut bytes = Vec::with_capacity(got.meta.size as usize);
            let mut stream = got.into_stream();
            while let Some(chunk) = stream.next().await {
                bytes.extend_from_slice(&chunk.map_err(|e| err(e.to_string()))?);
                if bytes.len() as u64 > cap {
                    return Err(too_big(bytes.len() as u64));
                }
            }
            Ok(bytes)
        })
        .await
    }

    /// Writes the object (replacing it).
    pub async fn put(&self, bytes: Vec<u8>) -> Result<()> {
        let me = self.clone();
        on_io(async move { me.store.inner.put(&me.key, bytes.into()).await.map(|_| ()).map_err(|e| store_err(&me.uri)(e.to_string())) })
            .await
    }

    /// Writes the object only if there is none: `false` when one exists.
    pub async fn create(&self, bytes: Vec<u8>) -> Result<bool> {
        let me = self.clone();
        on_io(async move {
            match me.store.put_if_absent(&me.key, bytes.into()).await {
                Ok(()) => Ok(true),
                Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => Ok(false),
                Err(e) => Err(store_err(&me.uri)(e.to_string())),
            }
        })
        .await
    }

    /// Deletes the object; a missing one is not an error.
    pub async fn delete(&self) -> Result<()> {
        let me = self.clone();
        on_io(async move {
            match me.store.inner.delete(&me.key).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(store_err(&me.uri)(e.to_string())),
            }
        })
        .await
    }

    /// Every object under this prefix, at any depth, in key order.
    pub async fn list(&self) -> Result<Vec<Listed>> {
        let me = self.clone();
        on_io(async move {
            let err = store_err(&me.uri);
            let prefix: Vec<String> = me.key.parts().map(|p| p.as_ref().to_string()).collect();
            let mut stream = me.store.inner.list(Some(&me.key));
            let mut found = Vec::new();
            while let Some(meta) = stream.next().await {
                let meta = match meta {
                    Ok(m) => m,
                    // The prefix does not exist (a local directory not made yet).
                    Err(object_store::Error::NotFound { .. }) => break,
                    Err(e) => return Err(err(e.to_string())),
                };
                let parts: Vec<String> = meta.location.parts().map(|p| p.as_ref().to_string()).collect();
                let name = parts.get(prefix.len()..).map(|rest| rest.join("/")).unwrap_or_default();
                found.push(Listed { name, size: meta.size, modified_ms: meta.last_modified.timestamp_millis() });
            }
            found.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(found)
        })
        .await
    }

    /// Removes every object under this prefix (and, in a local store, its directories).
    pub async fn remove_all(&self) -> Result<()> {
        if self.list().await?.is_empty() {
            return Ok(());
        }
        let me = self.clone();
        let removed = on_io(async move { me.store.remove_dir_all(me.key.clone()).await.map_err(|e| e.to_string()) }).await;
        match removed {
            Ok(()) => Ok(()),
            // Removed meanwhile by someone else: what was asked for is done.
            Err(_) if self.list().await?.is_empty() => Ok(()),
            Err(e) => Err(store_err(&self.uri)(e)),
        }
    }

    /// Copies the object into the local file `to`, a chunk at a time.
    pub async fn download(&self, to: &Path) -> Result<()> {
        let me = self.clone();
        let to = to.to_path_buf();
        on_io(async move {
            let err = store_err(&me.uri);
            let got = me.store.inner.get(&me.key).await.map_err(|e| err(describe(e)))?;
            let mut file = tokio::fs::File::create(&to).await.map_err(|e| Error::io(&to, e))?;
            let mut stream = got.into_stream();
            while let Some(chunk) = stream.next().await {
                file.write_all(&chunk.map_err(|e| err(e.to_string()))?).await.map_err(|e| Error::io(&to, e))?;
            }
            file.flush().await.map_err(|e| Error::io(&to, e))
        })
        .await
    }

    /// Copies the local file `from` into the object, a part at a time; the object appears
    /// whole or not at all.
    pub async fn upload(&self, from: &Path) -> Result<()> {
        let me = self.clone();
        let from = from.to_path_buf();
        on_io(async move {
            let err = store_err(&me.uri);
            let mut file = tokio::fs::File::open(&from).await.map_err(|e| Error::io(&from, e))?;
            let mut writer = me.store.create(&me.key).await.map_err(|e| err(e.to_string()))?;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = file.read(&mut buf).await.map_err(|e| Error::io(&from, e))?;
                if n == 0 {
                    break;
                }
                writer.write_all(&buf[..n]).await.map_err(|e| err(e.to_string()))?;
            }
            lance_io::traits::Writer::shutdown(writer.as_mut()).await.map(|_| ()).map_err(|e| err(e.to_string()))
        })
        .await
    }
}

/// A key path with `.` and `..` segments resolved; `None` when `..` climbs above its root.
pub fn normalize_key(key: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in key.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

/// A URI with `.` and `..` resolved in its key (`s3://b/data/../img/a.png` ->
/// `s3://b/img/a.png`); `None` when `..` climbs above the bucket.
pub fn normalize_uri(uri: &str) -> Option<String> {
    let (scheme, rest) = uri.split_once("://")?;
    let (authority, key) = rest.split_once('/').unwrap_or((rest, ""));
    Some(format!("{scheme}://{authority}/{}", normalize_key(key)?))
}

/// The URI of the "directory" holding `uri` (`s3://b/data/t.parquet` -> `s3://b/data`).
pub fn parent_uri(uri: &str) -> String {
    let trimmed = uri.trim_end_matches('/');
    match trimmed.rfind('/') {
        Some(i) if !trimmed[..i].ends_with('/') => trimmed[..i].to_string(),
        _ => trimmed.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_and_keys() {
        assert!(is_uri("s3://bucket/a") && is_uri("file:///tmp/x") && is_uri("gs://b"));
        assert!(!is_uri("/tmp/a://b") && !is_uri("data/t.parquet") && !is_uri("://x"));
        assert_eq!(join("s3://b/sink/", "pending"), "s3://b/sink/pending");
        assert_eq!(join("out", "pending"), "out/pending");
        assert_eq!(normalize_uri("s3://b/data/../img/./a.png").as_deref(), Some("s3://b/img/a.png"));
        assert_eq!(normalize_uri("s3://b/data/../../x"), None);
        assert_eq!(parent_uri("s3://b/data/t.parquet"), "s3://b/data");
        assert_eq!(parent_uri("s3://b/t.parquet"), "s3://b");
        assert_eq!(parent_uri("s3://b"), "s3://b");
        assert!(check_supported("data/x.parquet").is_ok() && check_supported("file:///x").is_ok());
        assert_eq!(check_supported("s3://b/x").is_ok(), cfg!(feature = "s3"));
        assert!(check_supported("gs://b/x").unwrap_err().contains("gs:// is not supported"));
    }

    #[test]
    fn local_paths_work_as_locations() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().display().to_string();
        block_on(async move {
            let root = Location::open(&dir).await.unwrap();
            let a = root.child("sub/a.txt");
            assert!(a.create(b"one".to_vec()).await.unwrap());
            assert!(!a.create(b"two".to_vec()).await.unwrap(), "create must not replace");
            assert_eq!(a.read(10, "k").await.unwrap(), b"one");
            let err = a.read(2, "source.max_image_bytes").await.unwrap_err().to_string();
            assert!(err.contains("over source.max_image_bytes = 2"), "{err}");
            assert_eq!(a.size().await.unwrap(), Some(3));
            let names: Vec<String> = root.list().await.unwrap().into_iter().map(|l| l.name).collect();
            assert_eq!(names, ["sub/a.txt"]);
            let copy = std::path::PathBuf::from(&dir).join("copy.txt");
            a.download(&copy).await.unwrap();
            root.child("up/b.txt").upload(&copy).await.unwrap();
            assert_eq!(root.child("up/b.txt").read(10, "k").await.unwrap(), b"one");
            root.child("sub").remove_all().await.unwrap();
            assert_eq!(a.size().await.unwrap(), None);
            a.delete().await.unwrap();
            assert!(root.child("nothing-here").list().await.unwrap().is_empty());
        });
    }
}
