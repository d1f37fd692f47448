//! The ground floor for files: atomic writes, reading with a clear "not found", PNG folder
//! listing, what kind of file a path holds (by its first bytes, never by its name), and the
//! checkpoint metadata keys. Everything above (data, nets, training, the app layer) uses these;
//! this module imports nothing of the crate but its error type.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Writes bytes through a temporary sibling name and renames it into place: a reader never sees
/// a half-written file, and a failed write leaves the old file (if any) as it was.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    if let Err(e) = std::fs::write(&tmp, bytes) {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(&tmp, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// Reads a whole file; a missing file is bad input ("WHAT not found"), other failures are I/O
/// errors naming the path.
pub fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::bad_input(path, format!("{what} not found")),
        _ => Error::io(path, e),
    })
}

/// The PNG images to run on: `input` itself if it is a file, else the folder's `*.png` in name
/// order, leaving out the `NAME_color.png` previews that `depthling run` writes beside depth.
pub fn list_pngs(input: &Path) -> Result<Vec<PathBuf>> {
    if input.is_file() {
        return Ok(vec![input.to_path_buf()]);
    }
    if !input.is_dir() {
        return Err(Error::bad_input(input, "input not found"));
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(input)
        .map_err(|e| Error::io(input, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")))
        .filter(|p| {
            !p.file_stem()
                .is_some_and(|s| s.to_string_lossy().ends_with("_color"))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::bad_input(input, "contains no PNG images"));
    }
    Ok(files)
}

/// What a model-ish file is, from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// depthling's int8 model (`DLM1`).
    Dlm,
    /// A safetensors file (depthling's f32 checkpoints): an 8-byte little-endian header length
    /// followed by a JSON object.
    Safetensors,
    /// A TFLite flatbuffer (`TFL3` at offset 4).
    Tflite,
    /// A PNG image.
    Png,
    /// An ONNX model: a protobuf `ModelProto`, which starts with field 1 (`ir_version`, a
    /// varint: byte 0x08) in every exporter we know of.
    Onnx,
    /// None of the above.
    Unknown,
}

impl FileKind {
    /// Classifies `bytes` (the start of a file suffices: 16 bytes).
    pub fn of(bytes: &[u8]) -> FileKind {
        if bytes.starts_with(b"DLM1") {
            FileKind::Dlm
        } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
            FileKind::Png
        } else if bytes.len() >= 8 && &bytes[4..8] == b"TFL3" {
            FileKind::Tflite
        } else if is_safetensors(bytes) {
            FileKind::Safetensors
        } else if bytes.first() == Some(&0x08) {
            FileKind::Onnx
        } else {
            FileKind::Unknown
        }
    }

    /// Reads the first bytes of `path` and classifies them.
    pub fn of_file(path: &Path) -> Result<FileKind> {
        use std::io::Read;
        let mut f = std::fs::File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::bad_input(path, "file not found"),
            _ => Error::io(path, e),
        })?;
        let mut head = [0u8; 16];
        let mut n = 0;
        while n < head.len() {
            match f.read(&mut head[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) => return Err(Error::io(path, e)),
            }
        }
        Ok(FileKind::of(&head[..n]))
    }

    /// In words, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            FileKind::Dlm => "an int8 .dlm model",
            FileKind::Safetensors => "a .safetensors checkpoint",
            FileKind::Tflite => "a TFLite model",
            FileKind::Png => "a PNG image",
            FileKind::Onnx => "an ONNX model",
            FileKind::Unknown => "not a file kind depthling knows",
        }
    }
}

fn is_safetensors(bytes: &[u8]) -> bool {
    // the header length is a u64 far below 2^32 and the header a JSON object
    bytes.len() >= 9
        && bytes[4..8] == [0, 0, 0, 0]
        && u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) > 1
        && bytes[8] == b'{'
}

/// A `.dlm` file's bytes and the path they came from. [`DlmFile::model`] validates them (the
/// model borrows from the bytes): call it once per load and keep the model.
pub struct DlmFile {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
}

impl DlmFile {
    /// Reads a `.dlm`; another kind of file is refused, saying what it is.
    pub fn read(path: &Path) -> Result<DlmFile> {
        let bytes = read(path, "model file")?;
        match FileKind::of(&bytes) {
            FileKind::Safetensors => {
                return Err(Error::bad_input(
                    path,
                    "is a checkpoint, not a .dlm: make one with `depthling quantize`, or profile the architecture with `depthling profile --arch A --size WxH`",
                ))
            }
            FileKind::Onnx | FileKind::Tflite | FileKind::Png => {
                return Err(Error::bad_input(
                    path,
                    format!("is {}, not a .dlm", FileKind::of(&bytes).describe()),
                ))
            }
            FileKind::Dlm | FileKind::Unknown => {}
        }
        Ok(DlmFile {
            path: path.to_path_buf(),
            bytes,
        })
    }

