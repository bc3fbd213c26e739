//! OpenAI Batch API request files (also what vLLM's `run-batch` reads): JSON lines of
//! `{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body": {...}}`, read a
//! batch of lines at a time into chat requests.
//!
//! - The row id is `custom_id`. A `custom_id` seen before in the file (or an earlier file of a
//!   glob) makes the later line a failed row saying where the first one is: each request has
//!   exactly one result, and a repeated id is never dropped silently.
//! - `body.messages` is a conversation of `system` (or `developer`, first only), `user` and
//!   `assistant` turns; content is text or a list of `text` and `image_url` parts. Images are
//!   base64 `data:` URIs (up to `source.max_image_bytes` decoded) or file paths / `file://`
//!   URLs, relative to the request file and confined to its directory like any image path.
//! - Generation parameters: `max_completion_tokens` (or `max_tokens`), `temperature`,
//!   `top_p`, `seed` and vLLM's `top_k`; the task's values apply where a request sets none.
//!   Parameters that would change the answer in ways not supported here (`n` > 1, `stop`,
//!   tools, penalties, `logprobs`, a JSON `response_format`, `stream`) make the request a failed
//!   row naming the field, not a silently different answer; other fields are ignored.
//! - A line that cannot be used (not UTF-8, not JSON, no `custom_id`, another `url` or
//!   `method`, malformed messages, an image that cannot be read) is a failed row whose error
//!   names `FILE:LINE` and the field; blank lines are skipped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::spec::SourceSpec;
use crate::util::sha256_hex;

use super::images::ImagePaths;
use super::lines::read_record;
use super::tables::table_files;
use super::{content_hash_images, ChatMessage, ChatPart, ChatRequest, ChatRole, RequestParams, RowBatches, RowImage, SourceRow};

/// The columns of a request row.
pub const OPENAI_COLUMNS: [&str; 5] = ["custom_id", "method", "url", "model", "body"];
/// Columns every result of a request row carries (the OpenAI output names them).
pub const OPENAI_KEPT_COLUMNS: [&str; 2] = ["custom_id", "model"];
/// Errors of requests that cannot be used say this after `FILE:LINE: `.
pub const INVALID_REQUEST: &str = "invalid request";
/// Errors of a request whose `custom_id` came before say this after `FILE:LINE: `.
pub const DUPLICATE_CUSTOM_ID: &str = "duplicate custom_id";
/// The endpoint answered (the only one).
pub const CHAT_COMPLETIONS: &str = "/v1/chat/completions";
/// Images one request may show.
pub const MAX_IMAGES_PER_REQUEST: usize = 32;

/// An image a request names, before it is read.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum ImageRef {
    /// Decoded from a `data:` URI.
    Data { field: String, bytes: Vec<u8> },
    /// A file path (from a path or a `file://` URL), relative to the request file.
    Path { field: String, path: String },
}

/// A request line that parsed.
#[derive(Debug)]
pub(super) struct Parsed {
    pub custom_id: String,
    pub columns: Map<String, Value>,
    pub messages: Vec<ChatMessage>,
    pub images: Vec<ImageRef>,
    pub params: RequestParams,
}

