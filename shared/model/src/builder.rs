//! Owned construction of a model on the host, ending in validated `.dlm` bytes.

use alloc::string::String;
use alloc::vec::Vec;

use crate::{
    plan_arena, ConstRef, DType, LoadError, Metadata, Metric, Model, Op, QuantParams, Requant,
    TensorId, TensorInfo, FORMAT_VERSION, MAGIC, MAX_METRICS,
};

/// Accumulates tensors, ops and constants; [`ModelBuilder::to_bytes`] plans the arena, validates
/// and encodes.
#[derive(Clone, Debug, Default)]
pub struct ModelBuilder {
    pub name: String,
    pub teacher: String,
    pub method: String,
    pub generator: String,
    pub metrics: Vec<(String, f32)>,
    pub tensors: Vec<TensorInfo>,
    pub ops: Vec<Op>,
    pub weights: Vec<u8>,
    pub input: TensorId,
}

impl ModelBuilder {
    pub fn new(name: &str) -> Self {
        ModelBuilder {
            name: name.into(),
            ..Default::default()
        }
    }

    /// Adds an activation tensor (its arena offset is planned later).
    pub fn tensor(
        &mut self,
        height: u16,
        width: u16,
        channels: u16,
        dtype: DType,
        quant: QuantParams,
    ) -> TensorId {
        self.tensors.push(TensorInfo {
            height,
            width,
            channels,
            dtype,
            quant,
            offset: 0,
        });
        (self.tensors.len() - 1) as TensorId
    }

    /// Appends constant bytes, 4-byte aligned within the blob.
    pub fn constant(&mut self, bytes: &[u8]) -> ConstRef {
        while !self.weights.len().is_multiple_of(4) {
            self.weights.push(0);
        }
        let offset = self.weights.len() as u32;
        self.weights.extend_from_slice(bytes);
        ConstRef {
            offset,
            len: bytes.len() as u32,
        }
    }

    pub fn constant_i8(&mut self, values: &[i8]) -> ConstRef {
        let bytes: Vec<u8> = values.iter().map(|&v| v as u8).collect();
        self.constant(&bytes)
    }

    pub fn constant_i32(&mut self, values: &[i32]) -> ConstRef {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.constant(&bytes)
    }

    pub fn constant_f32(&mut self, values: &[f32]) -> ConstRef {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.constant(&bytes)
    }

    pub fn constant_requant(&mut self, values: &[Requant]) -> ConstRef {
        let bytes: Vec<u8> = values
            .iter()
            .flat_map(|r| {
                let mut b = [0u8; 8];
                b[..4].copy_from_slice(&r.multiplier.to_le_bytes());
                b[4..].copy_from_slice(&r.shift.to_le_bytes());
                b
            })
            .collect();
        self.constant(&bytes)
    }

    pub fn push(&mut self, op: Op) {
        self.ops.push(op);
    }

    /// Plans the arena, validates the whole model and encodes it as `.dlm` bytes.
    pub fn to_bytes(&mut self) -> Result<Vec<u8>, LoadError> {
        let arena_bytes = plan_arena(&mut self.tensors, &self.ops, self.input)?;
        let tensors = heapless::Vec::from_slice(&self.tensors).map_err(|_| LoadError::Graph {
            reason: "too many tensors",
        })?;
        let mut ops = heapless::Vec::new();
        for op in &self.ops {
            ops.push(op.clone()).map_err(|_| LoadError::Graph {
                reason: "too many ops",
            })?;
        }
        let mut metrics = heapless::Vec::new();
        for (name, value) in self.metrics.iter().take(MAX_METRICS) {
            let _ = metrics.push(Metric {
                name: name.as_str(),
                value: *value,
            });
        }
        let model = Model {
            magic: MAGIC,
            format_version: FORMAT_VERSION,
            name: &self.name,
            input: self.input,
            tensors,
            ops,
            arena_bytes,
            metadata: Metadata {
                teacher: &self.teacher,
                method: &self.method,
                generator: &self.generator,
                metrics,
            },
            weights: &self.weights,
        };
        model.to_bytes()
    }
}

