//! Convolution (dense OHWI and depthwise HWC), padding `k / 2`, stride 1 or 2.

use super::KernelSet;
use super::Shape;
use depthling_model::{read_f32, read_i32, read_requant};

/// What happens to each int32 accumulator.
#[derive(Clone, Copy, Debug)]
pub enum OutputStage<'a> {
    /// Requantize per channel to int8, add the zero point, clamp; with a LUT (fused sigmoid),
    /// `zero_point` is the pre-activation one and `pre + 128` indexes the table.
    Int8 {
        /// `(multiplier, shift)` per channel, little endian.
        requant: &'a [u8],
        zero_point: i32,
        act_min: i32,
        act_max: i32,
        lut: Option<&'a [i8]>,
    },
    /// Dequantize to f32: `acc · s_in · s_w[c]` (little-endian f32 bytes out).
    F32 {
        input_scale: f32,
        /// f32 per channel, little endian.
        weight_scales: &'a [u8],
    },
}

/// Geometry and constants of one convolution.
#[derive(Clone, Copy, Debug)]
pub struct ConvParams<'a> {
    pub input: Shape,
    pub output: Shape,
    pub kernel: usize,
    pub stride: usize,
    pub depthwise: bool,
    pub input_zero_point: i32,
    pub weights: &'a [i8],
    /// int32 per output channel, little endian.
    pub bias: &'a [u8],
    pub stage: OutputStage<'a>,
    /// What the engine's plan decoded for this convolution once (empty: nothing, each kernel
    /// derives what it needs per call).
    pub prepared: Prepared<'a>,
}

/// A convolution's share of the prepared plan ([`crate::plan`]): derived from the weights once
/// at `Engine::new` instead of on every run. Each part is used only where its length is the
/// one the kernel expects, so an empty `Prepared` (or one for another table) is always safe.
#[derive(Clone, Copy, Debug, Default)]
pub struct Prepared<'a> {
    /// `Σ w` over each output channel's weights (the term the kernels that sum raw inputs fold
    /// into the bias as `−z·Σw`).
    pub weight_sums: &'a [i32],
    /// The weights in the layout of the table's dense kernel ([`pack`]), or empty.
    pub packed: &'a [i32],
    /// That layout: a kernel uses `packed` only where it is the one it would pack itself.
    #[cfg_attr(
        not(any(target_arch = "x86_64", target_arch = "aarch64")),
        allow(dead_code)
    )]
    pub(crate) layout: Option<pack::Layout>,
    /// The kernel the plan chose, which `stage` and `depthwise` were made for (a kernel uses
    /// them only where it is that one).
    pub kernel: Option<ConvKernel>,
    /// The vector output stage for that kernel ([`stage`]), or empty.
    pub stage: &'a [i32],
    /// A ring depthwise kernel's taps, widened as its table's kernel reads them
    /// ([`rows::widened_words`]), or empty.
    pub depthwise: &'a [i32],
}

impl ConvParams<'_> {
    /// `Σ w` over output channel `c`'s weights: from the plan where it has it, else summed.
    #[inline]
    pub(super) fn weight_sum(&self, c: usize) -> i32 {
        if self.prepared.weight_sums.len() == self.output.channels {
            if let Some(&s) = self.prepared.weight_sums.get(c) {
                return s;
            }
        }
        weight_sum(self, c)
    }
}

/// `Σ w` over output channel `c`'s weights (depthwise: its `k²` taps), summed.
pub(crate) fn weight_sum(p: &ConvParams<'_>, c: usize) -> i32 {
    let oc = p.output.channels;
    if p.depthwise {
        (0..p.kernel * p.kernel)
            .filter_map(|t| p.weights.get(t * oc + c))
            .map(|&w| w as i32)
            .sum()
    } else {
        let depth = p.kernel * p.kernel * p.input.channels;
        p.weights
            .get(c * depth..(c + 1) * depth)
            .unwrap_or(&[])
            .iter()
            .map(|&w| w as i32)
            .sum()
    }
}

/// Finishes one accumulator into `out` at element `index`.
#[inline(always)]
fn store(stage: &OutputStage<'_>, out: &mut [u8], index: usize, channel: usize, acc: i32) {
    match *stage {
        OutputStage::Int8 {
            requant,
            zero_point,
            act_min,
            act_max,
            lut,
        } => {
            let r = read_requant(requant, channel).unwrap_or(depthling_model::Requant {
                multiplier: 0,
                shift: 0,
            });
            let v = r.apply(acc).saturating_add(zero_point);
            let q = match lut {
                Some(lut) => lut[(v.clamp(-128, 127) + 128) as usize],
                None => v.clamp(act_min, act_max) as i8,
            };
            out[index] = q as u8;
        }
        OutputStage::F32 {
            input_scale,
            weight_scales,
        } => {
            let s = read_f32(weight_scales, channel).unwrap_or(0.0);
            let v = acc as f32 * (input_scale * s);
            out[4 * index..4 * index + 4].copy_from_slice(&v.to_le_bytes());
        }
    }
}

/// [`store`] with one channel's constants decoded once, for several pixels.
#[derive(Clone, Copy)]
pub(super) enum Finish<'a> {
    Int8 {
        bias: i32,
        requant: depthling_model::Requant,
        zero_point: i32,
        act_min: i32,
        act_max: i32,
        lut: Option<&'a [i8]>,
    },
    F32 {
        bias: i32,
        scale: f32,
    },
}

impl<'a> Finish<'a> {
    #[inline(always)]
    pub(super) fn new(stage: &OutputStage<'a>, bias: &[u8], channel: usize) -> Self {
        let bias = read_i32(bias, channel).unwrap_or(0);
        match *stage {
            OutputStage::Int8 {
                requant,
                zero_point,
                act_min,
                act_max,
                lut,
            } => Finish::Int8 {
                bias,
                requant: read_requant(requant, channel).unwrap_or(depthling_model::Requant {
                    multiplier: 0,
                    shift: 0,
                }),
                zero_point,
                act_min,
                act_max,
                lut,
            },
            OutputStage::F32 {
                input_scale,
                weight_scales,
            } => Finish::F32 {
                bias,
                scale: input_scale * read_f32(weight_scales, channel).unwrap_or(0.0),
            },
        }
    }

    /// Writes `bias + acc`, finished, at element `index` (as [`store`] does).
    #[inline(always)]
    pub(super) fn store(&self, out: &mut [u8], index: usize, acc: i32) {
        match *self {
            Finish::Int8 {
                bias,
                requant,
                zero_point,
                act_min,
                act_max,
                lut,
            } => {
                let v = requant.apply(bias + acc).saturating_add(zero_point);
                let q = match lut {
                    Some(lut) => lut[(v.clamp(-128, 127) + 128) as usize],
                    None => v.clamp(act_min, act_max) as i8,
                };
                out[index] = q as u8;
            }
            Finish::F32 { bias, scale } => {
                let v = (bias + acc) as f32 * scale;
                out[4 * index..4 * index + 4].copy_from_slice(&v.to_le_bytes());
            }
        }
    }
}

/// The reference convolution: direct loops, int32 accumulation.
pub fn reference(p: &ConvParams<'_>, input: &[i8], out: &mut [u8]) {
    let (ih, iw, ic) = (
        p.input.height as isize,
        p.input.width as isize,
        p.input.channels,
    );
    let oc = p.output.channels;
    let k = p.kernel as isize;
    let pad = k / 2;
    for oy in 0..p.output.height {
        for ox in 0..p.output.width {
            let y0 = (oy * p.stride) as isize - pad;
            let x0 = (ox * p.stride) as isize - pad;
            for co in 0..oc {
                let mut acc = read_i32(p.bias, co).unwrap_or(0);
                for ky in 0..k {
                    let y = y0 + ky;
                    if y < 0 || y >= ih {
                        continue;
                    }
                    for kx in 0..k {
                        let x = x0 + kx;
                        if x < 0 || x >= iw {
                            continue;
                        }
                        let pix = ((y * iw + x) as usize) * ic;
                        if p.depthwise {
                            let w = p.weights[((ky * k + kx) as usize) * oc + co] as i32;
                            acc += (input[pix + co] as i32 - p.input_zero_point) * w;
                        } else {
                            let wbase = ((co as isize * k + ky) * k + kx) as usize * ic;
                            for ci in 0..ic {
                                let w = p.weights[wbase + ci] as i32;
                                acc += (input[pix + ci] as i32 - p.input_zero_point) * w;
                            }
                        }
                    }
                }
                store(&p.stage, out, (oy * p.output.width + ox) * oc + co, co, acc);
            }
        }
    }
}

/// Output indices `o` of `0..n_out` whose window `o·s − pad + tap` for some tap in `0..k` stays
/// inside `0..n_in`, as the first tap and one past the last valid tap for output `o`.
#[inline]
pub(super) fn taps(
    o: usize,
    stride: usize,
    pad: usize,
    k: usize,
    n_in: usize,
) -> (usize, usize, usize) {
    let start = (o * stride) as isize - pad as isize;
    let lo = (-start).max(0) as usize;
    let hi = ((n_in as isize - start).min(k as isize)).max(0) as usize;
    // first input coordinate of tap `lo`
    (lo, hi.max(lo), (start + lo as isize) as usize)
}

/// Whether a depthwise convolution's shapes and buffers agree (same channels in and out, the
/// output map the input's divided by the stride, buffers at least the sizes the shapes say), for
/// kernels up to `max_kernel`: what the optimized depthwise kernels check before they index
/// without bounds tests.
pub(super) fn depthwise_fits(
    p: &ConvParams<'_>,
    input_len: usize,
    out_len: usize,
    max_kernel: usize,
) -> bool {
    let (ih, iw, c) = (p.input.height, p.input.width, p.input.channels);
    let (oh, ow) = (p.output.height, p.output.width);
    let (k, s) = (p.kernel, p.stride);
    let elem = match p.stage {
        OutputStage::Int8 { .. } => 1,
        OutputStage::F32 { .. } => 4,
    };
    p.depthwise
        && c > 0
        && k > 0
        && k <= max_kernel
        && s > 0
        && p.output.channels == c
        && (oh, ow) == (ih.div_ceil(s), iw.div_ceil(s))
        && input_len >= ih * iw * c
        && p.weights.len() >= k * k * c
        && out_len >= oh * ow * c * elem
}

/// The portable optimized convolution (every target; on x86-64 the depthwise case).
pub(super) fn portable(p: &ConvParams<'_>, input: &[i8], out: &mut [u8]) {
    let (iw, ic) = (p.input.width, p.input.channels);
    let oc = p.output.channels;
    let (k, s, pad) = (p.kernel, p.stride, p.kernel / 2);
    let zp = p.input_zero_point;
    for oy in 0..p.output.height {
        let (ky0, ky1, y0) = taps(oy, s, pad, k, p.input.height);
        for ox in 0..p.output.width {
            let (kx0, kx1, x0) = taps(ox, s, pad, k, iw);
            let base = (oy * p.output.width + ox) * oc;
            if p.depthwise {
                // blocks of channels with stack accumulators (no heap)
                const BLOCK: usize = 64;
                let mut c0 = 0;
                while c0 < oc {
                    let n = BLOCK.min(oc - c0);
                    let mut acc = [0i32; BLOCK];
                    for (ky, y) in (ky0..ky1).zip(y0..) {
                        for (kx, x) in (kx0..kx1).zip(x0..) {
                            let src = &input[(y * iw + x) * ic + c0..(y * iw + x) * ic + c0 + n];
                            let w =
                                &p.weights[(ky * k + kx) * oc + c0..(ky * k + kx) * oc + c0 + n];
                            for ((a, &xv), &wv) in acc[..n].iter_mut().zip(src).zip(w) {
                                *a += (xv as i32 - zp) * wv as i32;
                            }
                        }
                    }
                    for (j, a) in acc[..n].iter().enumerate() {
                        let co = c0 + j;
                        store(
                            &p.stage,
                            out,
                            base + co,
                            co,
                            read_i32(p.bias, co).unwrap_or(0) + a,
                        );
                    }
                    c0 += n;
                }
            } else {
                dense_pixel(p, input, out, (ky0, ky1, y0), (kx0, kx1, x0), base);
            }
        }
    }
}

