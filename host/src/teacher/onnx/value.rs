//! Values flowing through an imported ONNX graph: float tensors (candle, differentiable) and the
//! small integer tensors of the shape plumbing (`Shape`, `Gather`, `Concat` of shapes, …), which
//! are evaluated on the host at every forward pass from the actual shapes, so dynamic batch and
//! image sizes need no special case.

use candle_core::{DType, Device, Tensor};
use tract_onnx::pb::{tensor_proto::DataType, TensorProto};

use crate::error::{Error, Result};

/// A small integer tensor (int64, int32, bool, …, all held as i64), row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Ints {
    pub shape: Vec<usize>,
    pub data: Vec<i64>,
}

impl Ints {
    pub fn vector(data: Vec<i64>) -> Ints {
        Ints {
            shape: vec![data.len()],
            data,
        }
    }

    pub fn scalar(v: i64) -> Ints {
        Ints {
            shape: vec![],
            data: vec![v],
        }
    }
}

/// One value of the graph.
#[derive(Clone, Debug)]
pub enum Value {
    /// Float data (f32 on the teacher's device).
    F(Tensor),
    /// Integer or boolean data, on the host.
    I(Ints),
}

impl Value {
    /// The value as an f32 tensor (integers converted).
    pub fn float(&self, device: &Device) -> Result<Tensor> {
        match self {
            Value::F(t) => Ok(t.clone()),
            Value::I(i) => {
                let data: Vec<f32> = i.data.iter().map(|&v| v as f32).collect();
                Ok(Tensor::from_vec(data, i.shape.clone(), device)?)
            }
        }
    }

    /// The value as host integers (a float tensor is read back and truncated: shape arithmetic
    /// that PyTorch's exporter does in float, e.g. `Cast(Mul(Shape, scale))`).
    pub fn ints(&self) -> Result<Ints> {
        match self {
            Value::I(i) => Ok(i.clone()),
            Value::F(t) => {
                if t.elem_count() > 4096 {
                    return Err(Error::Runtime(format!(
                        "a float tensor of shape {:?} is used as integers (shape data)",
                        t.dims()
                    )));
                }
                let shape = t.dims().to_vec();
                let data = t
                    .flatten_all()?
                    .to_dtype(DType::F32)?
                    .to_vec1::<f32>()?
                    .into_iter()
                    .map(|v| v as i64)
                    .collect();
                Ok(Ints { shape, data })
            }
        }
    }

    pub fn shape(&self) -> Vec<usize> {
        match self {
            Value::F(t) => t.dims().to_vec(),
            Value::I(i) => i.shape.clone(),
        }
    }
}

