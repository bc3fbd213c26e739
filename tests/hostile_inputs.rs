//! A row cannot stop a run: hostile inputs (devices, FIFOs, paths leaving the source
//! directory, columns polars cannot write as JSON, undecodable lines, huge PDFs) are each one
//! failed row naming the row and the field, and the other rows finish. Every run here goes
//! through the real binary and is bounded in time, so a hang fails the test instead of
//! blocking it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use gemma_batch::sink::{to_polars, ResultStore};

mod common;
use common::{repo, run_within as run, summary};

const LIMIT: Duration = Duration::from_secs(300);

fn counts(s: &serde_json::Value) -> (u64, u64) {
    (s["done"].as_u64().unwrap_or(u64::MAX), s["failed"].as_u64().unwrap_or(u64::MAX))
}

fn write_spec(dir: &Path, source: &str, tasks: &str) -> PathBuf {
    common::write_spec(dir, source, tasks, "")
}

/// A text task: one model call a row, one token.
const TEXT_TASK: &str = "[[task]]\nname = \"echo\"\nkind = \"prompt\"\nprompt = \"Say {{ id }}\"\nuse_image = false\nmax_new_tokens = 1\n";
/// An image task.
const IMAGE_TASK: &str = "[[task]]\nname = \"cap\"\nkind = \"caption\"\nmax_new_tokens = 1\n";

/// input_id -> error of every committed row (one task a spec here); panics on a duplicate.
fn results(dir: &Path) -> HashMap<String, Option<String>> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = ResultStore::new(dir.join("out/results.lance").display().to_string());
    let batches = rt.block_on(store.read(None, Some(&["key", "input_id", "output", "error"]))).unwrap();
    let df = to_polars(&batches).unwrap();
    let mut rows = HashMap::new();
    if df.height() == 0 {
        return rows;
    }
    let ids = df.column("input_id").unwrap().str().unwrap().clone();
    let errors = df.column("error").unwrap().str().unwrap().clone();
    for i in 0..df.height() {
        let id = ids.get(i).unwrap().to_string();
        let prev = rows.insert(id.clone(), errors.get(i).map(str::to_owned));
        assert!(prev.is_none(), "row {id} is in the results twice");
    }
    rows
}

/// The error of the row whose input id ends with `id`.
fn error_of<'a>(rows: &'a HashMap<String, Option<String>>, id: &str) -> Option<&'a str> {
    let key = rows.keys().find(|k| k.ends_with(id)).unwrap_or_else(|| panic!("no row {id}: {rows:?}"));
    rows[key].as_deref()
}

fn assert_failed(rows: &HashMap<String, Option<String>>, id: &str, reasons: &[&str]) {
    let e = error_of(rows, id).unwrap_or_else(|| panic!("row {id} should have failed: {rows:?}"));
    for r in reasons {
        assert!(e.contains(r), "row {id}: {e:?} should mention {r:?}");
    }
}

fn assert_done(rows: &HashMap<String, Option<String>>, id: &str) {
    assert_eq!(error_of(rows, id), None, "row {id} should be done");
}

#[cfg(unix)]
fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().expect("mkfifo");
    assert!(status.success());
}

fn photo() -> Vec<u8> {
    std::fs::read(repo().join("datasets/photos/photo_000.png")).unwrap()
}

// ---- 1. files named by rows ---------------------------------------------------------------

