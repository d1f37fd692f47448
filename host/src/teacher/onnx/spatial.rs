//! The spatial operators: Conv (with the fast custom ops where they apply), ConvTranspose and
//! pooling.

use candle_core::{Device, Tensor};

use super::ops::{bad, Ctx, OpNode};
use super::shape::pad_axis;
use super::value::Value;
use crate::error::Result;

/// Pads of a 2-D spatial op as `(top, left, bottom, right)` from `pads` or `auto_pad`.
fn spatial_pads(
    n: &OpNode,
    (h, w): (usize, usize),
    (kh, kw): (usize, usize),
    (sh, sw): (usize, usize),
    (dh, dw): (usize, usize),
) -> Result<[usize; 4]> {
    let auto = n.string("auto_pad", "NOTSET");
    match auto.as_str() {
        "NOTSET" => {
            let p = n.ints("pads").unwrap_or_else(|| vec![0; 4]);
            if p.len() != 4 || p.iter().any(|&v| v < 0) {
                return Err(bad(format!(
                    "pads {p:?} are not 2-D (top, left, bottom, right)"
                )));
            }
            Ok([p[0] as usize, p[1] as usize, p[2] as usize, p[3] as usize])
        }
        "VALID" => Ok([0; 4]),
        "SAME_UPPER" | "SAME_LOWER" => {
            let total = |len: usize, k: usize, s: usize, d: usize| {
                let out = len.div_ceil(s);
                ((out - 1) * s + (k - 1) * d + 1).saturating_sub(len)
            };
            let (th, tw) = (total(h, kh, sh, dh), total(w, kw, sw, dw));
            let upper = auto == "SAME_UPPER";
            let split = |t: usize| {
                if upper {
                    (t / 2, t - t / 2)
                } else {
                    (t - t / 2, t / 2)
                }
            };
            let ((t, b), (l, r)) = (split(th), split(tw));
            Ok([t, l, b, r])
        }
        other => Err(bad(format!("auto_pad {other:?} is not supported"))),
    }
}

fn pair(v: Option<Vec<i64>>, default: usize, what: &str) -> Result<(usize, usize)> {
    match v.as_deref() {
        None => Ok((default, default)),
        Some([a, b]) if *a > 0 && *b > 0 => Ok((*a as usize, *b as usize)),
        Some(other) => Err(bad(format!(
            "{what} {other:?} are not two positive numbers (2-D)"
        ))),
    }
}

pub(super) fn conv(
    n: &OpNode,
    x: &Tensor,
    w: &Tensor,
    b: Option<&Value>,
    cx: &Ctx<'_>,
) -> Result<Vec<Value>> {
    if x.rank() != 4 || w.rank() != 4 {
        return Err(bad(format!(
            "only 2-D convolutions are supported (input {:?}, weight {:?})",
            x.dims(),
            w.dims()
        )));
    }
    let (_, c, h, wd) = x.dims4()?;
    let (o, ci, kh, kw) = w.dims4()?;
    let groups = n.int("group", 1).max(1) as usize;
    if ci * groups != c || o % groups != 0 {
        return Err(bad(format!(
            "input has {c} channels, weight {:?} with {groups} groups",
            w.dims()
        )));
    }
    let (sh, sw) = pair(n.ints("strides"), 1, "strides")?;
    let (dh, dw) = pair(n.ints("dilations"), 1, "dilations")?;
    let [t, l, bo, r] = spatial_pads(n, (h, wd), (kh, kw), (sh, sw), (dh, dw))?;
    if sh != sw || dh != dw {
        return Err(bad(format!(
            "strides ({sh}, {sw}) and dilations ({dh}, {dw}) must be equal along both axes"
        )));
    }
    let symmetric = t == l && t == bo && t == r;
    let (mut xin, pad) = if symmetric {
        (x.clone(), t)
    } else {
        (
            pad_axis(
                &pad_axis(x, 2, t, bo, "constant", 0.0)?,
                3,
                l,
                r,
                "constant",
                0.0,
            )?,
            0,
        )
    };
    xin = xin.contiguous()?;
    let w = w.contiguous()?;
    let fast = dh == 1 && kh == kw && xin.device().is_cpu();
    let mut y = if fast && groups == 1 && o == 1 && sh == 1 {
        // one output channel (a depth head): a depthwise pass and a channel sum, as the native
        // nets do, without im2col's C·k² copies of a full-resolution map
        let wd = w.reshape((ci, 1, kh, kw))?;
        crate::nets::ops::depthwise_conv2d(&xin, &wd, pad, 1)?.sum_keepdim(1)?
    } else if fast && groups == 1 {
        crate::nets::ops::conv2d(&xin, &w, pad, sh)?
    } else if fast && groups == c && o == c && ci == 1 {
        crate::nets::ops::depthwise_conv2d(&xin, &w, pad, sh)?
    } else {
        xin.conv2d(&w, pad, sh, dh, groups)?
    };
    if let Some(b) = b {
        y = y.broadcast_add(&b.float(cx.device)?.reshape((1, o, 1, 1))?)?;
    }
    Ok(vec![Value::F(y)])
}

