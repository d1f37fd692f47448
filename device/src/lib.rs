//! depthling's device runtime: an int8 engine that runs a `.dlm` model from a caller-provided
//! static arena, with no heap (DESIGN §8).
//!
//! ```
//! # fn main() -> Result<(), depthling_device::Error> {
//! let bytes = depthling_model::example_model(16, 16, 1).unwrap();
//! let model = depthling_model::Model::from_bytes(&bytes)?;
//! // the activations and, after them, the prepared plan (on a microcontroller: a static array
//! // of at least this size)
//! let mut arena = vec![0u8; depthling_device::Engine::arena_needed(&model)?];
//! let mut engine = depthling_device::Engine::new(&model, &mut arena)?;
//! let frame = [128u8; 16 * 16 * 3];
//! let depth = engine.run(&frame)?;
//! assert_eq!((depth.height(), depth.width()), (16, 16));
//! # Ok(()) }
//! ```
#![cfg_attr(not(feature = "std"), no_std)]

pub mod frame;
pub mod kernels;
pub mod plan;
#[cfg(any(feature = "std", test))]
mod pool;
#[cfg(feature = "std")]
pub mod runner;
#[cfg(feature = "tract")]
pub mod tract;

use core::ops::Range;

use depthling_model::{as_i8, as_i8_mut, Conv2d, DType, LoadError, Model, Op, TensorInfo};
use kernels::conv::{ConvParams, OutputStage, Prepared};
use kernels::elementwise::Operand;
use kernels::{activation_range, Shape};

pub use depthling_model;
pub use kernels::KernelSet;

/// What went wrong on the device. Small and `Copy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The model failed validation.
    Model(LoadError),
    /// The arena is smaller than the model's activations and prepared plan
    /// ([`Engine::arena_needed`]).
    ArenaTooSmall { needed: u32, given: usize },
    /// The frame does not have `height × width × 3` bytes.
    InputShape { expected: usize, got: usize },
    /// An op's data did not fit where validation said it would (a bug, reported, never a panic).
    Internal { op: u16 },
}

impl From<LoadError> for Error {
    fn from(e: LoadError) -> Self {
        Error::Model(e)
    }
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::Model(e) => write!(f, "invalid model: {e}"),
            Error::ArenaTooSmall { needed, given } => {
                write!(
                    f,
                    "arena too small: the model needs {needed} bytes, {given} given"
                )
            }
            Error::InputShape { expected, got } => write!(
                f,
                "input frame has {got} bytes, the model expects {expected} (height × width × 3 RGB)"
            ),
            Error::Internal { op } => write!(f, "internal error in op {op}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Error {}

/// The depth map of the last inference: f32 metres, row-major, borrowed from the arena.
#[derive(Clone, Copy, Debug)]
pub struct DepthView<'a> {
    bytes: &'a [u8],
    height: usize,
    width: usize,
}

impl<'a> DepthView<'a> {
    pub fn height(&self) -> usize {
        self.height
    }

    pub fn width(&self) -> usize {
        self.width
    }

    /// Depth in metres at row `y`, column `x`.
    pub fn get(&self, y: usize, x: usize) -> Option<f32> {
        if y >= self.height || x >= self.width {
            return None;
        }
        depthling_model::read_f32(self.bytes, y * self.width + x)
    }

    /// All depths, row-major.
    pub fn iter(&self) -> impl Iterator<Item = f32> + 'a {
        self.bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Copies the depths into `out` (which must hold `height × width`).
    pub fn copy_to(&self, out: &mut [f32]) -> Result<(), Error> {
        if out.len() != self.height * self.width {
            return Err(Error::InputShape {
                expected: self.height * self.width,
                got: out.len(),
            });
        }
        for (o, v) in out.iter_mut().zip(self.iter()) {
            *o = v;
        }
        Ok(())
    }