/// One output pixel of a dense convolution over the valid taps, one output channel at a time.
fn dense_pixel(
    p: &ConvParams<'_>,
    input: &[i8],
    out: &mut [u8],
    (ky0, ky1, y0): (usize, usize, usize),
    (kx0, kx1, x0): (usize, usize, usize),
    base: usize,
) {
    let (iw, ic, k) = (p.input.width, p.input.channels, p.kernel);
    let zp = p.input_zero_point;
    for co in 0..p.output.channels {
        let mut acc = read_i32(p.bias, co).unwrap_or(0);
        for (ky, y) in (ky0..ky1).zip(y0..) {
            let wrow = &p.weights[((co * k + ky) * k) * ic..((co * k + ky + 1) * k) * ic];
            let xrow = &input[y * iw * ic..(y + 1) * iw * ic];
            let span = (kx1 - kx0) * ic;
            let w = &wrow[kx0 * ic..kx0 * ic + span];
            let x = &xrow[x0 * ic..x0 * ic + span];
            acc += x
                .iter()
                .zip(w)
                .map(|(&xv, &wv)| (xv as i32 - zp) * wv as i32)
                .sum::<i32>();
        }
        store(&p.stage, out, base + co, co, acc);
    }
}

/// The optimized convolution: [`with`] the fastest kernel table this build and CPU have
/// ([`KernelSet::detect`]).
pub fn optimized(p: &ConvParams<'_>, input: &[i8], out: &mut [u8]) {
    with(KernelSet::detect(), p, input, out)
}

/// The convolution with kernel table `set`: the same integer result as [`reference`] for every
/// table. A table this build or CPU cannot run ([`KernelSet::is_available`]) runs the portable
/// kernels instead. The kernel is [`choose`]'s (the engine takes it from its plan instead,
/// chosen once per op); one that declines at run time (buffers shorter than the shapes say)
/// hands over to the portable one.
#[inline(never)]
pub fn with(set: KernelSet, p: &ConvParams<'_>, input: &[i8], out: &mut [u8]) {
    if !run_kernel(choose(set, p), p, input, out, 0..p.output.height) {
        portable(p, input, out)
    }
}

/// One convolution kernel: what [`choose`] picks for a table and a shape, and the engine's plan
/// records for each op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvKernel {
    /// [`reference`].
    Reference,
    /// [`portable`] (also what a table falls back to for shapes its kernels do not take).
    Portable,
    /// x86-64 SSE2 `pmaddwd` blocks, dense.
    X86Blocks,
    /// x86-64 AVX2 `vpmaddwd` blocks, dense (shapes the AVX2 GEMMs do not take).
    X86Avx2Blocks,
    /// AVX-512 VNNI ring GEMM (and its depth head), dense.
    VnniGemm,
    /// AVX-512 VNNI ring depthwise.
    VnniDepthwise,
    /// AVX-VNNI (256-bit) ring GEMM (and its depth head), dense.
    AvxVnniGemm,
    /// AVX2 depth head: one output channel.
    Avx2Head,
    /// AVX2 ring GEMM of int16 rows, dense.
    Avx2Gemm,
    /// AVX2 GEMM of gathered receptive fields (rows too wide for the ring).
    Avx2Gathered,
    /// AVX2 ring depthwise.
    Avx2Depthwise,
    /// AVX2 depthwise without the ring (rows too wide for it, `k ≤ 5`).
    Avx2DepthwiseWide,
    /// NEON ring GEMM with `smull`/`sadalp`.
    NeonGemm,
    /// NEON ring GEMM with `sdot`.
    NeonDotGemm,
    /// NEON ring GEMM with `smmla`.
    NeonMmlaGemm,
    /// NEON ring depthwise.
    NeonDepthwise,
    /// Armv7E-M DSP kernels (dense and depthwise; the portable ones where they decline).
    CortexM,
}

impl ConvKernel {
    /// Every kernel, in the order of their indices in the plan.
    pub const ALL: [ConvKernel; 17] = [
        ConvKernel::Reference,
        ConvKernel::Portable,
        ConvKernel::X86Blocks,
        ConvKernel::X86Avx2Blocks,
        ConvKernel::VnniGemm,
        ConvKernel::VnniDepthwise,
        ConvKernel::Avx2Head,
        ConvKernel::Avx2Gemm,
        ConvKernel::Avx2Gathered,
        ConvKernel::Avx2Depthwise,
        ConvKernel::Avx2DepthwiseWide,
        ConvKernel::NeonGemm,
        ConvKernel::NeonDotGemm,
        ConvKernel::NeonMmlaGemm,
        ConvKernel::NeonDepthwise,
        ConvKernel::CortexM,
        ConvKernel::AvxVnniGemm,
    ];

    /// A short name, as `op_times` prints it.
    pub fn name(self) -> &'static str {
        match self {
            ConvKernel::Reference => "reference",
            ConvKernel::Portable => "portable",
            ConvKernel::X86Blocks => "sse2-blocks",
            ConvKernel::X86Avx2Blocks => "avx2-blocks",
            ConvKernel::VnniGemm => "vnni-gemm",
            ConvKernel::VnniDepthwise => "vnni-depthwise",
            ConvKernel::AvxVnniGemm => "avx-vnni-gemm",
            ConvKernel::Avx2Head => "avx2-head",
            ConvKernel::Avx2Gemm => "avx2-gemm",
            ConvKernel::Avx2Gathered => "avx2-gathered",
            ConvKernel::Avx2Depthwise => "avx2-depthwise",
            ConvKernel::Avx2DepthwiseWide => "avx2-depthwise-wide",
            ConvKernel::NeonGemm => "neon-gemm",
            ConvKernel::NeonDotGemm => "neon-dot-gemm",
            ConvKernel::NeonMmlaGemm => "neon-mmla-gemm",
            ConvKernel::NeonDepthwise => "neon-depthwise",
            ConvKernel::CortexM => "cortex-m-dsp",
        }
    }

    /// Its index in [`ConvKernel::ALL`] (what the plan stores).
    pub fn index(self) -> usize {
        ConvKernel::ALL.iter().position(|&k| k == self).unwrap_or(0)
    }

    /// Whether it writes any band of output rows by itself (so [`parallel`] can split it).
    pub fn banded(self) -> bool {
        !matches!(
            self,
            ConvKernel::Reference
                | ConvKernel::Portable
                | ConvKernel::X86Blocks
                | ConvKernel::X86Avx2Blocks
                | ConvKernel::CortexM
        )
    }
}

/// Whether table `set` runs `p` with the portable kernel because it is a dense convolution of a
/// 1×1 map (a squeeze-excitation's layers): a matrix-vector product of a few hundred MACs, where
/// the vector kernels' set-up (rings, blocks of constants) costs more than the sums. Not on the
/// reference table; the plan holds no packed weights or stages for these ([`choose`]).
pub(crate) fn matvec(set: KernelSet, p: &ConvParams<'_>) -> bool {
    set != KernelSet::Reference && !p.depthwise && p.output.height * p.output.width == 1
}

/// The kernel table `set` runs `p` with (the portable one for a table this build or CPU cannot
/// run): each table's kernels in order, the first whose shape checks `p` passes (buffers of the
/// sizes the shapes say; packed weights in `p`'s plan or fitting the kernel's stack buffer):
/// AVX-512 VNNI (or, on the AVX-VNNI table, its 256-bit ring GEMM) → AVX2 (head, ring GEMM,
/// gathering GEMM, ring depthwise, depthwise) → SSE2 or
/// AVX2 blocks (dense) or portable (depthwise); NEON → portable; Cortex-M DSP. On every table but
/// the reference, a dense convolution of a 1×1 map runs the portable kernel ([`matvec`]).
pub fn choose(set: KernelSet, p: &ConvParams<'_>) -> ConvKernel {
    let set = if set.is_available() {
        set
    } else {
        KernelSet::Portable
    };
    let _ = p;
    if matvec(set, p) {
        return ConvKernel::Portable;
    }
    match set {
        KernelSet::Reference => ConvKernel::Reference,
        #[cfg(all(feature = "cortex-m-dsp", target_arch = "arm"))]
        KernelSet::CortexMDsp => ConvKernel::CortexM,
        #[cfg(target_arch = "aarch64")]
        KernelSet::Aarch64Neon | KernelSet::Aarch64NeonDot | KernelSet::Aarch64NeonI8mm => {
            if p.depthwise && neon::takes_depthwise(p) {
                ConvKernel::NeonDepthwise
            } else if !p.depthwise && neon::takes_dense(set, p) {
                match set {
                    KernelSet::Aarch64NeonI8mm => ConvKernel::NeonMmlaGemm,
                    KernelSet::Aarch64NeonDot => ConvKernel::NeonDotGemm,
                    _ => ConvKernel::NeonGemm,
                }
            } else {
                ConvKernel::Portable
            }
        }
        #[cfg(target_arch = "x86_64")]
        KernelSet::X86Sse2
        | KernelSet::X86Avx2
        | KernelSet::X86AvxVnni
        | KernelSet::X86Avx512Vnni => {
            if set == KernelSet::X86AvxVnni && !p.depthwise && avxvnni::takes(p) {
                return ConvKernel::AvxVnniGemm;
            }
            if set == KernelSet::X86Avx512Vnni {
                if p.depthwise && vnni::takes_depthwise(p) {
                    return ConvKernel::VnniDepthwise;
                }
                if !p.depthwise && vnni::takes(p) {
                    return ConvKernel::VnniGemm;
                }
            }
            if set != KernelSet::X86Sse2 {
                let kernel = if avx2::takes_head(p) {
                    Some(ConvKernel::Avx2Head)
                } else if avx2::takes_gemm(p) {
                    Some(ConvKernel::Avx2Gemm)
                } else if pointwise::takes(p) {
                    Some(ConvKernel::Avx2Gathered)
                } else if avx2::takes_depthwise(p) {
                    Some(ConvKernel::Avx2Depthwise)
                } else if pointwise::takes_depthwise(p) {
                    Some(ConvKernel::Avx2DepthwiseWide)
                } else {
                    None
                };
                if let Some(k) = kernel {
                    return k;
                }
            }
            match (p.depthwise, set) {
                (true, _) => ConvKernel::Portable,
                (false, KernelSet::X86Sse2) => ConvKernel::X86Blocks,
                (false, _) => ConvKernel::X86Avx2Blocks,
            }
        }
        _ => ConvKernel::Portable,
    }
}

