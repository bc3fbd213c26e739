//! Typed errors of the library. The CLI adds context at its edges with `anyhow`.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("model directory {dir}: missing {file}{hint}")]
    MissingModelFile { dir: PathBuf, file: String, hint: String },

    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("{path}: {message}")]
    InvalidModel { path: PathBuf, message: String },

    #[error("graph {graph}: {message}")]
    GraphContract { graph: String, message: String },

    #[error("tokenizer {path}: {message}")]
    Tokenizer { path: PathBuf, message: String },

    #[error("chat template: {0}")]
    ChatTemplate(String),

    #[error("image {source_name}: {message}")]
    Image { source_name: String, message: String },

    #[error("prompt: {0}")]
    Prompt(String),

    #[error("ONNX Runtime: {0}")]
    Ort(String),

    #[error("tract: {0}")]
    Tract(String),

    #[error("{0}")]
    Unsupported(String),

    #[error("pipeline spec {path}: {message}")]
    Spec { path: PathBuf, message: String },

    #[error("source {source_name}: {message}")]
    Source { source_name: String, message: String },

    #[error("filter set {path}: {message}")]
    Filter { path: PathBuf, message: String },

    #[error("result store: {0}")]
    Sink(String),

    /// An object-store request failed (or found what it asked for unusable).
    #[error("{uri}: {message}")]
    Store { uri: String, message: String },

    /// A Lance dataset operation failed (open, scan, write, merge, commit).
    #[error("{uri}: {source}")]
    Lance {
        uri: String,
        #[source]
        source: Box<lance::Error>,
    },

    /// A polars operation failed; `context` says on what.
    #[error("{context}: {source}")]
    Polars {
        context: String,
        #[source]
        source: polars::error::PolarsError,
    },

    #[error("{context}: {source}")]
    Arrow {
        context: String,
        #[source]
        source: arrow_schema::ArrowError,
    },

    /// A worker thread or task died (a panic or a cancelled task).
    #[error("{stage} stopped unexpectedly: {message}")]
    Join { stage: String, message: String },

    /// Another process holds the sink's lease for this scope.
    #[error("{0}")]
    LeaseHeld(String),
}

impl Error {
    pub(crate) fn lance(uri: &str) -> impl Fn(lance::Error) -> Error + '_ {
        move |source| Error::Lance { uri: uri.to_string(), source: Box::new(source) }
    }

    pub(crate) fn polars(context: impl std::fmt::Display) -> impl Fn(polars::error::PolarsError) -> Error {
        let context = context.to_string();
        move |source| Error::Polars { context: context.clone(), source }
    }

    pub(crate) fn arrow(context: impl std::fmt::Display) -> impl Fn(arrow_schema::ArrowError) -> Error {
        let context = context.to_string();
        move |source| Error::Arrow { context: context.clone(), source }
    }

    pub(crate) fn join(stage: &str) -> impl Fn(tokio::task::JoinError) -> Error + '_ {
        move |e| Error::Join { stage: stage.to_string(), message: e.to_string() }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}

/// Reads and parses a JSON file, naming the file in any error.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|source| Error::Json { path: path.to_path_buf(), source })
}