#[cfg(unix)]
#[test]
fn image_paths_to_devices_fifos_directories_and_outside_files_are_failed_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(data.join("adir")).unwrap();
    std::fs::write(data.join("good.png"), photo()).unwrap();
    std::fs::write(tmp.path().join("outside.png"), photo()).unwrap();
    mkfifo(&data.join("pipe.png"));
    let outside = tmp.path().join("outside.png").display().to_string();
    let rows = [
        ("good", "good.png".to_string()),
        ("zero", "/dev/zero".to_string()),
        ("fifo", "pipe.png".to_string()),
        ("dir", "adir".to_string()),
        ("passwd", "../../../../../../../../../../etc/passwd".to_string()),
        ("outside", outside),
        ("good_again", "./adir/../good.png".to_string()),
    ];
    let jsonl: String = rows.iter().map(|(id, img)| serde_json::json!({"id": id, "image": img}).to_string() + "\n").collect();
    std::fs::write(data.join("rows.jsonl"), jsonl).unwrap();
    let source = |extra: &str| {
        format!(
            "[source]\nkind = \"jsonl\"\npath = \"{}\"\nid_column = \"id\"\nimage_column = \"image\"\n{extra}",
            data.join("rows.jsonl").display()
        )
    };

    // Confined (the default): every path outside the data directory is refused, /dev/zero too.
    let run1 = tmp.path().join("confined");
    std::fs::create_dir(&run1).unwrap();
    let out = run(&write_spec(&run1, &source(""), IMAGE_TASK), LIMIT);
    assert_eq!(out.status.code(), Some(3), "some rows failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(counts(&summary(&out)), (2, 5));
    let r = results(&run1);
    assert_done(&r, "good");
    assert_done(&r, "good_again");
    assert_failed(&r, "zero", &["image column \"image\"", "/dev/zero", "outside the source directory", "source.confine_images"]);
    assert_failed(&r, "fifo", &["image column \"image\"", "pipe.png", "a FIFO, not a regular file"]);
    assert_failed(&r, "dir", &["adir", "a directory, not a regular file"]);
    assert_failed(&r, "passwd", &["etc/passwd", "outside the source directory"]);
    assert_failed(&r, "outside", &["outside.png", "outside the source directory"]);

    // Not confined: outside files are read, devices still are not; the byte cap applies.
    let run2 = tmp.path().join("open");
    std::fs::create_dir(&run2).unwrap();
    let out = run(&write_spec(&run2, &source("confine_images = false\n"), IMAGE_TASK), LIMIT);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    let r = results(&run2);
    assert_eq!(counts(&summary(&out)), (3, 4), "{r:?}");
    assert_done(&r, "outside");
    assert_failed(&r, "zero", &["/dev/zero", "a character device, not a regular file"]);
    assert_failed(&r, "fifo", &["a FIFO"]);
    assert_failed(&r, "dir", &["a directory"]);
    // /etc/passwd is a regular file: read, then refused as an image.
    assert!(error_of(&r, "passwd").is_some());

    let run3 = tmp.path().join("capped");
    std::fs::create_dir(&run3).unwrap();
    let out = run(&write_spec(&run3, &source("max_image_bytes = 100\n"), IMAGE_TASK), LIMIT);
    assert_eq!(out.status.code(), Some(3));
    let r = results(&run3);
    assert_failed(&r, "good", &["good.png", "over source.max_image_bytes = 100"]);
}

#[cfg(unix)]
#[test]
fn a_fifo_in_an_image_folder_is_a_failed_row_not_a_hang_or_a_silent_skip() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    std::fs::create_dir(&images).unwrap();
    std::fs::write(images.join("good.png"), photo()).unwrap();
    mkfifo(&images.join("pipe.png"));
    std::fs::create_dir(images.join("folder.png")).unwrap();
    let source = format!("[source]\nkind = \"images\"\npath = \"{}\"\n", images.display());
    let out = run(&write_spec(tmp.path(), &source, IMAGE_TASK), LIMIT);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(counts(&summary(&out)), (1, 1));
    let r = results(tmp.path());
    assert_done(&r, "good.png");
    assert_failed(&r, "pipe.png", &["pipe.png", "a FIFO"]);
}

// ---- 2. tables polars cannot read as they are ------------------------------------------------