    /// FNV-1a (64-bit) over the little-endian f32 bytes: the value boards print so the host can
    /// compare results bit for bit.
    pub fn checksum(&self) -> u64 {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        for &b in self.bytes {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h
    }

    #[cfg(feature = "std")]
    pub fn to_vec(&self) -> std::vec::Vec<f32> {
        self.iter().collect()
    }
}

/// Which kernel implementations the engine calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernels {
    /// The plain reference loops that define the integer results.
    Reference,
    /// The optimized kernels (bit-identical to the reference; tested).
    Optimized,
}

/// Runs one validated model in one arena.
pub struct Engine<'m, 'a> {
    model: &'m Model<'m>,
    /// The activations: the model's `arena_bytes` at the arena's head.
    arena: &'a mut [u8],
    /// The prepared plan for `kernels` ([`plan`]), word-aligned after the activations.
    plan: &'a mut [i32],
    /// Words of it the current plan uses.
    plan_words: usize,
    kernels: KernelSet,
    /// Threads a large convolution may split its output rows over (`std`; 1 without).
    threads: usize,
    /// The workers beside the calling thread (`threads − 1` of them).
    #[cfg(feature = "std")]
    pool: Option<pool::Pool>,
}

/// Convolutions below this many MACs stay on one thread: starting the others costs more (in
/// the unit tests every convolution splits, so that the small test models exercise it).
#[cfg(feature = "std")]
const PARALLEL_MACS: u64 = if cfg!(test) { 1 } else { 2_000_000 };

fn shape(t: &TensorInfo) -> Shape {
    Shape {
        height: t.height as usize,
        width: t.width as usize,
        channels: t.channels as usize,
    }
}

fn range(t: &TensorInfo) -> Range<usize> {
    let start = t.offset as usize;
    start..start + t.size_bytes() as usize
}

/// One mutable output region and `N` shared input regions of the arena.
fn regions<const N: usize>(
    arena: &mut [u8],
    out: Range<usize>,
    ins: [Range<usize>; N],
    op: u16,
) -> Result<(&mut [u8], [&[u8]; N]), Error> {
    let len = arena.len();
    let bad = Error::Internal { op };
    if out.start > out.end || out.end > len {
        return Err(bad);
    }
    for r in &ins {
        let disjoint = r.is_empty() || r.end <= out.start || out.end <= r.start;
        if r.start > r.end || r.end > len || !disjoint {
            return Err(bad);
        }
    }
    let base = arena.as_mut_ptr();
    // SAFETY: every range is inside `arena`, and the output range is disjoint from every input
    // range, so the one mutable slice aliases none of the shared ones. All borrow `arena`.
    unsafe {
        let o = core::slice::from_raw_parts_mut(base.add(out.start), out.len());
        let i = ins.map(|r| core::slice::from_raw_parts(base.add(r.start) as *const u8, r.len()));
        Ok((o, i))
    }
}

/// Convolution `c` (op `id`) of `model` as the kernels take it, unprepared: its constants'
/// slices of the weights, its shapes and output stage.
pub(crate) fn conv_params<'m>(
    m: &'m Model<'m>,
    c: &'m Conv2d,
    id: u16,
) -> Result<ConvParams<'m>, Error> {
    let err = Error::Internal { op: id };
    let t = |tid: u16| m.tensor(tid).ok_or(err);
    let (ti, to) = (t(c.input)?, t(c.output)?);
    let stage = match to.dtype {
        DType::F32 => OutputStage::F32 {
            input_scale: ti.quant.scale,
            weight_scales: c.weight_scales.get(m.weights).ok_or(err)?,
        },
        DType::I8 => {
            let (act_min, act_max) = activation_range(c.act, to.quant.scale, to.quant.zero_point);
            let (lut, zero_point) = match &c.lut {
                Some(l) => (
                    Some(as_i8(l.table.get(m.weights).ok_or(err)?)),
                    l.zero_point,
                ),
                None => (None, to.quant.zero_point),
            };
            OutputStage::Int8 {
                requant: c.requant.get(m.weights).ok_or(err)?,
                zero_point,
                act_min,
                act_max,
                lut,
            }
        }
    };
    Ok(ConvParams {
        input: shape(ti),
        output: shape(to),
        kernel: c.kernel as usize,
        stride: c.stride as usize,
        depthwise: c.depthwise,
        input_zero_point: ti.quant.zero_point,
        weights: as_i8(c.weights.get(m.weights).ok_or(err)?),
        bias: c.bias.get(m.weights).ok_or(err)?,
        stage,
        prepared: Prepared::default(),
    })
}

impl<'m, 'a> Engine<'m, 'a> {
    /// Bytes of arena [`Engine::new`] needs for `model`: the activations the model plans
    /// (`arena_bytes`) and, after them, the prepared plan for the largest of the kernel tables
    /// this build and CPU can run ([`plan::bytes`]; one engine may switch tables).
    pub fn arena_needed(model: &Model<'_>) -> Result<usize, Error> {
        let mut plan = 0;
        for set in KernelSet::available() {
            plan = plan.max(plan::bytes(model, set)?);
        }
        Ok(model.arena_bytes as usize + plan)
    }