/// Why a request line cannot be used: the field and the problem.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct LineError {
    /// The line's `custom_id`, when it has a usable one.
    pub custom_id: Option<String>,
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Parses one request line (without its line end). Image files are not read here.
pub(super) fn parse_line(line: &[u8], max_image_bytes: u64) -> std::result::Result<Parsed, LineError> {
    let err = |custom_id: &Option<String>, field: &str, message: String| LineError { custom_id: custom_id.clone(), field: field.into(), message };
    let text = std::str::from_utf8(line)
        .map_err(|e| err(&None, "line", format!("is not valid UTF-8 (byte {} of the line)", e.valid_up_to() + 1)))?;
    let value: Value = serde_json::from_str(text).map_err(|e| err(&None, "line", format!("is not valid JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(err(&None, "line", format!("is {}, not a JSON object", type_name(&value))));
    };
    let custom_id = match obj.get("custom_id") {
        None | Some(Value::Null) => return Err(err(&None, "custom_id", "is missing (every request needs one)".into())),
        Some(Value::String(s)) if s.is_empty() => return Err(err(&None, "custom_id", "is empty".into())),
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => return Err(err(&None, "custom_id", format!("must be a string, not {}", type_name(other)))),
    };
    let e = |field: &str, message: String| err(&custom_id, field, message);
    match obj.get("method") {
        None | Some(Value::Null) => {}
        Some(Value::String(m)) if m.eq_ignore_ascii_case("POST") => {}
        Some(other) => return Err(e("method", format!("must be \"POST\", not {other}"))),
    }
    let url = match obj.get("url") {
        Some(Value::String(u)) if u == CHAT_COMPLETIONS => u.clone(),
        Some(Value::String(u)) => return Err(e("url", format!("{u:?} is not supported: only {CHAT_COMPLETIONS}"))),
        None | Some(Value::Null) => return Err(e("url", format!("is missing (use {CHAT_COMPLETIONS:?})"))),
        Some(other) => return Err(e("url", format!("must be a string, not {}", type_name(other)))),
    };
    let body = match obj.get("body") {
        Some(Value::Object(b)) => b,
        None | Some(Value::Null) => return Err(e("body", "is missing".into())),
        Some(other) => return Err(e("body", format!("must be an object, not {}", type_name(other)))),
    };
    check_unsupported(body).map_err(|(field, message)| e(&field, message))?;
    let params = params(body).map_err(|(field, message)| e(&field, message))?;
    let (messages, images) = messages(body, max_image_bytes).map_err(|(field, message)| e(&field, message))?;
    let custom_id = custom_id.expect("set above");
    let mut columns = Map::new();
    columns.insert("custom_id".into(), custom_id.clone().into());
    columns.insert("method".into(), obj.get("method").cloned().unwrap_or(Value::Null));
    columns.insert("url".into(), url.into());
    columns.insert("model".into(), body.get("model").cloned().unwrap_or(Value::Null));
    columns.insert("body".into(), Value::Object(body.clone()));
    Ok(Parsed { custom_id, columns, messages, images, params })
}

type FieldError = (String, String);

/// Parameters that change the answer in ways not supported here: an error unless neutral.
fn check_unsupported(body: &Map<String, Value>) -> std::result::Result<(), FieldError> {
    let neutral = |key: &str, v: &Value| -> bool {
        match (key, v) {
            (_, Value::Null) => true,
            ("n", Value::Number(n)) => n.as_f64() == Some(1.0),
            ("stream" | "logprobs", Value::Bool(b)) => !b,
            ("frequency_penalty" | "presence_penalty", Value::Number(n)) => n.as_f64() == Some(0.0),
            ("stop", Value::String(s)) => s.is_empty(),
            ("stop" | "tools" | "functions", Value::Array(a)) => a.is_empty(),
            ("logit_bias", Value::Object(m)) => m.is_empty(),
            ("tool_choice" | "function_call", Value::String(s)) => s == "none",
            ("response_format", Value::Object(m)) => m.get("type").and_then(Value::as_str) == Some("text"),
            _ => false,
        }
    };
    let why = |key: &str| match key {
        "n" => "only one choice per request is generated (n = 1)",
        "stream" => "a batch does not stream",
        "stop" => "stop sequences are not supported",
        "tools" | "functions" | "tool_choice" | "function_call" => "tools and function calls are not supported",
        "response_format" => "only text responses are supported",
        "logprobs" | "top_logprobs" => "log-probabilities are not returned",
        _ => "penalties and logit biases are not supported",
    };
    for key in [
        "n", "stream", "stop", "tools", "functions", "tool_choice", "function_call", "response_format", "logprobs", "top_logprobs",
        "frequency_penalty", "presence_penalty", "logit_bias",
    ] {
        if let Some(v) = body.get(key) {
            if !neutral(key, v) {
                return Err((format!("body.{key}"), format!("{v} is not supported: {}", why(key))));
            }
        }
    }
    Ok(())
}

fn params(body: &Map<String, Value>) -> std::result::Result<RequestParams, FieldError> {
    let field = |k: &str| format!("body.{k}");
    let uint = |k: &str, min: u64| -> std::result::Result<Option<u64>, FieldError> {
        match body.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(v) if v >= min && v <= u64::from(u32::MAX) => Ok(Some(v)),
                _ => Err((field(k), format!("{n} is out of range: allowed {min}..={}", u32::MAX))),
            },
            Some(other) => Err((field(k), format!("must be an integer, not {}", type_name(other)))),
        }
    };
    let number = |k: &str, ok: fn(f64) -> bool, range: &str| -> std::result::Result<Option<f32>, FieldError> {
        match body.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => match n.as_f64() {
                Some(v) if ok(v) => Ok(Some(v as f32)),
                _ => Err((field(k), format!("{n} is out of range: allowed {range}"))),
            },
            Some(other) => Err((field(k), format!("must be a number, not {}", type_name(other)))),
        }
    };
    let completion = uint("max_completion_tokens", 1)?;
    let legacy = uint("max_tokens", 1)?;
    let max_tokens = match (completion, legacy) {
        (Some(a), Some(b)) if a != b => {
            return Err((field("max_tokens"), format!("{b} differs from body.max_completion_tokens = {a}; give one of them")))
        }
        (a, b) => a.or(b).map(|v| v as usize),
    };
    let temperature = number("temperature", |v| (0.0..=2.0).contains(&v), "0..=2")?;
    let top_p = number("top_p", |v| v > 0.0 && v <= 1.0, "(0, 1]")?;
    let top_k = match body.get("top_k") {
        None | Some(Value::Null) => None,
        // vLLM's -1 (and 0 here): all tokens.
        Some(Value::Number(n)) if n.as_i64() == Some(-1) => Some(0),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) if v <= u64::from(u32::MAX) => Some(v as usize),
            _ => return Err((field("top_k"), format!("{n} is out of range: allowed -1 (all) or 0..={}", u32::MAX))),
        },
        Some(other) => return Err((field("top_k"), format!("must be an integer, not {}", type_name(other)))),
    };
    let seed = match body.get("seed") {
        None | Some(Value::Null) => None,
        // OpenAI's seeds are 64-bit signed; a negative one keeps its bits.
        Some(Value::Number(n)) => match (n.as_u64(), n.as_i64()) {
            (Some(v), _) => Some(v),
            (None, Some(v)) => Some(v as u64),
            _ => return Err((field("seed"), format!("{n} is not a 64-bit integer"))),
        },
        Some(other) => return Err((field("seed"), format!("must be an integer, not {}", type_name(other)))),
    };
    Ok(RequestParams { max_tokens, temperature, top_p, top_k, seed })
}