    /// Validates the bytes (everything: DESIGN §2) and returns the model borrowing them.
    pub fn model(&self) -> Result<depthling_model::Model<'_>> {
        depthling_model::Model::from_bytes(&self.bytes).map_err(|source| Error::Model {
            path: self.path.clone(),
            source,
        })
    }
}

/// Metadata keys of depthling's safetensors files, defined once.
pub mod meta {
    /// The network's architecture ([`crate::nets::graph::GraphSpec`] as JSON).
    pub const ARCH: &str = "depthling.arch";
    /// `teacher` or `student`.
    pub const KIND: &str = "depthling.kind";
    /// The input size it was trained at, `WxH`.
    pub const SIZE: &str = "depthling.size";
    /// The distillation method of a student.
    pub const METHOD: &str = "depthling.method";
    /// The teacher a student was distilled from.
    pub const TEACHER: &str = "depthling.teacher";
    /// A training checkpoint: the settings it must be resumed with.
    pub const TRAIN_CONFIG: &str = "train.config";
    /// Steps done.
    pub const TRAIN_STEP: &str = "train.step";
    /// The data order's random state.
    pub const TRAIN_RNG: &str = "train.rng";
    /// The loss of every step so far (JSON).
    pub const TRAIN_LOSSES: &str = "train.losses";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_come_from_the_bytes() {
        assert_eq!(FileKind::of(b"DLM1\x01\x00"), FileKind::Dlm);
        assert_eq!(FileKind::of(b"\x89PNG\r\n\x1a\n...."), FileKind::Png);
        assert_eq!(
            FileKind::of(b"\x1c\x00\x00\x00TFL3\x00\x00"),
            FileKind::Tflite
        );
        assert_eq!(
            FileKind::of(b"\x40\x00\x00\x00\x00\x00\x00\x00{\"__metadata__\""),
            FileKind::Safetensors
        );
        assert_eq!(FileKind::of(b"\x08\x07\x12\x07pytorch"), FileKind::Onnx);
        assert_eq!(FileKind::of(b""), FileKind::Unknown);
        assert_eq!(FileKind::of(b"hello"), FileKind::Unknown);
    }

    #[test]
    fn atomic_writes_leave_no_temporary_and_pngs_list_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("sub").join("a.bin");
        write_atomic(&p, b"one").expect("write");
        write_atomic(&p, b"two").expect("overwrite");
        assert_eq!(std::fs::read(&p).expect("read"), b"two");
        let names: Vec<_> = std::fs::read_dir(p.parent().expect("parent"))
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        for n in ["b.png", "a.png", "a_color.png", "c.txt"] {
            std::fs::write(dir.path().join(n), b"x").expect("write");
        }
        let listed = list_pngs(dir.path()).expect("list");
        let listed: Vec<_> = listed
            .iter()
            .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
            .collect();
        assert_eq!(listed, ["a.png", "b.png"]);
        assert!(list_pngs(&dir.path().join("nope")).is_err());
        let e = read(&dir.path().join("nope"), "model file").expect_err("missing");
        assert!(e.to_string().contains("model file not found"), "{e}");
        assert_eq!(e.exit_code(), 2);
    }
}

/// NumPy's `.npy` format (version 1.0), for tensor dumps.
pub mod npy {
    /// Element types written.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Dtype {
        I8,
        F32,
    }

    /// The file: magic, version 1.0, a header dict padded to a multiple of 64 bytes, then
    /// `data` (little endian, C order) as it is.
    pub fn encode(dtype: Dtype, shape: &[usize], data: &[u8]) -> Vec<u8> {
        let descr = match dtype {
            Dtype::I8 => "|i1",
            Dtype::F32 => "<f4",
        };
        let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        let shape = if dims.len() == 1 {
            format!("({},)", dims[0])
        } else {
            format!("({})", dims.join(", "))
        };
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        // magic (6) + version (2) + length (2) + header + newline, to a multiple of 64
        let used = 10 + header.len() + 1;
        header.push_str(&" ".repeat((64 - used % 64) % 64));
        header.push('\n');
        let mut out = Vec::with_capacity(10 + header.len() + data.len());
        out.extend_from_slice(b"\x93NUMPY\x01\x00");
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }
}
