//! The depthling model IR and the `.dlm` file format (DESIGN §2).
//!
//! One description of a network serves the trainer's exporter, the quantizer, the int8 engine, the
//! ONNX export and the memory planner. A `.dlm` file is a postcard-encoded [`Model`] followed by the
//! CRC-32 of that payload (little endian). [`Model::from_bytes`] validates everything — magic,
//! version, CRC, every tensor and op, the arena plan — and returns a typed [`LoadError`] for any
//! byte sequence; it never panics. Weights stay borrowed from the file bytes (zero copy from flash).
//!
//! Conventions:
//! - Activations are int8 NHWC (batch 1), asymmetric per tensor; the graph's output tensor is f32
//!   metres, written by a final convolution that dequantizes its int32 accumulators directly.
//! - Convolution weights are int8 OHWI (depthwise: HWC), symmetric per output channel; bias int32 at
//!   scale `s_in · s_w[c]`. Padding is `k / 2` on every side (the PyTorch/ONNX convention), so the
//!   output is `ceil(in / stride)`.
//! - The input is an RGB `u8` image: the input tensor is quantized with scale 1/255 and zero point
//!   −128, so `q = pixel − 128` is exact and the network sees `pixel / 255`.
#![cfg_attr(not(feature = "std"), no_std)]

#[cfg(feature = "alloc")]
extern crate alloc;

mod arena;
#[cfg(feature = "alloc")]
mod builder;
mod crc;
mod error;
pub mod quant;
mod validate;

pub use arena::lifetimes;
#[cfg(feature = "alloc")]
pub use arena::plan_arena;
#[cfg(feature = "alloc")]
pub use builder::{example_model, ModelBuilder};
pub use crc::crc32;
pub use error::LoadError;
pub use quant::Requant;

use serde::{Deserialize, Serialize};

/// First bytes of every `.dlm` file.
pub const MAGIC: [u8; 4] = *b"DLM1";
/// The format version this crate reads and writes.
/// Version 2 (TFLite semantics): `GlobalAvgPool` requantizes the sum and then divides by the
/// pixel count (TFLite's MEAN), and a sigmoid's LUT records its pre-activation scale.
pub const FORMAT_VERSION: u16 = 2;
/// Most ops in one model.
pub const MAX_OPS: usize = 256;
/// Most tensors in one model.
pub const MAX_TENSORS: usize = 256;
/// Most inputs of one `Concat`.
pub const MAX_CONCAT_INPUTS: usize = 4;
/// Most metadata metrics.
pub const MAX_METRICS: usize = 16;
/// Input scale: the network sees `pixel / 255`.
pub const INPUT_SCALE: f32 = 1.0 / 255.0;
/// Input zero point: `q = pixel − 128`.
pub const INPUT_ZERO_POINT: i32 = -128;
/// Sigmoid output quantization (as TFLite): scale 1/256, zero point −128.
pub const SIGMOID_OUTPUT: QuantParams = QuantParams {
    scale: 1.0 / 256.0,
    zero_point: -128,
};
/// Arena offsets are multiples of this.
pub const ARENA_ALIGN: u32 = 8;

/// Index of a tensor in [`Model::tensors`].
pub type TensorId = u16;

/// Affine quantization `real = scale · (q − zero_point)`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantParams {
    pub scale: f32,
    pub zero_point: i32,
}

/// Element type of an activation tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DType {
    I8,
    F32,
}

impl DType {
    pub fn size(self) -> u32 {
        match self {
            DType::I8 => 1,
            DType::F32 => 4,
        }
    }
}

/// An activation tensor (batch 1, NHWC) and where it lives in the arena.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorInfo {
    pub height: u16,
    pub width: u16,
    pub channels: u16,
    pub dtype: DType,
    /// Ignored for `F32`.
    pub quant: QuantParams,
    /// Byte offset in the arena.
    pub offset: u32,
}

impl TensorInfo {
    pub fn elements(&self) -> u32 {
        self.height as u32 * self.width as u32 * self.channels as u32
    }

    /// Bytes in the arena (fits `u32`: dimensions are `u16`, and `u16³ · 4 < 2^50` is checked
    /// on load against the arena size).
    pub fn size_bytes(&self) -> u64 {
        self.elements() as u64 * self.dtype.size() as u64
    }
}