/// Output rows `band` of `p` into `out` (that band's bytes) with `kernel`: `false`, having
/// written nothing, where the kernel declines (`p` not its shape, buffers shorter than the
/// shapes say, a kernel this build or CPU cannot run, or a band of a kernel that writes whole
/// maps only). A band's result is the same bits as those rows of the whole map.
pub fn run_kernel(
    kernel: ConvKernel,
    p: &ConvParams<'_>,
    input: &[i8],
    out: &mut [u8],
    band: core::ops::Range<usize>,
) -> bool {
    let whole = band.start == 0 && band.end == p.output.height;
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let _ = &band;
    match kernel {
        ConvKernel::Reference if whole => {
            reference(p, input, out);
            true
        }
        ConvKernel::Portable if whole => {
            portable(p, input, out);
            true
        }
        #[cfg(all(feature = "cortex-m-dsp", target_arch = "arm"))]
        ConvKernel::CortexM if whole => {
            super::cortex_m::conv(p, input, out);
            true
        }
        #[cfg(target_arch = "x86_64")]
        ConvKernel::X86Blocks | ConvKernel::X86Avx2Blocks if whole && !p.depthwise => {
            let avx2 = kernel == ConvKernel::X86Avx2Blocks;
            if avx2 && !has_avx2() {
                return false;
            }
            dense_x86_with(p, input, out, avx2);
            true
        }
        // SAFETY (the arms below): each runs only where the CPU has what it needs.
        #[cfg(target_arch = "x86_64")]
        ConvKernel::VnniGemm => vnni_available() && unsafe { vnni::run(p, input, out, band) },
        #[cfg(target_arch = "x86_64")]
        ConvKernel::AvxVnniGemm => {
            avx_vnni_available() && unsafe { avxvnni::gemm(p, input, out, band) }
        }
        #[cfg(target_arch = "x86_64")]
        ConvKernel::VnniDepthwise => {
            vnni_available() && unsafe { vnni::depthwise(p, input, out, band) }
        }
        #[cfg(target_arch = "x86_64")]
        ConvKernel::Avx2Head => has_avx2() && unsafe { avx2::head(p, input, out, band) },
        #[cfg(target_arch = "x86_64")]
        ConvKernel::Avx2Gemm => has_avx2() && unsafe { avx2::gemm(p, input, out, band) },
        #[cfg(target_arch = "x86_64")]
        ConvKernel::Avx2Gathered => has_avx2() && pointwise::run(p, input, out, band),
        #[cfg(target_arch = "x86_64")]
        ConvKernel::Avx2Depthwise => has_avx2() && unsafe { avx2::depthwise(p, input, out, band) },
        #[cfg(target_arch = "x86_64")]
        ConvKernel::Avx2DepthwiseWide => {
            has_avx2() && unsafe { pointwise::depthwise(p, input, out, band) }
        }
        #[cfg(target_arch = "aarch64")]
        ConvKernel::NeonGemm => neon::dense(p, input, out, neon::Mode::Plain, band),
        #[cfg(target_arch = "aarch64")]
        ConvKernel::NeonDotGemm => {
            dotprod_available() && neon::dense(p, input, out, neon::Mode::Dot, band)
        }
        #[cfg(target_arch = "aarch64")]
        ConvKernel::NeonMmlaGemm => {
            i8mm_available() && neon::dense(p, input, out, neon::Mode::Mmla, band)
        }
        #[cfg(target_arch = "aarch64")]
        ConvKernel::NeonDepthwise => neon::depthwise(p, input, out, band),
        _ => false,
    }
}

/// Convolution `p` with `kernel`, its output rows in `pool.extra() + 1` bands, one per thread
/// (the calling one and the pool's workers), each into its own part of `out`
/// ([`run_kernel`]): the same bits as one thread. Returns `false`, having written nothing, where
/// the kernel does not write bands ([`ConvKernel::banded`]) or declines `p` (every band declines
/// or none does: the checks depend on the shapes alone).
#[cfg(any(feature = "std", test))]
pub(crate) fn parallel(
    pool: &crate::pool::Pool,
    kernel: ConvKernel,
    p: &ConvParams<'_>,
    input: &[i8],
    out: &mut [u8],
) -> bool {
    extern crate std;
    let oh = p.output.height;
    let elem = match p.stage {
        OutputStage::Int8 { .. } => 1,
        OutputStage::F32 { .. } => 4,
    };
    let row = p.output.width * p.output.channels * elem;
    if !kernel.banded() || oh == 0 || out.len() < oh * row {
        return false;
    }
    // one band (a map of one row) runs on the calling thread alone
    let bands = (pool.extra() + 1).min(oh);
    // band i: rows [i·oh/bands, (i+1)·oh/bands)
    let edge = |i: usize| i * oh / bands;
    let (first, mut rest) = out[..oh * row].split_at_mut(edge(1) * row);
    let mut jobs: std::vec::Vec<std::boxed::Box<dyn FnOnce() -> bool + Send + '_>> =
        std::vec::Vec::new();
    for i in 1..bands {
        let (part, tail) = core::mem::take(&mut rest).split_at_mut((edge(i + 1) - edge(i)) * row);
        rest = tail;
        let rows = edge(i)..edge(i + 1);
        jobs.push(std::boxed::Box::new(move || {
            run_kernel(kernel, p, input, part, rows)
        }));
    }
    pool.run(jobs, || run_kernel(kernel, p, input, first, 0..edge(1)))
}

/// Whether the CPU has what the AVX-512 VNNI kernels need.
#[cfg(target_arch = "x86_64")]
pub(crate) fn vnni_available() -> bool {
    vnni::available()
}

/// Whether the CPU has what the AVX-VNNI GEMM needs (AVX2 and AVX-VNNI).
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx_vnni_available() -> bool {
    avxvnni::available()
}

/// Whether the CPU has the dot-product extension.
#[cfg(target_arch = "aarch64")]
pub(crate) fn dotprod_available() -> bool {
    neon::dotprod()
}

/// Whether the CPU has the int8 matrix multiply extension (and the dot-product one).
#[cfg(target_arch = "aarch64")]
pub(crate) fn i8mm_available() -> bool {
    neon::i8mm()
}

/// What a blocked dense kernel computes for one step of [`dense_blocked`]: the sums of `pixels`
/// (1 or 2) output pixels, `xs[..pixels]` input offsets `x_row` apart per tap row, for `channels`
/// (1 or 4) output channels at weight offsets `ws[..channels]`, `w_row` apart per row; `rows`
/// rows of `span` bytes.
#[derive(Clone, Copy)]
#[cfg(target_arch = "x86_64")]
struct Step {
    xs: [usize; 2],
    pixels: usize,
    x_row: usize,
    ws: [usize; 4],
    channels: usize,
    w_row: usize,
    rows: usize,
    span: usize,
    zp: i32,
}

/// A dense convolution as a sequence of [`Step`]s: every output pixel's valid taps are `rows`
/// runs of `span` bytes (fewer at the borders), since one tap row of one output pixel is one
/// contiguous run of `k·C_in` bytes in NHWC, and so is the weight row in OHWI. Neighbouring pixels
/// with the same valid columns go in pairs.
///
/// # Safety
/// `block` may read `input[xs[i] + r·x_row .. + span]` and `weights[ws[c] + r·w_row .. + span]` for
/// `r < rows` unchecked: this function checks those bounds before each call.
#[cfg(target_arch = "x86_64")]
unsafe fn dense_blocked(
    p: &ConvParams<'_>,
    input: &[i8],
    out: &mut [u8],
    mut block: impl FnMut(Step) -> [[i32; 4]; 2],
) {
    let (iw, ic) = (p.input.width, p.input.channels);
    let (oc, ow) = (p.output.channels, p.output.width);
    let (k, s, pad) = (p.kernel, p.stride, p.kernel / 2);
    let (x_row, w_row, w_channel) = (iw * ic, k * ic, k * k * ic);
    for oy in 0..p.output.height {
        let ty = taps(oy, s, pad, k, p.input.height);
        let (ky0, rows) = (ty.0, ty.1 - ty.0);
        let mut ox = 0;
        while ox < ow {
            let tx = taps(ox, s, pad, k, iw);
            let base = (oy * ow + ox) * oc;
            let span = (tx.1 - tx.0) * ic;
            let pair = ox + 1 < ow && {
                let next = taps(ox + 1, s, pad, k, iw);
                (next.0, next.1) == (tx.0, tx.1)
            };
            // the last reads of the input and of the weights must lie inside them
            let x_first = (ty.2 * iw + tx.2) * ic;
            let x_step = if pair { s * ic } else { 0 };
            let w_first = ky0 * w_row + tx.0 * ic;
            let in_bounds = rows > 0
                && x_first + x_step + (rows - 1) * x_row + span <= input.len()
                && oc.saturating_sub(1) * w_channel + w_first + (rows - 1) * w_row + span
                    <= p.weights.len();
            if !in_bounds {
                dense_pixel(p, input, out, ty, tx, base);
                ox += 1;
                continue;
            }
            let pixels = if pair { 2 } else { 1 };
            let mut co = 0;
            while co < oc {
                let n = if co + 4 <= oc { 4 } else { 1 };
                let sums = block(Step {
                    xs: [x_first, x_first + x_step],
                    pixels,
                    x_row,
                    ws: [0, 1, 2, 3].map(|j| (co + j.min(n - 1)) * w_channel + w_first),
                    channels: n,
                    w_row,
                    rows,
                    span,
                    zp: p.input_zero_point,
                });
                for j in 0..n {
                    let c = co + j;
                    let finish = Finish::new(&p.stage, p.bias, c);
                    for (px, row) in sums[..pixels].iter().enumerate() {
                        finish.store(out, base + px * oc + c, row[j]);
                    }
                }
                co += n;
            }
            ox += pixels;
        }
    }
}

/// Calls `$block::<P, C>(input, weights, &step)` for the step's pixel and channel counts.
#[cfg(target_arch = "x86_64")]
macro_rules! by_shape {
    ($($block:ident)::+, $input:expr, $weights:expr, $t:expr) => {
        match ($t.pixels, $t.channels) {
            (2, 4) => $($block)::+::<2, 4>($input, $weights, $t),
            (1, 4) => $($block)::+::<1, 4>($input, $weights, $t),
            (2, _) => $($block)::+::<2, 1>($input, $weights, $t),
            _ => $($block)::+::<1, 1>($input, $weights, $t),
        }
    };
}

/// The scalar end `from..span` of tap row `r` of a [`Step`], added to `out`.
///
/// # Safety
/// The step's reads are in bounds (as [`dense_blocked`] checks).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn row_tail<const P: usize, const C: usize>(
    input: &[i8],
    weights: &[i8],
    t: &Step,
    r: usize,
    from: usize,
    out: &mut [[i32; 4]; 2],
) {
    let (xp, wp) = (input.as_ptr(), weights.as_ptr());
    for i in from..t.span {
        for (o, &x) in out.iter_mut().zip(&t.xs).take(P) {
            // SAFETY: in bounds by the caller's contract.
            let xv = unsafe { *xp.add(x + r * t.x_row + i) } as i32 - t.zp;
            for (a, &w) in o.iter_mut().zip(&t.ws).take(C) {
                // SAFETY: as above.
                *a = a.wrapping_add(xv * unsafe { *wp.add(w + r * t.w_row + i) } as i32);
            }
        }
    }
}

/// The x86-64 dense convolution with AVX2 (`avx2`, which the CPU must have) or SSE2 blocks of
/// up to two pixels × four channels.
#[cfg(target_arch = "x86_64")]
fn dense_x86_with(p: &ConvParams<'_>, input: &[i8], out: &mut [u8], avx2: bool) {
    let weights = p.weights;
    // SAFETY: `dense_blocked` checks every step's reads; `avx2` is only set where the CPU has it.
    unsafe {
        dense_blocked(p, input, out, |t| {
            if avx2 {
                by_shape!(x86::block_avx2, input, weights, &t)
            } else {
                by_shape!(x86::block, input, weights, &t)
            }
        })
    }
}

/// Whether the CPU has AVX2: detected at run time with `std`, else what the build targets.
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx2() -> bool {
    #[cfg(any(feature = "std", test))]
    {
        extern crate std;
        std::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(any(feature = "std", test)))]
    {
        cfg!(target_feature = "avx2")
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avxvnni;
#[cfg(target_arch = "aarch64")]
mod neon;
pub(crate) mod pack;
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]
pub(crate) mod rows;
pub(crate) mod stage;
#[cfg(target_arch = "x86_64")]
mod vnni;

/// Dense convolutions on x86-64 with AVX2 as a GEMM of pixels × output channels, vectorised over
/// blocks of 8 output channels with `vpmaddwd` on (input − zero point, weight) int16 pairs, and
/// the requantization vectorised per block too ([`Requant8`]). The weights are packed once per
/// call (on the stack, up to 128 KiB), each group of four pixels' receptive fields gathered once
/// for every block, and each block's output constants decoded once per call; a tile of four
/// pixels × two blocks shares each broadcast input between two multiplies and each weight load
/// between four (8 accumulators). The sums are exact, so the bits are [`reference`]'s.
#[cfg(target_arch = "x86_64")]
mod pointwise {
    use super::stage::block;
    use super::{ConvKernel, ConvParams, Finish};
    use core::arch::x86_64::*;

    const LANES: usize = 8;
    /// Most values in one receptive field, `k·k·C_in`.
    const MAX_IN: usize = super::pack::AVX2_DEPTH;
    /// Most packed weight words of one convolution without a plan (128 KiB on the stack).
    const MAX_PACKED: usize = 32 * 1024;
    const PIXELS: usize = 4;
    /// Most blocks of 8 output channels whose constants are decoded once per call.
    const MAX_BLOCKS: usize = 64;

