//! A hardened, memory-mapped reader for GGUF files (versions 2 and 3).
//!
//! The file is mapped once; tensor data is handed out as borrowed byte slices into the map, so
//! loading a model copies nothing. Everything in the header is treated as hostile: lengths and
//! counts are bounded by what the file can actually hold, sizes and offsets use checked
//! arithmetic, every tensor must lie inside the data section, and unknown types are rejected.
//! A bad file produces a [`GgufError`] naming the problem and the byte offset, never a panic.
//!
//! ```no_run
//! let file = autoglm_gguf::GgufFile::open("model.gguf")?;
//! let arch = file.architecture()?;
//! let t = file.tensor("token_embd.weight").expect("present");
//! let bytes: &[u8] = file.tensor_data(t);
//! # Ok::<(), autoglm_gguf::GgufError>(())
//! ```

mod parse;
mod value;
mod write;

use std::collections::HashMap;
use std::ops::Deref;
use std::path::{Path, PathBuf};

pub use autoglm_kernels::DType;
pub use value::{ArrayValue, Value, ValueType};
pub use write::GgufWriter;

/// The magic number at the start of every GGUF file ("GGUF" little-endian).
pub const MAGIC: u32 = 0x4655_4747;
/// Alignment of the data section when the file does not set `general.alignment`.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// Limits that keep a hostile header from making us allocate or loop without bound.
/// Every count is additionally bounded by the bytes left in the file.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest string (key, value or tensor name), in bytes.
    pub max_string_len: u64,
    /// Most elements in one array value.
    pub max_array_len: u64,
    /// Deepest nesting of arrays inside arrays.
    pub max_array_depth: u32,
    /// Most metadata entries.
    pub max_kv_count: u64,
    /// Most tensors.
    pub max_tensor_count: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // Chat templates run to tens of KiB; 16 MiB leaves room without inviting abuse.
            max_string_len: 16 << 20,
            // Vocabularies reach a few hundred thousand entries.
            max_array_len: 1 << 26,
            max_array_depth: 4,
            max_kv_count: 1 << 16,
            max_tensor_count: 1 << 16,
        }
    }
}

/// Everything that can go wrong reading a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot open {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("not a GGUF file (magic {found:#010x}, expected {MAGIC:#010x})")]
    BadMagic { found: u32 },
    #[error("unsupported GGUF version {0} (supported: 2 and 3)")]
    UnsupportedVersion(u32),
    #[error("file truncated: needed {needed} bytes at offset {offset}, file has {len}")]
    Truncated { offset: u64, needed: u64, len: u64 },
    #[error("at offset {offset}: {what}")]
    Malformed { offset: u64, what: String },
    #[error("at offset {offset}: unknown metadata value type {ty}")]
    UnknownValueType { offset: u64, ty: u32 },
    #[error("tensor '{name}': unknown tensor type id {ty}")]
    UnknownTensorType { name: String, ty: u32 },
    #[error("tensor '{name}': {what}")]
    BadTensor { name: String, what: String },
    #[error("duplicate metadata key '{0}'")]
    DuplicateKey(String),
    #[error("duplicate tensor name '{0}'")]
    DuplicateTensor(String),
    #[error("metadata key '{0}' is missing")]
    MissingKey(String),
    #[error("metadata key '{key}' has type {found}, expected {expected}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: &'static str,
    },
}

pub type Result<T, E = GgufError> = std::result::Result<T, E>;

/// One tensor's description from the header.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions, innermost (contiguous) first, as GGUF stores them: `dims[0]` is a row's length.
    pub dims: Vec<u64>,
    pub dtype: DType,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
    pub n_elements: u64,
    pub n_bytes: u64,
}

impl TensorInfo {
    /// `(rows, cols)` when the tensor is viewed as a matrix of rows of `dims[0]` elements.
    pub fn as_matrix(&self) -> (usize, usize) {
        let cols = self.dims.first().copied().unwrap_or(1);
        let rows = self.n_elements.checked_div(cols).unwrap_or(0);
        (rows as usize, cols as usize)
    }
}