    /// Prepares `model` to run in `arena` (at least [`Engine::arena_needed`] bytes): validates
    /// it, picks the kernel table ([`KernelSet::detect`]) and builds the plan for it after the
    /// activations, so that a run only computes.
    pub fn new(model: &'m Model<'m>, arena: &'a mut [u8]) -> Result<Self, Error> {
        model.validate()?;
        let needed = Self::arena_needed(model)?;
        if arena.len() < needed {
            return Err(Error::ArenaTooSmall {
                needed: needed.min(u32::MAX as usize) as u32,
                given: arena.len(),
            });
        }
        let (arena, rest) = arena.split_at_mut(model.arena_bytes as usize);
        // SAFETY: every bit pattern is an i32; `align_to_mut` keeps the words inside `rest`.
        let (_, plan, _) = unsafe { rest.align_to_mut::<i32>() };
        let mut engine = Engine {
            model,
            arena,
            plan,
            plan_words: 0,
            kernels: KernelSet::detect(),
            threads: 1,
            #[cfg(feature = "std")]
            pool: None,
        };
        engine.prepare()?;
        Ok(engine)
    }

    /// Builds the plan for the current table.
    fn prepare(&mut self) -> Result<(), Error> {
        self.plan_words = plan::build(self.model, self.kernels, self.plan)?;
        Ok(())
    }

    /// Words of the prepared plan for the current table.
    pub fn plan_words(&self) -> usize {
        self.plan_words
    }

    /// The kernel op `index` runs with, where it is a convolution: the plan's choice for the
    /// current table ([`kernels::conv::choose`]).
    pub fn conv_kernel(&self, index: usize) -> Option<kernels::conv::ConvKernel> {
        let Some(Op::Conv2d(c)) = self.model.ops.get(index) else {
            return None;
        };
        let params = conv_params(self.model, c, index as u16).ok()?;
        let (prepared, kernel) = plan::conv(self.plan, self.kernels, index, &params);
        kernel.or_else(|| {
            Some(kernels::conv::choose(
                self.kernels,
                &ConvParams { prepared, ..params },
            ))
        })
    }

    /// How many of the ops after op `index` run fused with it in one step: where it starts a
    /// squeeze-excitation the plan fuses (global average pool, 1×1 convolutions, multiply; not
    /// on the reference table), the convolutions and the multiply; else 0.
    pub fn fused_ops(&self, index: usize) -> usize {
        plan::fused(self.plan, self.kernels, index)
    }

    /// Chooses the kernel implementations (optimized by default).
    pub fn set_kernels(&mut self, kernels: Kernels) {
        let set = match kernels {
            Kernels::Reference => KernelSet::Reference,
            Kernels::Optimized => KernelSet::detect(),
        };
        self.select_kernels(set);
    }

    /// Runs with kernel table `set` from now on, if this build and CPU can run it (returns
    /// `false`, leaving the table as it was, otherwise), preparing the plan for it.
    /// [`Engine::new`] picks the fastest.
    pub fn select_kernels(&mut self, set: KernelSet) -> bool {
        if !set.is_available() {
            return false;
        }
        let was = self.kernels;
        self.kernels = set;
        // the plan region holds the largest available table's plan (`arena_needed`), and the
        // model's constants were decoded once already, so this cannot fail; if it did, the
        // engine keeps the old table and plan
        if self.prepare().is_err() {
            self.kernels = was;
            let _ = self.prepare();
            return false;
        }
        true
    }

    /// The kernel table the engine runs with.
    pub fn kernel_set(&self) -> KernelSet {
        self.kernels
    }

    /// Lets each convolution of at least 2 M MACs split its output rows over `threads`
    /// threads (the calling one and `threads − 1` workers the engine keeps until it is dropped
    /// or this is called again; one band each), where the op's kernel writes bands
    /// ([`kernels::conv::ConvKernel::banded`]: the AVX-512 VNNI, AVX-VNNI, AVX2 and NEON ones). The bits
    /// are the same as on one thread.
    #[cfg(feature = "std")]
    pub fn set_threads(&mut self, threads: usize) {
        self.threads = threads.max(1);
        if self.pool.as_ref().map_or(0, |p| p.extra()) != self.threads - 1 {
            self.pool = (self.threads > 1).then(|| pool::Pool::new(self.threads - 1));
        }
    }

    /// The threads a large convolution may use ([`Engine::set_threads`]).
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Bytes of arena the model uses at its peak.
    pub fn arena_bytes(&self) -> usize {
        self.model.arena_bytes as usize
    }

