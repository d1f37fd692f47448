//! Bilinear upsampling by an integer factor with half-pixel centres and clamped edges (PyTorch's
//! `align_corners=False`, the int8 engine's `UpsampleMode::Bilinear`), with a backward. candle's
//! `upsample_bilinear2d` has no backward. [`BilinearUp`] and [`BilinearDown`] are each other's
//! adjoint, and each is the other's backward.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{contiguous_f32, dims};

/// Source indices and the weight of the second one for output coordinate `o` of `n · factor`:
/// the source coordinate is `(o + ½) / f − ½`, clamped to the edges (the engine's integer rule).
pub fn taps(o: usize, factor: usize, n: usize) -> (usize, usize, f32) {
    let den = 2 * factor as isize;
    let num = 2 * o as isize + 1 - factor as isize;
    if num < 0 {
        return (0, 0, 0.0);
    }
    let i0 = (num / den) as usize;
    let frac = (num % den) as f32 / den as f32;
    (i0.min(n - 1), (i0 + 1).min(n - 1), frac)
}

/// `[N, C, H, W]` → `[N, C, H·f, W·f]`.
#[derive(Clone, Copy, Debug)]
pub struct BilinearUp {
    pub factor: usize,
}

/// The adjoint of [`BilinearUp`]: `[N, C, H·f, W·f]` → `[N, C, H, W]`, each output gradient
/// spread back over the four source pixels with the forward's weights.
#[derive(Clone, Copy, Debug)]
pub struct BilinearDown {
    pub factor: usize,
    pub height: usize,
    pub width: usize,
}

/// Per output column: the two source columns and the second one's weight.
fn table(n_out: usize, factor: usize, n_in: usize) -> Vec<(usize, usize, f32)> {
    (0..n_out).map(|o| taps(o, factor, n_in)).collect()
}

