//! Depthwise convolution (`groups = channels`, one `k×k` filter per channel) as a custom op with its
//! own backward. candle's grouped convolution splits the input into one convolution per group, so
//! a 576-channel depthwise layer is 576 tiny convolutions forward and, worse, 576 transposed
//! convolutions backward. Here every (image, channel) plane is one task: each kernel tap adds a
//! scaled, shifted copy of the input plane over the output rows where the tap is valid.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{axpy, contiguous_f32, lanes, sum_in_order, Patches};

/// `x [N, C, H, W]` ⊛ `w [C, 1, k, k]` → `[N, C, Ho, Wo]`.
#[derive(Clone, Copy, Debug)]
pub struct Depthwise(pub Patches);

/// Gradient of [`Depthwise`] with respect to its input: `(grad [N, C, Ho, Wo], w)` → `[N, C, H, W]`.
#[derive(Clone, Copy, Debug)]
pub struct DepthwiseInputGrad(pub Patches);

/// Gradient of [`Depthwise`] with respect to its weights: `(x, grad)` → `[C, 1, k, k]`.
#[derive(Clone, Copy, Debug)]
pub struct DepthwiseWeightGrad(pub Patches);

fn check(p: &Patches, x: usize, w: usize, op: &str) -> Result<()> {
    if x != p.batch * p.channels * p.height * p.width || w != p.channels * p.kernel * p.kernel {
        candle_core::bail!("{op}: {x} input and {w} weight values do not match {p:?}");
    }
    Ok(())
}

/// Calls `f(dst_range, src_offset)` for every valid run of tap `(ky, kx)`: output indices
/// `dst_range` (within one output plane) read input `src_offset + j·stride` for `j = 0..`.
#[inline]
fn runs(p: &Patches, ky: usize, kx: usize, mut f: impl FnMut(std::ops::Range<usize>, usize)) {
    let wo = p.out_width();
    p.for_rows(ky, kx, |oy, cols, first| {
        f(oy * wo + cols.start..oy * wo + cols.end, first)
    });
}

impl CustomOp2 for Depthwise {
    fn name(&self) -> &'static str {
        "depthling-depthwise"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let p = self.0;
        let x = contiguous_f32(s1, l1, self.name())?;
        let w = contiguous_f32(s2, l2, self.name())?;
        check(&p, x.len(), w.len(), self.name())?;
        let (plane, kk, s) = (p.height * p.width, p.kernel * p.kernel, p.stride);
        let mut out = vec![0f32; p.batch * p.channels * p.positions()];
        out.par_chunks_mut(p.positions())
            .enumerate()
            .for_each(|(nc, dst)| {
                let src = &x[nc * plane..(nc + 1) * plane];
                let wk = &w[(nc % p.channels) * kk..(nc % p.channels + 1) * kk];
                for ky in 0..p.kernel {
                    for kx in 0..p.kernel {
                        let wv = wk[ky * p.kernel + kx];
                        runs(&p, ky, kx, |range, first| {
                            let out = &mut dst[range];
                            if s == 1 {
                                axpy(out, wv, &src[first..first + out.len()]);
                            } else {
                                for (j, d) in out.iter_mut().enumerate() {
                                    *d += wv * src[first + j * s];
                                }
                            }
                        });
                    }
                }
            });
        Ok((
            CpuStorage::F32(out),
            Shape::from((p.batch, p.channels, p.out_height(), p.out_width())),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let gx = match x.track_op() {
            true => Some(grad.apply_op2(&w.contiguous()?, DepthwiseInputGrad(self.0))?),
            false => None,
        };
        let gw = match w.track_op() {
            true => Some(
                x.contiguous()?
                    .apply_op2(&grad, DepthwiseWeightGrad(self.0))?,
            ),
            false => None,
        };
        Ok((gx, gw))
    }
}

impl CustomOp2 for DepthwiseInputGrad {
    fn name(&self) -> &'static str {
        "depthling-depthwise-input-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let p = self.0;
        let g = contiguous_f32(s1, l1, self.name())?;
        let w = contiguous_f32(s2, l2, self.name())?;
        let (plane, kk, s, l) = (
            p.height * p.width,
            p.kernel * p.kernel,
            p.stride,
            p.positions(),
        );
        if g.len() != p.batch * p.channels * l || w.len() != p.channels * kk {
            candle_core::bail!("{}: shapes do not match {p:?}", self.name());
        }
        let mut dx = vec![0f32; p.batch * p.channels * plane];
        dx.par_chunks_mut(plane).enumerate().for_each(|(nc, dst)| {
            let from = &g[nc * l..(nc + 1) * l];
            let wk = &w[(nc % p.channels) * kk..(nc % p.channels + 1) * kk];
            for ky in 0..p.kernel {
                for kx in 0..p.kernel {
                    let wv = wk[ky * p.kernel + kx];
                    runs(&p, ky, kx, |range, first| {
                        if s == 1 {
                            axpy(&mut dst[first..first + range.len()], wv, &from[range]);
                        } else {
                            for (j, &v) in from[range].iter().enumerate() {
                                dst[first + j * s] += wv * v;
                            }
                        }
                    });
                }
            }
        });
        Ok((
            CpuStorage::F32(dx),
            Shape::from((p.batch, p.channels, p.height, p.width)),
        ))
    }
}