fn messages(body: &Map<String, Value>, max_image_bytes: u64) -> std::result::Result<(Vec<ChatMessage>, Vec<ImageRef>), FieldError> {
    let list = match body.get("messages") {
        Some(Value::Array(a)) if a.is_empty() => return Err(("body.messages".into(), "is empty".into())),
        Some(Value::Array(a)) => a,
        None | Some(Value::Null) => return Err(("body.messages".into(), "is missing".into())),
        Some(other) => return Err(("body.messages".into(), format!("must be an array, not {}", type_name(other)))),
    };
    let mut messages = Vec::with_capacity(list.len());
    let mut images = Vec::new();
    for (i, m) in list.iter().enumerate() {
        let at = format!("body.messages[{i}]");
        let Value::Object(m) = m else { return Err((at, format!("must be an object, not {}", type_name(m)))) };
        let role = match m.get("role") {
            Some(Value::String(r)) => match r.as_str() {
                "system" | "developer" if i == 0 => ChatRole::System,
                "system" | "developer" => {
                    return Err((format!("{at}.role"), format!("{r:?}: a system message is supported only as the first message")))
                }
                "user" => ChatRole::User,
                "assistant" => ChatRole::Assistant,
                other => {
                    return Err((format!("{at}.role"), format!("{other:?} is not supported (system, developer, user or assistant)")))
                }
            },
            None | Some(Value::Null) => return Err((format!("{at}.role"), "is missing".into())),
            Some(other) => return Err((format!("{at}.role"), format!("must be a string, not {}", type_name(other)))),
        };
        let parts = match m.get("content") {
            Some(Value::String(t)) => vec![ChatPart::Text(t.clone())],
            Some(Value::Array(items)) => {
                let mut parts = Vec::with_capacity(items.len());
                for (j, item) in items.iter().enumerate() {
                    let at = format!("{at}.content[{j}]");
                    parts.push(part(item, &at, role, max_image_bytes, &mut images)?);
                }
                parts
            }
            None | Some(Value::Null) => return Err((format!("{at}.content"), "is missing (tool calls are not supported)".into())),
            Some(other) => {
                return Err((format!("{at}.content"), format!("must be a string or an array of parts, not {}", type_name(other))))
            }
        };
        messages.push(ChatMessage { role, parts });
    }
    if !messages.iter().any(|m| m.role == ChatRole::User) {
        return Err(("body.messages".into(), "has no user message".into()));
    }
    if images.len() > MAX_IMAGES_PER_REQUEST {
        return Err(("body.messages".into(), format!("shows {} images; at most {MAX_IMAGES_PER_REQUEST} per request", images.len())));
    }
    Ok((messages, images))
}

