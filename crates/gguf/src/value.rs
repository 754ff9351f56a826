//! Metadata values: the twelve GGUF value types, with arrays stored typed (a vocabulary of
//! 262k strings or scores stays one `Vec`, not 262k boxed values).

/// The type tag of a metadata value as it appears in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    pub fn from_u32(v: u32) -> Option<ValueType> {
        use ValueType::*;
        Some(match v {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// Encoded size of one scalar of this type; strings and arrays take at least 8 bytes (their length).
    pub fn min_size(self) -> u64 {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            // element type (4) + length (8)
            Array => 12,
        }
    }
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(ArrayValue),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// An array value, stored by element type.
#[derive(Debug, Clone, PartialEq)]
pub enum ArrayValue {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<ArrayValue>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl Value {
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "u8",
            Value::I8(_) => "i8",
            Value::U16(_) => "u16",
            Value::I16(_) => "i16",
            Value::U32(_) => "u32",
            Value::I32(_) => "i32",
            Value::F32(_) => "f32",
            Value::Bool(_) => "bool",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::U64(_) => "u64",
            Value::I64(_) => "i64",
            Value::F64(_) => "f64",
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// Any integer type whose value is non-negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any numeric type, as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v as f64),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&ArrayValue> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// A short human-readable rendering (arrays abbreviated), for `model info`.
    pub fn summary(&self, max_chars: usize) -> String {
        let s = match self {
            Value::String(s) => format!("{s:?}"),
            Value::Array(a) => format!("[{} x {}]", a.len(), a.elem_type_name()),
            Value::F32(v) => v.to_string(),
            Value::F64(v) => v.to_string(),
            Value::Bool(v) => v.to_string(),
            other => other
                .as_u64()
                .map(|v| v.to_string())
                .or_else(|| other.as_f64().map(|v| v.to_string()))
                .unwrap_or_default(),
        };
        if s.chars().count() > max_chars {
            let cut: String = s.chars().take(max_chars).collect();
            format!("{cut}…")
        } else {
            s
        }
    }
}

impl ArrayValue {
    pub fn len(&self) -> usize {
        match self {
            ArrayValue::U8(v) => v.len(),
            ArrayValue::I8(v) => v.len(),
            ArrayValue::U16(v) => v.len(),
            ArrayValue::I16(v) => v.len(),
            ArrayValue::U32(v) => v.len(),
            ArrayValue::I32(v) => v.len(),
            ArrayValue::F32(v) => v.len(),
            ArrayValue::Bool(v) => v.len(),
            ArrayValue::String(v) => v.len(),
            ArrayValue::Array(v) => v.len(),
            ArrayValue::U64(v) => v.len(),
            ArrayValue::I64(v) => v.len(),
            ArrayValue::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn elem_type_name(&self) -> &'static str {
        match self {
            ArrayValue::U8(_) => "u8",
            ArrayValue::I8(_) => "i8",
            ArrayValue::U16(_) => "u16",
            ArrayValue::I16(_) => "i16",
            ArrayValue::U32(_) => "u32",
            ArrayValue::I32(_) => "i32",
            ArrayValue::F32(_) => "f32",
            ArrayValue::Bool(_) => "bool",
            ArrayValue::String(_) => "string",
            ArrayValue::Array(_) => "array",
            ArrayValue::U64(_) => "u64",
            ArrayValue::I64(_) => "i64",
            ArrayValue::F64(_) => "f64",
        }
    }

    pub fn as_strings(&self) -> Option<&[String]> {
        match self {
            ArrayValue::String(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_f32s(&self) -> Option<&[f32]> {
        match self {
            ArrayValue::F32(v) => Some(v),
            _ => None,
        }
    }

    /// Integer arrays of any width as i64 (token types are i32 in practice, but writers vary).
    pub fn to_i64s(&self) -> Option<Vec<i64>> {
        Some(match self {
            ArrayValue::U8(v) => v.iter().map(|&x| x.into()).collect(),
            ArrayValue::I8(v) => v.iter().map(|&x| x.into()).collect(),
            ArrayValue::U16(v) => v.iter().map(|&x| x.into()).collect(),
            ArrayValue::I16(v) => v.iter().map(|&x| x.into()).collect(),
            ArrayValue::U32(v) => v.iter().map(|&x| x.into()).collect(),
            ArrayValue::I32(v) => v.iter().map(|&x| x.into()).collect(),
            ArrayValue::I64(v) => v.clone(),
            ArrayValue::U64(v) => v.iter().map(|&x| x as i64).collect(),
            _ => return None,
        })
    }
}