    pub fn model(&self) -> &Model<'m> {
        self.model
    }

    /// Runs one RGB frame (`height × width × 3` bytes, row-major) and returns the depth map.
    pub fn run(&mut self, rgb: &[u8]) -> Result<DepthView<'_>, Error> {
        self.run_observed(rgb, |_, _, _| {})
    }

    /// [`Engine::run`], calling `observe(op_index, tensor, bytes)` with each op's output right
    /// after the op computed it (before the arena reuses those bytes): for per-layer error
    /// reports and debugging.
    pub fn run_observed(
        &mut self,
        rgb: &[u8],
        mut observe: impl FnMut(usize, &TensorInfo, &[u8]),
    ) -> Result<DepthView<'_>, Error> {
        let m = self.model;
        let internal = |op: usize| Error::Internal { op: op as u16 };
        let input = m.tensor(m.input).ok_or(internal(0))?;
        let expected = input.elements() as usize;
        if rgb.len() != expected {
            return Err(Error::InputShape {
                expected,
                got: rgb.len(),
            });
        }
        let dst = self.arena.get_mut(range(input)).ok_or(internal(0))?;
        for (d, &p) in dst.iter_mut().zip(rgb) {
            // q = pixel − 128, exact for scale 1/255 and zero point −128
            *d = p ^ 0x80;
        }
        let mut i = 0;
        while let Some(op) = m.ops.get(i) {
            let fused = plan::fused(self.plan, self.kernels, i);
            if fused > 0 {
                self.run_squeeze_excitation(i, fused, &mut observe)?;
                i += 1 + fused;
                continue;
            }
            self.run_op(i, op)?;
            if let Some(t) = op.output().and_then(|id| m.tensor(id)) {
                let bytes = self.arena.get(range(t)).ok_or(internal(i))?;
                observe(i, t, bytes);
            }
            i += 1;
        }
        let out = m
            .output()
            .and_then(|id| m.tensor(id))
            .ok_or(internal(m.ops.len()))?;
        let bytes = self.arena.get(range(out)).ok_or(internal(m.ops.len()))?;
        Ok(DepthView {
            bytes,
            height: out.height as usize,
            width: out.width as usize,
        })
    }

    /// Op `i` and the `n` after it, a squeeze-excitation the plan fuses
    /// ([`plan::squeeze_excitation`]), as one step: the pooled vector, the hidden layers and the
    /// gate in stack buffers, only the product written to the arena; the same kernels as op by
    /// op, so the same bits, and each op's output observed as [`Engine::run_observed`] says.
    fn run_squeeze_excitation(
        &mut self,
        i: usize,
        n: usize,
        observe: &mut impl FnMut(usize, &TensorInfo, &[u8]),
    ) -> Result<(), Error> {
        let m = self.model;
        let err = Error::Internal { op: i as u16 };
        let t = |tid: u16| m.tensor(tid).ok_or(err);
        let Some(Op::GlobalAvgPool {
            input,
            output,
            requant,
        }) = m.ops.get(i)
        else {
            return Err(err);
        };
        let (tx, mut tg) = (t(*input)?, t(*output)?);
        let bytes = |t: &TensorInfo| t.size_bytes() as usize;
        // the latest intermediate in `buffers[at]`, the next one written to the other
        let mut buffers = [[0u8; plan::SE_CHANNELS]; 2];
        let mut at = 0;
        {
            let x = self.arena.get(range(tx)).ok_or(err)?;
            let g = buffers[0].get_mut(..bytes(tg)).ok_or(err)?;
            pool_op(self.kernels, tx, tg, *requant, x, g);
            observe(i, tg, g);
        }
        for j in i + 1..i + n {
            let Some(Op::Conv2d(c)) = m.ops.get(j) else {
                return Err(err);
            };
            let to = t(c.output)?;
            let [a, b] = &mut buffers;
            let (src, dst) = if at == 0 { (&a[..], b) } else { (&b[..], a) };
            let (src, dst) = (
                src.get(..bytes(tg)).ok_or(err)?,
                dst.get_mut(..bytes(to)).ok_or(err)?,
            );
            #[rustfmt::skip]
            conv_op(m, self.plan, self.kernels, #[cfg(feature = "std")] None, j, c, src, dst)?;
            observe(j, to, dst);
            (tg, at) = (to, 1 - at);
        }
        let Some(Op::Mul {
            output, requant, ..
        }) = m.ops.get(i + n)
        else {
            return Err(err);
        };
        let ty = t(*output)?;
        let (y, [x]) = regions(self.arena, range(ty), [range(tx)], (i + n) as u16)?;
        let g = buffers[at].get(..bytes(tg)).ok_or(err)?;
        mul_op(self.kernels, tx, tg, ty, *requant, x, g, y);
        observe(i + n, ty, y);
        Ok(())
    }

    fn run_op(&mut self, index: usize, op: &Op) -> Result<(), Error> {
        let m = self.model;
        let id = index as u16;
        let err = Error::Internal { op: id };
        let t = |tid: u16| m.tensor(tid).ok_or(err);
        match op {
            Op::Conv2d(c) => {
                let (ti, to) = (t(c.input)?, t(c.output)?);
                let (out, [inp]) = regions(self.arena, range(to), [range(ti)], id)?;
                conv_op(
                    m,
                    self.plan,
                    self.kernels,
                    #[cfg(feature = "std")]
                    self.pool.as_ref(),
                    index,
                    c,
                    inp,
                    out,
                )?;
            }
            Op::Add {
                a,
                b,
                output,
                a_requant,
                b_requant,
                out_requant,
                act,
            } => {
                let (ta, tb, to) = (t(*a)?, t(*b)?, t(*output)?);
                let (act_min, act_max) =
                    activation_range(*act, to.quant.scale, to.quant.zero_point);
                let (out, [da, db]) = regions(self.arena, range(to), [range(ta), range(tb)], id)?;
                let set = self.kernels;
                let add = |a, b, ra, rb, ro, zo, lo, hi, out: &mut [i8]| match set {
                    KernelSet::Reference => {
                        kernels::elementwise::add_reference(a, b, ra, rb, ro, zo, lo, hi, out)
                    }
                    _ => kernels::elementwise::add_with(set, a, b, ra, rb, ro, zo, lo, hi, out),
                };
                add(
                    Operand {
                        data: as_i8(da),
                        zero_point: ta.quant.zero_point,
                    },
                    Operand {
                        data: as_i8(db),
                        zero_point: tb.quant.zero_point,
                    },
                    *a_requant,
                    *b_requant,
                    *out_requant,
                    to.quant.zero_point,
                    act_min,
                    act_max,
                    as_i8_mut(out),
                );
            }
            Op::Concat {
                inputs,
                requant,
                output,
            } => {
                let to = t(*output)?;
                let concat = match self.kernels {
                    KernelSet::Reference => kernels::elementwise::concat_reference,
                    _ => kernels::elementwise::concat_optimized,
                };
                let mut offset = 0;
                for (&tid, r) in inputs.iter().zip(requant) {
                    let ti = t(tid)?;
                    let (out, [inp]) = regions(self.arena, range(to), [range(ti)], id)?;
                    concat(
                        Operand {
                            data: as_i8(inp),
                            zero_point: ti.quant.zero_point,
                        },
                        shape(ti),
                        *r,
                        to.quant.zero_point,
                        offset,
                        to.channels as usize,
                        as_i8_mut(out),
                    );
                    offset += ti.channels as usize;
                }
            }
            Op::Upsample {
                input,
                output,
                mode,
                factor,
            } => {
                let (ti, to) = (t(*input)?, t(*output)?);
                let (out, [inp]) = regions(self.arena, range(to), [range(ti)], id)?;
                use depthling_model::UpsampleMode::{Bilinear, Nearest};
                use kernels::upsample as up;
                // the optimized kernels of the chosen table (the bilinear one honours a
                // reference or x86 table choice through `bilinear_with`)
                let upsample = match (mode, self.kernels) {
                    (Nearest, KernelSet::Reference) => up::nearest_reference,
                    (Nearest, _) => up::nearest_optimized,
                    (Bilinear, KernelSet::Reference) => up::bilinear_reference,
                    (Bilinear, set)
                        if set == KernelSet::detect()
                            || matches!(
                                set,
                                KernelSet::X86Avx2
                                    | KernelSet::X86AvxVnni
                                    | KernelSet::X86Avx512Vnni
                            ) =>
                    {
                        up::bilinear_optimized
                    }
                    (Bilinear, _) => up::bilinear_portable,
                };
                upsample(as_i8(inp), shape(ti), *factor as usize, as_i8_mut(out));
            }
            Op::GlobalAvgPool {
                input,
                output,
                requant,
            } => {
                let (ti, to) = (t(*input)?, t(*output)?);
                let (out, [inp]) = regions(self.arena, range(to), [range(ti)], id)?;
                pool_op(self.kernels, ti, to, *requant, inp, out);
            }
            Op::Mul {
                input,
                scale,
                output,
                requant,
            } => {
                let (ti, ts, to) = (t(*input)?, t(*scale)?, t(*output)?);
                let (out, [inp, sc]) = regions(self.arena, range(to), [range(ti), range(ts)], id)?;
                mul_op(self.kernels, ti, ts, to, *requant, inp, sc, out);
            }
            Op::Output { .. } => {}
        }
        Ok(())
    }
}

