//! Files a row names, read safely: regular files only (no FIFOs, devices or directories), up
//! to a byte cap, and image paths of a table confined to the source directory.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::objects::{block_on, is_uri, join, normalize_uri, Location};
use crate::spec::SourceSpec;

use super::RowImage;

/// `O_NONBLOCK`, so that opening a FIFO does not wait for a writer (the file type is checked
/// right after opening; reads of regular files are not affected by the flag).
#[cfg(any(target_os = "macos", target_os = "ios", target_os = "freebsd", target_os = "openbsd", target_os = "netbsd"))]
const O_NONBLOCK: Option<i32> = Some(0x4);
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "x86", target_arch = "aarch64", target_arch = "arm", target_arch = "riscv64")
))]
const O_NONBLOCK: Option<i32> = Some(0o4000);
#[cfg(not(any(
    target_os = "macos",
    target_os = "ios",
    target_os = "freebsd",
    target_os = "openbsd",
    target_os = "netbsd",
    all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "x86", target_arch = "aarch64", target_arch = "arm", target_arch = "riscv64")
    )
)))]
const O_NONBLOCK: Option<i32> = None;

fn file_type_name(meta: &std::fs::Metadata) -> &'static str {
    let t = meta.file_type();
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if t.is_dir() {
        "a directory"
    } else if t.is_file() {
        "a regular file"
    } else {
        "not a regular file"
    }
}

