//! Header parsing: a bounds-checked cursor over the raw bytes and the validation of every count,
//! length, tensor shape and offset against what the file can hold.

use crate::value::{ArrayValue, Value, ValueType};
use crate::{DEFAULT_ALIGNMENT, DType, GgufError, Limits, MAGIC, Result, TensorInfo};

pub(crate) struct Header {
    pub version: u32,
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    pub data_offset: u64,
}

/// Most dimensions a tensor may have (ggml's GGML_MAX_DIMS).
const MAX_DIMS: u32 = 4;

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    limits: Limits,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn malformed(&self, what: impl Into<String>) -> GgufError {
        GgufError::Malformed {
            offset: self.pos as u64,
            what: what.into(),
        }
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                offset: self.pos as u64,
                needed: n,
                len: self.bytes.len() as u64,
            });
        }
        let start = self.pos;
        // n <= remaining, which fits in usize.
        self.pos += n as usize;
        Ok(&self.bytes[start..self.pos])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let s = self.take(N as u64)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn bool(&mut self) -> Result<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => {
                self.pos -= 1;
                Err(self.malformed(format!("bool value {b} is neither 0 nor 1")))
            }
        }
    }

    fn string(&mut self) -> Result<String> {
        let len = self.u64()?;
        if len > self.limits.max_string_len {
            self.pos -= 8;
            return Err(self.malformed(format!(
                "string length {len} exceeds the limit of {} bytes",
                self.limits.max_string_len
            )));
        }
        let at = self.pos;
        let raw = self.take(len)?;
        // Vocabularies of real models contain invalid UTF-8 fragments only as escaped byte
        // tokens, so strictness costs nothing and keeps every later `&str` honest.
        String::from_utf8(raw.to_vec()).map_err(|e| GgufError::Malformed {
            offset: at as u64,
            what: format!("string is not valid UTF-8: {e}"),
        })
    }

    /// Reads an element count and checks that `count` elements of at least `min_size` bytes each
    /// could fit in the rest of the file, so a lying header cannot make us reserve huge vectors.
    fn count(&mut self, what: &str, limit: u64, min_size: u64) -> Result<usize> {
        let n = self.u64()?;
        if n > limit {
            self.pos -= 8;
            return Err(self.malformed(format!("{what} count {n} exceeds the limit of {limit}")));
        }
        let need = n.checked_mul(min_size);
        if need.is_none_or(|need| need > self.remaining()) {
            self.pos -= 8;
            return Err(self.malformed(format!(
                "{what} count {n} cannot fit in the {} bytes that remain",
                self.remaining()
            )));
        }
        Ok(n as usize)
    }

    fn value_type(&mut self) -> Result<ValueType> {
        let at = self.pos as u64;
        let ty = self.u32()?;
        ValueType::from_u32(ty).ok_or(GgufError::UnknownValueType { offset: at, ty })
    }

    fn value(&mut self, ty: ValueType, depth: u32) -> Result<Value> {
        Ok(match ty {
            ValueType::U8 => Value::U8(self.u8()?),
            ValueType::I8 => Value::I8(self.u8()? as i8),
            ValueType::U16 => Value::U16(self.u16()?),
            ValueType::I16 => Value::I16(self.u16()? as i16),
            ValueType::U32 => Value::U32(self.u32()?),
            ValueType::I32 => Value::I32(self.u32()? as i32),
            ValueType::F32 => Value::F32(f32::from_bits(self.u32()?)),
            ValueType::Bool => Value::Bool(self.bool()?),
            ValueType::String => Value::String(self.string()?),
            ValueType::U64 => Value::U64(self.u64()?),
            ValueType::I64 => Value::I64(self.u64()? as i64),
            ValueType::F64 => Value::F64(f64::from_bits(self.u64()?)),
            ValueType::Array => Value::Array(self.array_value(depth + 1)?),
        })
    }

    fn array_value(&mut self, depth: u32) -> Result<ArrayValue> {
        if depth > self.limits.max_array_depth {
            return Err(self.malformed(format!(
                "arrays nested deeper than {}",
                self.limits.max_array_depth
            )));
        }
        let ty = self.value_type()?;
        let n = self.count("array element", self.limits.max_array_len, ty.min_size())?;
        macro_rules! read_vec {
            ($variant:ident, $read:expr) => {{
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push($read(&mut *self)?);
                }
                ArrayValue::$variant(v)
            }};
        }
        Ok(match ty {
            ValueType::U8 => read_vec!(U8, Cursor::u8),
            ValueType::I8 => read_vec!(I8, |c: &mut Cursor| c.u8().map(|x| x as i8)),
            ValueType::U16 => read_vec!(U16, Cursor::u16),
            ValueType::I16 => read_vec!(I16, |c: &mut Cursor| c.u16().map(|x| x as i16)),
            ValueType::U32 => read_vec!(U32, Cursor::u32),
            ValueType::I32 => read_vec!(I32, |c: &mut Cursor| c.u32().map(|x| x as i32)),
            ValueType::F32 => read_vec!(F32, |c: &mut Cursor| c.u32().map(f32::from_bits)),
            ValueType::Bool => read_vec!(Bool, Cursor::bool),
            ValueType::String => read_vec!(String, Cursor::string),
            ValueType::U64 => read_vec!(U64, Cursor::u64),
            ValueType::I64 => read_vec!(I64, |c: &mut Cursor| c.u64().map(|x| x as i64)),
            ValueType::F64 => read_vec!(F64, |c: &mut Cursor| c.u64().map(f64::from_bits)),
            ValueType::Array => read_vec!(Array, |c: &mut Cursor| c.array_value(depth + 1)),
        })
    }
}

