//! Fast training kernels as candle custom ops. candle's CPU convolution backward goes through
//! `conv_transpose2d`, a plain loop; here a convolution is `im2col` followed by one large gemm
//! (candle's matmul), and the backward pass is two gemms plus `col2im`, the exact adjoint of
//! `im2col`. Both ops are each other's backward, so gradients of any order compose.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

pub mod batch_norm;
pub mod bilinear;
pub mod depthwise;

pub use batch_norm::{batch_norm_act, BnAct};
pub use bilinear::upsample_bilinear;
pub use depthwise::depthwise_conv2d;

/// Geometry of one convolution's patch extraction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Patches {
    pub batch: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl Patches {
    pub fn out_height(&self) -> usize {
        (self.height + 2 * self.padding - self.kernel) / self.stride + 1
    }
    pub fn out_width(&self) -> usize {
        (self.width + 2 * self.padding - self.kernel) / self.stride + 1
    }
    /// Output positions per image.
    fn positions(&self) -> usize {
        self.out_height() * self.out_width()
    }
    /// Rows of the column matrix: `C·k·k`.
    fn rows(&self) -> usize {
        self.channels * self.kernel * self.kernel
    }
    /// Output indices `o` (of `n_out`) whose input coordinate `o·s − p + tap` lies in `0..n_in`.
    fn valid(&self, tap: usize, n_in: usize, n_out: usize) -> std::ops::Range<usize> {
        let s = self.stride;
        // o·s + tap ≥ p  and  o·s + tap − p ≤ n_in − 1
        let lo = self.padding.saturating_sub(tap).div_ceil(s);
        let hi = if n_in + self.padding > tap {
            (n_in + self.padding - tap - 1) / s + 1
        } else {
            0
        };
        lo.min(n_out)..hi.min(n_out).max(lo.min(n_out))
    }

    /// Visits, for kernel tap `(ky, kx)`, every output row `oy` with its valid column range and
    /// the input offset of that range's first element: `f(oy, ox_range, first_input_offset)`.
    #[inline]
    fn for_rows(
        &self,
        ky: usize,
        kx: usize,
        mut f: impl FnMut(usize, std::ops::Range<usize>, usize),
    ) {
        let (ho, wo) = (self.out_height(), self.out_width());
        let cols = self.valid(kx, self.width, wo);
        if cols.is_empty() {
            return;
        }
        for oy in self.valid(ky, self.height, ho) {
            let y = oy * self.stride + ky - self.padding;
            let x0 = cols.start * self.stride + kx - self.padding;
            f(oy, cols.clone(), y * self.width + x0);
        }
    }
}

/// `(N, C, H, W)` of a 4-d layout.
fn dims(layout: &Layout, op: &str) -> Result<(usize, usize, usize, usize)> {
    match layout.dims() {
        &[n, c, h, w] => Ok((n, c, h, w)),
        d => candle_core::bail!("{op}: expected a 4-d tensor, got {d:?}"),
    }
}

fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
    let data = match storage {
        CpuStorage::F32(v) => v.as_slice(),
        _ => candle_core::bail!("{op}: only f32 is supported"),
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

/// `[N, C, H, W]` → `[C·k·k, N·Ho·Wo]` (zero padding).
#[derive(Clone, Copy, Debug)]
pub struct Im2Col(pub Patches);

/// `[C·k·k, N·Ho·Wo]` → `[N, C, H, W]`, summing overlapping patches: the adjoint of [`Im2Col`].
#[derive(Clone, Copy, Debug)]
pub struct Col2Im(pub Patches);

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "depthling-im2col"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let p = self.0;
        let x = contiguous_f32(storage, layout, self.name())?;
        if x.len() != p.batch * p.channels * p.height * p.width {
            candle_core::bail!("im2col: input has {} values, expected {:?}", x.len(), p);
        }
        let (l, k, plane) = (p.positions(), p.kernel, p.height * p.width);
        let wo = p.out_width();
        let mut cols = vec![0f32; p.rows() * p.batch * l];
        cols.par_chunks_mut(p.batch * l)
            .enumerate()
            .for_each(|(r, row)| {
                let (c, ky, kx) = (r / (k * k), (r / k) % k, r % k);
                for n in 0..p.batch {
                    let src = &x[(n * p.channels + c) * plane..(n * p.channels + c + 1) * plane];
                    let dst = &mut row[n * l..(n + 1) * l];
                    p.for_rows(ky, kx, |oy, cols, first| {
                        let out = &mut dst[oy * wo + cols.start..oy * wo + cols.end];
                        if p.stride == 1 {
                            out.copy_from_slice(&src[first..first + out.len()]);
                        } else {
                            for (j, d) in out.iter_mut().enumerate() {
                                *d = src[first + j * p.stride];
                            }
                        }
                    });
                }
            });
        Ok((CpuStorage::F32(cols), Shape::from((p.rows(), p.batch * l))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_res.contiguous()?.apply_op1(Col2Im(self.0))?))
    }
}

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "depthling-col2im"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let p = self.0;
        let cols = contiguous_f32(storage, layout, self.name())?;
        let (l, k, plane) = (p.positions(), p.kernel, p.height * p.width);
        if cols.len() != p.rows() * p.batch * l {
            candle_core::bail!("col2im: input has {} values, expected {:?}", cols.len(), p);
        }
        let wo = p.out_width();
        let mut x = vec![0f32; p.batch * p.channels * plane];
        // one (n, c) plane per task: disjoint writes
        x.par_chunks_mut(plane).enumerate().for_each(|(nc, dst)| {
            let (n, c) = (nc / p.channels, nc % p.channels);
            for ky in 0..k {
                for kx in 0..k {
                    let r = (c * k + ky) * k + kx;
                    let src = &cols[r * p.batch * l + n * l..r * p.batch * l + (n + 1) * l];
                    p.for_rows(ky, kx, |oy, range, first| {
                        let from = &src[oy * wo + range.start..oy * wo + range.end];
                        for (j, &v) in from.iter().enumerate() {
                            dst[first + j * p.stride] += v;
                        }
                    });
                }
            }
        });
        Ok((
            CpuStorage::F32(x),
            Shape::from((p.batch, p.channels, p.height, p.width)),
        ))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_res.contiguous()?.apply_op1(Im2Col(self.0))?))
    }
}