/// Reads a regular file of at most `cap` bytes. Devices, FIFOs, sockets and directories are
/// errors (checked on the opened file, so a path swapped after the check is caught too), and so
/// is a file over the cap, without allocating more than `cap + 1` bytes. `cap_key` is the spec
/// key that raises the cap, named in the error.
pub fn read_regular_file(path: &Path, cap: u64, cap_key: &str) -> std::result::Result<Vec<u8>, String> {
    let not_regular = |meta: &std::fs::Metadata| format!("is {}, not a regular file", file_type_name(meta));
    // The path first: opening a FIFO without O_NONBLOCK would wait for a writer.
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err(not_regular(&meta));
    }
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    if let Some(flag) = O_NONBLOCK {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(flag);
    }
    let file = options.open(path).map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err(not_regular(&meta));
    }
    let too_big = |n: u64| format!("is {n} bytes, over {cap_key} = {cap} (raise it to read larger files)");
    if meta.len() > cap {
        return Err(too_big(meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(cap.saturating_add(1)).read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    if bytes.len() as u64 > cap {
        return Err(too_big(bytes.len() as u64));
    }
    Ok(bytes)
}

/// How image paths found in a table's image column are read: relative to `base` (the
/// directory of the file the row came from), confined to `root` when the spec says so.
#[derive(Debug, Clone)]
pub(super) struct ImagePaths {
    /// What errors call the path's origin: `image column "image"`.
    label: String,
    base: PathBuf,
    /// The canonical source directory (or why it could not be resolved), when confined.
    root: Option<std::result::Result<PathBuf, String>>,
    root_shown: PathBuf,
    /// `source.confine_images`.
    confined: bool,
    max_bytes: u64,
}

impl ImagePaths {
    pub(super) fn new(src: &SourceSpec, base: &Path, root: &Path) -> Self {
        let root_dir = if root.as_os_str().is_empty() { Path::new(".") } else { root };
        let remote = is_uri(&root_dir.display().to_string());
        Self {
            label: format!("image column {:?}", src.image_column.clone().unwrap_or_default()),
            base: base.to_path_buf(),
            // An object store's prefix is confined by its name (see `read_object`).
            root: (src.confine_images && !remote)
                .then(|| std::fs::canonicalize(root_dir).map_err(|e| format!("{}: {e}", root_dir.display()))),
            root_shown: root_dir.to_path_buf(),
            confined: src.confine_images,
            max_bytes: src.max_image_bytes,
        }
    }

    /// The image named by path `p` in a row.
    pub(super) fn read(&self, p: &str) -> std::result::Result<RowImage, String> {
        self.read_as(p, &self.label)
    }

    /// The image named by path `p`; errors name it as `label` (where the path was found).
    pub(super) fn read_as(&self, p: &str, label: &str) -> std::result::Result<RowImage, String> {
        if p.is_empty() {
            return Err(format!("{label}: the path is empty"));
        }
        let base = self.base.display().to_string();
        if is_uri(p) || is_uri(&base) {
            return self.read_object(p, label, &base);
        }
        let full = self.base.join(p);
        let target = match &self.root {
            None => full.clone(),
            Some(Err(e)) => return Err(format!("{label}: path {p:?}: cannot resolve the source directory {e}")),
            Some(Ok(root)) => {
                let resolved = std::fs::canonicalize(&full).map_err(|e| format!("{label}: image {}: {e}", full.display()))?;
                if !resolved.starts_with(root) {
                    return Err(format!(
                        "{label}: path {p:?} resolves to {}, outside the source directory {} \
                         (set source.confine_images = false to read images anywhere)",
                        resolved.display(),
                        self.root_shown.display()
                    ));
                }
                resolved
            }
        };
        read_regular_file(&target, self.max_bytes, "source.max_image_bytes")
            .map(|bytes| RowImage::Encoded { name: p.to_string(), bytes })
            .map_err(|e| format!("{label}: image {}: {e}", full.display()))
    }
}

impl ImagePaths {
    /// An image in an object store: a URI in the row, or a path relative to a source file
    /// that is in one. Confined, it must lie under the source's prefix (`..` resolved first).
    fn read_object(&self, p: &str, label: &str, base: &str) -> std::result::Result<RowImage, String> {
        let joined = if is_uri(p) { p.to_string() } else { join(base, p) };
        let target = normalize_uri(&joined).ok_or_else(|| format!("{label}: path {p:?} climbs above the top of its bucket"))?;
        let root = self.root_shown.display().to_string();
        if self.confined {
            let inside = normalize_uri(&root).is_some_and(|r| target.starts_with(&format!("{}/", r.trim_end_matches('/'))));
            if !inside {
                return Err(format!(
                    "{label}: path {p:?} resolves to {target}, outside the source directory {root} \
                     (set source.confine_images = false to read images anywhere)"
                ));
            }
        }
        let (uri, cap) = (target.clone(), self.max_bytes);
        block_on(async move { Location::open(&uri).await?.read(cap, "source.max_image_bytes").await })
            .map(|bytes| RowImage::Encoded { name: p.to_string(), bytes })
            .map_err(|e| format!("{label}: image {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::tests::spec_for;

    #[test]
    fn only_regular_files_up_to_the_cap_are_read() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("f.bin");
        std::fs::write(&f, vec![7u8; 100]).unwrap();
        assert_eq!(read_regular_file(&f, 100, "k").unwrap().len(), 100);
        let e = read_regular_file(&f, 99, "source.max_image_bytes").unwrap_err();
        assert!(e.contains("100 bytes") && e.contains("source.max_image_bytes = 99"), "{e}");
        assert!(read_regular_file(tmp.path(), 100, "k").unwrap_err().contains("a directory"));
        #[cfg(unix)]
        {
            assert!(read_regular_file(Path::new("/dev/zero"), 100, "k").unwrap_err().contains("character device"));
            let fifo = tmp.path().join("fifo");
            if std::process::Command::new("mkfifo").arg(&fifo).status().is_ok_and(|s| s.success()) {
                assert!(read_regular_file(&fifo, 100, "k").unwrap_err().contains("FIFO"));
            }
        }
        assert!(read_regular_file(&tmp.path().join("missing"), 100, "k").is_err());
    }

    #[test]
    fn image_paths_stay_inside_the_source_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir_all(data.join("sub")).unwrap();
        std::fs::write(data.join("sub/a.png"), b"png").unwrap();
        std::fs::write(tmp.path().join("outside.png"), b"png").unwrap();
        let spec = spec_for(tmp.path(), "kind = \"jsonl\"\npath = \"x.jsonl\"\nimage_column = \"image\"");
        let paths = ImagePaths::new(&spec.source, &data, &data);
        assert!(paths.read("sub/a.png").is_ok());
        assert!(paths.read("sub/../sub/a.png").is_ok());
        for p in ["../outside.png", "sub/../../outside.png", &tmp.path().join("outside.png").display().to_string()] {
            let e = paths.read(p).unwrap_err();
            assert!(e.contains("outside the source directory") && e.contains("source.confine_images"), "{p}: {e}");
        }
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(tmp.path().join("outside.png"), data.join("link.png")).unwrap();
            assert!(paths.read("link.png").unwrap_err().contains("outside"));
        }
        assert!(paths.read("").unwrap_err().contains("empty"));
        let mut open_spec = spec.source.clone();
        open_spec.confine_images = false;
        assert!(ImagePaths::new(&open_spec, &data, &data).read("../outside.png").is_ok());
    }
}
