//! Folders of images and PDFs: the matching files listed (sorted) and read a batch of rows at
//! a time; a PDF's pages rendered one at a time as rows are read, up to `source.max_pdf_pages`
//! a document and `source.max_page_pixels` a page.

use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::spec::SourceSpec;

use super::images::read_regular_file;
use super::{failed_row, make_row, source_err, RowBatches, RowImage, SourceRow};

pub(super) const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp", "gif", "bmp", "tif", "tiff"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FolderKind {
    Images,
    Pdfs,
}

/// The files of a folder source, read a batch of rows at a time. Entries that match but are
/// not regular files (FIFOs, devices, broken links) are failed rows, not skipped.
pub(super) fn files(src: &SourceSpec, dir: &Path, extensions: &'static [&'static str], kind: FolderKind) -> Result<RowBatches> {
    if !dir.is_dir() {
        return Err(source_err(dir, "not a directory"));
    }
    let pattern = match &src.glob {
        Some(g) => dir.join(g).display().to_string(),
        None => dir.join("**/*").display().to_string(),
    };
    let mut paths: Vec<std::result::Result<PathBuf, (PathBuf, String)>> = Vec::new();
    for entry in glob::glob(&pattern).map_err(|e| source_err(dir, format!("glob {pattern:?}: {e}")))? {
        match entry {
            Ok(p) if p.is_dir() => {}
            Ok(p) => {
                let wanted = src.glob.is_some()
                    || p.extension().and_then(|e| e.to_str()).is_some_and(|e| extensions.contains(&e.to_ascii_lowercase().as_str()));
                if wanted {
                    paths.push(Ok(p));
                }
            }
            Err(e) => paths.push(Err((e.path().to_path_buf(), e.error().to_string()))),
        }
    }
    paths.sort_by(|a, b| {
        let key = |p: &std::result::Result<PathBuf, (PathBuf, String)>| match p {
            Ok(p) | Err((p, _)) => p.clone(),
        };
        key(a).cmp(&key(b))
    });
    Ok(Box::new(FolderRows { src: src.clone(), dir: dir.to_path_buf(), kind, paths: paths.into_iter(), current: None }))
}

struct FolderRows {
    src: SourceSpec,
    dir: PathBuf,
    kind: FolderKind,
    paths: std::vec::IntoIter<std::result::Result<PathBuf, (PathBuf, String)>>,
    /// The PDF whose pages are being read.
    current: Option<PdfPages>,
}

impl Iterator for FolderRows {
    type Item = Result<Vec<SourceRow>>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut batch = Vec::new();
        while batch.len() < self.src.read_batch {
            if let Some(pdf) = &mut self.current {
                let room = self.src.read_batch - batch.len();
                match pdf.next_row(&self.src, room) {
                    Some(row) => {
                        batch.push(row);
                        continue;
                    }
                    None => self.current = None,
                }
            }
            let Some(entry) = self.paths.next() else { break };
            match entry {
                Err((path, e)) => {
                    let rel = relative(&self.dir, &path);
                    let mut columns = serde_json::Map::new();
                    columns.insert("path".into(), rel.clone().into());
                    batch.push(failed_row(&self.src, rel, columns, format!("{}: cannot be listed: {e}", path.display())));
                }
                Ok(path) => match self.kind {
                    FolderKind::Images => batch.push(image_row(&self.src, &self.dir, &path)),
                    FolderKind::Pdfs => self.current = Some(PdfPages::new(&self.dir, path)),
                },
            }
        }
        (!batch.is_empty()).then_some(Ok(batch))
    }
}

fn relative(dir: &Path, path: &Path) -> String {
    path.strip_prefix(dir).unwrap_or(path).display().to_string()
}

fn image_row(src: &SourceSpec, dir: &Path, path: &Path) -> SourceRow {
    let rel = relative(dir, path);
    let mut columns = serde_json::Map::new();
    columns.insert("path".into(), rel.clone().into());
    let image = read_regular_file(path, src.max_image_bytes, "source.max_image_bytes")
        .map(|bytes| RowImage::Encoded { name: rel.clone(), bytes })
        .map_err(|e| format!("image {}: {e}", path.display()));
    let mut row = make_row(src, columns, Some(image));
    if src.id_column.is_none() {
        row.input_id = rel;
    }
    row
}

/// The rows of one PDF, one a page, rendered as they are asked for. A PDF that cannot be
/// opened is one failed row; pages beyond `source.max_pdf_pages` are one failed row too.
struct PdfPages {
    path: PathBuf,
    rel: String,
    state: PdfState,
}

