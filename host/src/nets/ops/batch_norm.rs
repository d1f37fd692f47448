//! Training-mode BatchNorm fused with its activation (none, ReLU, ReLU6), with a backward.
//! candle-nn's `BatchNorm::forward_train` is a chain of about ten tensor ops (a transposed copy,
//! two means, a subtraction, a square, a division, a scale, a shift, another transpose), each
//! allocating a map the size of the input, and each with its own backward; the activation adds
//! more. Here the forward is one pass for the batch statistics and one for the output, and the
//! backward one pass for the per-channel sums and one for the input gradient.
//!
//! The op takes `x [N, C, H, W]` and `params [4, C]` = (batch mean, batch variance, γ, β); the
//! statistics rows are the batch's own (detached: the backward differentiates through them
//! analytically), γ and β receive their gradients through the rows they came from.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{contiguous_f32, lanes};

/// The activation after the normalization.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BnAct {
    None,
    Relu,
    Relu6,
}

impl BnAct {
    #[inline]
    fn apply(self, z: f32) -> f32 {
        match self {
            BnAct::None => z,
            BnAct::Relu => z.max(0.0),
            BnAct::Relu6 => z.clamp(0.0, 6.0),
        }
    }
    /// The derivative at pre-activation `z` (0 or 1; at the kinks, as candle's clamp: 1 inside
    /// the closed range for ReLU6, 0 at 0 for ReLU).
    #[inline]
    fn passes(self, z: f32) -> bool {
        match self {
            BnAct::None => true,
            BnAct::Relu => z > 0.0,
            BnAct::Relu6 => (0.0..=6.0).contains(&z),
        }
    }
}

/// `$body` with `$a` a constant equal to `act`, one copy per activation, so that the loops in
/// `$body` are plain selects the compiler vectorises.
macro_rules! for_act {
    ($act:expr, $a:ident => $body:expr) => {
        match $act {
            BnAct::None => {
                const $a: BnAct = BnAct::None;
                $body
            }
            BnAct::Relu => {
                const $a: BnAct = BnAct::Relu;
                $body
            }
            BnAct::Relu6 => {
                const $a: BnAct = BnAct::Relu6;
                $body
            }
        }
    };
}

/// `(N, C, H·W)` of a 4-d layout.
fn n_c_plane(layout: &Layout, op: &str) -> Result<(usize, usize, usize)> {
    let (n, c, h, w) = super::dims(layout, op)?;
    Ok((n, c, h * w))
}

/// Per-channel batch mean and biased variance of `[N, C, H, W]` → `[2, C]` (two-pass; each
/// plane summed in f32 lanes, the planes in f64).
struct ChannelStats;

impl CustomOp1 for ChannelStats {
    fn name(&self) -> &'static str {
        "depthling-bn-stats"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, self.name())?;
        let (n, c, plane) = n_c_plane(layout, self.name())?;
        let m = (n * plane).max(1) as f64;
        let stats: Vec<(f32, f32)> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let planes =
                    || (0..n).map(move |i| &x[(i * c + ch) * plane..(i * c + ch + 1) * plane]);
                let sum: f64 = planes()
                    .map(|p| lanes(p, p, |v, _| (v, 0.0)).0 as f64)
                    .sum();
                let mean = (sum / m) as f32;
                let sq: f64 = planes()
                    .map(|p| lanes(p, p, |v, _| ((v - mean) * (v - mean), 0.0)).0 as f64)
                    .sum();
                (mean, (sq / m) as f32)
            })
            .collect();
        let mut out: Vec<f32> = stats.iter().map(|s| s.0).collect();
        out.extend(stats.iter().map(|s| s.1));
        Ok((CpuStorage::F32(out), Shape::from((2, c))))
    }
}

/// y = act(γ·(x − μ)/√(σ² + ε) + β) from `x` and `params [4, C]`.
#[derive(Clone, Copy, Debug)]
struct Normalize {
    eps: f32,
    act: BnAct,
}

