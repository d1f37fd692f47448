//! Depth losses (DESIGN §6), each a masked mean over valid pixels of `N×1×H×W` maps: L1, BerHu,
//! SILog, and Hu et al.'s depth + Sobel-gradient + surface-normal loss; and ADU-Depth's
//! distillation losses (spatial attention, attention-weighted feature distillation, focal-depth
//! response distillation with Laplacian uncertainty), for the `adu` method.

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

/// A depth loss, chosen with `--loss`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Loss {
    /// mean |d − g|.
    #[default]
    L1,
    /// Reverse Huber: |x| up to c = 0.2·max|x|, (x² + c²)/(2c) beyond.
    BerHu,
    /// mean |ln d − ln g|: the L1 error of the depth ratio, so near and far pixels weigh the
    /// same (the δ and AbsRel metrics are ratios too).
    LogL1,
    /// Scale-invariant log error, 10·√(mean δ² − 0.85·(mean δ)²) with δ = ln d − ln g.
    SiLog,
    /// Hu et al. (2019): mean ln(|d − g| + 0.5), the same on Sobel x/y gradients, and
    /// mean(1 − cos(n_d, n_g)) with n = (−∂x, −∂y, 1).
    Hu,
}

impl std::str::FromStr for Loss {
    type Err = crate::error::Error;

    fn from_str(s: &str) -> crate::error::Result<Loss> {
        Loss::parse(s)
    }
}

impl Loss {
    pub const NAMES: &'static str = "l1, logl1, berhu, silog, hu";

    pub fn parse(s: &str) -> Result<Loss> {
        match s {
            "l1" => Ok(Loss::L1),
            "logl1" => Ok(Loss::LogL1),
            "berhu" => Ok(Loss::BerHu),
            "silog" => Ok(Loss::SiLog),
            "hu" => Ok(Loss::Hu),
            other => Err(Error::Usage(format!(
                "unknown loss {other:?}; known: {}",
                Self::NAMES
            ))),
        }
    }

    /// The loss of `pred` against `target` over pixels where `mask` is 1.
    pub fn compute(&self, pred: &Tensor, target: &Tensor, mask: &Tensor) -> Result<Tensor> {
        match self {
            Loss::L1 => masked_mean(&(pred - target)?.abs()?, mask),
            Loss::LogL1 => masked_mean(&log_ratio(pred, target, mask)?.abs()?, mask),
            Loss::BerHu => berhu(pred, target, mask),
            Loss::SiLog => silog(pred, target, mask),
            Loss::Hu => hu(pred, target, mask),
        }
    }
}

fn masked_mean(values: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let count = mask.sum_all()?.maximum(1f32)?;
    Ok((values * mask)?.sum_all()?.div(&count)?)
}

fn berhu(pred: &Tensor, target: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let x = ((pred - target)?.abs()? * mask)?;
    let c = (x.max_all()?.detach() * 0.2)?.maximum(1e-6f32)?;
    let quad = x
        .sqr()?
        .broadcast_add(&c.sqr()?)?
        .broadcast_div(&(&c * 2.0)?)?;
    let beyond = x.broadcast_gt(&c)?;
    masked_mean(&beyond.where_cond(&quad, &x)?, mask)
}

/// ln d − ln g where `mask` is 1 and 0 elsewhere; d is clamped to ≥ 1 mm, and ln g is only taken
/// where g is valid (invalid pixels may hold 0).
fn log_ratio(pred: &Tensor, target: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let invalid = (mask.ones_like()? - mask)?;
    Ok(((pred.clamp(1e-3f32, f32::MAX)?.log()? - (target + &invalid)?.log()?)? * mask)?)
}

fn silog(pred: &Tensor, target: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let delta = log_ratio(pred, target, mask)?;
    let count = mask.sum_all()?.maximum(1f32)?;
    let mean_sq = delta.sqr()?.sum_all()?.div(&count)?;
    let mean = delta.sum_all()?.div(&count)?;
    let var = (mean_sq - (mean.sqr()? * 0.85)?)?.maximum(1e-12f32)?;
    Ok((var.sqrt()? * 10.0)?)
}