/// One content part: text, or an image (added to `images`).
fn part(item: &Value, at: &str, role: ChatRole, max_image_bytes: u64, images: &mut Vec<ImageRef>) -> std::result::Result<ChatPart, FieldError> {
    let Value::Object(p) = item else { return Err((at.into(), format!("must be an object, not {}", type_name(item)))) };
    let kind = match p.get("type") {
        Some(Value::String(t)) => t.as_str(),
        None | Some(Value::Null) => return Err((format!("{at}.type"), "is missing".into())),
        Some(other) => return Err((format!("{at}.type"), format!("must be a string, not {}", type_name(other)))),
    };
    match kind {
        "text" => match p.get("text") {
            Some(Value::String(t)) => Ok(ChatPart::Text(t.clone())),
            None | Some(Value::Null) => Err((format!("{at}.text"), "is missing".into())),
            Some(other) => Err((format!("{at}.text"), format!("must be a string, not {}", type_name(other)))),
        },
        "image_url" => {
            if role != ChatRole::User {
                return Err((format!("{at}.type"), format!("images are supported in user messages only, not in {} messages", role.as_str())));
            }
            let (url, field) = match p.get("image_url") {
                Some(Value::Object(o)) => match o.get("url") {
                    Some(Value::String(u)) => (u.as_str(), format!("{at}.image_url.url")),
                    None | Some(Value::Null) => return Err((format!("{at}.image_url.url"), "is missing".into())),
                    Some(other) => return Err((format!("{at}.image_url.url"), format!("must be a string, not {}", type_name(other)))),
                },
                // Some clients write the URL directly.
                Some(Value::String(u)) => (u.as_str(), format!("{at}.image_url")),
                None | Some(Value::Null) => return Err((format!("{at}.image_url"), "is missing".into())),
                Some(other) => return Err((format!("{at}.image_url"), format!("must be an object with a url, not {}", type_name(other)))),
            };
            images.push(image_ref(url, field, max_image_bytes)?);
            Ok(ChatPart::Image)
        }
        other => Err((format!("{at}.type"), format!("{other:?} is not supported (text or image_url)"))),
    }
}

/// An image URL: a base64 `data:` URI (decoded here, bounded), a `file://` URL or a path.
fn image_ref(url: &str, field: String, max_image_bytes: u64) -> std::result::Result<ImageRef, FieldError> {
    if let Some(rest) = url.strip_prefix("data:") {
        let Some((meta, data)) = rest.split_once(',') else {
            return Err((field, "is a data: URI without a comma before its data".into()));
        };
        if !meta.to_ascii_lowercase().ends_with(";base64") {
            return Err((field, format!("data:{meta},...: only base64 data URIs are supported (data:image/png;base64,...)")));
        }
        // Decoded size before decoding: a row cannot make this allocate more than the cap.
        let decoded = (data.len() as u64).div_ceil(4) * 3;
        if decoded > max_image_bytes.saturating_add(2) {
            return Err((
                field,
                format!("the data URI holds about {decoded} bytes, over source.max_image_bytes = {max_image_bytes} (raise it to read larger images)"),
            ));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data.trim_end())
            .map_err(|e| (field.clone(), format!("the data URI is not valid base64: {e}")))?;
        if bytes.len() as u64 > max_image_bytes {
            return Err((
                field,
                format!("the data URI holds {} bytes, over source.max_image_bytes = {max_image_bytes} (raise it to read larger images)", bytes.len()),
            ));
        }
        return Ok(ImageRef::Data { field, bytes });
    }
    if let Some(rest) = url.strip_prefix("file://") {
        // file:///abs/path or file://localhost/abs/path
        let path = rest.strip_prefix("localhost").unwrap_or(rest);
        if !path.starts_with('/') {
            return Err((field, format!("{url:?}: a file:// URL needs an absolute path (file:///...)")));
        }
        let path = percent_decode(path).ok_or_else(|| (field.clone(), format!("{url:?}: bad percent-encoding")))?;
        return Ok(ImageRef::Path { field, path });
    }
    if url.starts_with("http://") || url.starts_with("https://") {
        return Err((field, format!("{url:?}: web URLs are not fetched (runs are offline); inline the image as a data: URI or give a file path")));
    }
    if let Some((scheme, _)) = url.split_once("://") {
        if !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) {
            return Err((field, format!("{url:?}: {scheme}:// URLs are not supported (a data: URI, a file path or a file:// URL)")));
        }
    }
    if url.is_empty() {
        return Err((field, "is empty".into()));
    }
    Ok(ImageRef::Path { field, path: url.to_string() })
}

/// `%XX` escapes of a URL path decoded (None when one is malformed or the result not UTF-8).
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The rows of a request file (or of each file of a glob, in order).
pub(super) fn requests(src: &SourceSpec, path: &Path) -> Result<RowBatches> {
    let files = table_files(path)?;
    Ok(Box::new(Requests {
        src: src.clone(),
        root: files.root.clone(),
        files: files.files.into_iter(),
        current: None,
        seen: HashMap::new(),
        buf: Vec::new(),
    }))
}

struct OpenFile {
    path: Arc<PathBuf>,
    reader: std::io::BufReader<std::fs::File>,
    line: usize,
    images: ImagePaths,
    /// The local copy of a request file in an object store.
    _staged: super::staged::Staged,
}