enum PdfState {
    NotOpened,
    Open {
        doc: crate::prepare::pdf::Document,
        /// Rendered pages not yet returned (at most a batch of them).
        ready: std::collections::VecDeque<(usize, crate::prepare::pdf::Page)>,
        /// The next page to render (0-based).
        next: usize,
        count: usize,
    },
    Done,
}

impl PdfPages {
    fn new(dir: &Path, path: PathBuf) -> Self {
        Self { rel: relative(dir, &path), path, state: PdfState::NotOpened }
    }

    /// The next row; `room` (rows left in the batch being filled) is how many pages are
    /// rendered at once when none is ready.
    fn next_row(&mut self, src: &SourceSpec, room: usize) -> Option<SourceRow> {
        let path_column = || {
            let mut columns = serde_json::Map::new();
            columns.insert("path".into(), self.rel.clone().into());
            columns
        };
        if matches!(self.state, PdfState::NotOpened) {
            let opened = read_regular_file(&self.path, src.max_pdf_bytes, "source.max_pdf_bytes")
                .and_then(crate::prepare::pdf::Document::open);
            match opened {
                Ok(doc) => {
                    let count = doc.page_count();
                    self.state = PdfState::Open { doc, ready: Default::default(), next: 0, count };
                }
                Err(e) => {
                    self.state = PdfState::Done;
                    return Some(failed_row(src, self.rel.clone(), path_column(), format!("pdf {}: {e}", self.path.display())));
                }
            }
        }
        let PdfState::Open { doc, ready, next, count } = &mut self.state else { return None };
        let (count, cap) = (*count, src.max_pdf_pages);
        let last = count.min(cap);
        if ready.is_empty() && *next < last {
            let end = (*next + room.max(1)).min(last);
            ready.extend((*next..end).zip(doc.pages(*next..end, src.dpi, src.max_page_pixels)));
            *next = end;
        }
        let Some((i, page)) = ready.pop_front() else {
            self.state = PdfState::Done;
            if count <= cap {
                return None;
            }
            let (first, skipped) = (cap + 1, count - cap);
            let mut columns = path_column();
            columns.insert("pages".into(), format!("{first}-{count}").into());
            let error = format!(
                "pdf {}: has {count} pages; pages {first}-{count} ({skipped} pages) were not read because \
                 source.max_pdf_pages = {cap} (raise it to read them)",
                self.path.display()
            );
            return Some(failed_row(src, format!("{}#pages={first}-{count}", self.rel), columns, error));
        };
        let page_no = i + 1;
        let id = format!("{}#page={page_no}", self.rel);
        let mut columns = path_column();
        columns.insert("page".into(), page_no.into());
        columns.insert("text".into(), page.text.clone().unwrap_or_default().into());
        let image = page.image.map(|image| RowImage::Rendered { name: id.clone(), image });
        let mut row = make_row(src, columns, image.map(Ok));
        if let Some(e) = page.error {
            row.error = Some(format!("pdf {} page {page_no}: {e}", self.path.display()));
        }
        row.text = page.text;
        if src.id_column.is_none() {
            row.input_id = id;
        }
        Some(row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::open;
    use crate::source::tests::spec_for;

    #[test]
    fn pdf_pages_are_capped_with_one_failed_row_for_the_rest() {
        let tmp = tempfile::tempdir().unwrap();
        let boxes = vec![(20.0, 20.0); 12];
        std::fs::write(tmp.path().join("many.pdf"), crate::prepare::pdf::tests::pdf_with_pages(&boxes)).unwrap();
        let spec = spec_for(tmp.path(), "kind = \"pdfs\"\npath = \".\"\nmax_pdf_pages = 5\nread_batch = 2");
        let batches: Vec<Vec<SourceRow>> = open(&spec).unwrap().map(|b| b.unwrap()).collect();
        assert!(batches.iter().all(|b| b.len() <= 2), "batches hold at most read_batch rows");
        let rows: Vec<SourceRow> = batches.into_iter().flatten().collect();
        assert_eq!(rows.len(), 6);
        assert!(rows[..5].iter().all(|r| r.error.is_none() && r.image.is_some()));
        assert_eq!(rows[5].input_id, "many.pdf#pages=6-12");
        let e = rows[5].error.as_deref().unwrap();
        assert!(e.contains("has 12 pages") && e.contains("(7 pages) were not read") && e.contains("source.max_pdf_pages = 5"), "{e}");
    }
}