/// Sobel x and y gradients of `N×1×H×W` maps (valid convolution: `(H−2)×(W−2)`).
fn sobel(x: &Tensor) -> Result<(Tensor, Tensor)> {
    let k = |v: [f32; 9], dev: &Device| Tensor::from_vec(v.to_vec(), (1, 1, 3, 3), dev);
    let kx = k([-1., 0., 1., -2., 0., 2., -1., 0., 1.], x.device())?;
    let ky = k([-1., -2., -1., 0., 0., 0., 1., 2., 1.], x.device())?;
    Ok((
        crate::nets::ops::conv2d(x, &kx, 0, 1)?,
        crate::nets::ops::conv2d(x, &ky, 0, 1)?,
    ))
}

fn hu(pred: &Tensor, target: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let log_err =
        |a: &Tensor, b: &Tensor| -> Result<Tensor> { Ok(((a - b)?.abs()? + 0.5)?.log()?) };
    let l_depth = masked_mean(&log_err(pred, target)?, mask)?;
    // a gradient is valid where its whole 3×3 neighbourhood is
    let ones = Tensor::ones((1, 1, 3, 3), DType::F32, mask.device())?;
    let inner = crate::nets::ops::conv2d(mask, &ones, 0, 1)?
        .ge(8.5f32)?
        .to_dtype(DType::F32)?;
    let (dx, dy) = sobel(pred)?;
    let (gx, gy) = sobel(target)?;
    let l_grad =
        (masked_mean(&log_err(&dx, &gx)?, &inner)? + masked_mean(&log_err(&dy, &gy)?, &inner)?)?;
    // normals (−∂x, −∂y, 1): cos = (∂x_d ∂x_g + ∂y_d ∂y_g + 1) / (|n_d| |n_g|)
    let norm =
        |a: &Tensor, b: &Tensor| -> Result<Tensor> { Ok(((a.sqr()? + b.sqr()?)? + 1.0)?.sqrt()?) };
    let dot = (((&dx * &gx)? + (&dy * &gy)?)? + 1.0)?;
    let cos = (dot / (norm(&dx, &dy)? * norm(&gx, &gy)?)?)?;
    let l_normal = masked_mean(&(cos.ones_like()? - cos)?, &inner)?;
    Ok(((l_depth + l_grad)? + l_normal)?)
}

/// ADU-Depth's spatial attention of a teacher feature map `N×C×H×W`: the channel mean of the
/// squared activations, normalised to sum 1 over each image's positions → `N×1×H×W` (DESIGN §6).
pub fn spatial_attention(features: &Tensor) -> Result<Tensor> {
    let a = features.sqr()?.mean_keepdim(1)?;
    let total = a.sum_keepdim(2)?.sum_keepdim(3)?.maximum(1e-12f32)?;
    Ok(a.broadcast_div(&total)?)
}

/// Attention-weighted feature distillation at one tap: Σ_p M_t(p)·‖A(F_s)(p) − F_t(p)‖², with
/// `M_t` the teacher's [`spatial_attention`] (no gradient), averaged over the batch. `adapted` is
/// the student's feature after its 1×1 adapter, the same shape as `teacher`.
pub fn attention_feature_loss(adapted: &Tensor, teacher: &Tensor) -> Result<Tensor> {
    if adapted.dims() != teacher.dims() {
        return Err(Error::Runtime(format!(
            "feature distillation: student {:?} and teacher {:?} differ",
            adapted.dims(),
            teacher.dims()
        )));
    }
    let n = teacher.dim(0)? as f64;
    let m = spatial_attention(&teacher.detach())?.detach();
    let sq = (adapted - teacher.detach())?.sqr()?.sum_keepdim(1)?;
    Ok(((sq * m)?.sum_all()? / n)?)
}