/// Per-channel scale and shift `(a, b)` with y = act(a·x + b), and 1/√(σ² + ε).
fn coefficients(p: &[f32], c: usize, eps: f32) -> Vec<(f32, f32, f32)> {
    (0..c)
        .map(|ch| {
            let (mean, var, gamma, beta) = (p[ch], p[c + ch], p[2 * c + ch], p[3 * c + ch]);
            let inv = 1.0 / (var + eps).sqrt();
            let a = gamma * inv;
            (a, beta - mean * a, inv)
        })
        .collect()
}

fn params_of<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    c: usize,
    op: &str,
) -> Result<&'a [f32]> {
    let p = contiguous_f32(storage, layout, op)?;
    if p.len() != 4 * c {
        candle_core::bail!("{op}: parameters hold {} values, expected 4 × {c}", p.len());
    }
    Ok(p)
}

impl CustomOp2 for Normalize {
    fn name(&self) -> &'static str {
        "depthling-bn-act"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, self.name())?;
        let (_, c, plane) = n_c_plane(l1, self.name())?;
        let coef = coefficients(params_of(s2, l2, c, self.name())?, c, self.eps);
        let act = self.act;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(plane.max(1))
            .zip(x.par_chunks(plane.max(1)))
            .enumerate()
            .for_each(|(nc, (dst, src))| {
                let (a, b, _) = coef[nc % c];
                for_act!(act, A => {
                    for (d, &v) in dst.iter_mut().zip(src) {
                        *d = A.apply(a * v + b);
                    }
                })
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        params: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, c, h, w) = x.dims4()?;
        let len = n * c * h * w;
        let both = x.contiguous()?.apply_op3_no_bwd(
            &params.contiguous()?,
            &grad.contiguous()?,
            &Backward {
                eps: self.eps,
                act: self.act,
            },
        )?;
        let dx = both.narrow(0, 0, len)?.reshape((n, c, h, w))?;
        let daffine = both.narrow(0, len, 2 * c)?.reshape((2, c))?;
        // the statistics rows are detached: no gradient flows to them
        let dparams = Tensor::cat(&[&daffine.zeros_like()?, &daffine], 0)?;
        Ok((Some(dx), Some(dparams)))
    }
}

/// The backward of [`Normalize`] from `x`, `params` and `dy`: `dx` (flattened) followed by dγ and
/// dβ, in one vector. With g = dy·act′, x̂ = (x − μ)/√(σ² + ε) and M = N·H·W:
/// dβ = Σg, dγ = Σg·x̂, dx = γ/√(σ² + ε) · (g − dβ/M − x̂·dγ/M).
struct Backward {
    eps: f32,
    act: BnAct,
}

impl CustomOp3 for Backward {
    fn name(&self) -> &'static str {
        "depthling-bn-act-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, self.name())?;
        let (n, c, plane) = n_c_plane(l1, self.name())?;
        let p = params_of(s2, l2, c, self.name())?;
        let dy = contiguous_f32(s3, l3, self.name())?;
        if dy.len() != x.len() {
            candle_core::bail!("{}: gradient and input differ in size", self.name());
        }
        let coef = coefficients(p, c, self.eps);
        let act = self.act;
        let mean = &p[..c];
        // per channel: Σg and Σg·x̂
        let sums: Vec<(f64, f64)> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let (a, b, inv) = coef[ch];
                let (mut sg, mut sgx) = (0f64, 0f64);
                for i in 0..n {
                    let at = (i * c + ch) * plane;
                    let (x, dy) = (&x[at..at + plane], &dy[at..at + plane]);
                    let mu = mean[ch];
                    let (g, gx) = for_act!(act, A => lanes(x, dy, |v, d| {
                        let g = if A.passes(a * v + b) { d } else { 0.0 };
                        (g, g * (v - mu) * inv)
                    }));
                    sg += g as f64;
                    sgx += gx as f64;
                }
                (sg, sgx)
            })
            .collect();
        let m = (n * plane).max(1) as f64;
        let len = x.len();
        let mut out = vec![0f32; len + 2 * c];
        let (dx, daffine) = out.split_at_mut(len);
        dx.par_chunks_mut(plane.max(1))
            .enumerate()
            .for_each(|(nc, dst)| {
                let ch = nc % c;
                let (a, b, inv) = coef[ch];
                let (sg, sgx) = sums[ch];
                let (mg, mgx) = ((sg / m) as f32, (sgx / m) as f32);
                let (at, mu) = (nc * plane, mean[ch]);
                let (x, dy) = (&x[at..at + plane], &dy[at..at + plane]);
                for_act!(act, A => {
                    for ((d, &v), &g) in dst.iter_mut().zip(x).zip(dy) {
                        let g = if A.passes(a * v + b) { g } else { 0.0 };
                        *d = a * (g - mg - (v - mu) * inv * mgx);
                    }
                })
            });
        for (ch, &(sg, sgx)) in sums.iter().enumerate() {
            daffine[ch] = sgx as f32; // dγ
            daffine[c + ch] = sg as f32; // dβ
        }
        Ok((CpuStorage::F32(out), Shape::from(len + 2 * c)))
    }
}

