//! int8 kernels, one file per family. Each family has a plain `reference` implementation that
//! defines the exact integer result, and optimized versions that must match it bit for bit: one
//! test macro per family runs every optimized kernel against the reference on random shapes and
//! values. The engine calls the optimized ones unless told otherwise (`Engine::set_kernels`).

pub mod conv;
pub mod cortex_m;
pub mod elementwise;
pub mod pool;
pub mod upsample;
#[cfg(target_arch = "x86_64")]
pub(crate) mod vrequant;

#[cfg(test)]
extern crate std;

/// One table of kernels: the instruction set the convolutions (and bilinear upsampling) run
/// with. The engine picks the best the build and the CPU have when it is created
/// ([`KernelSet::detect`]: run-time feature detection with `std`, the build's target features
/// without) and calls through it on every run; any other table the build and CPU have can be
/// chosen for comparison ([`KernelSet::available`]), and every one gives the reference's bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelSet {
    /// The plain loops that define the integer results.
    Reference,
    /// Portable Rust (valid tap ranges once per row, loops LLVM vectorizes).
    Portable,
    /// x86-64 baseline: SSE2 `pmaddwd` blocks.
    X86Sse2,
    /// x86-64 AVX2 (`vpmaddwd` GEMM, int16 depthwise, int16 bilinear).
    X86Avx2,
    /// x86-64 AVX2 + AVX-VNNI (256-bit `vpdpbusd` GEMM), AVX2 elsewhere.
    X86AvxVnni,
    /// x86-64 AVX-512 F/BW/VL + VNNI (`vpdpbusd` GEMM, `vpdpwssd` depthwise), AVX2 elsewhere.
    X86Avx512Vnni,
    /// aarch64 NEON without the dot-product extension (Cortex-A72: `smull`/`sadalp`).
    Aarch64Neon,
    /// aarch64 NEON with the dot-product extension (Cortex-A76/A78: `sdot`).
    Aarch64NeonDot,
    /// aarch64 NEON with the int8 matrix multiply extension (Neoverse V1/N2, Cortex-A710 and
    /// later: `smmla` for the dense GEMM; the depthwise kernel as without it).
    Aarch64NeonI8mm,
    /// Armv7E-M DSP (Cortex-M4/M7/M33: `smlad`, `sxtb16`), with the feature `cortex-m-dsp`.
    CortexMDsp,
}

impl KernelSet {
    /// Every table: the ones this build and CPU can run are [`KernelSet::available`].
    pub const ALL: [KernelSet; 10] = [
        KernelSet::Reference,
        KernelSet::Portable,
        KernelSet::X86Sse2,
        KernelSet::X86Avx2,
        KernelSet::X86AvxVnni,
        KernelSet::X86Avx512Vnni,
        KernelSet::Aarch64Neon,
        KernelSet::Aarch64NeonDot,
        KernelSet::Aarch64NeonI8mm,
        KernelSet::CortexMDsp,
    ];

    /// A short name, as `depthling-runner` and `bench infer` print it.
    pub fn name(self) -> &'static str {
        match self {
            KernelSet::Reference => "reference",
            KernelSet::Portable => "portable",
            KernelSet::X86Sse2 => "x86-sse2",
            KernelSet::X86Avx2 => "x86-avx2",
            KernelSet::X86AvxVnni => "x86-avx-vnni",
            KernelSet::X86Avx512Vnni => "x86-avx512-vnni",
            KernelSet::Aarch64Neon => "aarch64-neon",
            KernelSet::Aarch64NeonDot => "aarch64-neon-dotprod",
            KernelSet::Aarch64NeonI8mm => "aarch64-neon-i8mm",
            KernelSet::CortexMDsp => "cortex-m-dsp",
        }
    }

    /// Whether this build on this CPU can run the table.
    pub fn is_available(self) -> bool {
        match self {
            KernelSet::Reference | KernelSet::Portable => true,
            KernelSet::X86Sse2 => cfg!(target_arch = "x86_64"),
            #[cfg(target_arch = "x86_64")]
            KernelSet::X86Avx2 => conv::has_avx2(),
            #[cfg(target_arch = "x86_64")]
            KernelSet::X86AvxVnni => conv::avx_vnni_available(),
            #[cfg(target_arch = "x86_64")]
            KernelSet::X86Avx512Vnni => conv::vnni_available(),
            KernelSet::Aarch64Neon => cfg!(target_arch = "aarch64"),
            #[cfg(target_arch = "aarch64")]
            KernelSet::Aarch64NeonDot => conv::dotprod_available(),
            #[cfg(target_arch = "aarch64")]
            KernelSet::Aarch64NeonI8mm => conv::i8mm_available(),
            KernelSet::CortexMDsp => cfg!(all(feature = "cortex-m-dsp", target_arch = "arm")),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The tables this build on this CPU can run, the reference first.
    pub fn available() -> impl Iterator<Item = KernelSet> {
        KernelSet::ALL.into_iter().filter(|k| k.is_available())
    }

    /// The fastest table this build on this CPU can run.
    pub fn detect() -> KernelSet {
        KernelSet::ALL
            .into_iter()
            .rev()
            .find(|k| k.is_available())
            .unwrap_or(KernelSet::Portable)
    }
}

/// Height, width, channels of an NHWC tensor (batch 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub height: usize,
    pub width: usize,
    pub channels: usize,
}

impl Shape {
    pub fn elements(&self) -> usize {
        self.height * self.width * self.channels
    }
}

/// Clamp range of a fused ReLU/ReLU6 (or none) on an int8 output with the given quantization,
/// as TFLite's `CalculateActivationRangeQuantized`: `zero_point + round(6.0f / scale)` in f32,
/// rounding half away from zero.
pub fn activation_range(
    act: depthling_model::Activation,
    scale: f32,
    zero_point: i32,
) -> (i32, i32) {
    use depthling_model::Activation;
    match act {
        Activation::Relu => (zero_point.max(-128), 127),
        Activation::Relu6 => {
            let q = 6.0f32 / scale;
            // round half away from zero without std (q > 0; saturates far above 127)
            let steps = if q >= 512.0 {
                512
            } else {
                let t = q as i32; // the fraction q − t is exact in f32
                t + (q - t as f32 >= 0.5) as i32
            };
            (
                zero_point.max(-128),
                zero_point.saturating_add(steps).clamp(-128, 127),
            )
        }
        Activation::None | Activation::Sigmoid => (-128, 127),
    }
}

/// Deterministic random test data for the kernel families' test macros (a 64-bit LCG).
#[cfg(test)]
pub(crate) struct TestRng(pub u64);

#[cfg(test)]
impl TestRng {
    pub fn next(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }

    /// `n` random int8 values.
    pub fn bytes(&mut self, n: usize) -> std::vec::Vec<i8> {
        (0..n).map(|_| self.next() as i8).collect()
    }

    /// A zero point in [−128, 127].
    pub fn zero_point(&mut self) -> i32 {
        (self.next() % 256) as i32 - 128
    }

    /// A requantization multiplier for a real value in `[lo, hi)`.
    pub fn requant(&mut self, lo: f64, hi: f64) -> depthling_model::Requant {
        let t = (self.next() % 10_000) as f64 / 10_000.0;
        depthling_model::Requant::from_real(lo + (hi - lo) * t).unwrap()
    }
}
