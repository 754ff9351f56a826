//! A minimal GGUF writer: builds well-formed files in memory for tests, fuzz seeds and tools
//! that emit small models. It writes exactly what the reader accepts, nothing clever.

use crate::value::{ArrayValue, Value};
use crate::{DEFAULT_ALIGNMENT, DType};

/// Builds a GGUF image: add metadata and tensors, then [`GgufWriter::finish`].
#[derive(Debug, Clone)]
pub struct GgufWriter {
    version: u32,
    alignment: u64,
    metadata: Vec<(String, Value)>,
    tensors: Vec<(String, Vec<u64>, DType, Vec<u8>)>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        GgufWriter {
            version: 3,
            alignment: DEFAULT_ALIGNMENT,
            metadata: Vec::new(),
            tensors: Vec::new(),
        }
    }
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn version(mut self, v: u32) -> Self {
        self.version = v;
        self
    }

    /// Adds a metadata entry. Setting `general.alignment` (as a u32) also changes the padding used.
    pub fn kv(mut self, key: &str, value: Value) -> Self {
        if key == "general.alignment"
            && let Some(a) = value.as_u64()
        {
            self.alignment = a.max(1);
        }
        self.metadata.push((key.to_string(), value));
        self
    }

    /// Adds a tensor; `data` must already be encoded in `dtype`'s block format.
    pub fn tensor(mut self, name: &str, dims: &[u64], dtype: DType, data: Vec<u8>) -> Self {
        self.tensors
            .push((name.to_string(), dims.to_vec(), dtype, data));
        self
    }

    /// Adds an F32 tensor from values.
    pub fn tensor_f32(self, name: &str, dims: &[u64], values: &[f32]) -> Self {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensor(name, dims, DType::F32, data)
    }

    pub fn finish(self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&crate::MAGIC.to_le_bytes());
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut out, k);
            put_value(&mut out, v);
        }
        let mut offset = 0u64;
        let mut offsets = Vec::with_capacity(self.tensors.len());
        for (name, dims, dtype, data) in &self.tensors {
            put_str(&mut out, name);
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&dtype.ggml_id().to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offsets.push(offset);
            offset = (offset + data.len() as u64).next_multiple_of(self.alignment);
        }
        pad(&mut out, self.alignment);
        let base = out.len();
        for ((_, _, _, data), off) in self.tensors.iter().zip(offsets) {
            out.resize(base + off as usize, 0);
            out.extend_from_slice(data);
        }
        out
    }
}

fn pad(out: &mut Vec<u8>, alignment: u64) {
    let len = (out.len() as u64).next_multiple_of(alignment) as usize;
    out.resize(len, 0);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn type_id(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    out.extend_from_slice(&type_id(v).to_le_bytes());
    put_payload(out, v);
}

fn put_payload(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => put_str(out, s),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Array(a) => put_array(out, a),
    }
}

fn put_array(out: &mut Vec<u8>, a: &ArrayValue) {
    // An array's element type is the type id its elements would have as scalars.
    let (ty, items): (u32, Vec<Value>) = match a {
        ArrayValue::U8(v) => (0, v.iter().map(|&x| Value::U8(x)).collect()),
        ArrayValue::I8(v) => (1, v.iter().map(|&x| Value::I8(x)).collect()),
        ArrayValue::U16(v) => (2, v.iter().map(|&x| Value::U16(x)).collect()),
        ArrayValue::I16(v) => (3, v.iter().map(|&x| Value::I16(x)).collect()),
        ArrayValue::U32(v) => (4, v.iter().map(|&x| Value::U32(x)).collect()),
        ArrayValue::I32(v) => (5, v.iter().map(|&x| Value::I32(x)).collect()),
        ArrayValue::F32(v) => (6, v.iter().map(|&x| Value::F32(x)).collect()),
        ArrayValue::Bool(v) => (7, v.iter().map(|&x| Value::Bool(x)).collect()),
        ArrayValue::String(v) => (8, v.iter().map(|x| Value::String(x.clone())).collect()),
        ArrayValue::Array(v) => (9, v.iter().map(|x| Value::Array(x.clone())).collect()),
        ArrayValue::U64(v) => (10, v.iter().map(|&x| Value::U64(x)).collect()),
        ArrayValue::I64(v) => (11, v.iter().map(|&x| Value::I64(x)).collect()),
        ArrayValue::F64(v) => (12, v.iter().map(|&x| Value::F64(x)).collect()),
    };
    out.extend_from_slice(&ty.to_le_bytes());
    out.extend_from_slice(&(items.len() as u64).to_le_bytes());
    for item in &items {
        put_payload(out, item);
    }
}