struct Requests {
    src: SourceSpec,
    root: PathBuf,
    files: std::vec::IntoIter<PathBuf>,
    current: Option<OpenFile>,
    /// 128 bits of each custom_id's hash -> where it first appeared.
    seen: HashMap<u128, (Arc<PathBuf>, usize)>,
    buf: Vec<u8>,
}

fn id_bits(custom_id: &str) -> u128 {
    let h = sha256_hex(&[custom_id.as_bytes()]);
    u128::from_str_radix(&h[..32], 16).unwrap_or_default()
}

impl Iterator for Requests {
    type Item = Result<Vec<SourceRow>>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut batch = Vec::new();
        while batch.len() < self.src.read_batch {
            let Some(file) = &mut self.current else {
                let Some(path) = self.files.next() else { break };
                let opened = match super::staged::stage(&path) {
                    Ok(staged) => std::fs::File::open(&staged.local).map(|f| (staged, f)).map_err(|e| e.to_string()),
                    Err(Error::Source { message, .. }) => Err(message),
                    Err(e) => Err(e.to_string()),
                };
                match opened {
                    Ok((staged, f)) => {
                        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
                        let images = ImagePaths::new(&self.src, &base, &self.root);
                        let reader = std::io::BufReader::with_capacity(1 << 16, f);
                        self.current = Some(OpenFile { path: Arc::new(path), reader, line: 0, images, _staged: staged });
                    }
                    Err(e) => {
                        let mut columns = Map::new();
                        columns.insert("path".into(), path.display().to_string().into());
                        let error = format!("{}: the file could not be read: {e}", path.display());
                        batch.push(super::failed_row(&self.src, path.display().to_string(), columns, error));
                    }
                }
                continue;
            };
            let cap = usize::try_from(self.src.max_row_bytes).unwrap_or(usize::MAX);
            let rec = match read_record(&mut file.reader, &mut self.buf, cap, false) {
                Ok(Some(rec)) => rec,
                Ok(None) => {
                    self.current = None;
                    continue;
                }
                Err(e) => {
                    let error = Error::io(file.path.as_path(), e);
                    self.current = None;
                    return Some(Err(error));
                }
            };
            file.line += 1;
            let line = file.line;
            let content = self.buf.strip_suffix(b"\n").unwrap_or(&self.buf);
            let content = content.strip_suffix(b"\r").unwrap_or(content);
            if !rec.too_long && content.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let parsed = if rec.too_long {
                Err(LineError {
                    custom_id: None,
                    field: "line".into(),
                    message: format!(
                        "is longer than source.max_row_bytes = {} bytes (raise it to read longer lines)",
                        self.src.max_row_bytes
                    ),
                })
            } else {
                parse_line(content, self.src.max_image_bytes)
            };
            let row = request_row(&self.src, file, line, content, parsed, &mut self.seen);
            batch.push(row);
        }
        (!batch.is_empty()).then_some(Ok(batch))
    }
}

