//! Adam with decoupled weight decay whose state (moments, step) can be saved and restored, so a
//! resumed run continues bit for bit (candle-nn's `AdamW` keeps its moments private).

use std::cell::RefCell;
use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, Device, InplaceOp2, Layout, Storage, Tensor, Var};

use crate::error::{Error, Result};

/// A variable's first and second moments: host vectors updated with the variable in one fused
/// pass when it lives on the CPU (a dozen small candle ops per variable cost more than the
/// arithmetic), tensors on other devices.
enum Moments {
    Host(Vec<f32>, Vec<f32>),
    Tensors(Tensor, Tensor),
}

pub struct Adam {
    /// `(name, variable, moments)`, sorted by name.
    vars: Vec<(String, Var, Moments)>,
    pub lr: f64,
    pub weight_decay: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    /// Updates done so far.
    pub t: usize,
}

impl Adam {
    /// Optimizes the named variables (a `VarMap`'s contents). Variables that never receive a
    /// gradient (BatchNorm running statistics) are left alone.
    pub fn new(named: HashMap<String, Var>, lr: f64, weight_decay: f64) -> Result<Adam> {
        let mut vars = Vec::with_capacity(named.len());
        for (name, var) in named {
            let moments = match var.device() {
                Device::Cpu => {
                    let n = var.elem_count();
                    Moments::Host(vec![0.0; n], vec![0.0; n])
                }
                _ => {
                    let zeros = var.as_tensor().zeros_like()?;
                    Moments::Tensors(zeros.clone(), zeros)
                }
            };
            vars.push((name, var, moments));
        }
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Adam {
            vars,
            lr,
            weight_decay,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            t: 0,
        })
    }

    /// One update from `grads`; `Err` naming the variable if a gradient is not finite, before
    /// anything is changed.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.check_finite(grads)?;
        self.t += 1;
        let t = self.t as i32;
        let (c1, c2) = (1.0 - self.beta1.powi(t), 1.0 - self.beta2.powi(t));
        for (_, var, moments) in &mut self.vars {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            // detached: a gradient can carry the backward graph (it is computed from the
            // variables), and a moment built from it would chain every step's graph to the next
            let g = g.detach();
            match moments {
                Moments::Host(m, v) => {
                    let op = FusedAdam {
                        moments: RefCell::new((m, v)),
                        lr: self.lr as f32,
                        decay: (1.0 - self.lr * self.weight_decay) as f32,
                        beta1: self.beta1 as f32,
                        beta2: self.beta2 as f32,
                        c1: c1 as f32,
                        c2: c2 as f32,
                        eps: self.eps as f32,
                    };
                    var.as_tensor().inplace_op2(&g.contiguous()?, &op)?;
                }
                Moments::Tensors(m, v) => {
                    *m = ((&*m * self.beta1)? + (&g * (1.0 - self.beta1))?)?.detach();
                    *v = ((&*v * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?.detach();
                    let update = ((&*m / c1)? / ((&*v / c2)?.sqrt()? + self.eps)?)?;
                    let decayed = (var.as_tensor() * (1.0 - self.lr * self.weight_decay))?;
                    var.set(&(decayed - (update * self.lr)?)?)?;
                }
            }
        }
        Ok(())
    }

    /// `Err` naming the first variable (by name) whose gradient holds a NaN or an Inf. CPU
    /// gradients are read in place; on other devices one sum of |g| over all of them is one
    /// device sync, and only a non-finite sum makes it look for the variable.
    fn check_finite(&self, grads: &GradStore) -> Result<()> {
        let abs_sum = |g: &Tensor| -> Result<f32> {
            let (storage, layout) = g.storage_and_layout();
            if let (Storage::Cpu(CpuStorage::F32(data)), Some((start, end))) =
                (&*storage, layout.contiguous_offsets())
            {
                return Ok(data[start..end].iter().map(|x| x.abs()).sum());
            }
            drop(storage);
            Ok(g.abs()?.sum_all()?.to_scalar::<f32>()?)
        };
        let all_host = self
            .vars
            .iter()
            .all(|(_, _, moments)| matches!(moments, Moments::Host(..)));
        if !all_host {
            let mut total: Option<Tensor> = None;
            for (_, var, _) in &self.vars {
                if let Some(g) = grads.get(var.as_tensor()) {
                    let s = g.abs()?.sum_all()?;
                    total = Some(match total {
                        Some(t) => (t + s)?,
                        None => s,
                    });
                }
            }
            match total {
                Some(t) if !t.to_scalar::<f32>()?.is_finite() => {}
                _ => return Ok(()),
            }
        }
        for (name, var, _) in &self.vars {
            if let Some(g) = grads.get(var.as_tensor()) {
                let s = abs_sum(g)?;
                if !s.is_finite() {
                    return Err(Error::Runtime(format!("the gradient of {name} is {s}")));
                }
            }
        }
        Ok(())
    }

    /// The moments as named tensors (`adam.m.NAME`, `adam.v.NAME`) for a checkpoint.
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::with_capacity(2 * self.vars.len());
        for (name, var, moments) in &self.vars {
            let (m, v) = match moments {
                Moments::Host(m, v) => (
                    Tensor::from_slice(m, var.shape(), &Device::Cpu)?,
                    Tensor::from_slice(v, var.shape(), &Device::Cpu)?,
                ),
                Moments::Tensors(m, v) => (m.clone(), v.clone()),
            };
            out.push((format!("adam.m.{name}"), m));
            out.push((format!("adam.v.{name}"), v));
        }
        Ok(out)
    }

    /// Restores moments written by [`Adam::state`] and the update count `t`.
    pub fn restore(&mut self, tensors: &HashMap<String, Tensor>, t: usize) -> Result<()> {
        for (name, var, moments) in &mut self.vars {
            let get = |key: String| {
                tensors
                    .get(&key)
                    .cloned()
                    .ok_or_else(|| Error::Runtime(format!("checkpoint lacks {key}")))
            };
            let (nm, nv) = (
                get(format!("adam.m.{name}"))?,
                get(format!("adam.v.{name}"))?,
            );
            if nm.dims() != var.as_tensor().dims() || nv.dims() != var.as_tensor().dims() {
                return Err(Error::Runtime(format!(
                    "checkpoint moments of {name} do not match the network"
                )));
            }
            *moments = match moments {
                Moments::Host(..) => Moments::Host(
                    nm.flatten_all()?.to_vec1::<f32>()?,
                    nv.flatten_all()?.to_vec1::<f32>()?,
                ),
                Moments::Tensors(..) => {
                    Moments::Tensors(nm.to_device(var.device())?, nv.to_device(var.device())?)
                }
            };
        }
        self.t = t;
        Ok(())
    }
}

