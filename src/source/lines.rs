//! Line-based files (JSON lines, CSV) screened before polars reads them: records that are not
//! UTF-8, not JSON objects, longer than `source.max_row_bytes` or with more CSV fields than the
//! header become failed rows named `FILE:LINE`, and polars scans a temporary copy without them.

use std::io::{BufRead, Read, Write};
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::spec::SourceSpec;
use crate::util::sha256_hex;

use super::staged::Staged;
use super::{failed_row, source_err, SourceRow};

/// A temporary file, removed when dropped.
pub(super) struct TempCopy {
    pub(super) path: PathBuf,
}

impl Drop for TempCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LineFormat {
    JsonLines,
    Csv,
}

pub(super) struct Screened {
    pub(super) bad: Vec<SourceRow>,
    pub(super) copy: Option<TempCopy>,
}

/// One record of a line-based file: for CSV a record spans lines while a quoted field is open.
pub(super) struct Record {
    /// Bytes consumed from the file, line ends included.
    consumed: u64,
    /// Lines the record spans.
    lines: usize,
    /// Longer than the cap: `bytes` holds only its first `cap` bytes.
    pub(super) too_long: bool,
    /// CSV: the file ended inside a quoted field.
    open_quote: bool,
}

/// Reads the next record into `buf` (line end included), keeping at most `cap` bytes of it.
/// `None` at the end of the file.
pub(super) fn read_record(reader: &mut impl BufRead, buf: &mut Vec<u8>, cap: usize, csv: bool) -> std::io::Result<Option<Record>> {
    buf.clear();
    let mut rec = Record { consumed: 0, lines: 0, too_long: false, open_quote: false };
    let mut in_quotes = false;
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            rec.open_quote = in_quotes;
            if rec.consumed > 0 {
                rec.lines += 1;
            }
            return Ok((rec.consumed > 0).then_some(rec));
        }
        let mut end = None;
        for (i, &b) in chunk.iter().enumerate() {
            // An over-long record ends at the next line end, quotes or not, so that the file
            // can be read on after it.
            if csv && b == b'"' && !rec.too_long {
                in_quotes = !in_quotes;
            } else if b == b'\n' {
                rec.lines += 1;
                if !in_quotes || rec.too_long {
                    end = Some(i + 1);
                    break;
                }
            }
        }
        let take = end.unwrap_or(chunk.len());
        let room = cap.saturating_sub(buf.len());
        if take > room {
            rec.too_long = true;
        }
        buf.extend_from_slice(&chunk[..take.min(room)]);
        rec.consumed += take as u64;
        reader.consume(take);
        if end.is_some() {
            return Ok(Some(rec));
        }
    }
}

/// Fields of a CSV record (separators outside quotes, plus one).
fn csv_fields(record: &[u8]) -> usize {
    let mut in_quotes = false;
    let mut n = 1;
    for &b in record {
        match b {
            b'"' => in_quotes = !in_quotes,
            b',' if !in_quotes => n += 1,
            _ => {}
        }
    }
    n
}