impl CustomOp2 for DepthwiseWeightGrad {
    fn name(&self) -> &'static str {
        "depthling-depthwise-weight-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let p = self.0;
        let x = contiguous_f32(s1, l1, self.name())?;
        let g = contiguous_f32(s2, l2, self.name())?;
        let (plane, kk, s, l) = (
            p.height * p.width,
            p.kernel * p.kernel,
            p.stride,
            p.positions(),
        );
        check(&p, x.len(), p.channels * kk, self.name())?;
        if g.len() != p.batch * p.channels * l {
            candle_core::bail!("{}: gradient does not match {p:?}", self.name());
        }
        // per (image, channel) partial sums, then a sum over images in a fixed order
        let mut partial = vec![0f32; p.batch * p.channels * kk];
        partial
            .par_chunks_mut(kk)
            .enumerate()
            .for_each(|(nc, acc)| {
                let src = &x[nc * plane..(nc + 1) * plane];
                let from = &g[nc * l..(nc + 1) * l];
                for ky in 0..p.kernel {
                    for kx in 0..p.kernel {
                        let mut sum = 0f32;
                        runs(&p, ky, kx, |range, first| {
                            if s == 1 {
                                let (from, src) =
                                    (&from[range.clone()], &src[first..first + range.len()]);
                                sum += lanes(from, src, |a, b| (a * b, 0.0)).0;
                            } else {
                                for (j, &v) in from[range].iter().enumerate() {
                                    sum += v * src[first + j * s];
                                }
                            }
                        });
                        acc[ky * p.kernel + kx] = sum;
                    }
                }
            });
        let gw = sum_in_order(&partial, p.channels * kk);
        Ok((
            CpuStorage::F32(gw),
            Shape::from((p.channels, 1, p.kernel, p.kernel)),
        ))
    }
}

