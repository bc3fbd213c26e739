//! Lance datasets: scanned with the column selection and the row filter (SQL) pushed down,
//! each Arrow record batch turned into rows.

use std::path::Path;

use crate::error::Result;
use crate::spec::SourceSpec;

use super::images::ImagePaths;
use super::{failed_row, make_row, panic_text, selected_columns, source_err, RowBatches, RowImage, SourceRow};

/// Field names of a Lance dataset's schema, read on a thread of its own (callable from
/// anywhere, inside an async runtime or not).
pub(super) fn lance_column_names(path: &Path) -> Result<Vec<String>> {
    let uri = path.display().to_string();
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| source_err(path, e))?;
            rt.block_on(async {
                let ds = lance::dataset::Dataset::open(&uri).await.map_err(|e| source_err(path, e))?;
                Ok(ds.schema().fields.iter().map(|f| f.name.clone()).collect())
            })
        })
        .join()
        .unwrap_or_else(|p| Err(source_err(path, panic_text(p))))
    })
}

/// A Lance dataset, scanned with the column selection and the row filter (SQL) pushed down.
pub(super) fn lance_table(src: &SourceSpec, path: &Path) -> Result<RowBatches> {
    use futures::StreamExt;
    let uri = path.display().to_string();
    let err = |e: lance::Error| source_err(path, e);
    // The reader runs on a blocking thread of the pipeline's runtime; elsewhere, make one.
    let (handle, owned) = match tokio::runtime::Handle::try_current() {
        Ok(h) => (h, None),
        Err(_) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| source_err(path, e))?;
            (rt.handle().clone(), Some(rt))
        }
    };
    let stream = handle.block_on(async {
        let ds = lance::dataset::Dataset::open(&uri).await.map_err(err)?;
        let mut scan = ds.scan();
        if let Some(cols) = &src.columns {
            scan.project(&selected_columns(src, cols)).map_err(err)?;
        }
        if let Some(f) = &src.filter {
            scan.filter(f).map_err(|e| source_err(path, format!("filter {f:?}: {e}")))?;
        }
        scan.batch_size(src.read_batch);
        scan.try_into_stream().await.map_err(err)
    })?;
    let src = src.clone();
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let images = ImagePaths::new(&src, &base, &base);
    let path = path.to_path_buf();
    let mut stream = Box::pin(stream);
    let mut rows_before = 0usize;
    Ok(Box::new(std::iter::from_fn(move || {
        let _keep_runtime = &owned;
        let batch = handle.block_on(stream.next())?;
        Some(batch.map_err(|e| source_err(&path, e)).map(|b| {
            let first = rows_before;
            rows_before += b.num_rows();
            let name = |i: usize| format!("{}#row={}", path.display(), first + i + 1);
            match arrow_rows(&src, &images, &b) {
                Ok(rows) => rows,
                // Row by row, so that one row that cannot be converted is one failed row.
                Err(_) => (0..b.num_rows())
                    .flat_map(|i| {
                        arrow_rows(&src, &images, &b.slice(i, 1)).unwrap_or_else(|e| {
                            vec![failed_row(&src, name(i), serde_json::Map::new(), format!("{}: the row cannot be read: {e}", name(i)))]
                        })
                    })
                    .collect(),
            }
        }))
    })))
}

/// Rows of an Arrow record batch: the image column as in tables, every other column as JSON.
fn arrow_rows(src: &SourceSpec, images: &ImagePaths, batch: &arrow_array::RecordBatch) -> std::result::Result<Vec<SourceRow>, String> {
    use arrow_array::cast::AsArray;
    use arrow_array::Array;
    use arrow_schema::DataType as A;
    let n = batch.num_rows();
    let mut row_images: Vec<Option<std::result::Result<RowImage, String>>> = vec![None; n];
    let mut batch = batch.clone();
    if let Some(name) = &src.image_column {
        let idx = batch.schema().index_of(name).map_err(|_| format!("image column {name:?} is not in the dataset"))?;
        let column = batch.column(idx).clone();
        let bytes = |name: &str, b: Option<&[u8]>| b.map(|b| Ok(RowImage::Encoded { name: name.to_string(), bytes: b.to_vec() }));
        let label = format!("{name} bytes");
        row_images = match column.data_type() {
            A::Utf8 => column.as_string::<i32>().iter().map(|p| p.map(|p| images.read(p))).collect(),
            A::LargeUtf8 => column.as_string::<i64>().iter().map(|p| p.map(|p| images.read(p))).collect(),
            A::Binary => column.as_binary::<i32>().iter().map(|b| bytes(&label, b)).collect(),
            A::LargeBinary => column.as_binary::<i64>().iter().map(|b| bytes(&label, b)).collect(),
            A::Struct(_) => {
                let s = column.as_struct();
                let b = s.column_by_name("bytes").ok_or("image struct has no `bytes` field")?;
                let p = s.column_by_name("path");
                (0..n)
                    .map(|i| {
                        let path = p.and_then(|p| p.as_string_opt::<i32>()).filter(|p| p.is_valid(i)).map(|p| p.value(i));
                        let data = match b.data_type() {
                            A::LargeBinary => b.as_binary::<i64>().is_valid(i).then(|| b.as_binary::<i64>().value(i)),
                            _ => b.as_binary_opt::<i32>().filter(|a| a.is_valid(i)).map(|a| a.value(i)),
                        };
                        match (data, path) {
                            (Some(d), p) => bytes(p.unwrap_or("image bytes"), Some(d)),
                            (None, Some(p)) => Some(images.read(p)),
                            (None, None) => None,
                        }
                    })
                    .collect()
            }
            other => return Err(format!("image column {name:?} has type {other}; expected a path, bytes or a {{bytes, path}} struct")),
        };
        if !matches!(column.data_type(), A::Utf8 | A::LargeUtf8) {
            batch.remove_column(idx);
        }
    }
    let mut writer = arrow_json::ArrayWriter::new(Vec::new());
    writer.write(&batch).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    let buf = writer.into_inner();
    let objects: Vec<serde_json::Map<String, serde_json::Value>> =
        if buf.is_empty() { Vec::new() } else { serde_json::from_slice(&buf).map_err(|e| e.to_string())? };
    Ok(objects.into_iter().zip(row_images).map(|(columns, image)| make_row(src, columns, image)).collect())
}