pub(super) fn conv_transpose(
    n: &OpNode,
    x: &Tensor,
    w: &Tensor,
    b: Option<&Value>,
    dev: &Device,
) -> Result<Vec<Value>> {
    if x.rank() != 4 || w.rank() != 4 {
        return Err(bad("only 2-D transposed convolutions are supported"));
    }
    if n.int("group", 1) != 1 {
        return Err(bad("ConvTranspose with groups is not supported"));
    }
    if n.attr("output_shape").is_some() || n.string("auto_pad", "NOTSET") != "NOTSET" {
        return Err(bad(
            "ConvTranspose with output_shape or auto_pad is not supported: give pads",
        ));
    }
    let (_, _, kh, kw) = w.dims4()?;
    let (sh, sw) = pair(n.ints("strides"), 1, "strides")?;
    let (dh, dw) = pair(n.ints("dilations"), 1, "dilations")?;
    let (oph, opw) = match n.ints("output_padding").as_deref() {
        None => (0, 0),
        Some([a, b]) if *a >= 0 && *b >= 0 => (*a as usize, *b as usize),
        Some(o) => return Err(bad(format!("output_padding {o:?} is not 2-D"))),
    };
    let p = n.ints("pads").unwrap_or_else(|| vec![0; 4]);
    if p.len() != 4 || p.iter().any(|&v| v < 0) {
        return Err(bad(format!("pads {p:?} are not 2-D")));
    }
    if sh != sw || dh != dw || kh != kw {
        return Err(bad(
            "ConvTranspose needs square kernels and equal strides and dilations",
        ));
    }
    // run without padding (full output), then crop begin/end pads and add output padding
    let full = x
        .contiguous()?
        .conv_transpose2d(&w.contiguous()?, 0, 0, sh, dh)?;
    let (_, _, fh, fw) = full.dims4()?;
    let crop =
        |len: usize, begin: i64, end: i64, extra: usize, a: usize, t: Tensor| -> Result<Tensor> {
            let (begin, end) = (begin as usize, end as usize);
            // output padding adds zeros beyond the full output at the end
            let t = if extra > 0 {
                pad_axis(&t, a, 0, extra, "constant", 0.0)?
            } else {
                t
            };
            let total = len + extra;
            if begin + end >= total {
                return Err(bad("ConvTranspose pads remove the whole output"));
            }
            Ok(t.narrow(a, begin, total - begin - end)?)
        };
    let mut y = crop(fh, p[0], p[2], oph, 2, full)?;
    y = crop(fw, p[1], p[3], opw, 3, y)?;
    if let Some(b) = b {
        let b = b.float(dev)?;
        let o = b.elem_count();
        y = y.broadcast_add(&b.reshape((1, o, 1, 1))?)?;
    }
    Ok(vec![Value::F(y)])
}