/// Depthwise convolution: `x [N, C, H, W]`, `w [C, 1, k, k]`, symmetric padding. Same result as
/// `Tensor::conv2d` with `groups = C`, with a fast backward.
pub fn depthwise_conv2d(x: &Tensor, w: &Tensor, padding: usize, stride: usize) -> Result<Tensor> {
    let (n, c, h, wd) = x.dims4()?;
    let (o, one, k, k2) = w.dims4()?;
    if o != c || one != 1 || k != k2 {
        candle_core::bail!(
            "depthwise conv: input has {c} channels, kernel is {o}×{one}×{k}×{k2} (expected {c}×1×k×k)"
        );
    }
    if !x.device().is_cpu() {
        return x.conv2d(w, padding, stride, 1, c);
    }
    let p = Patches {
        batch: n,
        channels: c,
        height: h,
        width: wd,
        kernel: k,
        stride,
        padding,
    };
    x.contiguous()?.apply_op2(&w.contiguous()?, Depthwise(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nets::ops::tests::{max_diff, random};
    use candle_core::{Device, Var};

    /// Forward and both gradients agree with candle's grouped conv2d on random shapes.
    #[test]
    fn matches_candle_grouped_conv_forward_and_backward() {
        let cases = [
            (2, 3, 9, 7, 3, 1),
            (1, 5, 8, 8, 3, 2),
            (3, 4, 6, 10, 5, 2),
            (2, 6, 5, 5, 1, 1),
            (1, 2, 7, 6, 5, 1),
            (2, 1, 1, 1, 3, 1),
            (1, 16, 4, 6, 3, 2),
        ];
        for (i, &(n, c, h, w, k, s)) in cases.iter().enumerate() {
            let x = Var::from_tensor(&random(&[n, c, h, w], i as u64)).unwrap();
            let wt = Var::from_tensor(&random(&[c, 1, k, k], 100 + i as u64)).unwrap();
            let fast = depthwise_conv2d(&x, &wt, k / 2, s).unwrap();
            let slow = x.conv2d(&wt, k / 2, s, 1, c).unwrap();
            assert_eq!(fast.dims(), slow.dims(), "case {i}");
            assert!(max_diff(&fast, &slow) < 1e-4, "case {i}: forward differs");
            let probe = random(fast.dims(), 200 + i as u64);
            let gf = (fast * &probe).unwrap().sum_all().unwrap();
            let gs = (slow * &probe).unwrap().sum_all().unwrap();
            let (gf, gs) = (gf.backward().unwrap(), gs.backward().unwrap());
            for v in [x.as_tensor(), wt.as_tensor()] {
                let d = max_diff(gf.get(v).unwrap(), gs.get(v).unwrap());
                assert!(d < 1e-3, "case {i}: gradient differs by {d}");
            }
        }
    }

    /// Central finite differences for the input and the weights, including a 3×4 map with stride
    /// 2, where candle's grouped conv2d backward returns an input gradient of the wrong shape.
    #[test]
    fn gradient_matches_finite_differences() {
        for (h, w_, k, s) in [
            (4usize, 5usize, 3usize, 2usize),
            (3, 3, 5, 1),
            (2, 3, 1, 1),
            (3, 4, 3, 2),
        ] {
            let x0 = random(&[2, 3, h, w_], 17);
            let w0 = random(&[3, 1, k, k], 18);
            let loss = |x: &Tensor, w: &Tensor| {
                depthwise_conv2d(x, w, k / 2, s)
                    .unwrap()
                    .sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
            };
            let (x, w) = (
                Var::from_tensor(&x0).unwrap(),
                Var::from_tensor(&w0).unwrap(),
            );
            let grads = loss(&x, &w).backward().unwrap();
            for (which, t0) in [(0, &x0), (1, &w0)] {
                let var = if which == 0 {
                    x.as_tensor()
                } else {
                    w.as_tensor()
                };
                let analytic = grads.get(var).unwrap().flatten_all().unwrap();
                let analytic = analytic.to_vec1::<f32>().unwrap();
                let base = t0.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let eval = |v: Vec<f32>| {
                    let t = Tensor::from_vec(v, t0.dims(), &Device::Cpu).unwrap();
                    let l = if which == 0 {
                        loss(&t, &w0)
                    } else {
                        loss(&x0, &t)
                    };
                    l.to_scalar::<f32>().unwrap() as f64
                };
                let eps = 1e-2f32;
                for i in 0..base.len() {
                    let (mut a, mut b) = (base.clone(), base.clone());
                    a[i] += eps;
                    b[i] -= eps;
                    let numeric = (eval(a) - eval(b)) / (2.0 * eps as f64);
                    assert!(
                        (numeric - analytic[i] as f64).abs() < 2e-2 * numeric.abs().max(1.0),
                        "{h}x{w_} k{k} s{s} {}[{i}]: {numeric} vs {}",
                        ["x", "w"][which],
                        analytic[i]
                    );
                }
            }
        }
    }
}