    /// The layout of [`run`]'s packed weights for `p`: one row, the whole receptive field.
    fn layout(p: &ConvParams<'_>) -> super::pack::Layout {
        let depth = p.kernel * p.kernel * p.input.channels;
        super::pack::Layout {
            lanes: LANES,
            groups: depth.div_ceil(2),
            blocks: p.output.channels.div_ceil(LANES),
            rows: 1,
            run: depth,
            wide: true,
            mmla: false,
        }
    }

    /// Whether [`run`] takes `p` (given buffers of the sizes its shapes say).
    pub(super) fn takes(p: &ConvParams<'_>) -> bool {
        let (ih, iw, ic) = (p.input.height, p.input.width, p.input.channels);
        let (k, s) = (p.kernel, p.stride);
        let l = layout(p);
        !p.depthwise
            && ic > 0
            && p.output.channels > 0
            && k > 0
            && s > 0
            && k * k * ic <= MAX_IN
            && (p.output.height, p.output.width) == (ih.div_ceil(s), iw.div_ceil(s))
            && (super::pack::planned(p, &l) || l.words() <= MAX_PACKED)
    }

    /// Whether [`depthwise`] takes `p` (given buffers of the sizes its shapes say).
    pub(super) fn takes_depthwise(p: &ConvParams<'_>) -> bool {
        super::depthwise_fits(p, usize::MAX, usize::MAX, 5)
    }