/// A byte range of [`Model::weights`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConstRef {
    pub offset: u32,
    pub len: u32,
}

impl ConstRef {
    pub const EMPTY: ConstRef = ConstRef { offset: 0, len: 0 };

    /// The bytes, or `None` when out of range.
    pub fn get<'a>(&self, blob: &'a [u8]) -> Option<&'a [u8]> {
        let end = (self.offset as usize).checked_add(self.len as usize)?;
        blob.get(self.offset as usize..end)
    }
}

/// Activation fused into the producing op.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    None,
    Relu,
    Relu6,
    /// Through a 256-entry lookup table from the pre-activation int8 to the output int8.
    Sigmoid,
}

/// Upsampling interpolation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpsampleMode {
    Nearest,
    /// Half-pixel centres (PyTorch `align_corners=False`), edges clamped.
    Bilinear,
}

/// A 2-D convolution, dense or depthwise, with its bias, requantization and fused activation.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Conv2d {
    pub input: TensorId,
    pub output: TensorId,
    /// 1, 3 or 5.
    pub kernel: u8,
    /// 1 or 2.
    pub stride: u8,
    /// One filter per channel (`groups = C`).
    pub depthwise: bool,
    pub act: Activation,
    /// int8, OHWI (depthwise: HWC).
    pub weights: ConstRef,
    /// int32 little endian, one per output channel, at scale `s_in · s_w[c]`.
    pub bias: ConstRef,
    /// Per output channel `(multiplier: i32, shift: i32)` little endian, 8 bytes each: from the
    /// accumulator to the output (or, with `Sigmoid`, to the pre-activation LUT index). Empty when
    /// the output is `F32`.
    pub requant: ConstRef,
    /// f32 little endian per output channel: `s_w[c]`.
    pub weight_scales: ConstRef,
    /// Only with `Sigmoid`: the table from the pre-activation int8 to the output.
    pub lut: Option<Lut>,
}

/// A 256-entry activation table. The accumulator is requantized to the pre-activation
/// parameters (`requant`, then `+ zero_point`, clamped to int8) and `q + 128` indexes `table`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Lut {
    /// 256 × int8.
    pub table: ConstRef,
    /// Zero point of the pre-activation quantization.
    pub zero_point: i32,
    /// Scale of the pre-activation quantization (what `requant` maps to; TFLite's LOGISTIC
    /// input).
    pub scale: f32,
}

/// One operation of the graph, in execution order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Op {
    Conv2d(Conv2d),
    /// Elementwise `a + b` (TFLite int8 add: both sides shifted left by
    /// [`quant::ADD_LEFT_SHIFT`], rescaled, summed, rescaled to the output).
    Add {
        a: TensorId,
        b: TensorId,
        output: TensorId,
        a_requant: Requant,
        b_requant: Requant,
        out_requant: Requant,
        act: Activation,
    },
    /// Channel concatenation; each input is requantized to the output's parameters.
    Concat {
        inputs: heapless::Vec<TensorId, MAX_CONCAT_INPUTS>,
        requant: heapless::Vec<Requant, MAX_CONCAT_INPUTS>,
        output: TensorId,
    },
    /// Spatial upsampling by `factor` (2, 4, 8 or 16); input and output share quantization.
    Upsample {
        input: TensorId,
        output: TensorId,
        mode: UpsampleMode,
        factor: u8,
    },
    /// Mean over H and W; output 1×1×C (TFLite's MEAN over axes 1, 2): `requant` (input scale
    /// over output scale) maps the sum of the centred input, which is then divided by `H·W`
    /// rounding half away from zero.
    GlobalAvgPool {
        input: TensorId,
        output: TensorId,
        requant: Requant,
    },
    /// `input[h, w, c] · scale[c]` (squeeze-excitation); `scale` is 1×1×C.
    Mul {
        input: TensorId,
        scale: TensorId,
        output: TensorId,
        requant: Requant,
    },
    /// Marks the graph output: an F32 tensor of depth in metres, H×W×1.
    Output {
        input: TensorId,
    },
}