/// Dense 2-D convolution (`groups = 1`) as im2col + gemm: `x` `[N, C, H, W]`, `w` `[O, C, k, k]`,
/// symmetric padding. Same result as `Tensor::conv2d`, with a fast backward.
pub fn conv2d(x: &Tensor, w: &Tensor, padding: usize, stride: usize) -> Result<Tensor> {
    let (n, c, h, wd) = x.dims4()?;
    let (o, ci, k, k2) = w.dims4()?;
    if ci != c || k != k2 {
        candle_core::bail!("conv2d: input has {c} channels, kernel expects {ci} (kernel {k}×{k2})");
    }
    if !x.device().is_cpu() {
        // the custom op is CPU-only; elsewhere candle's own kernels are used
        return x.conv2d(w, padding, stride, 1, 1);
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
    let cols = x.contiguous()?.apply_op1(Im2Col(p))?;
    let y = w.reshape((o, c * k * k))?.matmul(&cols)?; // [O, N·L]
    y.reshape((o, n, p.out_height(), p.out_width()))?
        .transpose(0, 1)?
        .contiguous()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_core::{Device, Var};

    pub(crate) fn random(shape: &[usize], seed: u64) -> Tensor {
        let mut rng = crate::rng::Rng::new(seed);
        let n: usize = shape.iter().product();
        Tensor::from_vec(
            (0..n).map(|_| rng.normal()).collect::<Vec<f32>>(),
            shape,
            &Device::Cpu,
        )
        .unwrap()
    }

    pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Forward and both gradients agree with candle's own conv2d on random shapes.
    #[test]
    fn matches_candle_conv2d_forward_and_backward() {
        let cases = [
            (2, 3, 9, 7, 4, 3, 1),
            (1, 5, 8, 8, 6, 3, 2),
            (3, 4, 6, 10, 2, 5, 2),
            (2, 6, 5, 5, 3, 1, 1),
            (1, 2, 7, 6, 3, 5, 1),
            (2, 1, 1, 1, 2, 3, 1),
        ];
        for (i, &(n, c, h, w, o, k, s)) in cases.iter().enumerate() {
            let x = Var::from_tensor(&random(&[n, c, h, w], i as u64)).unwrap();
            let wt = Var::from_tensor(&random(&[o, c, k, k], 100 + i as u64)).unwrap();
            let probe = random(
                &[
                    n,
                    o,
                    (h + 2 * (k / 2) - k) / s + 1,
                    (w + 2 * (k / 2) - k) / s + 1,
                ],
                200 + i as u64,
            );
            let fast = conv2d(&x, &wt, k / 2, s).unwrap();
            let slow = x.conv2d(&wt, k / 2, s, 1, 1).unwrap();
            assert_eq!(fast.dims(), slow.dims());
            assert!(max_diff(&fast, &slow) < 1e-4, "case {i}: forward differs");
            let gf = (fast * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let gs = (slow * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for v in [x.as_tensor(), wt.as_tensor()] {
                let d = max_diff(gf.get(v).unwrap(), gs.get(v).unwrap());
                assert!(d < 1e-3, "case {i}: gradient differs by {d}");
            }
        }
    }

    /// `col2im` is the adjoint of `im2col`: ⟨im2col(x), y⟩ = ⟨x, col2im(y)⟩.
    #[test]
    fn col2im_is_the_adjoint_of_im2col() {
        let p = Patches {
            batch: 2,
            channels: 3,
            height: 7,
            width: 5,
            kernel: 3,
            stride: 2,
            padding: 1,
        };
        let x = random(&[2, 3, 7, 5], 1);
        let cols = x.apply_op1(Im2Col(p)).unwrap();
        let y = random(cols.dims(), 2);
        let back = y.apply_op1(Col2Im(p)).unwrap();
        let lhs = (cols * &y)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let rhs = (x * back)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            (lhs - rhs).abs() < 1e-3 * lhs.abs().max(1.0),
            "{lhs} vs {rhs}"
        );
    }

    /// Central finite differences on tiny convolutions, including a 5×5 kernel with stride 2 on a
    /// 2×3 image (where candle's own conv2d backward returns a gradient of the wrong shape).
    #[test]
    fn gradient_matches_finite_differences() {
        for (h, w_, k, s) in [(4usize, 4usize, 3usize, 2usize), (2, 3, 5, 2), (3, 5, 1, 1)] {
            let x0 = random(&[1, 2, h, w_], 7);
            let w = random(&[2, 2, k, k], 8);
            let x = Var::from_tensor(&x0).unwrap();
            let g = conv2d(&x, &w, k / 2, s)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let analytic = g
                .get(x.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let base = x0.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let f = |v: &[f32]| {
                let t = Tensor::from_vec(v.to_vec(), (1, 2, h, w_), &Device::Cpu).unwrap();
                conv2d(&t, &w, k / 2, s)
                    .unwrap()
                    .sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap() as f64
            };
            let eps = 1e-2f32;
            for i in 0..base.len() {
                let (mut a, mut b) = (base.clone(), base.clone());
                a[i] += eps;
                b[i] -= eps;
                let numeric = (f(&a) - f(&b)) / (2.0 * eps as f64);
                assert!(
                    (numeric - analytic[i] as f64).abs() < 2e-2 * numeric.abs().max(1.0),
                    "{h}x{w_} k{k} s{s}, x[{i}]: {numeric} vs {}",
                    analytic[i]
                );
            }
        }
    }
}