/// The row of one request line: a request with its images read, or a failed row.
fn request_row(
    src: &SourceSpec,
    file: &OpenFile,
    line: usize,
    content: &[u8],
    parsed: std::result::Result<Parsed, LineError>,
    seen: &mut HashMap<u128, (Arc<PathBuf>, usize)>,
) -> SourceRow {
    let at = format!("{}:{line}", file.path.display());
    let custom_id = match &parsed {
        Ok(p) => Some(p.custom_id.clone()),
        Err(e) => e.custom_id.clone(),
    };
    // A failed line's key covers its place too: two identical broken lines are two results.
    let failed = |message: String| {
        let mut columns = Map::new();
        columns.insert("line".into(), line.into());
        if let Some(id) = &custom_id {
            columns.insert("custom_id".into(), id.clone().into());
        }
        let id = custom_id.clone().unwrap_or_else(|| at.clone());
        let mut row = super::failed_row(src, id, columns, message);
        row.content_hash = sha256_hex(&[file.path.display().to_string().as_bytes(), &(line as u64).to_le_bytes(), content]);
        row
    };
    if let Some(id) = &custom_id {
        match seen.get(&id_bits(id)) {
            Some((first, first_line)) => {
                let first_at = if first == &file.path { format!("line {first_line}") } else { format!("{}:{first_line}", first.display()) };
                return failed(format!(
                    "{at}: {DUPLICATE_CUSTOM_ID} {id:?}: the request at {first_at} has it; custom_ids must be unique (this line is not run)"
                ));
            }
            None => {
                seen.insert(id_bits(id), (file.path.clone(), line));
            }
        }
    }
    let parsed = match parsed {
        Ok(p) => p,
        Err(e) => return failed(format!("{at}: {INVALID_REQUEST}: {e}")),
    };
    let mut images = Vec::with_capacity(parsed.images.len());
    let mut error = None;
    for (n, r) in parsed.images.into_iter().enumerate() {
        match r {
            ImageRef::Data { bytes, .. } => images.push(RowImage::Encoded { name: format!("{} image {}", parsed.custom_id, n + 1), bytes }),
            ImageRef::Path { field, path } => match file.images.read_as(&path, &field) {
                Ok(img) => images.push(img),
                Err(e) => {
                    error = Some(format!("{at}: {INVALID_REQUEST}: {e}"));
                    break;
                }
            },
        }
    }
    // The hash covers the images' bytes; a row whose image could not be read has the hash
    // of its text alone, so that it is replaced once the image reads.
    let hash = if error.is_some() {
        content_hash_images(&parsed.columns, &[])
    } else {
        let bytes: Vec<&[u8]> = images
            .iter()
            .map(|i| match i {
                RowImage::Encoded { bytes, .. } => bytes.as_slice(),
                RowImage::Rendered { image, .. } => image.as_raw().as_slice(),
            })
            .collect();
        content_hash_images(&parsed.columns, &bytes)
    };
    SourceRow {
        input_id: parsed.custom_id,
        content_hash: hash,
        columns: parsed.columns,
        image: None,
        text: None,
        error,
        request: Some(Arc::new(ChatRequest { messages: parsed.messages, images, params: parsed.params })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::tests::all_rows;

    fn spec_for(dir: &Path, source: &str) -> crate::spec::PipelineSpec {
        let text = format!(
            "name = \"t\"\n[source]\n{source}\n[model]\ndir = \"m\"\n[[task]]\nname = \"c\"\nkind = \"chat\"\n[sink]\ndir = \"out\"\n"
        );
        let path = dir.join("spec.toml");
        std::fs::write(&path, text).unwrap();
        crate::spec::PipelineSpec::load(&path).unwrap()
    }

    const PNG_1X1: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC";

    fn line(body: Value) -> Vec<u8> {
        serde_json::json!({"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions", "body": body}).to_string().into_bytes()
    }

    fn field_error(l: &[u8]) -> LineError {
        parse_line(l, 1 << 20).expect_err("should not parse")
    }

    #[test]
    fn text_requests_with_parameters() {
        let p = parse_line(
            &line(serde_json::json!({
                "model": "gpt-4o-mini",
                "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello?"}],
                "max_tokens": 12, "temperature": 0.5, "seed": -3, "top_p": 0.9, "top_k": -1
            })),
            1 << 20,
        )
        .unwrap();
        assert_eq!(p.custom_id, "r1");
        assert_eq!(
            p.messages,
            [
                ChatMessage { role: ChatRole::System, parts: vec![ChatPart::Text("Be brief.".into())] },
                ChatMessage { role: ChatRole::User, parts: vec![ChatPart::Text("Hello?".into())] },
            ]
        );
        assert_eq!(p.params, RequestParams { max_tokens: Some(12), temperature: Some(0.5), top_p: Some(0.9), top_k: Some(0), seed: Some((-3i64) as u64) });
        assert_eq!(p.columns["model"], "gpt-4o-mini");
        assert_eq!(p.columns.keys().collect::<Vec<_>>(), OPENAI_COLUMNS);
        // max_completion_tokens is the newer name; both, when equal, are fine.
        let p = parse_line(&line(serde_json::json!({"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 7, "max_tokens": 7})), 100).unwrap();
        assert_eq!(p.params.max_tokens, Some(7));
        let p = parse_line(&line(serde_json::json!({"messages": [{"role": "user", "content": "x"}], "n": 1, "stream": false, "stop": null})), 100).unwrap();
        assert_eq!(p.params, RequestParams::default());
    }

    #[test]
    fn content_parts_multi_turn_and_images() {
        let dir = "pics/a b.png";
        let p = parse_line(
            &line(serde_json::json!({"messages": [
                {"role": "developer", "content": [{"type": "text", "text": "Rules."}]},
                {"role": "user", "content": [
                    {"type": "text", "text": "Compare"},
                    {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{PNG_1X1}"), "detail": "low"}},
                    {"type": "image_url", "image_url": {"url": dir}},
                ]},
                {"role": "assistant", "content": "They differ."},
                {"role": "user", "content": [{"type": "image_url", "image_url": "file:///data/pics/a%20b.png"}, {"type": "text", "text": "And this?"}]},
            ]})),
            1 << 20,
        )
        .unwrap();
        let roles: Vec<ChatRole> = p.messages.iter().map(|m| m.role).collect();
        assert_eq!(roles, [ChatRole::System, ChatRole::User, ChatRole::Assistant, ChatRole::User]);
        assert_eq!(p.messages[1].parts, [ChatPart::Text("Compare".into()), ChatPart::Image, ChatPart::Image]);
        assert_eq!(p.images.len(), 3);
        match &p.images[0] {
            ImageRef::Data { bytes, field } => {
                assert!(bytes.starts_with(b"\x89PNG"), "decoded");
                assert_eq!(field, "body.messages[1].content[1].image_url.url");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(p.images[1], ImageRef::Path { field: "body.messages[1].content[2].image_url.url".into(), path: dir.into() });
        assert_eq!(p.images[2], ImageRef::Path { field: "body.messages[3].content[0].image_url".into(), path: "/data/pics/a b.png".into() });
    }

    #[test]
    fn each_malformed_shape_names_its_field() {
        let user = serde_json::json!([{"role": "user", "content": "hi"}]);
        let cases: Vec<(Vec<u8>, &str, &str)> = vec![
            (b"{\"custom_id\": \"x\", ".to_vec(), "line", "not valid JSON"),
            (b"[1, 2]".to_vec(), "line", "not a JSON object"),
            (b"{\"custom_id\": \"caf\xe9\"}".to_vec(), "line", "not valid UTF-8"),
            (serde_json::json!({"url": CHAT_COMPLETIONS, "body": {"messages": user}}).to_string().into_bytes(), "custom_id", "missing"),
            (serde_json::json!({"custom_id": 7, "url": CHAT_COMPLETIONS}).to_string().into_bytes(), "custom_id", "must be a string"),
            (serde_json::json!({"custom_id": "", "url": CHAT_COMPLETIONS}).to_string().into_bytes(), "custom_id", "empty"),
            (serde_json::json!({"custom_id": "a", "method": "GET", "url": CHAT_COMPLETIONS, "body": {"messages": user}}).to_string().into_bytes(), "method", "POST"),
            (serde_json::json!({"custom_id": "a", "url": "/v1/embeddings", "body": {"input": "x"}}).to_string().into_bytes(), "url", "not supported"),
            (serde_json::json!({"custom_id": "a", "body": {"messages": user}}).to_string().into_bytes(), "url", "missing"),
            (serde_json::json!({"custom_id": "a", "url": CHAT_COMPLETIONS}).to_string().into_bytes(), "body", "missing"),
            (line(serde_json::json!({})), "body.messages", "missing"),
            (line(serde_json::json!({"messages": []})), "body.messages", "empty"),
            (line(serde_json::json!({"messages": "hi"})), "body.messages", "must be an array"),
            (line(serde_json::json!({"messages": [{"role": "system", "content": "s"}]})), "body.messages", "no user message"),
            (line(serde_json::json!({"messages": [{"content": "x"}]})), "body.messages[0].role", "missing"),
            (line(serde_json::json!({"messages": [{"role": "tool", "content": "x"}]})), "body.messages[0].role", "not supported"),
            (line(serde_json::json!({"messages": [{"role": "user", "content": "x"}, {"role": "system", "content": "s"}]})), "body.messages[1].role", "only as the first"),
            (line(serde_json::json!({"messages": [{"role": "user"}]})), "body.messages[0].content", "missing"),
            (line(serde_json::json!({"messages": [{"role": "user", "content": 5}]})), "body.messages[0].content", "string or an array"),
            (line(serde_json::json!({"messages": [{"role": "user", "content": [{"text": "x"}]}]})), "body.messages[0].content[0].type", "missing"),
            (line(serde_json::json!({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]})), "body.messages[0].content[0].type", "not supported"),
            (line(serde_json::json!({"messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]})), "body.messages[0].content[0].text", "must be a string"),
            (line(serde_json::json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})), "body.messages[0].content[0].image_url", "missing"),
            (line(serde_json::json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]})), "body.messages[0].content[0].image_url.url", "not fetched"),
            (line(serde_json::json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png,abc"}}]}]})), "body.messages[0].content[0].image_url.url", "only base64"),
            (line(serde_json::json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@@"}}]}]})), "body.messages[0].content[0].image_url.url", "not valid base64"),
            (line(serde_json::json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "s3://b/k.png"}}]}]})), "body.messages[0].content[0].image_url.url", "not supported"),
            (line(serde_json::json!({"messages": [{"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": "a.png"}}]}, {"role": "user", "content": "x"}]})), "body.messages[0].content[0].type", "user messages only"),
            (line(serde_json::json!({"messages": user, "max_tokens": 0})), "body.max_tokens", "out of range"),
            (line(serde_json::json!({"messages": user, "max_tokens": "10"})), "body.max_tokens", "must be an integer"),
            (line(serde_json::json!({"messages": user, "max_tokens": 5, "max_completion_tokens": 6})), "body.max_tokens", "differs"),
            (line(serde_json::json!({"messages": user, "temperature": 3})), "body.temperature", "out of range"),
            (line(serde_json::json!({"messages": user, "top_p": 0})), "body.top_p", "out of range"),
            (line(serde_json::json!({"messages": user, "seed": 1.5})), "body.seed", "64-bit integer"),
            (line(serde_json::json!({"messages": user, "n": 2})), "body.n", "one choice"),
            (line(serde_json::json!({"messages": user, "stop": ["\n"]})), "body.stop", "stop sequences"),
            (line(serde_json::json!({"messages": user, "tools": [{"type": "function"}]})), "body.tools", "tools"),
            (line(serde_json::json!({"messages": user, "response_format": {"type": "json_object"}})), "body.response_format", "text responses"),
        ];
        for (l, field, words) in cases {
            let e = field_error(&l);
            assert_eq!(e.field, field, "{}: {e}", String::from_utf8_lossy(&l));
            assert!(e.message.contains(words), "{}: {e}", String::from_utf8_lossy(&l));
        }
        // Where the line has a usable custom_id, the error keeps it (its output line names it).
        assert_eq!(field_error(&line(serde_json::json!({"messages": []}))).custom_id.as_deref(), Some("r1"));
        assert_eq!(field_error(b"[]").custom_id, None);
        // A data URI over the cap is refused before it is decoded.
        let big = line(serde_json::json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{PNG_1X1}")}}]}]}));
        let e = parse_line(&big, 10).unwrap_err();
        assert!(e.message.contains("source.max_image_bytes = 10"), "{e}");
    }

    #[test]
    fn files_become_rows_duplicates_and_bad_lines_are_failed_rows() {
        let tmp = tempfile::tempdir().unwrap();
        let png = base64::engine::general_purpose::STANDARD.decode(PNG_1X1).unwrap();
        std::fs::create_dir(tmp.path().join("img")).unwrap();
        std::fs::write(tmp.path().join("img/p.png"), &png).unwrap();
        let req = |id: &str, content: Value| {
            serde_json::json!({"custom_id": id, "method": "POST", "url": CHAT_COMPLETIONS, "body": {"messages": [{"role": "user", "content": content}]}}).to_string()
        };
        let image = |url: &str| serde_json::json!([{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What?"}]);
        let lines = [
            req("a", "hello".into()),
            String::new(),
            req("b", image("img/p.png")),
            "not json".into(),
            req("a", "hello again".into()),
            req("c", image("img/missing.png")),
            req("d", image("../../etc/passwd")),
            req("e", image(&format!("data:image/png;base64,{PNG_1X1}"))),
        ];
        std::fs::write(tmp.path().join("requests.jsonl"), lines.join("\n") + "\n").unwrap();
        let spec = spec_for(tmp.path(), "kind = \"openai_batch\"\npath = \"requests.jsonl\"\nread_batch = 3");
        let rows = all_rows(&spec);
        let summary: Vec<(&str, Option<&str>)> = rows.iter().map(|r| (r.input_id.as_str(), r.error.as_deref())).collect();
        assert_eq!(rows.len(), 7, "{summary:?}");
        let by_id = |id: &str| rows.iter().find(|r| r.input_id.ends_with(id)).unwrap_or_else(|| panic!("{id}: {summary:?}"));
        assert!(by_id("a").error.is_none());
        assert_eq!(by_id("a").request.as_ref().unwrap().messages[0].parts, [ChatPart::Text("hello".into())]);
        let b = by_id("b");
        assert!(b.error.is_none(), "{:?}", b.error);
        assert_eq!(b.request.as_ref().unwrap().images.len(), 1);
        assert!(by_id("e").error.is_none());
        // Same image, other bytes or text: other content hashes; b and e share the image bytes.
        assert_ne!(b.content_hash, by_id("e").content_hash);
        let not_json = by_id("requests.jsonl:4");
        assert!(not_json.error.as_deref().unwrap().contains("requests.jsonl:4: invalid request: line: is not valid JSON"), "{summary:?}");
        let dup: Vec<&SourceRow> = rows.iter().filter(|r| r.input_id == "a").collect();
        assert_eq!(dup.len(), 2);
        let e = dup[1].error.as_deref().unwrap();
        assert!(e.contains("requests.jsonl:5: duplicate custom_id \"a\"") && e.contains("line 1"), "{e}");
        assert_ne!(dup[0].content_hash, dup[1].content_hash, "two rows, two keys");
        let c = by_id("c");
        let e = c.error.as_deref().unwrap();
        assert!(e.contains("requests.jsonl:6: invalid request: body.messages[0].content[0].image_url.url: image"), "{e}");
        assert!(c.request.is_some(), "the request is kept so that its key is the one it has once the image reads");
        let e = by_id("d").error.as_deref().unwrap();
        assert!(e.contains("outside the source directory"), "{e}");
        assert_eq!(crate::source::column_names(&spec).unwrap().unwrap(), OPENAI_COLUMNS);
    }
}
