//! Columns as JSON: each row of a polars frame as a JSON object. Types polars' JSON writer
//! handles go through it; the others (binary values, datetimes in time zones it does not know,
//! ...) are converted here, never a reason to fail.

use polars::prelude::*;

use crate::util::sha256_hex;

use super::panic_text;

/// A time zone polars writes as JSON itself (`UTC` or a `[-]HH:MM` offset); for others it
/// needs a time zone database it is not built with.
fn fixed_offset(tz: &str) -> bool {
    if tz == "UTC" {
        return true;
    }
    let mut parts = tz.split(':');
    let (Some(h), Some(m)) = (parts.next(), parts.next()) else { return false };
    match (h.parse::<i64>(), m.parse::<i64>()) {
        (Ok(h), Ok(m)) => (h * 3600 + m * 60).abs() < 86_400,
        _ => false,
    }
}

/// Types polars' JSON writer handles (everything else is converted here).
fn json_safe(dt: &DataType) -> bool {
    match dt {
        DataType::Boolean | DataType::String | DataType::Date | DataType::Null | DataType::Time | DataType::Duration(_) => true,
        DataType::Datetime(_, None) => true,
        DataType::Datetime(_, Some(tz)) => fixed_offset(tz.as_str()),
        DataType::List(inner) => json_safe(inner),
        DataType::Struct(fields) => fields.iter().all(|f| json_safe(f.dtype())),
        d => d.is_primitive_numeric() || d.is_categorical() || d.is_enum(),
    }
}

/// Each row of `df` as a JSON object, columns in the frame's order. Types polars writes as
/// JSON go through its writer; binary values become a description with their size and
/// SHA-256, datetimes in named time zones RFC 3339 text, anything else its display text.
pub(super) fn columns_json(df: &DataFrame) -> std::result::Result<Vec<serde_json::Map<String, serde_json::Value>>, String> {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    let n = df.height();
    let (safe, other): (Vec<&Column>, Vec<&Column>) = df.columns().iter().partition(|c| json_safe(c.dtype()));
    let mut written: Vec<serde_json::Map<String, serde_json::Value>> = vec![serde_json::Map::new(); n];
    if !safe.is_empty() && n > 0 {
        let mut part = DataFrame::new(n, safe.iter().map(|c| (*c).clone()).collect()).map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        catch_unwind(AssertUnwindSafe(|| JsonWriter::new(&mut buf).with_json_format(JsonFormat::JsonLines).finish(&mut part)))
            .map_err(|p| format!("JSON conversion: {}", panic_text(p)))?
            .map_err(|e| e.to_string())?;
        let lines: Vec<&[u8]> = buf.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
        if lines.len() != n {
            return Err(format!("JSON conversion gave {} rows for {n}", lines.len()));
        }
        for (row, line) in written.iter_mut().zip(lines) {
            *row = serde_json::from_slice(line).map_err(|e| e.to_string())?;
        }
    }
    let mut converted: Vec<(String, Vec<serde_json::Value>)> = Vec::new();
    for c in other {
        let s = c.as_materialized_series();
        let values = catch_unwind(AssertUnwindSafe(|| series_json(s)))
            .map_err(|p| format!("column {:?}: {}", c.name(), panic_text(p)))?
            .map_err(|e| format!("column {:?}: {e}", c.name()))?;
        converted.push((c.name().to_string(), values));
    }
    if converted.is_empty() {
        return Ok(written);
    }
    // Rebuild each row in the frame's column order.
    let names: Vec<String> = df.get_column_names().iter().map(|s| s.to_string()).collect();
    let mut iters: Vec<(String, std::vec::IntoIter<serde_json::Value>)> = converted.into_iter().map(|(k, v)| (k, v.into_iter())).collect();
    let mut rows = Vec::with_capacity(n);
    for mut w in written {
        let mut row = serde_json::Map::new();
        for name in &names {
            let v = match iters.iter_mut().find(|(k, _)| k == name) {
                Some((_, it)) => it.next().unwrap_or(serde_json::Value::Null),
                None => w.remove(name).unwrap_or(serde_json::Value::Null),
            };
            row.insert(name.clone(), v);
        }
        rows.push(row);
    }
    Ok(rows)
}

/// A value of a binary column: its size and hash (the bytes themselves are not template text).
fn binary_json(b: &[u8]) -> serde_json::Value {
    format!("<{} bytes, sha256 {}>", b.len(), &sha256_hex(&[b])[..16]).into()
}

fn datetime_text(v: i64, unit: TimeUnit, tz: &str) -> String {
    use arrow_array::temporal_conversions::{as_datetime, as_datetime_with_timezone};
    use arrow_array::types::{TimestampMicrosecondType as Us, TimestampMillisecondType as Ms, TimestampNanosecondType as Ns};
    let zone: Option<arrow_array::timezone::Tz> = tz.parse().ok();
    let text = match (unit, zone) {
        (TimeUnit::Nanoseconds, Some(z)) => as_datetime_with_timezone::<Ns>(v, z).map(|d| d.to_rfc3339()),
        (TimeUnit::Microseconds, Some(z)) => as_datetime_with_timezone::<Us>(v, z).map(|d| d.to_rfc3339()),
        (TimeUnit::Milliseconds, Some(z)) => as_datetime_with_timezone::<Ms>(v, z).map(|d| d.to_rfc3339()),
        // A zone not known here: the instant in UTC, with the zone's name.
        (TimeUnit::Nanoseconds, None) => as_datetime::<Ns>(v).map(|d| format!("{d} UTC ({tz})")),
        (TimeUnit::Microseconds, None) => as_datetime::<Us>(v).map(|d| format!("{d} UTC ({tz})")),
        (TimeUnit::Milliseconds, None) => as_datetime::<Ms>(v).map(|d| format!("{d} UTC ({tz})")),
    };
    text.unwrap_or_else(|| format!("{v} ({unit:?} since 1970, {tz})"))
}