enum Backing {
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Deref for Backing {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Backing::Mmap(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

/// A parsed GGUF file. Tensor data stays in the map; metadata is parsed eagerly.
pub struct GgufFile {
    bytes: Backing,
    version: u32,
    metadata: Vec<(String, Value)>,
    key_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

impl GgufFile {
    /// Maps and parses the file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        Self::open_with_limits(path, Limits::default())
    }

    pub fn open_with_limits(path: impl AsRef<Path>, limits: Limits) -> Result<GgufFile> {
        let path = path.as_ref();
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if meta.len() == 0 {
            return Err(GgufError::Truncated {
                offset: 0,
                needed: 8,
                len: 0,
            });
        }
        // SAFETY: the map is read-only and private. Another process truncating the file while it
        // is mapped would fault on access; that is the accepted contract of memory-mapped models
        // (llama.cpp makes the same one), and the catalogue cache only ever replaces files by rename.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::parse(Backing::Mmap(map), limits)
    }

    /// Parses a GGUF image held in memory (tests, fuzzing, small generated files).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile> {
        Self::parse(Backing::Owned(bytes), Limits::default())
    }

    pub fn from_bytes_with_limits(bytes: Vec<u8>, limits: Limits) -> Result<GgufFile> {
        Self::parse(Backing::Owned(bytes), limits)
    }

    fn parse(bytes: Backing, limits: Limits) -> Result<GgufFile> {
        let header = parse::parse_header(&bytes, limits)?;
        let mut key_index = HashMap::with_capacity(header.metadata.len());
        for (i, (k, _)) in header.metadata.iter().enumerate() {
            if key_index.insert(k.clone(), i).is_some() {
                return Err(GgufError::DuplicateKey(k.clone()));
            }
        }
        let mut tensor_index = HashMap::with_capacity(header.tensors.len());
        for (i, t) in header.tensors.iter().enumerate() {
            if tensor_index.insert(t.name.clone(), i).is_some() {
                return Err(GgufError::DuplicateTensor(t.name.clone()));
            }
        }
        Ok(GgufFile {
            bytes,
            version: header.version,
            metadata: header.metadata,
            key_index,
            tensors: header.tensors,
            tensor_index,
            alignment: header.alignment,
            data_offset: header.data_offset,
        })
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Byte offset of the data section from the start of the file.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// Size of the whole file in bytes.
    pub fn file_size(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// All metadata entries in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.key_index.get(key).map(|&i| &self.metadata[i].1)
    }

    fn require(&self, key: &str) -> Result<&Value> {
        self.get(key)
            .ok_or_else(|| GgufError::MissingKey(key.to_string()))
    }

    fn wrong(key: &str, expected: &'static str, v: &Value) -> GgufError {
        GgufError::WrongType {
            key: key.to_string(),
            expected,
            found: v.type_name(),
        }
    }

    /// A string value; error if missing or not a string.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| Self::wrong(key, "string", v))
    }

    /// A string value if present; error only if present with another type.
    pub fn get_str_opt(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| Self::wrong(key, "string", v)),
        }
    }

    /// Any integer value that fits in a u64.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        let v = self.require(key)?;
        v.as_u64()
            .ok_or_else(|| Self::wrong(key, "non-negative integer", v))
    }

    pub fn get_u64_opt(&self, key: &str) -> Result<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| Self::wrong(key, "non-negative integer", v)),
        }
    }

    /// Any numeric value, as f32.
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        let v = self.require(key)?;
        v.as_f64()
            .map(|x| x as f32)
            .ok_or_else(|| Self::wrong(key, "number", v))
    }

    pub fn get_f32_opt(&self, key: &str) -> Result<Option<f32>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(|x| Some(x as f32))
                .ok_or_else(|| Self::wrong(key, "number", v)),
        }
    }

    pub fn get_bool_opt(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| Self::wrong(key, "bool", v)),
        }
    }

    /// An array value if present; error only if present with another type.
    pub fn get_array_opt(&self, key: &str) -> Result<Option<&ArrayValue>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(v) => Err(Self::wrong(key, "array", v)),
        }
    }

    /// `general.architecture`, the key that names every other architecture-specific key.
    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The bytes of a tensor, borrowed from the map. Bounds were checked at parse time.
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        // Parse-time validation guarantees data_offset + offset + n_bytes <= file length and that
        // these fit in usize; `get` keeps that a non-panicking invariant even for a foreign TensorInfo.
        let start = (self.data_offset + t.offset) as usize;
        let end = start + t.n_bytes as usize;
        self.bytes.get(start..end).unwrap_or(&[])
    }

    /// Total number of weights over all tensors.
    pub fn parameter_count(&self) -> u64 {
        self.tensors.iter().map(|t| t.n_elements).sum()
    }
}

#[cfg(test)]
mod tests;
