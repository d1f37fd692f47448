//! Typed errors of the host library; the binary maps them to exit codes (1 runtime, 2 bad input).

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input: a file or folder that is missing, unreadable as what it should be, or wrong.
    #[error("{}: {msg}", path.display())]
    BadInput { path: PathBuf, msg: String },
    /// Bad usage: flags that do not make sense together, malformed values.
    #[error("{0}")]
    Usage(String),
    /// A `.dlm` that fails to load.
    #[error("{}: {source}", path.display())]
    Model {
        path: PathBuf,
        source: depthling_model::LoadError,
    },
    /// A capability a later release provides.
    #[error("{0} is not available yet in this build of depthling")]
    NotAvailable(&'static str),
    /// Reading or writing a file failed at run time.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The int8 engine failed.
    #[error("int8 engine: {0}")]
    Device(#[from] depthling_device::Error),
    /// Training or inference in candle failed.
    #[error("tensor computation: {0}")]
    Candle(#[from] candle_core::Error),
    /// Training diverged or another run-time failure.
    #[error("{0}")]
    Runtime(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Process exit code: 2 for bad usage or bad input, 1 for run-time failures.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::BadInput { .. }
            | Error::Usage(_)
            | Error::Model { .. }
            | Error::NotAvailable(_) => 2,
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => 2,
            _ => 1,
        }
    }

    pub fn bad_input(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::BadInput {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }

    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }
}