impl Op {
    /// The tensor this op writes, if any.
    pub fn output(&self) -> Option<TensorId> {
        match self {
            Op::Conv2d(c) => Some(c.output),
            Op::Add { output, .. }
            | Op::Concat { output, .. }
            | Op::Upsample { output, .. }
            | Op::GlobalAvgPool { output, .. }
            | Op::Mul { output, .. } => Some(*output),
            Op::Output { .. } => None,
        }
    }

    /// The tensors this op reads, in order.
    pub fn inputs(&self) -> OpInputs {
        let mut ids = [0; MAX_CONCAT_INPUTS];
        let len = match self {
            Op::Conv2d(c) => {
                ids[0] = c.input;
                1
            }
            Op::Add { a, b, .. } => {
                ids[0] = *a;
                ids[1] = *b;
                2
            }
            Op::Concat { inputs, .. } => {
                for (slot, id) in ids.iter_mut().zip(inputs.iter()) {
                    *slot = *id;
                }
                inputs.len()
            }
            Op::Upsample { input, .. } | Op::GlobalAvgPool { input, .. } | Op::Output { input } => {
                ids[0] = *input;
                1
            }
            Op::Mul { input, scale, .. } => {
                ids[0] = *input;
                ids[1] = *scale;
                2
            }
        };
        OpInputs { ids, len, next: 0 }
    }

    /// A short name for messages and reports.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Conv2d(c) if c.depthwise => "depthwise_conv2d",
            Op::Conv2d(_) => "conv2d",
            Op::Add { .. } => "add",
            Op::Concat { .. } => "concat",
            Op::Upsample { .. } => "upsample",
            Op::GlobalAvgPool { .. } => "global_avg_pool",
            Op::Mul { .. } => "mul",
            Op::Output { .. } => "output",
        }
    }
}

/// Iterator over an op's inputs (no allocation).
#[derive(Clone, Debug)]
pub struct OpInputs {
    ids: [TensorId; MAX_CONCAT_INPUTS],
    len: usize,
    next: usize,
}

impl Iterator for OpInputs {
    type Item = TensorId;
    fn next(&mut self) -> Option<TensorId> {
        if self.next < self.len {
            self.next += 1;
            self.ids.get(self.next - 1).copied()
        } else {
            None
        }
    }
}

/// A named number recorded at export (e.g. `delta1` of the f32 student).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metric<'a> {
    pub name: &'a str,
    pub value: f32,
}

/// Provenance of a model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metadata<'a> {
    pub teacher: &'a str,
    pub method: &'a str,
    pub generator: &'a str,
    #[serde(borrow)]
    pub metrics: heapless::Vec<Metric<'a>, MAX_METRICS>,
}

/// A complete int8 network, borrowing its strings and weights from the file bytes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Model<'a> {
    pub magic: [u8; 4],
    pub format_version: u16,
    pub name: &'a str,
    /// The RGB input tensor (I8, H×W×3, scale 1/255, zero point −128).
    pub input: TensorId,
    pub tensors: heapless::Vec<TensorInfo, MAX_TENSORS>,
    pub ops: heapless::Vec<Op, MAX_OPS>,
    /// Bytes of arena the plan needs.
    pub arena_bytes: u32,
    #[serde(borrow)]
    pub metadata: Metadata<'a>,
    /// All constants; ops point into it with [`ConstRef`]s.
    pub weights: &'a [u8],
}