#[test]
fn parquet_with_binary_and_named_time_zone_columns_runs() {
    use polars::prelude::*;
    let tmp = tempfile::tempdir().unwrap();
    let blobs: Vec<Option<&[u8]>> = vec![Some(b"\x00\xff\x10binary"), None, Some(b"")];
    let mut df = df!(
        "id" => ["a", "b", "c"],
        "question" => ["What?", "Why?", "How?"],
        "blob" => blobs,
        "at" => [1_700_000_000_000i64, 1_600_000_000_000, 0],
    )
    .unwrap()
    .lazy()
    .with_column(col("at").cast(DataType::Datetime(TimeUnit::Milliseconds, TimeZone::opt_try_new(Some("Europe/Paris")).unwrap())))
    .collect()
    .unwrap();
    let file = std::fs::File::create(tmp.path().join("t.parquet")).unwrap();
    ParquetWriter::new(file).finish(&mut df).unwrap();
    let source = format!("[source]\nkind = \"parquet\"\npath = \"{}\"\nid_column = \"id\"\n", tmp.path().join("t.parquet").display());
    // The template sees the converted values.
    let tasks = "[[task]]\nname = \"echo\"\nkind = \"prompt\"\nprompt = \"{{ question }} {{ at }} {{ blob }}\"\nuse_image = false\nmax_new_tokens = 1\n";
    let out = run(&write_spec(tmp.path(), &source, tasks), LIMIT);
    assert!(out.status.success(), "exit {:?}: {}", out.status.code(), String::from_utf8_lossy(&out.stderr));
    assert_eq!(counts(&summary(&out)), (3, 0));
    assert_eq!(results(tmp.path()).len(), 3);
}

#[test]
fn a_csv_line_that_is_not_utf8_is_one_failed_row() {
    let tmp = tempfile::tempdir().unwrap();
    let mut csv = b"id,question\nr1,What is this?\nr2,\"A field\nover two lines\"\n".to_vec();
    csv.extend_from_slice(b"r3,Caf\xe9 au lait?\n");
    csv.extend_from_slice(b"r4,Still read?\n");
    std::fs::write(tmp.path().join("rows.csv"), csv).unwrap();
    let source = format!("[source]\nkind = \"csv\"\npath = \"{}\"\nid_column = \"id\"\n", tmp.path().join("rows.csv").display());
    let out = run(&write_spec(tmp.path(), &source, TEXT_TASK), LIMIT);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(counts(&summary(&out)), (3, 1));
    let r = results(tmp.path());
    for id in ["r1", "r2", "r4"] {
        assert_done(&r, id);
    }
    assert_failed(&r, "rows.csv:5", &["rows.csv", "line 5 is not valid UTF-8"]);
}

#[test]
fn a_bad_line_in_one_file_of_a_json_lines_glob_is_one_failed_row() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("parts");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("a.jsonl"), "{\"id\": \"a1\"}\n{\"id\": \"a2\"}\n").unwrap();
    std::fs::write(dir.join("b.jsonl"), "{\"id\": \"b1\"}\n{\"id\": \"b2\", \"cut\n{\"id\": \"b3\"}\n").unwrap();
    // Another file with other columns: files of a glob are scanned one by one.
    std::fs::write(dir.join("c.jsonl"), "{\"id\": \"c1\", \"extra\": [1, 2], \"score\": 0.5}\n").unwrap();
    let source = format!("[source]\nkind = \"jsonl\"\npath = \"{}/*.jsonl\"\nid_column = \"id\"\n", dir.display());
    let out = run(&write_spec(tmp.path(), &source, TEXT_TASK), LIMIT);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(counts(&summary(&out)), (5, 1));
    let r = results(tmp.path());
    for id in ["a1", "a2", "b1", "b3", "c1"] {
        assert_done(&r, id);
    }
    assert_failed(&r, "b.jsonl:2", &["b.jsonl", "line 2 is not valid JSON"]);
}

// ---- 3. PDFs ---------------------------------------------------------------------------

/// A PDF with one page per media box (points), each with a line drawn on it.
fn pdf_with_pages(boxes: &[(f32, f32)]) -> Vec<u8> {
    use lopdf::{dictionary, Document, Object, Stream};
    let mut doc = Document::with_version("1.5");
    let pages_id = doc.new_object_id();
    let content = doc.add_object(Stream::new(dictionary! {}, b"0 0 m 10 10 l S".to_vec()));
    let kids: Vec<Object> = boxes
        .iter()
        .map(|&(w, h)| {
            doc.add_object(dictionary! {
                "Type" => "Page",
                "Parent" => pages_id,
                "MediaBox" => vec![Object::Integer(0), Object::Integer(0), Object::Real(w), Object::Real(h)],
                "Contents" => content,
            })
            .into()
        })
        .collect();
    let count = kids.len() as i64;
    doc.objects.insert(pages_id, Object::Dictionary(dictionary! { "Type" => "Pages", "Kids" => kids, "Count" => count }));
    let catalog = doc.add_object(dictionary! { "Type" => "Catalog", "Pages" => pages_id });
    doc.trailer.set("Root", catalog);
    let mut out = Vec::new();
    doc.save_to(&mut out).unwrap();
    out
}

