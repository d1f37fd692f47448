//! `Resize` (opsets 10–18) and `Upsample` (7–9) over the two spatial axes: nearest and linear,
//! with every coordinate transformation PyTorch's exporter writes, from scales or sizes. Linear
//! resizing is two small interpolation matrices (exact ONNX weights, differentiable through
//! candle's matmul); a 2^k× half-pixel upsample uses depthling's bilinear op, nearest an index
//! selection.

use candle_core::Tensor;

use super::ops::{Ctx, OpNode};
use super::value::Value;
use crate::error::{Error, Result};

fn bad(msg: impl Into<String>) -> Error {
    Error::Runtime(msg.into())
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Coord {
    HalfPixel,
    PytorchHalfPixel,
    AlignCorners,
    Asymmetric,
    TfHalfPixelForNn,
}

/// The source coordinate of output position `o` on an axis of `len_in → len_out` at `scale`.
fn source(c: Coord, o: usize, len_in: usize, len_out: usize, scale: f64) -> f64 {
    let o = o as f64;
    match c {
        Coord::HalfPixel => (o + 0.5) / scale - 0.5,
        Coord::PytorchHalfPixel if len_out > 1 => (o + 0.5) / scale - 0.5,
        Coord::PytorchHalfPixel => 0.0,
        Coord::AlignCorners if len_out > 1 => o * (len_in as f64 - 1.0) / (len_out as f64 - 1.0),
        Coord::AlignCorners => 0.0,
        Coord::Asymmetric => o / scale,
        Coord::TfHalfPixelForNn => (o + 0.5) / scale,
    }
}

/// The `len_out × len_in` matrix of linear interpolation weights.
fn linear_matrix(c: Coord, len_in: usize, len_out: usize, scale: f64) -> Vec<f32> {
    let mut m = vec![0f32; len_out * len_in];
    for o in 0..len_out {
        let x = source(c, o, len_in, len_out, scale).clamp(0.0, (len_in - 1) as f64);
        let i0 = x.floor() as usize;
        let i1 = (i0 + 1).min(len_in - 1);
        let w = (x - i0 as f64) as f32;
        m[o * len_in + i0] += 1.0 - w;
        m[o * len_in + i1] += w;
    }
    m
}

/// The source index of every output position for nearest resizing.
fn nearest_indices(c: Coord, mode: &str, len_in: usize, len_out: usize, scale: f64) -> Vec<u32> {
    (0..len_out)
        .map(|o| {
            let x = source(c, o, len_in, len_out, scale);
            let i = match mode {
                "floor" => x.floor(),
                "ceil" => x.ceil(),
                "round_prefer_ceil" => {
                    if x.fract().abs() == 0.5 {
                        x.ceil()
                    } else {
                        x.round()
                    }
                }
                _ => {
                    if (x - x.floor() - 0.5).abs() < 1e-12 {
                        x.floor()
                    } else {
                        x.round()
                    }
                }
            };
            i.clamp(0.0, (len_in - 1) as f64) as u32
        })
        .collect()
}

/// Half-pixel bilinear resizing of `x [N, C, H, W]` to `oh × ow` (PyTorch's `F.interpolate`
/// with `align_corners=False`), differentiable.
pub fn bilinear(x: &Tensor, oh: usize, ow: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if h == 0 || w == 0 || oh == 0 || ow == 0 {
        return Err(bad(format!(
            "bilinear resize of {:?} to {oh}×{ow}",
            x.dims()
        )));
    }
    let dev = x.device();
    let ah = Tensor::from_vec(
        linear_matrix(Coord::HalfPixel, h, oh, oh as f64 / h as f64),
        (oh, h),
        dev,
    )?;
    let aw = Tensor::from_vec(
        linear_matrix(Coord::HalfPixel, w, ow, ow as f64 / w as f64),
        (ow, w),
        dev,
    )?;
    Ok(ah.broadcast_matmul(&x.broadcast_matmul(&aw.t()?)?)?)
}

pub fn resize(n: &OpNode, inputs: &[Option<Value>], cx: &Ctx<'_>) -> Result<Vec<Value>> {
    let dev = cx.device;
    let get = |i: usize| inputs.get(i).and_then(|v| v.as_ref());
    let x = get(0)
        .ok_or_else(|| bad("input 0 is missing"))?
        .float(dev)?;
    if x.rank() != 4 {
        return Err(bad(format!(
            "only 4-D (N, C, H, W) resizing is supported, got {:?}",
            x.dims()
        )));
    }
    let (_, _, h, w) = x.dims4()?;
    if h == 0 || w == 0 {
        return Err(bad(format!("Resize of an empty map {:?}", x.dims())));
    }
    let legacy = n.op == "Upsample" || cx.opset < 11;
    let (scales_in, sizes_in) = if n.op == "Upsample" {
        let s = match get(1) {
            Some(v) => v.float(dev)?.to_vec1::<f32>()?,
            None => n
                .attrs
                .get("scales")
                .map(|a| a.floats.clone())
                .unwrap_or_default(),
        };
        (Some(s), None)
    } else if cx.opset < 11 {
        (
            Some(
                get(1)
                    .ok_or_else(|| bad("Resize needs scales"))?
                    .float(dev)?
                    .to_vec1::<f32>()?,
            ),
            None,
        )
    } else {
        let scales = match get(2) {
            Some(v) if !v.shape().contains(&0) => Some(v.float(dev)?.to_vec1::<f32>()?),
            _ => None,
        };
        let sizes = get(3).map(|v| v.ints()).transpose()?.map(|i| i.data);
        (scales, sizes)
    };
    let ((oh, ow), (sc_h, sc_w)) = match (&sizes_in, &scales_in) {
        (Some(s), _) if s.len() == 4 => {
            if s[0] != x.dim(0)? as i64 || s[1] != x.dim(1)? as i64 {
                return Err(bad("Resize may only change the spatial axes"));
            }
            let (oh, ow) = (s[2].max(1) as usize, s[3].max(1) as usize);
            ((oh, ow), (oh as f64 / h as f64, ow as f64 / w as f64))
        }
        (_, Some(s)) if s.len() == 4 => {
            if s[0] != 1.0 || s[1] != 1.0 {
                return Err(bad("Resize may only scale the spatial axes"));
            }
            let (a, b) = (s[2] as f64, s[3] as f64);
            if !(a > 0.0 && b > 0.0) {
                return Err(bad(format!("Resize scales {s:?} are not positive")));
            }
            (
                (
                    (h as f64 * a).floor() as usize,
                    (w as f64 * b).floor() as usize,
                ),
                (a, b),
            )
        }
        _ => return Err(bad("Resize needs 4 scales or 4 sizes")),
    };
    if oh == 0 || ow == 0 {
        return Err(bad("Resize to an empty size"));
    }
    let attr = |k: &str, d: &str| {
        n.attrs.get(k).map_or(d.to_string(), |a| {
            String::from_utf8_lossy(&a.s).into_owned()
        })
    };
    let mode = attr("mode", "nearest");
    let coord = if legacy {
        Coord::Asymmetric
    } else {
        match attr("coordinate_transformation_mode", "half_pixel").as_str() {
            "half_pixel" => Coord::HalfPixel,
            "pytorch_half_pixel" => Coord::PytorchHalfPixel,
            "align_corners" => Coord::AlignCorners,
            "asymmetric" => Coord::Asymmetric,
            "tf_half_pixel_for_nn" => Coord::TfHalfPixelForNn,
            other => {
                return Err(bad(format!(
                    "coordinate_transformation_mode {other:?} is not supported"
                )))
            }
        }
    };
    let y = match mode.as_str() {
        "nearest" => {
            let nearest = if legacy {
                "floor".to_string()
            } else {
                attr("nearest_mode", "round_prefer_floor")
            };
            let rows = nearest_indices(coord, &nearest, h, oh, sc_h);
            let cols = nearest_indices(coord, &nearest, w, ow, sc_w);
            let plain = |idx: &[u32], len_in: usize| {
                idx.len().is_multiple_of(len_in)
                    && idx
                        .iter()
                        .enumerate()
                        .all(|(o, &i)| i as usize == o / (idx.len() / len_in))
            };
            if plain(&rows, h) && plain(&cols, w) {
                x.upsample_nearest2d(oh, ow)?
            } else {
                x.index_select(&Tensor::new(rows, dev)?, 2)?
                    .index_select(&Tensor::new(cols, dev)?, 3)?
            }
        }
        "linear" | "bilinear" => {
            let factor = oh / h;
            let power_of_two = factor >= 2 && factor.is_power_of_two();
            if x.device().is_cpu()
                && matches!(coord, Coord::HalfPixel | Coord::PytorchHalfPixel)
                && power_of_two
                && (oh, ow) == (h * factor, w * factor)
                && (sc_h, sc_w) == (factor as f64, factor as f64)
            {
                crate::nets::ops::upsample_bilinear(&x.contiguous()?, factor)?
            } else {
                let ah = Tensor::from_vec(linear_matrix(coord, h, oh, sc_h), (oh, h), dev)?;
                let aw = Tensor::from_vec(linear_matrix(coord, w, ow, sc_w), (ow, w), dev)?;
                let t = x.broadcast_matmul(&aw.t()?)?;
                ah.broadcast_matmul(&t)?
            }
        }
        other => {
            return Err(bad(format!(
                "Resize mode {other:?} is not supported (nearest, linear)"
            )))
        }
    };
    Ok(vec![Value::F(y)])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-checked weights: 2 → 4 half-pixel (PyTorch's bilinear, align_corners=False) and
    /// 2 → 3 align_corners.
    #[test]
    fn linear_weights_follow_the_coordinate_modes() {
        let m = linear_matrix(Coord::HalfPixel, 2, 4, 2.0);
        assert_eq!(m, [1.0, 0.0, 0.75, 0.25, 0.25, 0.75, 0.0, 1.0]);
        let m = linear_matrix(Coord::AlignCorners, 2, 3, 1.5);
        assert_eq!(m, [1.0, 0.0, 0.5, 0.5, 0.0, 1.0]);
        assert_eq!(
            nearest_indices(Coord::Asymmetric, "floor", 3, 6, 2.0),
            [0, 0, 1, 1, 2, 2]
        );
        assert_eq!(
            nearest_indices(Coord::HalfPixel, "round_prefer_floor", 2, 4, 2.0),
            [0, 0, 1, 1]
        );
    }

    /// An empty map (a graph that shrinks a small input to nothing) is an error, not an
    /// out-of-bounds index.
    #[test]
    fn empty_maps_are_refused() {
        let dev = candle_core::Device::Cpu;
        let x = Tensor::zeros((1, 2, 0, 4), candle_core::DType::F32, &dev).unwrap();
        assert!(bilinear(&x, 4, 4).is_err());
        let n = OpNode {
            name: "r".into(),
            op: "Resize".into(),
            inputs: vec![],
            outputs: vec!["y".into()],
            attrs: Default::default(),
        };
        let cx = Ctx {
            device: &dev,
            opset: 13,
        };
        let scales = Value::F(Tensor::new(&[1f32, 1.0, 2.0, 2.0], &dev).unwrap());
        let e = resize(&n, &[Some(Value::F(x)), None, Some(scales)], &cx).unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
    }
}