/// Convolution op `index` (`c`) of `m` from `inp` into `out` with table `set`: the kernel the
/// plan `plan` chose (else [`kernels::conv::choose`]'s), its rows split over `pool`'s threads
/// where the op is large enough and the kernel writes bands.
#[allow(clippy::too_many_arguments)]
fn conv_op(
    m: &Model<'_>,
    plan: &[i32],
    set: KernelSet,
    #[cfg(feature = "std")] pool: Option<&pool::Pool>,
    index: usize,
    c: &Conv2d,
    inp: &[u8],
    out: &mut [u8],
) -> Result<(), Error> {
    let mut params = conv_params(m, c, index as u16)?;
    let (prepared, kernel) = plan::conv(plan, set, index, &params);
    params.prepared = prepared;
    let kernel = kernel.unwrap_or_else(|| kernels::conv::choose(set, &params));
    #[cfg(feature = "std")]
    if let Some(pool) = pool.filter(|_| m.op_macs(index) >= PARALLEL_MACS) {
        if kernels::conv::parallel(pool, kernel, &params, as_i8(inp), out) {
            return Ok(());
        }
    }
    let all = 0..params.output.height;
    if !kernels::conv::run_kernel(kernel, &params, as_i8(inp), out, all) {
        kernels::conv::with(set, &params, as_i8(inp), out);
    }
    Ok(())
}