impl<'a> Model<'a> {
    /// Parses and validates a `.dlm` file. Never panics, whatever the bytes.
    pub fn from_bytes(bytes: &'a [u8]) -> Result<Model<'a>, LoadError> {
        if bytes.len() < MAGIC.len() + 1 + 4 {
            return Err(LoadError::TooShort { len: bytes.len() });
        }
        if bytes[..4] != MAGIC {
            return Err(LoadError::BadMagic);
        }
        let (payload, tail) = bytes.split_at(bytes.len() - 4);
        let stored = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
        let computed = crc32(payload);
        if stored != computed {
            return Err(LoadError::CrcMismatch { stored, computed });
        }
        let version = read_version(&payload[4..]).ok_or(LoadError::Decode)?;
        if version != FORMAT_VERSION {
            return Err(LoadError::UnsupportedVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let (model, rest): (Model<'a>, _) =
            postcard::take_from_bytes(payload).map_err(|_| LoadError::Decode)?;
        if !rest.is_empty() {
            return Err(LoadError::TrailingBytes);
        }
        model.validate()?;
        Ok(model)
    }

    /// Checks every invariant the engine relies on (see [`validate`](crate::validate)).
    pub fn validate(&self) -> Result<(), LoadError> {
        validate::validate(self)
    }

    pub fn tensor(&self, id: TensorId) -> Option<&TensorInfo> {
        self.tensors.get(id as usize)
    }

    /// The output tensor (the input of the final `Output` op).
    pub fn output(&self) -> Option<TensorId> {
        match self.ops.last() {
            Some(Op::Output { input }) => Some(*input),
            _ => None,
        }
    }

    /// `(height, width)` of the input image.
    pub fn input_size(&self) -> Option<(u16, u16)> {
        self.tensor(self.input).map(|t| (t.height, t.width))
    }

    /// Learned parameters: weights and biases of every convolution.
    pub fn params(&self) -> u64 {
        self.ops
            .iter()
            .map(|op| match op {
                Op::Conv2d(c) => c.weights.len as u64 + c.bias.len as u64 / 4,
                _ => 0,
            })
            .sum()
    }

    /// Multiply-accumulates of one inference (convolutions and per-channel multiplies).
    pub fn macs(&self) -> u64 {
        (0..self.ops.len()).map(|i| self.op_macs(i)).sum()
    }

    /// Multiply-accumulates of op `i` (0 for ops without multiplies, or out of range).
    pub fn op_macs(&self, i: usize) -> u64 {
        match self.ops.get(i) {
            Some(Op::Conv2d(c)) => {
                let out = self.tensor(c.output).map_or(0, |t| t.elements() as u64);
                let k = c.kernel as u64 * c.kernel as u64;
                let cin = if c.depthwise {
                    1
                } else {
                    self.tensor(c.input).map_or(0, |t| t.channels as u64)
                };
                out * k * cin
            }
            Some(Op::Mul { output, .. }) => self.tensor(*output).map_or(0, |t| t.elements() as u64),
            _ => 0,
        }
    }

    /// Encodes to `.dlm` bytes (payload + CRC-32). Validates first, so no invalid file is written.
    #[cfg(feature = "alloc")]
    pub fn to_bytes(&self) -> Result<alloc::vec::Vec<u8>, LoadError> {
        self.validate()?;
        let mut bytes = postcard::to_allocvec(self).map_err(|_| LoadError::Decode)?;
        let crc = crc32(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        Ok(bytes)
    }
}

/// Reads the postcard varint `u16` that follows the magic.
fn read_version(bytes: &[u8]) -> Option<u16> {
    let mut value: u32 = 0;
    for (i, &b) in bytes.iter().take(3).enumerate() {
        value |= ((b & 0x7f) as u32) << (7 * i);
        if b & 0x80 == 0 {
            return u16::try_from(value).ok();
        }
    }
    None
}

/// Little-endian `i32` number `index` of a byte slice.
#[inline]
pub fn read_i32(bytes: &[u8], index: usize) -> Option<i32> {
    let b = bytes.get(index * 4..index * 4 + 4)?;
    Some(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Little-endian `f32` number `index` of a byte slice.
#[inline]
pub fn read_f32(bytes: &[u8], index: usize) -> Option<f32> {
    read_i32(bytes, index).map(|v| f32::from_bits(v as u32))
}

/// Per-channel requantization number `index` of a conv's `requant` bytes.
#[inline]
pub fn read_requant(bytes: &[u8], index: usize) -> Option<Requant> {
    Some(Requant {
        multiplier: read_i32(bytes, 2 * index)?,
        shift: read_i32(bytes, 2 * index + 1)?,
    })
}

/// Reinterprets bytes as int8 (same size and alignment).
#[inline]
pub fn as_i8(bytes: &[u8]) -> &[i8] {
    // SAFETY: u8 and i8 have the same size, alignment and validity (every bit pattern is valid).
    unsafe { core::slice::from_raw_parts(bytes.as_ptr().cast::<i8>(), bytes.len()) }
}

/// Reinterprets mutable bytes as int8.
#[inline]
pub fn as_i8_mut(bytes: &mut [u8]) -> &mut [i8] {
    // SAFETY: as in `as_i8`; the borrow is exclusive and carried over.
    unsafe { core::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast::<i8>(), bytes.len()) }
}
