//! Why a `.dlm` could not be loaded.

/// A typed load/validation error. Small and `Copy` so `no_std` callers can carry it anywhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LoadError {
    /// Fewer bytes than a header and a checksum.
    TooShort { len: usize },
    /// The file does not start with `DLM1`: not a depthling model.
    BadMagic,
    /// The checksum over the payload does not match: the file is corrupt or truncated.
    CrcMismatch { stored: u32, computed: u32 },
    /// Written by another format version.
    UnsupportedVersion { found: u16, supported: u16 },
    /// The payload is not a well-formed model encoding.
    Decode,
    /// Bytes left over after the model.
    TrailingBytes,
    /// A tensor is malformed.
    Tensor { index: u16, reason: &'static str },
    /// An op is malformed.
    Op { index: u16, reason: &'static str },
    /// The graph as a whole is malformed.
    Graph { reason: &'static str },
    /// Two tensors that are alive at the same time share arena bytes.
    ArenaOverlap { a: u16, b: u16 },
}

impl core::fmt::Display for LoadError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            LoadError::TooShort { len } => write!(f, "file too short to be a model ({len} bytes)"),
            LoadError::BadMagic => f.write_str("not a depthling model (no DLM1 magic)"),
            LoadError::CrcMismatch { stored, computed } => write!(
                f,
                "checksum mismatch (stored {stored:#010x}, computed {computed:#010x}): the file is corrupt or truncated"
            ),
            LoadError::UnsupportedVersion { found, supported } => write!(
                f,
                "model format version {found} is not supported (this build reads version {supported})"
            ),
            LoadError::Decode => f.write_str("malformed model encoding"),
            LoadError::TrailingBytes => f.write_str("unexpected bytes after the model"),
            LoadError::Tensor { index, reason } => write!(f, "tensor {index}: {reason}"),
            LoadError::Op { index, reason } => write!(f, "op {index}: {reason}"),
            LoadError::Graph { reason } => write!(f, "graph: {reason}"),
            LoadError::ArenaOverlap { a, b } => write!(
                f,
                "arena plan: tensors {a} and {b} are alive together but overlap"
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for LoadError {}