    /// Runs output rows `band` of `p` into `out` (that band's bytes) if it is a dense
    /// convolution whose `k·k·C_in` fits the stack buffers and whose packed weights are in the
    /// plan or fit the stack (returns `false`, having written nothing, otherwise). The caller
    /// has checked that the CPU has AVX2. Each output pixel's receptive field is gathered
    /// (centred, as int16, zeros where the padding is: the zero point's contribution) into one
    /// row, so every kernel size and stride is the same GEMM.
    pub(super) fn run(
        p: &ConvParams<'_>,
        input: &[i8],
        out: &mut [u8],
        band: core::ops::Range<usize>,
    ) -> bool {
        let (ic, oc) = (p.input.channels, p.output.channels);
        let (ih, iw) = (p.input.height, p.input.width);
        let ow = p.output.width;
        let (k, s) = (p.kernel, p.stride);
        let depth = k * k * ic;
        if p.depthwise
            || ic == 0
            || oc == 0
            || k == 0
            || s == 0
            || depth > MAX_IN
            || (p.output.height, ow) != (ih.div_ceil(s), iw.div_ceil(s))
            || input.len() < ih * iw * ic
            || p.weights.len() < oc * depth
            || !super::rows::band_fits(p, &band, out.len())
        {
            return false;
        }
        let pad = k / 2;
        let pairs = depth.div_ceil(2);
        let blocks = oc.div_ceil(LANES);
        let zp = p.input_zero_point as i16;
        // block b's pair q at (b·pairs + q)·LANES: the plan's, else packed here (left
        // uninitialised past what is written: zeroing 128 KiB per call cost more than small
        // convs)
        let layout = layout(p);
        let mut storage = [core::mem::MaybeUninit::<i32>::uninit(); MAX_PACKED];
        let storage = &mut storage[..if layout.words() <= MAX_PACKED {
            MAX_PACKED
        } else {
            0
        }];
        let Some(packed) = super::pack::packed(&layout, p, storage) else {
            return false;
        };
        // each block's output constants, decoded once per call (per group of pixels past
        // MAX_BLOCKS blocks)
        let constants = |b: usize| {
            let o0 = b * LANES;
            let vector = block::<LANES>(p, ConvKernel::Avx2Gathered, o0);
            // the scalar constants only where the vector form declines
            let finish: Option<[Finish<'_>; LANES]> = vector.is_none().then(|| {
                core::array::from_fn(|j| Finish::new(&p.stage, p.bias, (o0 + j).min(oc - 1)))
            });
            (finish, vector)
        };
        let mut decoded = [const { None }; MAX_BLOCKS];
        if blocks <= MAX_BLOCKS {
            for (b, d) in decoded.iter_mut().enumerate().take(blocks) {
                *d = Some(constants(b));
            }
        }
        let mut xc = [[0i16; MAX_IN + 2]; PIXELS];
        let (first, pixels) = (band.start * ow, band.end * ow);
        let mut px = first;
        while px < pixels {
            // the receptive fields of up to four pixels, gathered once for every block
            let m = PIXELS.min(pixels - px);
            for (r, buf) in xc.iter_mut().enumerate().take(m) {
                let (oy, ox) = ((px + r) / ow, (px + r) % ow);
                for ky in 0..k {
                    let iy = (oy * s + ky) as isize - pad as isize;
                    for kx in 0..k {
                        let ix = (ox * s + kx) as isize - pad as isize;
                        let dst = &mut buf[(ky * k + kx) * ic..(ky * k + kx + 1) * ic];
                        if iy < 0 || ix < 0 || iy as usize >= ih || ix as usize >= iw {
                            dst.fill(0);
                            continue;
                        }
                        let at = (iy as usize * iw + ix as usize) * ic;
                        for (d, &v) in dst.iter_mut().zip(&input[at..at + ic]) {
                            *d = v as i16 - zp;
                        }
                    }
                }
                buf[depth] = 0;
            }
            let mut b = 0;
            while b < blocks {
                // two blocks a tile where there are two: each broadcast input feeds two
                // multiplies, and each weight load four
                let two = b + 1 < blocks;
                let nb = if two { 2 } else { 1 };
                let tile = &packed[b * pairs * LANES..(b + nb) * pairs * LANES];
                // SAFETY: AVX2 is present (the caller checked); `tile` holds `nb · pairs ·
                // LANES` words and each `xc` row `2 · pairs ≤ depth + 1` values.
                let sums = unsafe {
                    if two {
                        dot::<2>(tile, &xc, pairs, m)
                    } else {
                        dot::<1>(tile, &xc, pairs, m)
                    }
                };
                for (bb, sums) in sums.iter().enumerate().take(nb) {
                    let o0 = (b + bb) * LANES;
                    let n = LANES.min(oc - o0);
                    let here;
                    let (finish, vector) = match &decoded[(b + bb).min(MAX_BLOCKS - 1)] {
                        Some(d) if blocks <= MAX_BLOCKS => d,
                        _ => {
                            here = constants(b + bb);
                            &here
                        }
                    };
                    for (r, row) in sums.iter().enumerate().take(m) {
                        let base = (px - first + r) * oc + o0;
                        match (&vector, finish) {
                            (Some(v), _) => {
                                // SAFETY: AVX2 is present (the caller checked).
                                let q = unsafe { v.apply(row) };
                                for (o, &q) in out[base..base + n].iter_mut().zip(&q) {
                                    *o = q as i8 as u8;
                                }
                            }
                            (None, finish) => {
                                for j in 0..n {
                                    let f = finish.map_or_else(
                                        || Finish::new(&p.stage, p.bias, o0 + j),
                                        |f| f[j],
                                    );
                                    f.store(out, base + j, row[j]);
                                }
                            }
                        }
                    }
                }
                b += nb;
            }
            px += m;
        }
        true
    }

    /// Runs `p` if it is a depthwise convolution (returns `false`, having written nothing,
    /// otherwise): blocks of 16 channels over the whole map, so that each block's output
    /// constants are decoded once; per tap, 16 centred inputs times 16 weights in int16
    /// (`|x − z|·|w| ≤ 255·127` fits), widened and summed in int32; the output stage vectorised
    /// as for the dense GEMM.
    ///
    /// # Safety
    /// The CPU has AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn depthwise(
        p: &ConvParams<'_>,
        input: &[i8],
        out: &mut [u8],
        band: core::ops::Range<usize>,
    ) -> bool {
        let c = p.input.channels;
        let (ih, iw) = (p.input.height, p.input.width);
        let ow = p.output.width;
        let (k, s) = (p.kernel, p.stride);
        // the shapes and the input as `depthwise_fits` checks them; the output is the band's
        if !super::depthwise_fits(p, input.len(), usize::MAX, 5)
            || !super::rows::band_fits(p, &band, out.len())
        {
            return false;
        }
        let pad = k / 2;
        let zp = p.input_zero_point;
        let mut c0 = 0;
        while c0 < c {
            // 16 channels (the last block may be narrower: its lanes past `n` are padding)
            let n = (2 * LANES).min(c - c0);
            let finish: [[Finish<'_>; LANES]; 2] = core::array::from_fn(|h| {
                core::array::from_fn(|j| {
                    Finish::new(&p.stage, p.bias, (c0 + h * LANES + j).min(c - 1))
                })
            });
            let vector = [0, LANES].map(|h| block(p, ConvKernel::Avx2DepthwiseWide, c0 + h));
            let mut wbuf = [[0i16; 2 * LANES]; 25];
            for (t, row) in wbuf.iter_mut().enumerate().take(k * k) {
                for (j, v) in row.iter_mut().enumerate().take(n) {
                    *v = p.weights[t * c + c0 + j] as i16;
                }
            }
            for oy in band.clone() {
                for ox in 0..ow {
                    let mut acc = [0i32; 2 * LANES];
                    for ky in 0..k {
                        let iy = (oy * s + ky) as isize - pad as isize;
                        if iy < 0 || iy as usize >= ih {
                            continue;
                        }
                        for kx in 0..k {
                            let ix = (ox * s + kx) as isize - pad as isize;
                            if ix < 0 || ix as usize >= iw {
                                continue;
                            }
                            let at = (iy as usize * iw + ix as usize) * c + c0;
                            let mut x = [0i8; 2 * LANES];
                            x[..n].copy_from_slice(&input[at..at + n]);
                            // SAFETY: AVX2 is present (the caller checked).
                            unsafe { depthwise_tap(&mut acc, &x, zp, &wbuf[ky * k + kx], n) };
                        }
                    }
                    let base = ((oy - band.start) * ow + ox) * c + c0;
                    for h in 0..2 {
                        let lanes = n.saturating_sub(h * LANES).min(LANES);
                        if lanes == 0 {
                            break;
                        }
                        let sums: [i32; LANES] = core::array::from_fn(|j| acc[h * LANES + j]);
                        let at = base + h * LANES;
                        match &vector[h] {
                            Some(v) => {
                                // SAFETY: AVX2 is present (the caller checked).
                                let q = unsafe { v.apply(&sums) };
                                for (o, &q) in out[at..at + lanes].iter_mut().zip(&q) {
                                    *o = q as i8 as u8;
                                }
                            }
                            None => {
                                for (j, f) in finish[h].iter().enumerate().take(lanes) {
                                    f.store(out, at + j, sums[j]);
                                }
                            }
                        }
                    }
                }
            }
            c0 += n;
        }
        true
    }

    /// `acc[j] += (x[j] − zp) · w[j]` for 16 lanes (lanes `n..` have zero weights).
    ///
    /// # Safety
    /// The CPU has AVX2.
    #[target_feature(enable = "avx2")]
    unsafe fn depthwise_tap(
        acc: &mut [i32; 2 * LANES],
        x: &[i8; 2 * LANES],
        zp: i32,
        w: &[i16; 2 * LANES],
        _n: usize,
    ) {
        // SAFETY: unaligned loads and stores within the 16-element arrays.
        unsafe {
            let xv = _mm256_cvtepi8_epi16(_mm_loadu_si128(x.as_ptr() as *const __m128i));
            let xv = _mm256_sub_epi16(xv, _mm256_set1_epi16(zp as i16));
            let wv = _mm256_loadu_si256(w.as_ptr() as *const __m256i);
            let prod = _mm256_mullo_epi16(xv, wv);
            let lo = _mm256_cvtepi16_epi32(_mm256_castsi256_si128(prod));
            let hi = _mm256_cvtepi16_epi32(_mm256_extracti128_si256::<1>(prod));
            let a0 = _mm256_loadu_si256(acc.as_ptr() as *const __m256i);
            let a1 = _mm256_loadu_si256(acc.as_ptr().add(LANES) as *const __m256i);
            _mm256_storeu_si256(acc.as_mut_ptr() as *mut __m256i, _mm256_add_epi32(a0, lo));
            _mm256_storeu_si256(
                acc.as_mut_ptr().add(LANES) as *mut __m256i,
                _mm256_add_epi32(a1, hi),
            );
        }
    }

    /// Eight lanes of the output stage ([`super::stage::Requant`]): one AVX2 register.
    pub(super) type Requant8 = super::stage::Requant<8>;

    impl Requant8 {
        /// The finished int8 values of one pixel's eight sums.
        ///
        /// # Safety
        /// The CPU has AVX2.
        #[target_feature(enable = "avx2")]
        pub(super) unsafe fn apply(&self, acc: &[i32; LANES]) -> [i32; LANES] {
            // SAFETY: unaligned loads and stores of 8 × i32 from and to 8-element arrays.
            unsafe {
                let q = self.apply_v(_mm256_loadu_si256(acc.as_ptr() as *const __m256i));
                let mut out = [0i32; LANES];
                _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, q);
                out
            }
        }

        /// [`Requant8::apply`] on a register: the finished values, in `act_min..=act_max`.
        ///
        /// # Safety
        /// The CPU has AVX2.
        #[target_feature(enable = "avx2")]
        #[inline]
        pub(super) unsafe fn apply_v(&self, acc: __m256i) -> __m256i {
            // SAFETY: unaligned loads of 8 × i32 from 8-element arrays; the constants as
            // `new` checked them (multipliers ≥ 0, shifts 0..=31).
            unsafe {
                let ld = |a: &[i32; LANES]| _mm256_loadu_si256(a.as_ptr() as *const __m256i);
                let lanes = crate::kernels::vrequant::Lanes {
                    multiplier: ld(&self.multiplier),
                    shift: ld(&self.shift),
                    mask: ld(&self.mask),
                    half: ld(&self.half),
                };
                let x = _mm256_add_epi32(acc, ld(&self.bias));
                let q = crate::kernels::vrequant::multiply(x, &lanes);
                crate::kernels::vrequant::finish(q, self.zero_point, self.act_min, self.act_max)
            }
        }
    }

    /// The sums of `m ≤ 4` pixels (centred int16 inputs in `xc`) against `B` packed blocks
    /// (block `b`'s pair `q` at `(b·pairs + q)·LANES`); pixels past `m` repeat the last one.
    ///
    /// # Safety
    /// The CPU has AVX2, `packed.len() ≥ B · pairs · LANES`, `1 ≤ m ≤ PIXELS` and every `xc` row
    /// has `2 · pairs` values.
    #[target_feature(enable = "avx2")]
    unsafe fn dot<const B: usize>(
        packed: &[i32],
        xc: &[[i16; MAX_IN + 2]; PIXELS],
        pairs: usize,
        m: usize,
    ) -> [[[i32; LANES]; PIXELS]; 2] {
        let mut acc = [[_mm256_setzero_si256(); PIXELS]; B];
        let w = packed.as_ptr();
        let x: [*const i32; PIXELS] =
            core::array::from_fn(|r| xc[r.min(m - 1)].as_ptr() as *const i32);
        for q in 0..pairs {
            // SAFETY: in bounds by the contract; unaligned loads.
            unsafe {
                let wv: [__m256i; B] = core::array::from_fn(|b| {
                    _mm256_loadu_si256(w.add((b * pairs + q) * LANES) as *const __m256i)
                });
                for r in 0..PIXELS {
                    let xv = _mm256_set1_epi32(x[r].add(q).read_unaligned());
                    for (a, &wv) in acc.iter_mut().zip(&wv) {
                        a[r] = _mm256_add_epi32(a[r], _mm256_madd_epi16(xv, wv));
                    }
                }
            }
        }
        let mut out = [[[0i32; LANES]; PIXELS]; 2];
        for (o, a) in out.iter_mut().zip(&acc) {
            for (o, a) in o.iter_mut().zip(a) {
                // SAFETY: 8 × i32 into an 8-element array.
                unsafe { _mm256_storeu_si256(o.as_mut_ptr() as *mut __m256i, *a) };
            }
        }
        out
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Step;
    use core::arch::x86_64::*;

    /// Sign-extends the low 8 bytes of `v` to 8 × i16 (SSE2 has no `pmovsxbw`).
    #[inline(always)]
    unsafe fn widen(v: __m128i) -> __m128i {
        // SAFETY: SSE2 is part of the x86-64 baseline.
        unsafe { _mm_srai_epi16::<8>(_mm_unpacklo_epi8(v, v)) }
    }

    /// Adds the horizontal sums of `acc[p][c]` to `out[p][c]`.
    #[inline(always)]
    unsafe fn reduce<const P: usize, const C: usize>(
        acc: &[[__m128i; C]; P],
        out: &mut [[i32; 4]; 2],
    ) {
        // SAFETY: SSE2 is part of the x86-64 baseline.
        unsafe {
            for (o, a) in out.iter_mut().zip(acc) {
                for (v, &s) in o.iter_mut().zip(a) {
                    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
                    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
                    *v = v.wrapping_add(_mm_cvtsi128_si32(s));
                }
            }
        }
    }

    /// The sums of a [`Step`] for `P` pixels and `C` channels: 8 products per SSE2 `pmaddwd`,
    /// the rest of each row scalar. Exact int32 arithmetic, so equal to the reference.
    ///
    /// # Safety
    /// The step's reads are in bounds (as [`super::dense_blocked`] checks).
    #[inline(always)]
    pub unsafe fn block<const P: usize, const C: usize>(
        input: &[i8],
        weights: &[i8],
        t: &Step,
    ) -> [[i32; 4]; 2] {
        // SAFETY: the caller guarantees the bounds; unaligned 8-byte loads.
        unsafe {
            let zpv = _mm_set1_epi16(t.zp as i16);
            let (x0, w0) = (input.as_ptr(), weights.as_ptr());
            let mut acc = [[_mm_setzero_si128(); C]; P];
            let mut out = [[0i32; 4]; 2];
            let chunks = t.span / 8;
            for r in 0..t.rows {
                for j in 0..chunks {
                    let o = r * t.x_row + j * 8;
                    let xv: [__m128i; P] = core::array::from_fn(|p| {
                        let bytes = _mm_loadl_epi64(x0.add(t.xs[p] + o) as *const __m128i);
                        _mm_sub_epi16(widen(bytes), zpv)
                    });
                    for c in 0..C {
                        let at = t.ws[c] + r * t.w_row + j * 8;
                        let wv = widen(_mm_loadl_epi64(w0.add(at) as *const __m128i));
                        for (a, v) in acc.iter_mut().zip(&xv) {
                            a[c] = _mm_add_epi32(a[c], _mm_madd_epi16(*v, wv));
                        }
                    }
                }
                super::row_tail::<P, C>(input, weights, t, r, chunks * 8, &mut out);
            }
            reduce(&acc, &mut out);
            out
        }
    }

    /// [`block`] with AVX2: 16 products per `vpmaddwd`, sign extension by `vpmovsxbw`; a row's
    /// last 8-byte chunk in 128-bit registers, the rest scalar.
    ///
    /// # Safety
    /// As [`block`], and the CPU has AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn block_avx2<const P: usize, const C: usize>(
        input: &[i8],
        weights: &[i8],
        t: &Step,
    ) -> [[i32; 4]; 2] {
        // SAFETY: the caller guarantees the bounds and AVX2; unaligned loads.
        unsafe {
            let zp16 = _mm256_set1_epi16(t.zp as i16);
            let zp8 = _mm_set1_epi16(t.zp as i16);
            let (x0, w0) = (input.as_ptr(), weights.as_ptr());
            let mut acc = [[_mm256_setzero_si256(); C]; P];
            let mut acc8 = [[_mm_setzero_si128(); C]; P];
            let mut out = [[0i32; 4]; 2];
            let (chunks, eight) = (t.span / 16, t.span % 16 >= 8);
            for r in 0..t.rows {
                for j in 0..chunks {
                    let o = r * t.x_row + j * 16;
                    let xv: [__m256i; P] = core::array::from_fn(|p| {
                        let bytes = _mm_loadu_si128(x0.add(t.xs[p] + o) as *const __m128i);
                        _mm256_sub_epi16(_mm256_cvtepi8_epi16(bytes), zp16)
                    });
                    for c in 0..C {
                        let at = t.ws[c] + r * t.w_row + j * 16;
                        let wv =
                            _mm256_cvtepi8_epi16(_mm_loadu_si128(w0.add(at) as *const __m128i));
                        for (a, v) in acc.iter_mut().zip(&xv) {
                            a[c] = _mm256_add_epi32(a[c], _mm256_madd_epi16(*v, wv));
                        }
                    }
                }
                if eight {
                    let o = r * t.x_row + chunks * 16;
                    let xv: [__m128i; P] = core::array::from_fn(|p| {
                        let bytes = _mm_loadl_epi64(x0.add(t.xs[p] + o) as *const __m128i);
                        _mm_sub_epi16(_mm_cvtepi8_epi16(bytes), zp8)
                    });
                    for c in 0..C {
                        let at = t.ws[c] + r * t.w_row + chunks * 16;
                        let wv = _mm_cvtepi8_epi16(_mm_loadl_epi64(w0.add(at) as *const __m128i));
                        for (a, v) in acc8.iter_mut().zip(&xv) {
                            a[c] = _mm_add_epi32(a[c], _mm_madd_epi16(*v, wv));
                        }
                    }
                }
                let tail = chunks * 16 + if eight { 8 } else { 0 };
                super::row_tail::<P, C>(input, weights, t, r, tail, &mut out);
            }
            let folded: [[__m128i; C]; P] = core::array::from_fn(|p| {
                core::array::from_fn(|c| {
                    let s = acc[p][c];
                    _mm_add_epi32(
                        _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s)),
                        acc8[p][c],
                    )
                })
            });
            reduce(&folded, &mut out);
            out
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    /// Every optimized convolution equals the reference bit for bit, on random shapes, values,
    /// strides, kernels, zero points and both output stages.
    macro_rules! conv_family_matches_reference {
        ($($name:ident: $kernel:path,)*) => {$(
            #[test]
            fn $name() {
                let mut rng = super::super::TestRng(0x5eed);
                for case in 0..300 {
                    let k = [1usize, 3, 5][case % 3];
                    let stride = 1 + (case / 3) % 2;
                    let depthwise = case % 4 == 3;
                    let (h, w) = (1 + rng.next() as usize % 14, 1 + rng.next() as usize % 14);
                    // every eighth case a depth head: one output channel, C_in a multiple of 4
                    let head = !depthwise && case % 8 == 5;
                    let ic = if head { 4 * (1 + rng.next() as usize % 16) } else { 1 + rng.next() as usize % 70 };
                    let oc = if depthwise { ic } else if head { 1 } else { 1 + rng.next() as usize % 9 };
                    let (oh, ow) = (h.div_ceil(stride), w.div_ceil(stride));
                    let input = rng.bytes(h * w * ic);
                    let n_w = if depthwise { k * k * oc } else { oc * k * k * ic };
                    let weights = rng.bytes(n_w);
                    let bias: Vec<u8> = (0..oc).flat_map(|_| ((rng.next() % 20001) as i32 - 10000).to_le_bytes()).collect();
                    let requant = requant_bytes((0..oc).map(|_| 1e-4 + (rng.next() % 1000) as f64 * 1e-5));
                    let scales: Vec<u8> = (0..oc).flat_map(|i| (0.01f32 + i as f32 * 1e-3).to_le_bytes()).collect();
                    let f32_out = case % 5 == 0;
                    let stage = if f32_out {
                        OutputStage::F32 { input_scale: 0.02, weight_scales: &scales }
                    } else {
                        {
                        // a fused activation's clamp every third case
                        let clamp = case % 3 == 1;
                        let act_min = if clamp { -128 + (rng.next() % 128) as i32 } else { -128 };
                        let act_max = if clamp { act_min + (rng.next() % 128) as i32 } else { 127 };
                        OutputStage::Int8 { requant: &requant, zero_point: (rng.next() % 256) as i32 - 128, act_min, act_max, lut: None }
                    }
                    };
                    let p = ConvParams {
                        input: super::super::Shape { height: h, width: w, channels: ic },
                        output: super::super::Shape { height: oh, width: ow, channels: oc },
                        kernel: k,
                        stride,
                        depthwise,
                        input_zero_point: (rng.next() % 256) as i32 - 128,
                        weights: &weights,
                        bias: &bias,
                        stage,
                        prepared: Prepared::default(),
                    };
                    let size = oh * ow * oc * if f32_out { 4 } else { 1 };
                    let (mut a, mut b) = (std::vec![0u8; size], std::vec![0u8; size]);
                    reference(&p, &input, &mut a);
                    $kernel(&p, &input, &mut b);
                    assert_eq!(a, b, "case {case}: {h}x{w}x{ic} -> {oc}, k{k} s{stride} dw {depthwise}");
                    // and with what a plan for this CPU's table holds
                    let record = prepare(KernelSet::detect(), &p);
                    let prepared = ConvParams { prepared: crate::plan::parse(&record, KernelSet::detect(), &p).0, ..p };
                    b.fill(0);
                    $kernel(&prepared, &input, &mut b);
                    assert_eq!(a, b, "prepared, case {case}: {h}x{w}x{ic} -> {oc}, k{k} s{stride} dw {depthwise}");
                }
            }
        )*};
    }

    /// Every table this build and CPU have, through the kernel [`choose`] picks, which must
    /// take the case (a shape check that disagrees with its kernel's fails here instead of
    /// falling back unseen); the reference's bits each time.
    fn every_chosen_kernel(p: &ConvParams<'_>, input: &[i8], out: &mut [u8]) {
        let mut want = std::vec![0u8; out.len()];
        reference(p, input, &mut want);
        for set in KernelSet::available() {
            let kernel = choose(set, p);
            out.fill(0x55);
            assert!(
                run_kernel(kernel, p, input, out, 0..p.output.height),
                "{set:?} chose {kernel:?}, which declined"
            );
            assert_eq!(out, &want[..], "{set:?} with {kernel:?}");
        }
    }

    conv_family_matches_reference! {
        every_chosen_kernel_matches_reference: every_chosen_kernel,
        optimized_matches_reference: optimized,
        portable_matches_reference: portable,
        cortex_m_matches_reference: super::super::cortex_m::conv,
        cortex_m_dense_matches_reference: cortex_m_dense_only,
        cortex_m_depthwise_matches_reference: cortex_m_depthwise_only,
        vnni_matches_reference: vnni_only,
        neon_matches_reference: neon_only,
        three_threads_match_reference: three_threads,
        neon_without_dotprod_matches_reference: neon_plain_only,
    }

    // aarch64 only: elsewhere it would compare the reference with itself
    #[cfg(target_arch = "aarch64")]
    conv_family_matches_reference! {
        neon_mmla_matches_reference: neon_mmla_only,
    }

    /// `(multiplier, shift)` bytes of the requantization of each real scale, as the model holds
    /// them.
    fn requant_bytes(scales: impl Iterator<Item = f64>) -> Vec<u8> {
        scales
            .flat_map(|m| {
                let r = depthling_model::Requant::from_real(m).unwrap();
                [r.multiplier.to_le_bytes(), r.shift.to_le_bytes()].concat()
            })
            .collect()
    }

    /// The record a plan for table `set` holds for `p` (`crate::plan::parse` reads it).
    fn prepare(set: KernelSet, p: &ConvParams<'_>) -> Vec<i32> {
        let mut record = std::vec![0; crate::plan::record_words(set, p)];
        assert!(crate::plan::write_record(set, p, &mut record));
        record
    }

    /// The kernels whose every constant comes from the plan where it has them: packed or
    /// widened weights, and the output stage with `−z·Σw` folded in.
    const FROM_THE_PLAN: [ConvKernel; 9] = [
        ConvKernel::Avx2Gemm,
        ConvKernel::VnniDepthwise,
        ConvKernel::AvxVnniGemm,
        ConvKernel::Avx2Depthwise,
        ConvKernel::VnniGemm,
        ConvKernel::NeonGemm,
        ConvKernel::NeonDotGemm,
        ConvKernel::NeonMmlaGemm,
        ConvKernel::NeonDepthwise,
    ];

    /// A kernel that runs from the plan computes with the plan's constants, not the model's:
    /// given the record of a convolution with other weights, bias and multipliers (the same
    /// shapes and zero points), it gives that convolution's reference bits. A kernel that still
    /// decoded the model's requantization bytes, bias or weights per call would not.
    #[test]
    fn kernels_compute_with_the_plans_constants() {
        for set in KernelSet::available() {
            computes_with_the_plans_constants(set);
        }
    }

    fn computes_with_the_plans_constants(set: KernelSet) {
        let mut rng = super::super::TestRng(0x9a7);
        let mut checked = std::vec::Vec::new();
        // (h, w, c_in, c_out, k, stride, depthwise)
        let shapes: [(usize, usize, usize, usize, usize, usize, bool); 6] = [
            (9, 13, 32, 32, 3, 1, true),
            (8, 10, 40, 40, 3, 2, true),
            (6, 7, 24, 24, 5, 1, true),
            (7, 9, 8, 48, 1, 1, false),
            (6, 11, 32, 32, 3, 1, false),
            (9, 8, 16, 24, 3, 2, false),
        ];
        for (h, w, ic, oc, k, stride, depthwise) in shapes {
            let (oh, ow) = (h.div_ceil(stride), w.div_ceil(stride));
            let n_w = if depthwise {
                k * k * oc
            } else {
                oc * k * k * ic
            };
            let input = rng.bytes(h * w * ic);
            let constants = |rng: &mut super::super::TestRng| {
                let weights = rng.bytes(n_w);
                let bias: Vec<u8> = (0..oc)
                    .flat_map(|_| ((rng.next() % 20001) as i32 - 10000).to_le_bytes())
                    .collect();
                let requant =
                    requant_bytes((0..oc).map(|_| 1e-4 + (rng.next() % 1000) as f64 * 2e-5));
                (weights, bias, requant)
            };
            let (w1, b1, r1) = constants(&mut rng);
            let (w2, b2, r2) = constants(&mut rng);
            let shape = (h, w, ic, oc, k, stride, depthwise);
            let (p1, p2) = (params(shape, &w1, &b1, &r1), params(shape, &w2, &b2, &r2));
            let mut want = std::vec![0u8; oh * ow * oc];
            reference(&p2, &input, &mut want);
            let record = prepare(set, &p2);
            let (prepared, kernel) = crate::plan::parse(&record, set, &p2);
            let Some(kernel) = kernel.filter(|k| FROM_THE_PLAN.contains(k)) else {
                continue;
            };
            assert!(
                !prepared.stage.is_empty(),
                "{kernel:?}: no stage in the plan"
            );
            let mixed = ConvParams { prepared, ..p1 };
            let mut got = std::vec![0u8; oh * ow * oc];
            assert!(
                run_kernel(kernel, &mixed, &input, &mut got, 0..oh),
                "{kernel:?} declined"
            );
            assert_eq!(got, want, "{kernel:?}: {h}x{w}x{ic} -> {oc} k{k} s{stride}");
            checked.push(kernel);
        }
        std::eprintln!("{}: from the plan: {checked:?}", set.name());
        let stages = matches!(
            set,
            KernelSet::X86Avx2
                | KernelSet::X86AvxVnni
                | KernelSet::X86Avx512Vnni
                | KernelSet::Aarch64Neon
                | KernelSet::Aarch64NeonDot
                | KernelSet::Aarch64NeonI8mm
        );
        assert_eq!(stages, !checked.is_empty(), "{}: {checked:?}", set.name());
        // a table whose depthwise kernel holds widened taps in the plan ran one from them
        if crate::kernels::conv::rows::widened_words(set, &p_depthwise()) > 0 {
            assert!(checked.iter().any(|k| matches!(
                k,
                ConvKernel::Avx2Depthwise | ConvKernel::VnniDepthwise | ConvKernel::NeonDepthwise
            )));
        }
    }

    /// A dense convolution of a 1×1 map (a squeeze-excitation's layer) runs the portable loop on
    /// every table but the reference, and its plan record holds only the kernel, the lengths and
    /// `Σw`: no packed weights, stage or taps that nothing would read.
    #[test]
    fn one_by_one_maps_run_portable_with_a_bare_record() {
        let mut rng = super::super::TestRng(0x11);
        let (ic, oc) = (24, 40);
        let weights = rng.bytes(ic * oc);
        let bias: Vec<u8> = (0..oc)
            .flat_map(|c| (c as i32 * 7 - 100).to_le_bytes())
            .collect();
        let requant = requant_bytes((0..oc).map(|c| 2e-3 + c as f64 * 1e-5));
        let p = params((1, 1, ic, oc, 1, 1, false), &weights, &bias, &requant);
        let input = rng.bytes(ic);
        let mut want = std::vec![0u8; oc];
        reference(&p, &input, &mut want);
        for set in KernelSet::ALL {
            assert_eq!(crate::plan::record_words(set, &p), 4 + oc, "{set:?}");
            if set.is_available() && set != KernelSet::Reference {
                let record = prepare(set, &p);
                let (prepared, kernel) = crate::plan::parse(&record, set, &p);
                assert_eq!(kernel, Some(ConvKernel::Portable), "{set:?}");
                let mut got = std::vec![0u8; oc];
                with(set, &ConvParams { prepared, ..p }, &input, &mut got);
                assert_eq!(got, want, "{set:?}");
            }
        }
    }

    /// An int8 convolution of `(h, w, c_in, c_out, k, stride, depthwise)` with these constants,
    /// input zero point 11, output zero point −5, clamp −100..=120.
    fn params<'a>(
        (h, w, ic, oc, k, stride, depthwise): (usize, usize, usize, usize, usize, usize, bool),
        weights: &'a [i8],
        bias: &'a [u8],
        requant: &'a [u8],
    ) -> ConvParams<'a> {
        ConvParams {
            input: super::super::Shape {
                height: h,
                width: w,
                channels: ic,
            },
            output: super::super::Shape {
                height: h.div_ceil(stride),
                width: w.div_ceil(stride),
                channels: oc,
            },
            kernel: k,
            stride,
            depthwise,
            input_zero_point: 11,
            weights,
            bias,
            stage: OutputStage::Int8 {
                requant,
                zero_point: -5,
                act_min: -100,
                act_max: 120,
                lut: None,
            },
            prepared: Prepared::default(),
        }
    }

    /// A depthwise 3×3 over 32 channels (weights and constants empty: for its shape only).
    fn p_depthwise() -> ConvParams<'static> {
        static WEIGHTS: [i8; 288] = [0; 288];
        ConvParams {
            input: super::super::Shape {
                height: 9,
                width: 13,
                channels: 32,
            },
            output: super::super::Shape {
                height: 9,
                width: 13,
                channels: 32,
            },
            kernel: 3,
            stride: 1,
            depthwise: true,
            input_zero_point: 0,
            weights: &WEIGHTS,
            bias: &[],
            stage: OutputStage::F32 {
                input_scale: 1.0,
                weight_scales: &[],
            },
            prepared: Prepared::default(),
        }
    }

    /// A dense convolution whose packed weights exceed the kernels' stack buffer (36 864 words
    /// for VNNI, 147 456 bytes for NEON, 73 728 words for AVX2, over 128 KiB) runs in the table's
    /// GEMM from a plan's packed weights, and is declined by it without them.
    #[test]
    fn packed_weights_beyond_the_stack_buffer_run_from_the_plan() {
        let mut rng = super::super::TestRng(0xb16);
        let (h, w, ic, oc, k) = (5, 7, 64, 256, 3);
        let input = rng.bytes(h * w * ic);
        let weights = rng.bytes(oc * k * k * ic);
        let bias: Vec<u8> = (0..oc)
            .flat_map(|c| (c as i32 * 37 - 4000).to_le_bytes())
            .collect();
        let requant = requant_bytes((0..oc).map(|c| 2e-4 + c as f64 * 1e-6));
        let p = ConvParams {
            input: super::super::Shape {
                height: h,
                width: w,
                channels: ic,
            },
            output: super::super::Shape {
                height: h,
                width: w,
                channels: oc,
            },
            kernel: k,
            stride: 1,
            depthwise: false,
            input_zero_point: -3,
            weights: &weights,
            bias: &bias,
            stage: OutputStage::Int8 {
                requant: &requant,
                zero_point: 4,
                act_min: -128,
                act_max: 127,
                lut: None,
            },
            prepared: Prepared::default(),
        };
        let mut want = std::vec![0u8; h * w * oc];
        reference(&p, &input, &mut want);
        let set = KernelSet::detect();
        let record = prepare(set, &p);
        let prepared = ConvParams {
            prepared: crate::plan::parse(&record, set, &p).0,
            ..p
        };
        let (sums, packed) = (prepared.prepared.weight_sums, prepared.prepared.packed);
        let mut got = std::vec![0u8; h * w * oc];
        // whether the table's GEMM ran it from the plan (a table that packs nothing runs it
        // through `with` below, from the plan's sums): the kernel the plan would record
        // declines the same convolution without the plan
        let mut ran = false;
        if pack::Layout::of(set, &p).is_some() {
            assert!(packed.len() > 32 * 1024, "{} words", packed.len());
            let kernel = choose(set, &prepared);
            assert!(
                !run_kernel(kernel, &p, &input, &mut got, 0..h),
                "{kernel:?} fitted the stack"
            );
            assert!(
                run_kernel(kernel, &prepared, &input, &mut got, 0..h),
                "{kernel:?} declined"
            );
            ran = true;
        }
        if !ran {
            std::eprintln!(
                "note: {} packs no weights; the plan's sums only",
                set.name()
            );
            with(set, &prepared, &input, &mut got);
        }
        assert_eq!(got, want);
        // words of the packed length without their layout (a foreign plan's) are not used
        let garbage = std::vec![0x5a5a_5a5a; packed.len()];
        let foreign = ConvParams {
            prepared: Prepared {
                weight_sums: sums,
                packed: &garbage,
                ..Prepared::default()
            },
            ..p
        };
        got.fill(0);
        with(set, &foreign, &input, &mut got);
        assert_eq!(got, want, "used a foreign plan's packed weights");
    }

    /// The fastest table on three threads (one band per thread); the one-thread kernel where it
    /// has no banded kernel for the case.
    fn three_threads(p: &ConvParams<'_>, input: &[i8], out: &mut [u8]) {
        let set = KernelSet::detect();
        // a dense 1×1 map runs the portable matrix-vector loop (`choose`), on one thread
        let banded = !matvec(set, p)
            && match set {
                KernelSet::X86Avx512Vnni
                | KernelSet::Aarch64Neon
                | KernelSet::Aarch64NeonDot
                | KernelSet::Aarch64NeonI8mm => true,
                // the AVX2 GEMMs take rows that fit the ring or receptive fields up to 1152
                // values (the head and the depthwise kernels every test shape)
                #[cfg(target_arch = "x86_64")]
                KernelSet::X86Avx2 | KernelSet::X86AvxVnni => {
                    p.depthwise
                        || p.output.channels == 1
                        || (set == KernelSet::X86AvxVnni && super::avxvnni::takes(p))
                        || pack::ring16_shape(p)
                        || p.kernel * p.kernel * p.input.channels <= pack::AVX2_DEPTH
                }
                _ => false,
            };
        // the test shapes fit every banded kernel's buffers otherwise
        let pool = crate::pool::Pool::new(2);
        assert_eq!(
            parallel(&pool, choose(set, p), p, input, out),
            banded,
            "{set:?}"
        );
        if !banded {
            std::eprintln!(
                "note: no banded kernels in {set:?}; three_threads_match_reference ran one thread"
            );
            with(set, p, input, out);
        }
    }

    /// The NEON kernels alone (dense with the dot-product extension where the CPU has it),
    /// the reference elsewhere.
    fn neon_only(p: &ConvParams<'_>, input: &[i8], out: &mut [u8]) {
        #[cfg(target_arch = "aarch64")]
        {
            let all = 0..p.output.height;
            let mode = if super::neon::dotprod() {
                super::neon::Mode::Dot
            } else {
                super::neon::Mode::Plain
            };
            let done = if p.depthwise {
                super::neon::depthwise(p, input, out, all)
            } else {
                super::neon::dense(p, input, out, mode, all)
            };
            assert!(done, "neon declined");
            if !super::neon::dotprod() {
                std::eprintln!("note: no dot-product extension here; neon_matches_reference ran the SMULL path");
            }
            return;
        }
        #[allow(unreachable_code)]
        reference(p, input, out)
    }

    /// The NEON `SMMLA` GEMM alone on every dense case (the reference on depthwise ones, and
    /// on a CPU without the int8 matrix multiply extension, with a note).
    #[cfg(target_arch = "aarch64")]
    fn neon_mmla_only(p: &ConvParams<'_>, input: &[i8], out: &mut [u8]) {
        if !p.depthwise && super::neon::i8mm() {
            let all = 0..p.output.height;
            assert!(
                super::neon::dense(p, input, out, super::neon::Mode::Mmla, all),
                "neon mmla declined"
            );
            return;
        }
        if !super::neon::i8mm() {
            std::eprintln!("note: no i8mm here; neon_mmla_matches_reference compared the reference with itself");
        }
        reference(p, input, out)
    }

    /// The NEON dense kernel without `SDOT` (what a Cortex-A72 runs), the reference elsewhere.
    fn neon_plain_only(p: &ConvParams<'_>, input: &[i8], out: &mut [u8]) {
        #[cfg(target_arch = "aarch64")]
        if !p.depthwise {
            let all = 0..p.output.height;
            assert!(
                super::neon::dense(p, input, out, super::neon::Mode::Plain, all),
                "neon declined"
            );
            return;
        }
        reference(p, input, out)
    }

    /// The AVX-512 VNNI kernel alone (the reference where the CPU lacks it, with a note).
    fn vnni_only(p: &ConvParams<'_>, input: &[i8], out: &mut [u8]) {
        #[cfg(target_arch = "x86_64")]
        if super::vnni::available() {
            // SAFETY: the CPU has AVX-512 VNNI (checked above).
            let all = 0..p.output.height;
            let done = unsafe {
                if p.depthwise {
                    super::vnni::depthwise(p, input, out, all)
                } else {
                    super::vnni::run(p, input, out, all)
                }
            };
            assert!(done, "vnni declined");
            return;
        }
        std::eprintln!(
            "note: no AVX-512 VNNI here; vnni_matches_reference compares the reference with itself"
        );
        reference(p, input, out)
    }

    fn cortex_m_dense_only(p: &ConvParams<'_>, input: &[i8], out: &mut [u8]) {
        if p.depthwise {
            return reference(p, input, out);
        }
        let depth = p.kernel * p.kernel * p.input.channels;
        if depth > super::super::cortex_m::MAX_DEPTH
            && !(p.output.channels == 1 && p.input.channels.is_multiple_of(4))
        {
            return reference(p, input, out);
        }
        assert!(
            super::super::cortex_m::dense(p, input, out),
            "dense declined"
        );
    }

    fn cortex_m_depthwise_only(p: &ConvParams<'_>, input: &[i8], out: &mut [u8]) {
        if !p.depthwise {
            return reference(p, input, out);
        }
        assert!(
            super::super::cortex_m::depthwise(p, input, out),
            "depthwise declined"
        );
    }

    /// The SSE2 and (where the CPU has it) AVX2 blocks of the x86-64 dense path.
    #[cfg(target_arch = "x86_64")]
    fn dense_sse2(p: &ConvParams<'_>, input: &[i8], out: &mut [u8]) {
        if p.depthwise {
            return portable(p, input, out);
        }
        dense_x86_with(p, input, out, false)
    }

    /// The AVX2 depth head alone on every one-channel dense case (the reference elsewhere).
    #[cfg(target_arch = "x86_64")]
    fn avx2_head_only(p: &ConvParams<'_>, input: &[i8], out: &mut [u8]) {
        if p.depthwise || p.output.channels != 1 || !has_avx2() {
            return reference(p, input, out);
        }
        // SAFETY: the CPU has AVX2 (checked above).
        assert!(
            unsafe { super::avx2::head(p, input, out, 0..p.output.height) },
            "head declined"
        );
    }

    #[cfg(target_arch = "x86_64")]
    fn dense_avx2(p: &ConvParams<'_>, input: &[i8], out: &mut [u8]) {
        if p.depthwise || !has_avx2() {
            return portable(p, input, out);
        }
        dense_x86_with(p, input, out, true)
    }

    /// The AVX2 ring depthwise kernel alone on every depthwise case (the reference elsewhere).
    #[cfg(target_arch = "x86_64")]
    fn avx2_depthwise_only(p: &ConvParams<'_>, input: &[i8], out: &mut [u8]) {
        if !p.depthwise || !has_avx2() {
            return reference(p, input, out);
        }
        let all = 0..p.output.height;
        // SAFETY: the CPU has AVX2 (checked above).
        assert!(
            unsafe { super::avx2::depthwise(p, input, out, all) },
            "depthwise declined"
        );
    }

    /// The AVX2 ring GEMM alone on every dense case to several channels (the reference
    /// elsewhere).
    #[cfg(target_arch = "x86_64")]
    fn avx2_gemm_only(p: &ConvParams<'_>, input: &[i8], out: &mut [u8]) {
        if p.depthwise || p.output.channels == 1 || !has_avx2() {
            return reference(p, input, out);
        }
        let all = 0..p.output.height;
        // SAFETY: the CPU has AVX2 (checked above).
        assert!(
            unsafe { super::avx2::gemm(p, input, out, all) },
            "GEMM declined"
        );
    }

    /// The AVX-VNNI GEMM (and its depth head) alone on dense convolutions (the reference
    /// elsewhere): a case it declines fails instead of falling back.
    #[cfg(target_arch = "x86_64")]
    fn avx_vnni_gemm_only(p: &ConvParams<'_>, input: &[i8], out: &mut [u8]) {
        if !super::avxvnni::available() {
            std::eprintln!(
                "note: no AVX-VNNI here; avx_vnni_gemm_matches_reference compares the reference \
                 with itself"
            );
            return reference(p, input, out);
        }
        if p.depthwise {
            return reference(p, input, out);
        }
        let all = 0..p.output.height;
        // SAFETY: the CPU has AVX2 and AVX-VNNI (checked above).
        assert!(
            unsafe { super::avxvnni::gemm(p, input, out, all) },
            "AVX-VNNI GEMM declined"
        );
    }

    /// The AVX-VNNI table whatever the CPU's best.
    #[cfg(target_arch = "x86_64")]
    fn avx_vnni_table(p: &ConvParams<'_>, input: &[i8], out: &mut [u8]) {
        with(KernelSet::X86AvxVnni, p, input, out)
    }

    /// The AVX-VNNI table on three threads: the kernel it chooses splits the rows wherever it
    /// writes bands (the test shapes fit every banded kernel's buffers), one thread elsewhere.
    #[cfg(target_arch = "x86_64")]
    fn avx_vnni_three_threads(p: &ConvParams<'_>, input: &[i8], out: &mut [u8]) {
        let kernel = choose(KernelSet::X86AvxVnni, p);
        let pool = crate::pool::Pool::new(2);
        assert_eq!(
            parallel(&pool, kernel, p, input, out),
            kernel.banded(),
            "{kernel:?}"
        );
        if !kernel.banded() {
            with(KernelSet::X86AvxVnni, p, input, out);
        }
    }

    /// The AVX2 table whatever the CPU's best (on an AVX-512 machine `optimized` runs VNNI).
    #[cfg(target_arch = "x86_64")]
    fn avx2_table(p: &ConvParams<'_>, input: &[i8], out: &mut [u8]) {
        with(KernelSet::X86Avx2, p, input, out)
    }

    /// The AVX2 table on three threads, where its kernels take the case (as [`three_threads`]).
    #[cfg(target_arch = "x86_64")]
    fn avx2_three_threads(p: &ConvParams<'_>, input: &[i8], out: &mut [u8]) {
        if !has_avx2() {
            return reference(p, input, out);
        }
        let banded = !matvec(KernelSet::X86Avx2, p)
            && (p.depthwise
                || p.output.channels == 1
                || pack::ring16_shape(p)
                || p.kernel * p.kernel * p.input.channels <= pack::AVX2_DEPTH);
        let pool = crate::pool::Pool::new(2);
        let kernel = choose(KernelSet::X86Avx2, p);
        assert_eq!(parallel(&pool, kernel, p, input, out), banded, "{kernel:?}");
        if !banded {
            with(KernelSet::X86Avx2, p, input, out);
        }
    }

    #[cfg(target_arch = "x86_64")]
    conv_family_matches_reference! {
        sse2_matches_reference: dense_sse2,
        avx2_matches_reference: dense_avx2,
        avx2_head_matches_reference: avx2_head_only,
        avx2_depthwise_matches_reference: avx2_depthwise_only,
        avx2_gemm_matches_reference: avx2_gemm_only,
        avx2_table_matches_reference: avx2_table,
        avx2_three_threads_match_reference: avx2_three_threads,
        avx_vnni_gemm_matches_reference: avx_vnni_gemm_only,
        avx_vnni_table_matches_reference: avx_vnni_table,
        avx_vnni_three_threads_match_reference: avx_vnni_three_threads,
    }

    /// The AVX2 output stage equals the scalar one at the extremes of its input and constants:
    /// accumulators near ±2³¹, multipliers from 0 to 2³¹ − 1, every right shift 0..=31.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_requantization_matches_scalar_at_the_extremes() {
        if !has_avx2() {
            return;
        }
        let mut rng = super::super::TestRng(0xface);
        let special = [
            i32::MIN,
            i32::MIN + 1,
            -(1 << 30),
            -3,
            -1,
            0,
            1,
            3,
            1 << 30,
            i32::MAX - 1,
            i32::MAX,
        ];
        for case in 0..4000 {
            let finish: [Finish<'_>; 8] = core::array::from_fn(|j| {
                let multiplier = match (case + j) % 4 {
                    0 => i32::MAX,
                    1 => 1 << 30,
                    2 => (rng.next() as i32).max(0),
                    _ => 0,
                };
                Finish::Int8 {
                    bias: if case % 3 == 0 {
                        0
                    } else {
                        (rng.next() % 2001) as i32 - 1000
                    },
                    requant: depthling_model::Requant {
                        multiplier,
                        shift: -((rng.next() % 32) as i32),
                    },
                    zero_point: (case % 256) as i32 - 128,
                    act_min: -128 + (case % 7) as i32,
                    act_max: 127 - (case % 5) as i32,
                    lut: None,
                }
            });
            let acc: [i32; 8] = core::array::from_fn(|j| {
                if (case + j) % 3 == 0 {
                    special[(case + 7 * j) % special.len()].wrapping_sub(0)
                } else {
                    rng.next() as i32 >> (rng.next() % 31)
                }
            });
            // the scalar path adds bias + acc without overflow checks in release; keep it in range
            let acc = acc.map(|a| a.clamp(i32::MIN + 1001, i32::MAX - 1001));
            let v = pointwise::Requant8::new(&finish).expect("vector stage");
            // SAFETY: AVX2 checked above.
            let got = unsafe { v.apply(&acc) };
            let mut want = [0u8; 8];
            for (j, f) in finish.iter().enumerate() {
                f.store(&mut want, j, acc[j]);
            }
            let got: std::vec::Vec<u8> = got.iter().map(|&q| q as i8 as u8).collect();
            assert_eq!(got, want, "case {case}: acc {acc:?}");
        }
    }

    /// The AVX2 GEMM at the widths real 1×1 layers have (several channel blocks, up to its
    /// limit of 1152 values per receptive field), against the reference; a wider one is
    /// declined.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn pointwise_matches_reference_at_real_widths() {
        if !has_avx2() {
            return;
        }
        let mut rng = super::super::TestRng(0x1_1);
        for (case, &(ic, oc)) in [
            (1152usize, 24usize),
            (512, 24),
            (321, 17),
            (96, 576),
            (3, 8),
            (144, 1),
            (40, 33),
        ]
        .iter()
        .enumerate()
        {
            let (h, w) = (1 + case % 5, 3 + case);
            let input = rng.bytes(h * w * ic);
            let weights = rng.bytes(oc * ic);
            let bias: Vec<u8> = (0..oc)
                .flat_map(|_| ((rng.next() % 20001) as i32 - 10000).to_le_bytes())
                .collect();
            let requant = requant_bytes((0..oc).map(|_| 1e-5 + (rng.next() % 1000) as f64 * 1e-6));
            let p = ConvParams {
                input: super::super::Shape {
                    height: h,
                    width: w,
                    channels: ic,
                },
                output: super::super::Shape {
                    height: h,
                    width: w,
                    channels: oc,
                },
                kernel: 1,
                stride: 1,
                depthwise: false,
                input_zero_point: (rng.next() % 256) as i32 - 128,
                weights: &weights,
                bias: &bias,
                prepared: Prepared::default(),
                // a ReLU's and a ReLU6's clamps on some
                stage: OutputStage::Int8 {
                    requant: &requant,
                    zero_point: 5,
                    act_min: if case % 2 == 0 { 5 } else { -128 },
                    act_max: if case % 3 == 0 { 100 } else { 127 },
                    lut: None,
                },
            };
            let (mut a, mut b) = (std::vec![0u8; h * w * oc], std::vec![1u8; h * w * oc]);
            reference(&p, &input, &mut a);
            assert!(
                pointwise::run(&p, &input, &mut b, 0..h),
                "{ic} -> {oc} declined"
            );
            assert_eq!(a, b, "{h}x{w}x{ic} -> {oc}");
            // and the ring GEMM, with its 16-channel vector stores
            if oc > 1 {
                b.fill(1);
                // SAFETY: the CPU has AVX2 (checked above).
                assert!(unsafe { super::avx2::gemm(&p, &input, &mut b, 0..h) });
                assert_eq!(a, b, "ring GEMM {h}x{w}x{ic} -> {oc}");
            }
        }
        let wide = ConvParams {
            input: super::super::Shape {
                height: 1,
                width: 1,
                channels: 1153,
            },
            output: super::super::Shape {
                height: 1,
                width: 1,
                channels: 1,
            },
            kernel: 1,
            stride: 1,
            depthwise: false,
            input_zero_point: 0,
            weights: &[0; 1153],
            bias: &[0; 4],
            prepared: Prepared::default(),
            stage: OutputStage::Int8 {
                requant: &[0; 8],
                zero_point: 0,
                act_min: -128,
                act_max: 127,
                lut: None,
            },
        };
        assert!(!pointwise::run(&wide, &[0; 1153], &mut [0u8; 1], 0..1));
    }

    /// The AVX2 and NEON ring depthwise kernels both ways: every block's weights held at once
    /// (each row loaded once), and a block at a time where they do not fit (1040 channels of
    /// 3×3; 256 of 7×7), against the reference, whole and in bands.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    #[test]
    fn ring_depthwise_holds_or_streams_the_blocks() {
        #[cfg(target_arch = "x86_64")]
        if !has_avx2() {
            return;
        }
        let kernel = |p: &ConvParams<'_>, input: &[i8], out: &mut [u8], band| {
            // SAFETY: the CPU has AVX2 (checked above).
            #[cfg(target_arch = "x86_64")]
            let done = unsafe { super::avx2::depthwise(p, input, out, band) };
            #[cfg(target_arch = "aarch64")]
            let done = super::neon::depthwise(p, input, out, band);
            done
        };
        let mut rng = super::super::TestRng(0xd_3);
        for &(c, k, stride) in &[
            (1040usize, 3usize, 1usize),
            (256, 7, 2),
            (336, 3, 1),
            (40, 5, 2),
        ] {
            let (h, w) = (5usize, 6usize);
            let (oh, ow) = (h.div_ceil(stride), w.div_ceil(stride));
            let input = rng.bytes(h * w * c);
            let weights = rng.bytes(k * k * c);
            let bias: Vec<u8> = (0..c)
                .flat_map(|_| ((rng.next() % 20001) as i32 - 10000).to_le_bytes())
                .collect();
            let requant = requant_bytes((0..c).map(|_| 1e-4 + (rng.next() % 1000) as f64 * 1e-5));
            let p = ConvParams {
                input: super::super::Shape {
                    height: h,
                    width: w,
                    channels: c,
                },
                output: super::super::Shape {
                    height: oh,
                    width: ow,
                    channels: c,
                },
                kernel: k,
                stride,
                depthwise: true,
                input_zero_point: (rng.next() % 256) as i32 - 128,
                weights: &weights,
                bias: &bias,
                prepared: Prepared::default(),
                stage: OutputStage::Int8 {
                    requant: &requant,
                    zero_point: 3,
                    act_min: -100,
                    act_max: 120,
                    lut: None,
                },
            };
            let mut want = std::vec![0u8; oh * ow * c];
            reference(&p, &input, &mut want);
            let mut got = std::vec![1u8; oh * ow * c];
            assert!(kernel(&p, &input, &mut got, 0..oh));
            assert_eq!(got, want, "{c} channels, k{k} s{stride}");
            // the last rows alone, as a thread's band
            let row = ow * c;
            let mut part = std::vec![1u8; (oh - 1) * row];
            assert!(kernel(&p, &input, &mut part, 1..oh));
            assert_eq!(part, want[row..], "band, {c} channels, k{k} s{stride}");
        }
    }

    /// The AVX2 ring GEMM at the shapes of real 3×3 and 5×5 layers (several blocks, the vector
    /// stores, stride 2, receptive fields past the gathering GEMM's 1152 values), against the
    /// reference.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_ring_gemm_matches_reference_at_real_widths() {
        if !has_avx2() {
            return;
        }
        let mut rng = super::super::TestRng(0x2_2);
        for &(ic, oc, k, stride) in &[
            (64usize, 64usize, 5usize, 1usize),
            (3, 16, 3, 2),
            (32, 32, 3, 1),
            (24, 16, 5, 1),
            (8, 48, 3, 2),
        ] {
            let (h, w) = (7usize, 11usize);
            let (oh, ow) = (h.div_ceil(stride), w.div_ceil(stride));
            let input = rng.bytes(h * w * ic);
            let weights = rng.bytes(oc * k * k * ic);
            let bias: Vec<u8> = (0..oc)
                .flat_map(|_| ((rng.next() % 20001) as i32 - 10000).to_le_bytes())
                .collect();
            let requant = requant_bytes((0..oc).map(|_| 1e-5 + (rng.next() % 1000) as f64 * 1e-6));
            let p = ConvParams {
                input: super::super::Shape {
                    height: h,
                    width: w,
                    channels: ic,
                },
                output: super::super::Shape {
                    height: oh,
                    width: ow,
                    channels: oc,
                },
                kernel: k,
                stride,
                depthwise: false,
                input_zero_point: (rng.next() % 256) as i32 - 128,
                weights: &weights,
                bias: &bias,
                prepared: Prepared::default(),
                stage: OutputStage::Int8 {
                    requant: &requant,
                    zero_point: -7,
                    act_min: -128,
                    act_max: 127,
                    lut: None,
                },
            };
            let (mut a, mut b) = (std::vec![0u8; oh * ow * oc], std::vec![1u8; oh * ow * oc]);
            reference(&p, &input, &mut a);
            // from the plan (64 → 64 5×5's packed weights exceed the stack buffer)
            let record = prepare(KernelSet::X86Avx2, &p);
            let p = ConvParams {
                prepared: crate::plan::parse(&record, KernelSet::X86Avx2, &p).0,
                ..p
            };
            // SAFETY: the CPU has AVX2 (checked above).
            assert!(
                unsafe { super::avx2::gemm(&p, &input, &mut b, 0..oh) },
                "declined"
            );
            assert_eq!(a, b, "{ic} -> {oc}, k{k} s{stride}");
        }
    }
}