/// Training-mode BatchNorm of `x [N, C, H, W]` with `gamma`, `beta` (`[C]`) followed by `act`;
/// returns the output and the batch's mean and biased variance (`[C]` each, for the running
/// statistics).
pub fn batch_norm_act(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    act: BnAct,
) -> Result<(Tensor, Tensor, Tensor)> {
    let x = x.contiguous()?;
    let stats = x.apply_op1_no_bwd(&ChannelStats)?;
    let params = Tensor::cat(&[&stats, &Tensor::stack(&[gamma, beta], 0)?], 0)?;
    let y = x.apply_op2(
        &params,
        Normalize {
            eps: eps as f32,
            act,
        },
    )?;
    Ok((y, stats.get(0)?, stats.get(1)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nets::ops::tests::max_diff;
    use candle_core::{Device, Var};

    /// candle's composition of the same computation (what `forward_train` + activation do).
    fn reference(x: &Tensor, gamma: &Tensor, beta: &Tensor, act: BnAct) -> Tensor {
        let mean = x
            .mean_keepdim(0)
            .unwrap()
            .mean_keepdim(2)
            .unwrap()
            .mean_keepdim(3)
            .unwrap();
        let centred = x.broadcast_sub(&mean).unwrap();
        let var = centred
            .sqr()
            .unwrap()
            .mean_keepdim(0)
            .unwrap()
            .mean_keepdim(2)
            .unwrap()
            .mean_keepdim(3)
            .unwrap();
        let z = centred
            .broadcast_div(&(var + 1e-5).unwrap().sqrt().unwrap())
            .unwrap()
            .broadcast_mul(&gamma.reshape((1, (), 1, 1)).unwrap())
            .unwrap()
            .broadcast_add(&beta.reshape((1, (), 1, 1)).unwrap())
            .unwrap();
        match act {
            BnAct::None => z,
            BnAct::Relu => z.relu().unwrap(),
            BnAct::Relu6 => z.clamp(0f32, 6f32).unwrap(),
        }
    }

    /// Output, statistics and all three gradients against candle's composition on random
    /// shapes, for each activation.
    #[test]
    fn matches_candles_composition() {
        let dev = Device::Cpu;
        let mut rng = crate::rng::Rng::new(4);
        // planes shorter than, equal to and longer than the eight summing lanes, with a tail
        let shapes = [
            (2, 3, 4, 5),
            (1, 7, 3, 3),
            (4, 2, 6, 1),
            (3, 5, 2, 8),
            (2, 4, 7, 9),
        ];
        for (i, &(n, c, h, w)) in shapes.iter().enumerate() {
            let act = [
                BnAct::None,
                BnAct::Relu,
                BnAct::Relu6,
                BnAct::Relu6,
                BnAct::Relu,
            ][i];
            let mut rand = |len: usize, scale: f32, shift: f32| {
                (0..len)
                    .map(|_| rng.normal() * scale + shift)
                    .collect::<Vec<f32>>()
            };
            let x = Var::from_vec(rand(n * c * h * w, 2.0, 0.5), (n, c, h, w), &dev).unwrap();
            let gamma = Var::from_vec(rand(c, 1.5, 1.0), c, &dev).unwrap();
            let beta = Var::from_vec(rand(c, 2.0, 1.0), c, &dev).unwrap();
            let up = Tensor::from_vec(rand(n * c * h * w, 1.0, 0.0), (n, c, h, w), &dev).unwrap();
            let (y, mean, var) = batch_norm_act(
                x.as_tensor(),
                gamma.as_tensor(),
                beta.as_tensor(),
                1e-5,
                act,
            )
            .unwrap();
            let r = reference(x.as_tensor(), gamma.as_tensor(), beta.as_tensor(), act);
            assert!(
                max_diff(&y, &r) < 1e-4,
                "forward {act:?}: {}",
                max_diff(&y, &r)
            );
            let m = x
                .as_tensor()
                .mean_keepdim(0)
                .unwrap()
                .mean_keepdim(2)
                .unwrap();
            let m = m.mean_keepdim(3).unwrap().flatten_all().unwrap();
            assert!(max_diff(&mean, &m) < 1e-5);
            assert!(var.to_vec1::<f32>().unwrap().iter().all(|&v| v > 0.0));
            let g1 = (y * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (r * &up).unwrap().sum_all().unwrap().backward().unwrap();
            for (name, v) in [("x", &x), ("gamma", &gamma), ("beta", &beta)] {
                let (a, b) = (
                    g1.get(v.as_tensor()).unwrap(),
                    g2.get(v.as_tensor()).unwrap(),
                );
                let d = max_diff(a, b);
                let scale = b
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(
                    d <= 1e-4 * scale.max(1.0),
                    "d{name} {act:?} {n}x{c}x{h}x{w}: {d}"
                );
            }
        }
    }

    /// dx against central finite differences of a weighted sum of the output.
    #[test]
    fn input_gradient_matches_finite_differences() {
        let dev = Device::Cpu;
        let mut rng = crate::rng::Rng::new(9);
        let (n, c, h, w) = (2, 2, 3, 2);
        let xs: Vec<f32> = (0..n * c * h * w).map(|_| rng.normal()).collect();
        let up: Vec<f32> = (0..n * c * h * w).map(|_| rng.normal()).collect();
        let gamma = Tensor::new(&[1.3f32, 0.7], &dev).unwrap();
        let beta = Tensor::new(&[0.2f32, 0.9], &dev).unwrap();
        let up = Tensor::from_vec(up, (n, c, h, w), &dev).unwrap();
        let f = |v: &[f32]| -> f64 {
            let x = Tensor::from_vec(v.to_vec(), (n, c, h, w), &dev).unwrap();
            let (y, _, _) = batch_norm_act(&x, &gamma, &beta, 1e-5, BnAct::Relu).unwrap();
            (y * &up)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64
        };
        let x = Var::from_vec(xs.clone(), (n, c, h, w), &dev).unwrap();
        let (y, _, _) = batch_norm_act(x.as_tensor(), &gamma, &beta, 1e-5, BnAct::Relu).unwrap();
        let g = (y * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let dx = g
            .get(x.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let e = 1e-2f32;
        for i in 0..xs.len() {
            let (mut hi, mut lo) = (xs.clone(), xs.clone());
            hi[i] += e;
            lo[i] -= e;
            let fd = (f(&hi) - f(&lo)) / (2.0 * e as f64);
            assert!(
                (fd - dx[i] as f64).abs() < 2e-2,
                "x[{i}]: fd {fd} vs {}",
                dx[i]
            );
        }
    }
}