/// Checks every record of a JSON lines or CSV file. Records that are not UTF-8, not a JSON
/// object (JSON lines), have more fields than the header (CSV) or are longer than
/// `source.max_row_bytes` are failed rows named `FILE:LINE`; when there are any, polars reads
/// a copy of the file without them. A CSV header that cannot be read is an error of the file.
pub(super) fn screen_lines(src: &SourceSpec, staged: &Staged, format: LineFormat) -> Result<Screened> {
    let csv = format == LineFormat::Csv;
    // Read the local file; name the file as the source does.
    let (local, path) = (staged.local.as_path(), staged.name.as_path());
    let file = std::fs::File::open(local).map_err(|e| Error::io(path, e))?;
    let mut reader = std::io::BufReader::with_capacity(1 << 16, file);
    let cap = usize::try_from(src.max_row_bytes).unwrap_or(usize::MAX);
    let mut buf = Vec::new();
    let mut bad = Vec::new();
    let mut copy: Option<(TempCopy, std::io::BufWriter<std::fs::File>)> = None;
    let mut good_before: u64 = 0;
    let mut line_no = 0usize;
    let mut header_fields = None;
    while let Some(rec) = read_record(&mut reader, &mut buf, cap, csv).map_err(|e| Error::io(path, e))? {
        let first_line = line_no + 1;
        line_no += rec.lines;
        let content = buf.strip_suffix(b"\n").unwrap_or(&buf);
        let content = content.strip_suffix(b"\r").unwrap_or(content);
        let problem = if rec.too_long {
            Some(format!(
                "line {first_line} is longer than source.max_row_bytes = {} bytes (raise it to read longer lines)",
                src.max_row_bytes
            ))
        } else {
            match std::str::from_utf8(content) {
                Err(e) => Some(format!("line {first_line} is not valid UTF-8 (byte {} of the line)", e.valid_up_to() + 1)),
                Ok(t) if t.trim().is_empty() => None,
                Ok(t) => match format {
                    LineFormat::JsonLines => match serde_json::from_str::<serde_json::Value>(t) {
                        Ok(serde_json::Value::Object(_)) => None,
                        Ok(_) => Some(format!("line {first_line} is not a JSON object")),
                        Err(e) => Some(format!("line {first_line} is not valid JSON: {e}")),
                    },
                    LineFormat::Csv if rec.open_quote => {
                        Some(format!("line {first_line}: a quoted field is not closed before the end of the file"))
                    }
                    LineFormat::Csv => match header_fields {
                        None => {
                            header_fields = Some(csv_fields(content));
                            None
                        }
                        Some(h) => {
                            let n = csv_fields(content);
                            (n > h).then(|| format!("line {first_line} has {n} fields, the header has {h}"))
                        }
                    },
                },
            }
        };
        let Some(message) = problem else {
            match copy.as_mut() {
                Some((t, w)) => w.write_all(&buf).map_err(|e| Error::io(&t.path, e))?,
                None => good_before += rec.consumed,
            }
            continue;
        };
        if csv && header_fields.is_none() {
            return Err(source_err(path, format!("the CSV header (line {first_line}) cannot be read: {message}")));
        }
        if copy.is_none() {
            // First bad line: copy the good lines so far into a temporary file.
            let ext = if csv { "csv" } else { "jsonl" };
            // Unique in this process too: the same file may be opened twice at once.
            static COPIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let tmp = std::env::temp_dir().join(format!(
                "gemma-batch-{}-{}-{}.{ext}",
                std::process::id(),
                COPIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                &sha256_hex(&[path.display().to_string().as_bytes()])[..12]
            ));
            let f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
            let mut w = std::io::BufWriter::new(f);
            let mut src_file = std::fs::File::open(local).map_err(|e| Error::io(path, e))?;
            std::io::copy(&mut (&mut src_file).take(good_before), &mut w).map_err(|e| Error::io(&tmp, e))?;
            copy = Some((TempCopy { path: tmp }, w));
        }
        let mut columns = serde_json::Map::new();
        columns.insert("line".into(), first_line.into());
        let mut row = failed_row(src, format!("{}:{first_line}", path.display()), columns, format!("{}: {message}", path.display()));
        row.content_hash = sha256_hex(&[content]);
        bad.push(row);
    }
    let copy = match copy {
        Some((t, mut w)) => {
            w.flush().map_err(|e| Error::io(&t.path, e))?;
            Some(t)
        }
        None => None,
    };
    Ok(Screened { bad, copy })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::tests::{all_rows, spec_for};

    #[test]
    fn csv_records_span_quoted_newlines_and_bad_lines_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let mut csv = b"id,text\n1,\"two\nlines\"\n2,plain\n3,caf\xe9\n4,a,b,c\n5,\"quoted, comma\"\n".to_vec();
        csv.extend_from_slice(b"6,ok\r\n");
        std::fs::write(tmp.path().join("t.csv"), &csv).unwrap();
        let spec = spec_for(tmp.path(), "kind = \"csv\"\npath = \"t.csv\"\nid_column = \"id\"");
        let rows = all_rows(&spec);
        let failed: Vec<(&str, &str)> =
            rows.iter().filter_map(|r| r.error.as_deref().map(|e| (r.input_id.as_str(), e))).collect();
        assert_eq!(failed.len(), 2, "{failed:?}");
        assert!(failed[0].0.ends_with("t.csv:5") && failed[0].1.contains("line 5 is not valid UTF-8"), "{failed:?}");
        assert!(failed[1].0.ends_with("t.csv:6") && failed[1].1.contains("line 6 has 4 fields, the header has 2"), "{failed:?}");
        let ok: Vec<&str> = rows.iter().filter(|r| r.error.is_none()).map(|r| r.input_id.as_str()).collect();
        assert_eq!(ok, ["1", "2", "5", "6"]);
        let first = rows.iter().find(|r| r.input_id == "1").unwrap();
        assert_eq!(first.columns["text"], "two\nlines");
    }

    #[test]
    fn over_long_lines_are_failed_rows() {
        let tmp = tempfile::tempdir().unwrap();
        let long = format!("{{\"id\": \"long\", \"text\": \"{}\"}}\n", "x".repeat(5000));
        std::fs::write(tmp.path().join("t.jsonl"), format!("{{\"id\": \"a\"}}\n{long}{{\"id\": \"b\"}}\n")).unwrap();
        let spec = spec_for(tmp.path(), "kind = \"jsonl\"\npath = \"t.jsonl\"\nid_column = \"id\"\nmax_row_bytes = 1000");
        let rows = all_rows(&spec);
        let failed: Vec<&SourceRow> = rows.iter().filter(|r| r.error.is_some()).collect();
        assert_eq!(failed.len(), 1);
        assert!(failed[0].input_id.ends_with("t.jsonl:2"));
        assert!(failed[0].error.as_ref().unwrap().contains("source.max_row_bytes = 1000"));
        let ok: Vec<&str> = rows.iter().filter(|r| r.error.is_none()).map(|r| r.input_id.as_str()).collect();
        assert_eq!(ok, ["a", "b"]);
    }
}