/// The JSON values of a series whose type polars' JSON writer does not handle.
fn series_json(s: &Series) -> std::result::Result<Vec<serde_json::Value>, String> {
    use serde_json::Value;
    let n = s.len();
    if json_safe(s.dtype()) {
        let df = DataFrame::new(n, vec![s.clone().into_column()]).map_err(|e| e.to_string())?;
        let name = s.name().to_string();
        return Ok(columns_json(&df)?.into_iter().map(|mut r| r.remove(&name).unwrap_or(Value::Null)).collect());
    }
    let err = |e: PolarsError| e.to_string();
    Ok(match s.dtype() {
        DataType::Binary => s.binary().map_err(err)?.iter().map(|b| b.map_or(Value::Null, binary_json)).collect(),
        DataType::BinaryOffset => (0..n)
            .map(|i| match s.get(i) {
                Ok(AnyValue::Binary(b)) => binary_json(b),
                Ok(AnyValue::BinaryOwned(b)) => binary_json(&b),
                _ => Value::Null,
            })
            .collect(),
        DataType::Datetime(unit, Some(tz)) => {
            let (unit, tz) = (*unit, tz.to_string());
            let phys = s.to_physical_repr();
            phys.i64().map_err(err)?.iter().map(|v| v.map_or(Value::Null, |v| datetime_text(v, unit, &tz).into())).collect()
        }
        DataType::List(_) => {
            let ca = s.list().map_err(err)?;
            (0..n)
                .map(|i| match ca.get_as_series(i) {
                None => Ok(Value::Null),
                    Some(inner) => series_json(&inner).map(Value::Array),
                })
                .collect::<std::result::Result<_, String>>()?
        }
        DataType::Struct(_) => {
            let ca = s.struct_().map_err(err)?;
            let fields = ca.fields_as_series();
            let mut values: Vec<(String, std::vec::IntoIter<Value>)> = Vec::new();
            for f in &fields {
                values.push((f.name().to_string(), series_json(f)?.into_iter()));
            }
            let valid: Vec<bool> = match ca.rechunk_validity() {
                Some(bits) => bits.iter().collect(),
                None => vec![true; n],
            };
            valid
                .into_iter()
                .map(|ok| {
                    let obj: serde_json::Map<String, Value> =
                        values.iter_mut().map(|(k, it)| (k.clone(), it.next().unwrap_or(Value::Null))).collect();
                    if ok { Value::Object(obj) } else { Value::Null }
                })
                .collect()
        }
        _ => (0..n)
            .map(|i| match s.get(i) {
                Ok(AnyValue::Null) => Value::Null,
                Ok(v) => Value::String(v.to_string()),
                Err(_) => Value::Null,
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::column_names;
    use crate::source::tests::{all_rows, spec_for};

    #[test]
    fn binary_and_time_zone_columns_become_text() {
        let tmp = tempfile::tempdir().unwrap();
        let blob: Vec<Option<&[u8]>> = vec![Some(b"\x00\x01\x02"), None];
        let mut df = df!("id" => ["a", "b"], "blob" => blob, "ts" => [1_700_000_000_000i64, 0]).unwrap();
        df = df
            .lazy()
            .with_column(col("ts").cast(DataType::Datetime(TimeUnit::Milliseconds, TimeZone::opt_try_new(Some("Europe/Paris")).unwrap())))
            .collect()
            .unwrap();
        let f = std::fs::File::create(tmp.path().join("t.parquet")).unwrap();
        ParquetWriter::new(f).finish(&mut df).unwrap();
        let spec = spec_for(tmp.path(), "kind = \"parquet\"\npath = \"t.parquet\"\nid_column = \"id\"");
        let rows = all_rows(&spec);
        assert_eq!(rows.len(), 2);
        assert!(rows.iter().all(|r| r.error.is_none()), "{:?}", rows.iter().map(|r| &r.error).collect::<Vec<_>>());
        let a = &rows[0].columns;
        assert_eq!(a.keys().collect::<Vec<_>>(), ["id", "blob", "ts"], "the file's column order");
        assert!(a["blob"].as_str().unwrap().starts_with("<3 bytes, sha256 "), "{a:?}");
        assert_eq!(a["ts"], "2023-11-14T23:13:20+01:00");
        assert_eq!(rows[1].columns["blob"], serde_json::Value::Null);
        assert_eq!(column_names(&spec).unwrap(), Some(vec!["id".into(), "blob".into(), "ts".into()]));
    }
}
