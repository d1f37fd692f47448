//! TFLite interop: the int8 `.dlm` as a full-integer `.tflite` (schema v3) that LiteRT and
//! TFLite Micro run with the same int8 results as depthling's engine, and back.
//!
//! The flatbuffer code is TFLite's own schema as `flatc` generates it, shipped by `tract-tflite`
//! (`tract_tflite::tflite`); the `flatbuffers` crate builds and verifies the buffers.
//!
//! How the IR maps (every int8 tensor of ours is a tensor of the same name `t<id>` there):
//!
//! | IR op | TFLite |
//! |---|---|
//! | input (RGB `u8`) | int8 `[1,H,W,3]`, scale 1/255, zero point −128: a pixel `p` is `p ^ 0x80` |
//! | `Conv2d` (int8 out) | `CONV_2D` / `DEPTHWISE_CONV_2D`, per-channel int8 weights, int32 bias; `PAD` first where TFLite's `SAME` would pad differently (stride 2 on an even size); a sigmoid as `LOGISTIC` after the conv |
//! | `Conv2d` (f32 out, the last) | `QUANTIZE` int8→int16 (exact), `CONV_2D` 16×8 (int64 bias), `DEQUANTIZE` to float32 `depth` |
//! | `Add` | `ADD` (fused ReLU/ReLU6) |
//! | `Concat` | `QUANTIZE` (int8→int8) of each input whose scale differs, then `CONCATENATION` (TFLite needs equal scales) |
//! | `Upsample` | `RESIZE_NEAREST_NEIGHBOR`, or `RESIZE_BILINEAR` with `half_pixel_centers` |
//! | `GlobalAvgPool` | `MEAN` over axes 1, 2, `keep_dims` |
//! | `Mul` | `MUL` (broadcast over H, W) |

pub mod export;
pub mod import;

pub use export::export;
pub use import::import;

/// TFLite's tensor name for IR tensor `id`.
pub fn tensor_name(id: u16) -> String {
    format!("t{id}")
}