/// Reads an initializer or a `Constant`'s tensor. Floats become f32 tensors on `device`, integer
/// and boolean types host integers; other types are refused by name.
pub fn from_proto(t: &TensorProto, device: &Device) -> Result<Value> {
    let shape: Vec<usize> = t
        .dims
        .iter()
        .map(|&d| {
            usize::try_from(d).map_err(|_| {
                Error::Runtime(format!("tensor {:?} has a negative dimension {d}", t.name))
            })
        })
        .collect::<Result<_>>()?;
    let n: usize = shape.iter().product();
    if t.data_location == Some(1) || !t.external_data.is_empty() {
        return Err(Error::Runtime(format!(
            "tensor {:?} keeps its data in an external file; export with the weights inside the .onnx (a few hundred MB at most)",
            t.name
        )));
    }
    let raw = &t.raw_data;
    let bad_len = |got: usize| {
        Error::Runtime(format!(
            "tensor {:?}: {got} values for shape {shape:?} ({n} expected)",
            t.name
        ))
    };
    let dt = DataType::try_from(t.data_type).unwrap_or(DataType::Undefined);
    let float = |v: Vec<f32>| -> Result<Value> {
        if v.len() != n {
            return Err(bad_len(v.len()));
        }
        Ok(Value::F(Tensor::from_vec(v, shape.clone(), device)?))
    };
    let ints = |v: Vec<i64>| -> Result<Value> {
        if v.len() != n {
            return Err(bad_len(v.len()));
        }
        Ok(Value::I(Ints {
            shape: shape.clone(),
            data: v,
        }))
    };
    let chunks = |size: usize| -> Result<std::slice::ChunksExact<'_, u8>> {
        if raw.len() != n * size {
            return Err(Error::Runtime(format!(
                "tensor {:?}: {} bytes of raw data for shape {shape:?} ({} expected)",
                t.name,
                raw.len(),
                n * size
            )));
        }
        Ok(raw.chunks_exact(size))
    };
    let use_raw = !raw.is_empty() || n == 0;
    match dt {
        DataType::Float if use_raw => float(
            chunks(4)?
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ),
        DataType::Float => float(t.float_data.clone()),
        DataType::Double if use_raw => float(
            chunks(8)?
                .map(|b| {
                    f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
                })
                .collect(),
        ),
        DataType::Double => float(t.double_data.iter().map(|&v| v as f32).collect()),
        DataType::Float16 if use_raw => float(
            chunks(2)?
                .map(|b| half_to_f32(u16::from_le_bytes([b[0], b[1]])))
                .collect(),
        ),
        DataType::Int64 if use_raw => ints(
            chunks(8)?
                .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
                .collect(),
        ),
        DataType::Int64 => ints(t.int64_data.clone()),
        DataType::Int32 if use_raw => ints(
            chunks(4)?
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64)
                .collect(),
        ),
        DataType::Int32 | DataType::Int16 | DataType::Int8 | DataType::Uint8 | DataType::Bool
            if !use_raw =>
        {
            ints(t.int32_data.iter().map(|&v| v as i64).collect())
        }
        DataType::Int8 => ints(chunks(1)?.map(|b| b[0] as i8 as i64).collect()),
        DataType::Uint8 | DataType::Bool => ints(chunks(1)?.map(|b| b[0] as i64).collect()),
        other => Err(Error::Runtime(format!(
            "tensor {:?} has data type {other:?}, which the importer does not read",
            t.name
        ))),
    }
}

/// IEEE half to f32.
fn half_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, f) => {
            // subnormal: normalise
            let mut e = 127 - 15 + 1;
            let mut f = f;
            while f & 0x400 == 0 {
                f <<= 1;
                e -= 1;
            }
            sign | ((e as u32) << 23) | ((f & 0x3ff) << 13)
        }
        (0x1f, f) => sign | 0x7f80_0000 | (f << 13),
        (e, f) => sign | ((e + 127 - 15) << 23) | (f << 13),
    };
    f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_convert() {
        assert_eq!(half_to_f32(0x3c00), 1.0);
        assert_eq!(half_to_f32(0xc000), -2.0);
        assert_eq!(half_to_f32(0x3555), 0.33325195);
        assert_eq!(half_to_f32(0x0001), 5.9604645e-8);
    }

    #[test]
    fn tensors_read_from_raw_and_typed_fields_and_bad_lengths_are_named() {
        let dev = Device::Cpu;
        let t = TensorProto {
            dims: vec![2],
            data_type: DataType::Float as i32,
            name: "w".into(),
            raw_data: [1.5f32, -2.0]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            ..Default::default()
        };
        let v = from_proto(&t, &dev).unwrap().float(&dev).unwrap();
        assert_eq!(v.to_vec1::<f32>().unwrap(), [1.5, -2.0]);
        let t = TensorProto {
            dims: vec![3],
            data_type: DataType::Int64 as i32,
            int64_data: vec![1, -1, 7],
            ..Default::default()
        };
        assert_eq!(
            from_proto(&t, &dev).unwrap().ints().unwrap().data,
            [1, -1, 7]
        );
        let t = TensorProto {
            dims: vec![3],
            data_type: DataType::Float as i32,
            name: "short".into(),
            raw_data: vec![0; 8],
            ..Default::default()
        };
        let e = from_proto(&t, &dev).unwrap_err().to_string();
        assert!(e.contains("short") && e.contains("8 bytes"), "{e}");
    }
}