pub(crate) fn parse_header(bytes: &[u8], limits: Limits) -> Result<Header> {
    let mut c = Cursor {
        bytes,
        pos: 0,
        limits,
    };
    let magic = c.u32()?;
    if magic != MAGIC {
        return Err(GgufError::BadMagic { found: magic });
    }
    let version = c.u32()?;
    // Version 1 used 32-bit counts and lengths; nothing current writes it.
    if !(2..=3).contains(&version) {
        return Err(GgufError::UnsupportedVersion(version));
    }
    let n_tensors_at = c.pos;
    let n_tensors = c.u64()?;
    let n_kv = c.u64()?;
    if n_tensors > limits.max_tensor_count {
        return Err(GgufError::Malformed {
            offset: n_tensors_at as u64,
            what: format!(
                "tensor count {n_tensors} exceeds the limit of {}",
                limits.max_tensor_count
            ),
        });
    }
    if n_kv > limits.max_kv_count {
        return Err(GgufError::Malformed {
            offset: n_tensors_at as u64 + 8,
            what: format!(
                "metadata count {n_kv} exceeds the limit of {}",
                limits.max_kv_count
            ),
        });
    }
    // Smallest possible KV: key length (8) + type (4) + a one-byte value.
    if n_kv.saturating_mul(13) > c.remaining() {
        return Err(GgufError::Malformed {
            offset: n_tensors_at as u64 + 8,
            what: format!("metadata count {n_kv} cannot fit in the file"),
        });
    }

    let mut metadata = Vec::with_capacity(n_kv as usize);
    for _ in 0..n_kv {
        let key = c.string()?;
        if key.is_empty() {
            return Err(c.malformed("empty metadata key"));
        }
        let ty = c.value_type()?;
        let value = c.value(ty, 0)?;
        metadata.push((key, value));
    }

    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((_, v)) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
            _ => {
                return Err(GgufError::Malformed {
                    offset: 0,
                    what: format!(
                        "general.alignment must be a power of two up to 1 MiB, got {}",
                        v.summary(40)
                    ),
                });
            }
        },
    };

    // Smallest possible tensor info: name length (8) + n_dims (4) + one dim (8) + type (4) + offset (8).
    if n_tensors.saturating_mul(32) > c.remaining() {
        return Err(GgufError::Malformed {
            offset: n_tensors_at as u64,
            what: format!("tensor count {n_tensors} cannot fit in the file"),
        });
    }
    let mut tensors = Vec::with_capacity(n_tensors as usize);
    for _ in 0..n_tensors {
        tensors.push(tensor_info(&mut c)?);
    }

    let data_offset = (c.pos as u64)
        .checked_next_multiple_of(alignment)
        .ok_or_else(|| c.malformed("data offset overflows"))?;
    let file_len = bytes.len() as u64;
    // A header-only file may end before the padding; that is fine only if no tensor needs the
    // data section, which the per-tensor check below enforces.
    let data_len = file_len.saturating_sub(data_offset);
    for t in &tensors {
        if t.offset % alignment != 0 {
            return Err(GgufError::BadTensor {
                name: t.name.clone(),
                what: format!(
                    "data offset {} is not a multiple of the alignment {alignment}",
                    t.offset
                ),
            });
        }
        let end = t.offset.checked_add(t.n_bytes);
        if end.is_none_or(|end| end > data_len) {
            return Err(GgufError::BadTensor {
                name: t.name.clone(),
                what: format!(
                    "data [{}, +{}) lies outside the {data_len}-byte data section",
                    t.offset, t.n_bytes
                ),
            });
        }
    }
    // Everything must be addressable on this platform (only matters on 32-bit targets).
    if usize::try_from(file_len).is_err() {
        return Err(GgufError::Malformed {
            offset: 0,
            what: "file too large for this platform's address space".into(),
        });
    }

    Ok(Header {
        version,
        metadata,
        tensors,
        alignment,
        data_offset,
    })
}

fn tensor_info(c: &mut Cursor) -> Result<TensorInfo> {
    let name = c.string()?;
    if name.is_empty() {
        return Err(c.malformed("empty tensor name"));
    }
    let bad = |what: String| GgufError::BadTensor {
        name: name.clone(),
        what,
    };
    let n_dims = c.u32()?;
    if n_dims == 0 || n_dims > MAX_DIMS {
        return Err(bad(format!(
            "{n_dims} dimensions (allowed: 1 to {MAX_DIMS})"
        )));
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for _ in 0..n_dims {
        dims.push(c.u64()?);
    }
    let ty = c.u32()?;
    let dtype = DType::from_ggml(ty).ok_or_else(|| GgufError::UnknownTensorType {
        name: name.clone(),
        ty,
    })?;
    let offset = c.u64()?;

    // ggml keeps dimensions in int64; anything that does not fit is hostile.
    if let Some(d) = dims.iter().find(|&&d| d > i64::MAX as u64) {
        return Err(bad(format!("dimension {d} is out of range")));
    }
    let n_elements = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= i64::MAX as u64)
        .ok_or_else(|| bad(format!("element count of shape {dims:?} overflows")))?;
    let row_len = dims[0];
    let row_bytes = usize::try_from(row_len)
        .ok()
        .and_then(|n| dtype.row_bytes(n))
        .ok_or_else(|| {
            bad(format!(
                "row length {row_len} is not a multiple of the {} block size {}",
                dtype.name(),
                dtype.block_len()
            ))
        })?;
    let n_rows = n_elements.checked_div(row_len).unwrap_or(0);
    let n_bytes = (row_bytes as u64)
        .checked_mul(n_rows)
        .ok_or_else(|| bad(format!("byte size of shape {dims:?} overflows")))?;
    Ok(TensorInfo {
        name,
        dims,
        dtype,
        offset,
        n_elements,
        n_bytes,
    })
}