/// A global average pool of `inp` (tensor `ti`) into `out` (`to`) with table `set`.
fn pool_op(
    set: KernelSet,
    ti: &TensorInfo,
    to: &TensorInfo,
    requant: depthling_model::Requant,
    inp: &[u8],
    out: &mut [u8],
) {
    let pool = match set {
        KernelSet::Reference => kernels::pool::global_avg_pool_reference,
        _ => kernels::pool::global_avg_pool_optimized,
    };
    pool(
        Operand {
            data: as_i8(inp),
            zero_point: ti.quant.zero_point,
        },
        shape(ti),
        requant,
        to.quant.zero_point,
        as_i8_mut(out),
    );
}

/// `inp` (tensor `ti`) times the per-channel `scale` (`ts`) into `out` (`to`) with table
/// `set`.
#[allow(clippy::too_many_arguments)]
fn mul_op(
    set: KernelSet,
    ti: &TensorInfo,
    ts: &TensorInfo,
    to: &TensorInfo,
    requant: depthling_model::Requant,
    inp: &[u8],
    scale: &[u8],
    out: &mut [u8],
) {
    let (x, s) = (
        Operand {
            data: as_i8(inp),
            zero_point: ti.quant.zero_point,
        },
        Operand {
            data: as_i8(scale),
            zero_point: ts.quant.zero_point,
        },
    );
    let (channels, zo, out) = (ti.channels as usize, to.quant.zero_point, as_i8_mut(out));
    match set {
        KernelSet::Reference => {
            kernels::elementwise::mul_reference(x, s, channels, requant, zo, out)
        }
        _ => kernels::elementwise::mul_with(set, x, s, channels, requant, zo, out),
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec;

    fn model_bytes() -> std::vec::Vec<u8> {
        depthling_model::example_model(16, 24, 3).unwrap()
    }

    #[test]
    fn runs_the_example_model_deterministically() {
        let bytes = model_bytes();
        let model = Model::from_bytes(&bytes).unwrap();
        let mut arena = vec![0u8; Engine::arena_needed(&model).unwrap()];
        let frame: std::vec::Vec<u8> = (0..16 * 24 * 3).map(|i| (i * 37 % 251) as u8).collect();
        let (sum1, first) = {
            let mut e = Engine::new(&model, &mut arena).unwrap();
            let d = e.run(&frame).unwrap();
            (d.checksum(), d.iter().collect::<std::vec::Vec<f32>>())
        };
        assert!(first.iter().all(|v| v.is_finite()));
        assert!(first.iter().any(|&v| v != first[0]), "output is constant");
        // a dirty arena must not change the result: run only depends on the frame
        arena.iter_mut().for_each(|b| *b = 0xA5);
        let mut e = Engine::new(&model, &mut arena).unwrap();
        assert_eq!(e.run(&frame).unwrap().checksum(), sum1);
        // a different frame gives a different result
        let other: std::vec::Vec<u8> = frame.iter().map(|&p| p.wrapping_add(77)).collect();
        assert_ne!(e.run(&other).unwrap().checksum(), sum1);
    }

    #[test]
    fn observer_sees_every_op_output_and_the_final_depth() {
        let bytes = model_bytes();
        let model = Model::from_bytes(&bytes).unwrap();
        let mut arena = vec![0u8; Engine::arena_needed(&model).unwrap()];
        let frame: std::vec::Vec<u8> = (0..16 * 24 * 3).map(|i| (i * 13 % 256) as u8).collect();
        let mut seen = std::vec::Vec::new();
        let mut last = std::vec::Vec::new();
        let mut e = Engine::new(&model, &mut arena).unwrap();
        let sum = e
            .run_observed(&frame, |i, t, b| {
                assert_eq!(b.len() as u64, t.size_bytes());
                seen.push(i);
                last = b.to_vec();
            })
            .unwrap()
            .checksum();
        let with_output = model.ops.iter().filter(|op| op.output().is_some()).count();
        assert_eq!(seen.len(), with_output);
        let direct = e.run(&frame).unwrap();
        assert_eq!(direct.checksum(), sum);
        assert_eq!(
            last,
            direct
                .iter()
                .flat_map(f32::to_le_bytes)
                .collect::<std::vec::Vec<u8>>()
        );
    }

    /// The example model's squeeze-excitation (pool → 1×1 sigmoid → mul) runs fused on every
    /// optimized table and op by op on the reference one, and every op's output, the
    /// intermediates the fused step keeps on the stack included, is the same bytes.
    #[test]
    fn squeeze_excitation_runs_fused_with_the_bits_of_op_by_op() {
        let bytes = model_bytes();
        let model = Model::from_bytes(&bytes).unwrap();
        let pool = model
            .ops
            .iter()
            .position(|op| matches!(op, Op::GlobalAvgPool { .. }))
            .unwrap();
        assert_eq!(plan::squeeze_excitation(&model, pool), 2);
        assert!((0..model.ops.len())
            .filter(|&i| i != pool)
            .all(|i| plan::squeeze_excitation(&model, i) == 0));
        let mut arena = vec![0u8; Engine::arena_needed(&model).unwrap()];
        let frame: std::vec::Vec<u8> = (0..16 * 24 * 3).map(|i| (i * 7 % 256) as u8).collect();
        let mut e = Engine::new(&model, &mut arena).unwrap();
        let outputs = |e: &mut Engine<'_, '_>| {
            let mut seen = std::vec::Vec::new();
            e.run_observed(&frame, |i, _, b| seen.push((i, b.to_vec())))
                .unwrap();
            seen
        };
        e.set_kernels(Kernels::Reference);
        assert_eq!(e.fused_ops(pool), 0);
        let want = outputs(&mut e);
        // its 1×1 convolution runs the portable loop: no packed weights or stages in the plan
        let Op::Conv2d(c) = &model.ops[pool + 1] else {
            panic!(
                "op {} is not the squeeze-excitation's convolution",
                pool + 1
            );
        };
        let params = conv_params(&model, c, (pool + 1) as u16).unwrap();
        let oc = params.output.channels;
        for set in KernelSet::available().filter(|&s| s != KernelSet::Reference) {
            assert!(e.select_kernels(set));
            assert_eq!(e.fused_ops(pool), 2, "{set:?}");
            assert_eq!(plan::record_words(set, &params), 4 + oc, "{set:?}");
            assert_eq!(
                e.conv_kernel(pool + 1),
                Some(kernels::conv::ConvKernel::Portable)
            );
            assert_eq!(outputs(&mut e), want, "{set:?}");
        }
    }

    #[test]
    fn reference_and_optimized_kernels_agree_bit_for_bit() {
        for (h, w, seed) in [(16u16, 24u16, 3u64), (8, 8, 9), (12, 4, 1)] {
            let bytes = depthling_model::example_model(h, w, seed).unwrap();
            let model = Model::from_bytes(&bytes).unwrap();
            let mut arena = vec![0u8; Engine::arena_needed(&model).unwrap()];
            let frame: std::vec::Vec<u8> = (0..h as usize * w as usize * 3)
                .map(|i| (i * 29 % 256) as u8)
                .collect();
            let mut e = Engine::new(&model, &mut arena).unwrap();
            assert_eq!(e.kernel_set(), KernelSet::detect());
            let fast = e.run(&frame).unwrap().checksum();
            e.set_kernels(Kernels::Reference);
            let reference = e.run(&frame).unwrap().checksum();
            assert_eq!(reference, fast);
            // every table this build and CPU can run, and none it cannot
            for set in KernelSet::ALL {
                assert_eq!(e.select_kernels(set), set.is_available(), "{set:?}");
                if set.is_available() {
                    assert_eq!(e.kernel_set(), set);
                    assert_eq!(e.run(&frame).unwrap().checksum(), reference, "{set:?}");
                }
            }
        }
    }

    /// Several threads give the bits of one, on every table.
    #[cfg(feature = "std")]
    #[test]
    fn threads_give_the_bits_of_one_thread() {
        let bytes = depthling_model::example_model(64, 48, 5).unwrap();
        let model = Model::from_bytes(&bytes).unwrap();
        let mut arena = vec![0u8; Engine::arena_needed(&model).unwrap()];
        let frame: std::vec::Vec<u8> = (0..64 * 48 * 3).map(|i| (i * 31 % 256) as u8).collect();
        let mut e = Engine::new(&model, &mut arena).unwrap();
        e.set_kernels(Kernels::Reference);
        let want = e.run(&frame).unwrap().checksum();
        for set in KernelSet::available() {
            e.select_kernels(set);
            for threads in [2, 3, 7] {
                e.set_threads(threads);
                assert_eq!(
                    e.run(&frame).unwrap().checksum(),
                    want,
                    "{set:?} × {threads}"
                );
            }
        }
    }

    /// The tables a build has: the reference and portable ones everywhere, the architecture's
    /// own where the CPU has them, and the fastest of those chosen.
    #[test]
    fn kernel_tables_follow_the_architecture() {
        let names: std::vec::Vec<&str> = KernelSet::available().map(KernelSet::name).collect();
        assert_eq!(names[..2], ["reference", "portable"]);
        assert_eq!(KernelSet::detect(), KernelSet::available().last().unwrap());
        #[cfg(target_arch = "x86_64")]
        assert!(names.contains(&"x86-sse2"));
        #[cfg(target_arch = "aarch64")]
        assert!(names.contains(&"aarch64-neon"));
        assert!(!KernelSet::CortexMDsp.is_available() || cfg!(target_arch = "arm"));
        std::eprintln!("kernel tables here: {names:?}");
    }

    /// The plan records each convolution's kernel: `choose`'s pick for the table with what the
    /// plan holds, the reference on the reference table; other ops have none.
    #[test]
    fn the_plan_records_each_convolutions_kernel() {
        let bytes = model_bytes();
        let m = Model::from_bytes(&bytes).unwrap();
        let mut arena = vec![0u8; Engine::arena_needed(&m).unwrap()];
        let mut e = Engine::new(&m, &mut arena).unwrap();
        for set in KernelSet::available() {
            assert!(e.select_kernels(set));
            let mut convs = 0;
            for (i, op) in m.ops.iter().enumerate() {
                let Op::Conv2d(c) = op else {
                    assert_eq!(e.conv_kernel(i), None, "op {i}");
                    continue;
                };
                let params = conv_params(&m, c, i as u16).unwrap();
                let (prepared, recorded) = plan::conv(e.plan, set, i, &params);
                let chosen = kernels::conv::choose(set, &ConvParams { prepared, ..params });
                assert_eq!(recorded, Some(chosen), "{set:?} op {i}");
                assert_eq!(e.conv_kernel(i), Some(chosen));
                if set == KernelSet::Reference {
                    assert_eq!(chosen, kernels::conv::ConvKernel::Reference);
                }
                convs += 1;
            }
            assert!(convs > 0);
        }
    }

    #[test]
    fn wrong_frame_and_small_arena_are_errors() {
        let bytes = model_bytes();
        let model = Model::from_bytes(&bytes).unwrap();
        // the activations alone are too small: the prepared plan comes after them
        let needed = Engine::arena_needed(&model).unwrap();
        let plan = plan::bytes(&model, KernelSet::detect()).unwrap();
        assert!(plan > model.ops.len() * 4, "plan {plan} bytes");
        assert!(needed >= model.arena_bytes as usize + plan);
        for given in [model.arena_bytes as usize, needed - 1] {
            let mut small = vec![0u8; given];
            assert_eq!(
                Engine::new(&model, &mut small).err(),
                Some(Error::ArenaTooSmall {
                    needed: needed as u32,
                    given
                })
            );
        }
        let mut arena = vec![0u8; Engine::arena_needed(&model).unwrap()];
        let mut e = Engine::new(&model, &mut arena).unwrap();
        assert_eq!(4 * e.plan_words() + 3, plan);
        e.set_kernels(Kernels::Reference);
        assert_eq!(
            e.plan_words(),
            plan::words(&model, KernelSet::Reference).unwrap()
        );
        assert_eq!(
            e.run(&[0u8; 10]).unwrap_err(),
            Error::InputShape {
                expected: 16 * 24 * 3,
                got: 10
            }
        );
    }
}