impl CustomOp1 for BilinearUp {
    fn name(&self) -> &'static str {
        "depthling-bilinear-up"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let f = self.factor;
        let x = contiguous_f32(storage, layout, self.name())?;
        let (n, c, h, w) = dims(layout, self.name())?;
        if f == 0 || h == 0 || w == 0 {
            candle_core::bail!("bilinear upsample: factor {f} of a {h}×{w} map");
        }
        let (ho, wo) = (h * f, w * f);
        let (rows, cols) = (table(ho, f, h), table(wo, f, w));
        let mut out = vec![0f32; n * c * ho * wo];
        out.par_chunks_mut(ho * wo)
            .enumerate()
            .for_each(|(nc, dst)| {
                let src = &x[nc * h * w..(nc + 1) * h * w];
                for (oy, &(y0, y1, fy)) in rows.iter().enumerate() {
                    let (r0, r1) = (&src[y0 * w..(y0 + 1) * w], &src[y1 * w..(y1 + 1) * w]);
                    for (d, &(x0, x1, fx)) in dst[oy * wo..(oy + 1) * wo].iter_mut().zip(&cols) {
                        let top = r0[x0] + fx * (r0[x1] - r0[x0]);
                        let bottom = r1[x0] + fx * (r1[x1] - r1[x0]);
                        *d = top + fy * (bottom - top);
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((n, c, ho, wo))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (_, _, height, width) = arg.dims4()?;
        Ok(Some(grad.contiguous()?.apply_op1(BilinearDown {
            factor: self.factor,
            height,
            width,
        })?))
    }
}

impl CustomOp1 for BilinearDown {
    fn name(&self) -> &'static str {
        "depthling-bilinear-down"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (f, h, w) = (self.factor, self.height, self.width);
        let g = contiguous_f32(storage, layout, self.name())?;
        let (n, c, ho, wo) = dims(layout, self.name())?;
        if ho != h * f || wo != w * f {
            candle_core::bail!("bilinear adjoint: {ho}×{wo} is not {h}×{w} times {f}");
        }
        let (rows, cols) = (table(ho, f, h), table(wo, f, w));
        let mut out = vec![0f32; n * c * h * w];
        // separable: each gradient row is first folded onto the w source columns, then that row
        // is spread over the two source rows (2 multiply-adds per output pixel instead of 8
        // scattered ones)
        out.par_chunks_mut(h * w).enumerate().for_each(|(nc, dst)| {
            let src = &g[nc * ho * wo..(nc + 1) * ho * wo];
            let mut folded = vec![0f32; w];
            for (oy, &(y0, y1, fy)) in rows.iter().enumerate() {
                folded.fill(0.0);
                for (&v, &(x0, x1, fx)) in src[oy * wo..(oy + 1) * wo].iter().zip(&cols) {
                    folded[x0] += v * (1.0 - fx);
                    folded[x1] += v * fx;
                }
                for (d, &r) in dst[y0 * w..(y0 + 1) * w].iter_mut().zip(&folded) {
                    *d += r * (1.0 - fy);
                }
                for (d, &r) in dst[y1 * w..(y1 + 1) * w].iter_mut().zip(&folded) {
                    *d += r * fy;
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((n, c, h, w))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1(BilinearUp {
            factor: self.factor,
        })?))
    }
}

/// Bilinear upsampling of `x [N, C, H, W]` by `factor` (see [`BilinearUp`]).
pub fn upsample_bilinear(x: &Tensor, factor: usize) -> Result<Tensor> {
    if !x.device().is_cpu() {
        candle_core::bail!(
            "bilinear upsampling with a backward runs on the CPU only; train this architecture with --device cpu"
        );
    }
    x.contiguous()?.apply_op1(BilinearUp { factor })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nets::ops::tests::{max_diff, random};
    use candle_core::{Device, Var};

    /// Matches candle's own forward (`align_corners = false`) away from candle's edge rule, and
    /// matches the int8 engine's rule exactly: hand-computed 1-D case.
    #[test]
    fn forward_matches_hand_computed_values() {
        let x = Tensor::from_vec(vec![0f32, 4.0, 8.0], (1, 1, 1, 3), &Device::Cpu).unwrap();
        let y = upsample_bilinear(&x, 2).unwrap();
        let y = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // one source row, so both output rows are equal; columns: src = (o + ½)/2 − ½ =
        // −¼ (clamped to 0), ¼, ¾, 1¼, 1¾, 2¼ (clamped to 2)
        let row = [0.0, 1.0, 3.0, 5.0, 7.0, 8.0];
        assert_eq!(y, [row, row].concat());
        let x = random(&[2, 3, 5, 4], 3);
        let ours = upsample_bilinear(&x, 2).unwrap();
        let theirs = x.upsample_bilinear2d(10, 8, false).unwrap();
        let d = max_diff(&ours, &theirs);
        assert!(d < 1e-5, "differs from candle's bilinear by {d}");
    }

    /// ⟨up(x), y⟩ = ⟨x, down(y)⟩, and the gradient matches finite differences.
    #[test]
    fn backward_is_the_adjoint_and_matches_finite_differences() {
        for (h, w, f) in [(3usize, 4usize, 2usize), (2, 2, 4), (1, 3, 8), (4, 1, 16)] {
            let x0 = random(&[2, 2, h, w], 5);
            let y = random(&[2, 2, h * f, w * f], 6);
            let x = Var::from_tensor(&x0).unwrap();
            let up = upsample_bilinear(&x, f).unwrap();
            let lhs = (&up * &y).unwrap().sum_all().unwrap();
            let grads = lhs.backward().unwrap();
            let down = y
                .apply_op1(BilinearDown {
                    factor: f,
                    height: h,
                    width: w,
                })
                .unwrap();
            let rhs = (&x0 * &down).unwrap().sum_all().unwrap();
            let (l, r) = (
                lhs.to_scalar::<f32>().unwrap(),
                rhs.to_scalar::<f32>().unwrap(),
            );
            assert!((l - r).abs() < 1e-3 * l.abs().max(1.0), "{l} vs {r}");
            // d⟨up(x), y⟩/dx = down(y); check it numerically on a few entries too
            let g = grads.get(x.as_tensor()).unwrap();
            let g = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let base = x0.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let eval = |v: Vec<f32>| {
                let t = Tensor::from_vec(v, (2, 2, h, w), &Device::Cpu).unwrap();
                let u = upsample_bilinear(&t, f).unwrap().sqr().unwrap();
                u.sum_all().unwrap().to_scalar::<f32>().unwrap() as f64
            };
            let x2 = Var::from_tensor(&x0).unwrap();
            let sq = upsample_bilinear(&x2, f).unwrap().sqr().unwrap();
            let g2 = sq.sum_all().unwrap().backward().unwrap();
            let g2 = g2.get(x2.as_tensor()).unwrap().flatten_all().unwrap();
            let g2 = g2.to_vec1::<f32>().unwrap();
            assert_eq!(g.len(), base.len());
            for i in 0..base.len() {
                let (mut a, mut b) = (base.clone(), base.clone());
                a[i] += 1e-2;
                b[i] -= 1e-2;
                let numeric = (eval(a) - eval(b)) / 2e-2;
                assert!(
                    (numeric - g2[i] as f64).abs() < 2e-2 * numeric.abs().max(1.0),
                    "{h}x{w} ×{f} [{i}]: {numeric} vs {}",
                    g2[i]
                );
            }
        }
    }
}