/// ADU-Depth's response distillation: mean(w·(|d_s − d_t|·e^(−u) + u)) with the focal weight
/// w = (|d_s − d_t| / d_t)^γ (no gradient) and u = log b the student's Laplacian uncertainty.
/// Pixels where the teacher's depth is not positive are left out.
pub fn focal_uncertainty_loss(
    student: &Tensor,
    teacher: &Tensor,
    log_b: &Tensor,
    gamma: f64,
) -> Result<Tensor> {
    let t = teacher.detach();
    let valid = t.gt(0f32)?.to_dtype(DType::F32)?;
    let diff = (student - &t)?.abs()?;
    let rel = (diff.detach() / t.maximum(1e-6f32)?)?;
    let w = if gamma == 0.0 {
        rel.ones_like()?
    } else {
        rel.maximum(1e-12f32)?.powf(gamma)?
    };
    let per = (w * ((diff * log_b.neg()?.exp()?)? + log_b)?)?;
    masked_mean(&per, &valid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    fn t(v: &[f32], h: usize, w: usize) -> Tensor {
        Tensor::from_vec(v.to_vec(), (1, 1, h, w), &Device::Cpu).unwrap()
    }

    fn value(loss: Loss, p: &Tensor, g: &Tensor, m: &Tensor) -> f32 {
        loss.compute(p, g, m).unwrap().to_scalar::<f32>().unwrap()
    }

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() < 1e-4 * b.abs().max(1.0)
    }

    /// ADU's losses against values worked out by hand.
    #[test]
    fn adu_losses_match_hand_computed_values() {
        let dev = Device::Cpu;
        // two channels on a 1×2 map: squares (1, 9) and (1, 1) → channel means 1, 5 → M = 1/6, 5/6
        let f = Tensor::from_vec(vec![1f32, 3., 1., -1.], (1, 2, 1, 2), &dev).unwrap();
        let m = spatial_attention(&f).unwrap().flatten_all().unwrap();
        let m = m.to_vec1::<f32>().unwrap();
        assert!(close(m[0], 1.0 / 6.0) && close(m[1], 5.0 / 6.0), "{m:?}");
        // student differs by (1, 0) at p0 and (0, 2) at p1: 1/6·1 + 5/6·4 = 3.5
        let s = Tensor::from_vec(vec![2f32, 3., 1., 1.], (1, 2, 1, 2), &dev).unwrap();
        let l = attention_feature_loss(&s, &f)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(close(l, 3.5), "{l}");
        assert!(attention_feature_loss(&s.narrow(1, 0, 1).unwrap(), &f).is_err());

        // d_t = 2, 4, 0 (left out); d_s = 3, 2, 5; u = 0, ln 2, 0; γ = 2:
        // p0: |e| = 1, w = (1/2)² = 1/4, term = 1/4·(1·1 + 0) = 0.25
        // p1: |e| = 2, w = (2/4)² = 1/4, term = 1/4·(2/2 + ln 2) = 0.25 + ln2/4
        let (ds, dt) = (t(&[3., 2., 5.], 1, 3), t(&[2., 4., 0.], 1, 3));
        let u = t(&[0., 2f32.ln(), 0.], 1, 3);
        let v = Var::from_tensor(&ds).unwrap();
        let l = focal_uncertainty_loss(v.as_tensor(), &dt, &u, 2.0).unwrap();
        let want = (0.25 + 0.25 + 2f32.ln() / 4.0) / 2.0;
        assert!(close(l.to_scalar::<f32>().unwrap(), want));
        // the focal weight carries no gradient: ∂/∂d_s = w·sign(e)·e^(−u) / 2 valid pixels
        let g = l.backward().unwrap();
        let g = g.get(v.as_tensor()).unwrap().flatten_all().unwrap();
        let g = g.to_vec1::<f32>().unwrap();
        assert!(close(g[0], 0.25 * 1.0 / 2.0), "{g:?}");
        assert!(close(g[1], 0.25 * -0.5 / 2.0), "{g:?}");
        assert_eq!(g[2], 0.0);
    }

    /// Each loss against values worked out by hand (in the comments).
    #[test]
    fn losses_match_hand_computed_values() {
        let (p, g, m) = (
            t(&[1., 2., 3., 4.], 1, 4),
            t(&[1., 1., 1., 1.], 1, 4),
            t(&[1., 1., 1., 0.], 1, 4),
        );
        // |d − g| over the three valid pixels: 0, 1, 2
        assert!(close(value(Loss::L1, &p, &g, &m), 1.0));
        // c = 0.2·2 = 0.4: 0 → 0; 1 → (1 + 0.16)/0.8 = 1.45; 2 → (4 + 0.16)/0.8 = 5.2
        assert!(close(value(Loss::BerHu, &p, &g, &m), (1.45 + 5.2) / 3.0));
        // δ = ln d − ln g = 1, 2, 0 (the masked pixel has g = 0 and is ignored)
        let e = std::f32::consts::E;
        let (ps, gs) = (t(&[e, e * e, e, 9.], 1, 4), t(&[1., 1., e, 0.], 1, 4));
        let expect = 10.0 * (5.0f32 / 3.0 - 0.85).sqrt();
        assert!(close(value(Loss::SiLog, &ps, &gs, &m), expect));
        // mean |δ| = (1 + 2 + 0)/3; a too-small prediction weighs as much as a too-large one
        assert!(close(value(Loss::LogL1, &ps, &gs, &m), 1.0));
        let (half, two) = (t(&[1., 1.], 1, 2), t(&[2., 0.5], 1, 2));
        let both = t(&[1., 1.], 1, 2);
        assert!(close(value(Loss::LogL1, &half, &two, &both), 2f32.ln()));
        // Hu on a 3×3 ramp (d = x) against a flat target 0, all valid: depth term mean
        // ln(|x| + 0.5) over x = 0, 1, 2; at the centre Sobel x = 8, Sobel y = 0, so
        // grad = ln 8.5 + ln 0.5 and the normal (−8, 0, 1) against (0, 0, 1) has cos 1/√65
        let ramp = t(&[0., 1., 2., 0., 1., 2., 0., 1., 2.], 3, 3);
        let flat = t(&[0.; 9], 3, 3);
        let all = t(&[1.; 9], 3, 3);
        let depth = (0.5f32.ln() + 1.5f32.ln() + 2.5f32.ln()) / 3.0;
        let grad = 8.5f32.ln() + 0.5f32.ln();
        let normal = 1.0 - 1.0 / 65f32.sqrt();
        assert!(close(
            value(Loss::Hu, &ramp, &flat, &all),
            depth + grad + normal
        ));
        // an invalid pixel anywhere in the 3×3 removes the centre's gradient terms
        let holed = t(&[1., 1., 1., 1., 1., 1., 1., 1., 0.], 3, 3);
        let d8 = (3.0 * 0.5f32.ln() + 3.0 * 1.5f32.ln() + 2.0 * 2.5f32.ln()) / 8.0;
        assert!(close(value(Loss::Hu, &ramp, &flat, &holed), d8));
    }

    /// Every loss is zero (Hu: its minimum) for a perfect prediction and has a gradient.
    #[test]
    fn losses_fall_to_their_minimum_at_the_target() {
        let g = t(&[1., 2., 3., 4., 5., 6., 7., 8., 9.], 3, 3);
        let m = t(&[1.; 9], 3, 3);
        for loss in [Loss::L1, Loss::BerHu, Loss::SiLog] {
            assert!(value(loss, &g, &g, &m).abs() < 1e-2, "{loss:?}");
        }
        let hu_min = 0.5f32.ln() * 3.0;
        assert!(close(value(Loss::Hu, &g, &g, &m), hu_min));
        let p = candle_core::Var::from_tensor(&(&g * 1.5).unwrap()).unwrap();
        for loss in [Loss::L1, Loss::BerHu, Loss::SiLog, Loss::Hu] {
            let grads = loss.compute(&p, &g, &m).unwrap().backward().unwrap();
            let gp = grads.get(p.as_tensor()).unwrap();
            let norm = gp
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(norm > 0.0 && norm.is_finite(), "{loss:?}: gradient {norm}");
        }
    }
}