/// Max and average pooling as the maximum or sum of k² strided views, so that the backward pass
/// is candle's (its own max pool has none unless the kernel equals the stride).
pub(super) fn pool(n: &OpNode, x: &Tensor, dev: &Device) -> Result<Vec<Value>> {
    if x.rank() != 4 {
        return Err(bad("only 2-D pooling is supported"));
    }
    let (_, _, h, w) = x.dims4()?;
    let (kh, kw) = pair(n.ints("kernel_shape"), 0, "kernel_shape")?;
    if h == 0 || w == 0 || kh == 0 || kw == 0 {
        return Err(bad(format!(
            "pooling an empty map {:?} or with an empty kernel",
            x.dims()
        )));
    }
    let (sh, sw) = pair(n.ints("strides"), 1, "strides")?;
    let (dh, dw) = pair(n.ints("dilations"), 1, "dilations")?;
    let [t, l, b, r] = spatial_pads(n, (h, w), (kh, kw), (sh, sw), (dh, dw))?;
    let ceil = n.int("ceil_mode", 0) != 0;
    let out_len =
        |len: usize, k: usize, s: usize, d: usize, pb: usize, pe: usize| -> Result<usize> {
            let span = (k - 1) * d + 1;
            if len + pb + pe < span {
                return Err(bad("pooling window larger than the padded input"));
            }
            let num = len + pb + pe - span;
            let mut o = if ceil { num.div_ceil(s) } else { num / s } + 1;
            // a last window starting in the end padding is dropped (ONNX and PyTorch)
            if ceil && (o - 1) * s >= len + pb {
                o -= 1;
            }
            Ok(o)
        };
    let (oh, ow) = (out_len(h, kh, sh, dh, t, b)?, out_len(w, kw, sw, dw, l, r)?);
    let is_max = n.op == "MaxPool";
    // ResNet's stem pool: the native net's strided-view form (same values, cheaper backward);
    // its zero padding stands in for −∞ only after a ReLU, so it is taken for inputs ≥ 0 only
    if is_max
        && (kh, kw, sh, sw, dh, dw) == (3, 3, 2, 2, 1, 1)
        && [t, l, b, r] == [1; 4]
        && (oh, ow) == (h.div_ceil(2), w.div_ceil(2))
        && x.min_all()?.to_scalar::<f32>()? >= 0.0
    {
        return Ok(vec![Value::F(crate::nets::graph_net::max_pool_3x3_s2(x)?)]);
    }
    // enough padding at the end for every window
    let need_h = (oh - 1) * sh + (kh - 1) * dh + 1;
    let need_w = (ow - 1) * sw + (kw - 1) * dw + 1;
    let (eb, er) = (need_h.saturating_sub(h + t), need_w.saturating_sub(w + l));
    let fill = if is_max { f32::MIN } else { 0.0 };
    let xp = pad_axis(
        &pad_axis(x, 2, t, eb.max(b), "constant", fill)?,
        3,
        l,
        er.max(r),
        "constant",
        fill,
    )?;
    let rows = |ky: usize| -> Vec<u32> { (0..oh).map(|o| (o * sh + ky * dh) as u32).collect() };
    let cols = |kx: usize| -> Vec<u32> { (0..ow).map(|o| (o * sw + kx * dw) as u32).collect() };
    let mut acc: Option<Tensor> = None;
    for ky in 0..kh {
        let rsel = xp.index_select(&Tensor::new(rows(ky), dev)?, 2)?;
        for kx in 0..kw {
            let v = rsel.index_select(&Tensor::new(cols(kx), dev)?, 3)?;
            acc = Some(match acc {
                None => v,
                Some(a) if is_max => a.maximum(&v)?,
                Some(a) => (a + v)?,
            });
        }
    }
    let acc = acc.ok_or_else(|| bad("empty pooling window"))?;
    if is_max {
        return Ok(vec![Value::F(acc)]);
    }
    let count_pad = n.int("count_include_pad", 0) != 0;
    // the number of counted positions under every window
    let counted = |o: usize, s: usize, k: usize, d: usize, (pb, pe): (usize, usize), len: usize| {
        (0..k)
            .filter(|&i| {
                let pos = (o * s + i * d) as i64 - pb as i64;
                if count_pad {
                    pos >= -(pb as i64) && pos < (len + pe) as i64
                } else {
                    pos >= 0 && pos < len as i64
                }
            })
            .count() as f32
    };
    let mut counts = vec![0f32; oh * ow];
    for oy in 0..oh {
        for ox in 0..ow {
            counts[oy * ow + ox] =
                counted(oy, sh, kh, dh, (t, b), h) * counted(ox, sw, kw, dw, (l, r), w);
        }
    }
    let counts = Tensor::from_vec(counts, (1, 1, oh, ow), dev)?;
    Ok(vec![Value::F(acc.broadcast_div(&counts)?)])
}