/// One Adam update of a CPU variable in place, from its gradient, with its moments:
/// m ← β₁m + (1−β₁)g, v ← β₂v + (1−β₂)g², w ← w·(1 − lr·wd) − lr·(m/c₁)/(√(v/c₂) + ε).
struct FusedAdam<'a> {
    moments: RefCell<(&'a mut Vec<f32>, &'a mut Vec<f32>)>,
    lr: f32,
    decay: f32,
    beta1: f32,
    beta2: f32,
    c1: f32,
    c2: f32,
    eps: f32,
}

impl InplaceOp2 for FusedAdam<'_> {
    fn name(&self) -> &'static str {
        "fused-adam"
    }

    fn cpu_fwd(
        &self,
        w: &mut CpuStorage,
        lw: &Layout,
        g: &CpuStorage,
        lg: &Layout,
    ) -> candle_core::Result<()> {
        let (CpuStorage::F32(w), CpuStorage::F32(g)) = (w, g) else {
            candle_core::bail!("fused-adam: only f32 variables are supported");
        };
        let (Some((ws, we)), Some((gs, ge))) = (lw.contiguous_offsets(), lg.contiguous_offsets())
        else {
            candle_core::bail!("fused-adam: the variable and its gradient must be contiguous");
        };
        let (w, g) = (&mut w[ws..we], &g[gs..ge]);
        let mut moments = self.moments.borrow_mut();
        let (m, v) = &mut *moments;
        if g.len() != w.len() || m.len() != w.len() || v.len() != w.len() {
            candle_core::bail!("fused-adam: the gradient or the moments do not match the variable");
        }
        let (b1, b2) = (self.beta1, self.beta2);
        for (((w, &g), m), v) in w.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            *m = b1 * *m + (1.0 - b1) * g;
            *v = b2 * *v + (1.0 - b2) * g * g;
            let update = (*m / self.c1) / ((*v / self.c2).sqrt() + self.eps);
            *w = *w * self.decay - update * self.lr;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The moments hold values, not graphs: a gradient computed from the variables carries its
    /// backward graph, and a moment built from it would keep every step's graph alive (memory
    /// grew by ~150 MB per mbv2-mff step before they were detached).
    #[test]
    fn moments_do_not_keep_the_graph() {
        let dev = Device::Cpu;
        let w = Var::from_vec(vec![0.5f32, -1.0, 2.0, 0.25], (2, 2), &dev).unwrap();
        let x = Tensor::new(&[[1.0f32, 2.0], [3.0, 4.0]], &dev).unwrap();
        let mut opt = Adam::new(HashMap::from([("w".to_string(), w.clone())]), 1e-2, 0.0).unwrap();
        for _ in 0..3 {
            // w appears twice, so its gradient is computed from w itself
            let y = w.as_tensor().matmul(&x).unwrap().sqr().unwrap();
            let loss = y.matmul(w.as_tensor()).unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            opt.step(&grads).unwrap();
        }
        for (name, t) in opt.state().unwrap() {
            assert!(!t.track_op(), "{name} keeps the backward graph");
        }
    }

    /// The fused CPU update against the tensor formula (the path other devices take), and its
    /// first step against the hand-worked value: from zero moments the step is
    /// w·(1 − lr·wd) − lr·g/(|g| + ε).
    #[test]
    fn fused_cpu_update_matches_the_tensor_formula() {
        let dev = Device::Cpu;
        let init = vec![0.5f32, -1.0, 2.0, 0.25, -0.125, 3.0];
        let fused = Var::from_vec(init.clone(), (2, 3), &dev).unwrap();
        let reference = Var::from_vec(init.clone(), (2, 3), &dev).unwrap();
        let mut a =
            Adam::new(HashMap::from([("w".to_string(), fused.clone())]), 0.01, 0.1).unwrap();
        let mut b = Adam::new(
            HashMap::from([("w".to_string(), reference.clone())]),
            0.01,
            0.1,
        )
        .unwrap();
        assert!(matches!(a.vars[0].2, Moments::Host(..)));
        let zeros = reference.as_tensor().zeros_like().unwrap();
        b.vars[0].2 = Moments::Tensors(zeros.clone(), zeros);
        let x = Tensor::new(&[[1.0f32, -2.0, 0.5], [3.0, 0.0, -1.0]], &dev).unwrap();
        let loss = |w: &Var| {
            (w.as_tensor().sqr().unwrap() * 0.5 + (w.as_tensor() * &x).unwrap())
                .unwrap()
                .sum_all()
                .unwrap()
        };
        for step in 0..5 {
            a.step(&loss(&fused).backward().unwrap()).unwrap();
            b.step(&loss(&reference).backward().unwrap()).unwrap();
            let (fa, fb) = (
                fused.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                reference.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            for (p, q) in fa.iter().zip(&fb) {
                assert!((p - q).abs() < 1e-6, "step {step}: {fa:?} vs {fb:?}");
            }
            if step == 0 {
                // g = w + x
                for ((w0, xv), w1) in init
                    .iter()
                    .zip(x.flatten_all().unwrap().to_vec1::<f32>().unwrap())
                    .zip(&fa)
                {
                    let g = w0 + xv;
                    let want = w0 * (1.0 - 0.01 * 0.1) - 0.01 * g / (g.abs() + 1e-8);
                    assert!((w1 - want).abs() < 1e-6, "{w1} vs {want}");
                }
            }
        }
        // the host moments round-trip through a checkpoint's tensors
        let state: HashMap<String, Tensor> = a.state().unwrap().into_iter().collect();
        let mut c =
            Adam::new(HashMap::from([("w".to_string(), fused.clone())]), 0.01, 0.1).unwrap();
        c.restore(&state, a.t).unwrap();
        let again: HashMap<String, Tensor> = c.state().unwrap().into_iter().collect();
        for (k, t) in &state {
            let (p, q) = (
                t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                again[k].flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            assert_eq!(p, q, "{k}");
        }
    }
}