/// A small but complete model exercising every op kind, with pseudo-random weights from `seed`:
/// for tests, fuzzing seeds and examples. Input `height × width` must be divisible by 4.
pub fn example_model(height: u16, width: u16, seed: u64) -> Result<Vec<u8>, LoadError> {
    use crate::{Activation, Conv2d, UpsampleMode, INPUT_SCALE, INPUT_ZERO_POINT, SIGMOID_OUTPUT};
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut b = ModelBuilder::new("example");
    b.generator = "depthling-model example_model".into();
    let q = |scale: f32, zero_point: i32| QuantParams { scale, zero_point };
    let input = b.tensor(
        height,
        width,
        3,
        DType::I8,
        q(INPUT_SCALE, INPUT_ZERO_POINT),
    );
    b.input = input;
    let mut conv = |b: &mut ModelBuilder,
                    input: TensorId,
                    output: TensorId,
                    cin: usize,
                    cout: usize,
                    kernel: u8,
                    stride: u8,
                    depthwise: bool,
                    act: Activation| {
        let k2 = kernel as usize * kernel as usize;
        let n = if depthwise {
            k2 * cout
        } else {
            cout * k2 * cin
        };
        let w: Vec<i8> = (0..n).map(|_| (next() % 255) as i8).collect();
        let bias: Vec<i32> = (0..cout).map(|_| (next() % 2001) as i32 - 1000).collect();
        let scales: Vec<f32> = (0..cout).map(|i| 0.002 + 0.001 * i as f32).collect();
        let rq: Vec<Requant> = (0..cout)
            .map(|i| {
                Requant::from_real(0.002 + 0.0005 * i as f64).unwrap_or(Requant {
                    multiplier: 0,
                    shift: 0,
                })
            })
            .collect();
        let is_f32 = b.tensors[output as usize].dtype == DType::F32;
        let weights = b.constant_i8(&w);
        let bias = b.constant_i32(&bias);
        let weight_scales = b.constant_f32(&scales);
        let requant = if is_f32 {
            ConstRef::EMPTY
        } else {
            b.constant_requant(&rq)
        };
        let lut = (act == Activation::Sigmoid).then(|| {
            let lut: Vec<i8> = (0..256)
                .map(|i| {
                    let x = (i as f32 - 128.0) * 0.05;
                    let s = 1.0 / (1.0 + libm_exp(-x));
                    crate::quant::quantize_i8(s, SIGMOID_OUTPUT.scale, SIGMOID_OUTPUT.zero_point)
                })
                .collect();
            crate::Lut {
                table: b.constant_i8(&lut),
                zero_point: 0,
                scale: 0.05,
            }
        });
        b.push(Op::Conv2d(Conv2d {
            input,
            output,
            kernel,
            stride,
            depthwise,
            act,
            weights,
            bias,
            requant,
            weight_scales,
            lut,
        }));
    };
    let (h2, w2) = (height / 2, width / 2);
    let (h4, w4) = (height / 4, width / 4);
    let t1 = b.tensor(h2, w2, 8, DType::I8, q(0.05, -128));
    conv(&mut b, input, t1, 3, 8, 3, 2, false, Activation::Relu);
    let t2 = b.tensor(h2, w2, 8, DType::I8, q(0.04, -128));
    conv(&mut b, t1, t2, 8, 8, 3, 1, true, Activation::Relu6);
    let t3 = b.tensor(h4, w4, 8, DType::I8, q(0.06, 3));
    conv(&mut b, t2, t3, 8, 8, 5, 2, false, Activation::None);
    let pooled = b.tensor(1, 1, 8, DType::I8, q(0.03, 1));
    b.push(Op::GlobalAvgPool {
        input: t3,
        output: pooled,
        requant: Requant::from_real(0.06 / 0.03).unwrap_or(Requant {
            multiplier: 0,
            shift: 0,
        }),
    });
    let gate = b.tensor(1, 1, 8, DType::I8, SIGMOID_OUTPUT);
    conv(&mut b, pooled, gate, 8, 8, 1, 1, false, Activation::Sigmoid);
    let gated = b.tensor(h4, w4, 8, DType::I8, q(0.05, 0));
    b.push(Op::Mul {
        input: t3,
        scale: gate,
        output: gated,
        requant: Requant::from_real(0.06 * SIGMOID_OUTPUT.scale as f64 / 0.05).unwrap_or(Requant {
            multiplier: 0,
            shift: 0,
        }),
    });
    let up = b.tensor(h2, w2, 8, DType::I8, q(0.05, 0));
    b.push(Op::Upsample {
        input: gated,
        output: up,
        mode: UpsampleMode::Bilinear,
        factor: 2,
    });
    let sum = b.tensor(h2, w2, 8, DType::I8, q(0.07, -20));
    let twice_max = 2.0 * 0.05f64.max(0.04);
    let shift = (1i64 << crate::quant::ADD_LEFT_SHIFT) as f64;
    b.push(Op::Add {
        a: up,
        b: t2,
        output: sum,
        a_requant: Requant::from_real(0.05 / twice_max).unwrap_or(Requant {
            multiplier: 0,
            shift: 0,
        }),
        b_requant: Requant::from_real(0.04 / twice_max).unwrap_or(Requant {
            multiplier: 0,
            shift: 0,
        }),
        out_requant: Requant::from_real(twice_max / (shift * 0.07)).unwrap_or(Requant {
            multiplier: 0,
            shift: 0,
        }),
        act: Activation::Relu,
    });
    let cat = b.tensor(h2, w2, 16, DType::I8, q(0.07, -20));
    let mut inputs = heapless::Vec::new();
    let mut requant = heapless::Vec::new();
    for (id, s) in [(sum, 0.07f64), (t1, 0.05)] {
        let _ = inputs.push(id);
        let _ = requant.push(Requant::from_real(s / 0.07).unwrap_or(Requant {
            multiplier: 0,
            shift: 0,
        }));
    }
    b.push(Op::Concat {
        inputs,
        requant,
        output: cat,
    });
    let full = b.tensor(height, width, 16, DType::I8, q(0.07, -20));
    b.push(Op::Upsample {
        input: cat,
        output: full,
        mode: UpsampleMode::Nearest,
        factor: 2,
    });
    let depth = b.tensor(height, width, 1, DType::F32, q(1.0, 0));
    conv(&mut b, full, depth, 16, 1, 3, 1, false, Activation::None);
    b.push(Op::Output { input: depth });
    b.to_bytes()
}

/// `e^x` without `std` (only for building LUTs in examples).
fn libm_exp(x: f32) -> f32 {
    // exp(x) = 2^(x·log2 e); split into integer and fractional powers.
    let y = x as f64 * core::f64::consts::LOG2_E;
    let n = y.floor();
    let f = y - n;
    // 2^f on [0, 1) by a short series of e^(f ln 2)
    let t = f * core::f64::consts::LN_2;
    let mut term = 1.0f64;
    let mut sum = 1.0f64;
    for k in 1..20 {
        term *= t / k as f64;
        sum += term;
    }
    let n = n.clamp(-1000.0, 1000.0) as i32;
    let mut p = 1.0f64;
    if n >= 0 {
        for _ in 0..n {
            p *= 2.0;
        }
    } else {
        for _ in 0..(-n) {
            p *= 0.5;
        }
    }
    (sum * p) as f32
}