#[test]
fn pdf_pages_beyond_the_cap_are_one_failed_row_and_huge_pages_are_not_rendered() {
    let tmp = tempfile::tempdir().unwrap();
    let pdfs = tmp.path().join("pdfs");
    std::fs::create_dir(&pdfs).unwrap();
    std::fs::write(pdfs.join("long.pdf"), pdf_with_pages(&vec![(36.0, 36.0); 1200])).unwrap();
    std::fs::write(pdfs.join("huge.pdf"), pdf_with_pages(&[(100_000.0, 100_000.0), (72.0, 72.0)])).unwrap();
    let source = format!("[source]\nkind = \"pdfs\"\npath = \"{}\"\nmax_pdf_pages = 1000\n", pdfs.display());
    let tasks = "[[task]]\nname = \"page\"\nkind = \"prompt\"\nprompt = \"Page {{ page }}\"\nuse_image = false\nmax_new_tokens = 1\n";
    let out = run(&write_spec(tmp.path(), &source, tasks), LIMIT);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    let s = summary(&out);
    // long.pdf: 1000 pages and one row for the 200 beyond; huge.pdf: 2 pages.
    assert_eq!(s["rows_read"].as_u64(), Some(1003));
    assert_eq!(counts(&s), (1001, 2));
    let r = results(tmp.path());
    assert_eq!(r.len(), 1003);
    assert_done(&r, "long.pdf#page=1");
    assert_done(&r, "long.pdf#page=1000");
    assert!(!r.keys().any(|k| k.ends_with("long.pdf#page=1001")), "pages beyond the cap are not rows");
    assert_failed(&r, "long.pdf#pages=1001-1200", &["has 1200 pages", "1001-1200 (200 pages) were not read", "source.max_pdf_pages = 1000"]);
    assert_failed(&r, "huge.pdf#page=1", &["100000 x 100000 pt", "source.max_page_pixels", "not rendered"]);
    assert_done(&r, "huge.pdf#page=2");
}

#[test]
fn a_ten_thousand_page_pdf_reads_only_the_pages_it_is_allowed() {
    let tmp = tempfile::tempdir().unwrap();
    let pdfs = tmp.path().join("pdfs");
    std::fs::create_dir(&pdfs).unwrap();
    std::fs::write(pdfs.join("tome.pdf"), pdf_with_pages(&vec![(612.0, 792.0); 10_000])).unwrap();
    let source = format!("[source]\nkind = \"pdfs\"\npath = \"{}\"\nmax_pdf_pages = 3\n", pdfs.display());
    let tasks = "[[task]]\nname = \"page\"\nkind = \"prompt\"\nprompt = \"Page {{ page }}\"\nuse_image = false\nmax_new_tokens = 1\n";
    let out = run(&write_spec(tmp.path(), &source, tasks), LIMIT);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(counts(&summary(&out)), (3, 1));
    let r = results(tmp.path());
    assert_failed(&r, "tome.pdf#pages=4-10000", &["9997 pages", "source.max_pdf_pages = 3"]);
}

// ---- 4. spec bounds ----------------------------------------------------------------------

#[test]
fn out_of_range_spec_values_are_refused_before_any_row() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("rows.jsonl"), "{\"id\": \"a\"}\n").unwrap();
    let source = format!("[source]\nkind = \"jsonl\"\npath = \"{}\"\n", tmp.path().join("rows.jsonl").display());
    let spec = write_spec(tmp.path(), &source, TEXT_TASK);
    let text = std::fs::read_to_string(&spec).unwrap().replace("batch_size = 4", "batch_size = 1000000");
    std::fs::write(&spec, text).unwrap();
    let out = run(&spec, LIMIT);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("model.batch_size = 1000000 is out of range: allowed 1..=256"), "{stderr}");
    assert!(!tmp.path().join("out/results.lance").exists(), "nothing was written");
}
