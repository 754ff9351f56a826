//! The crate's error type.

use crate::DType;

/// Errors from validating kernel inputs (they usually trace back to a malformed model file).
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The tensor type exists in GGML but these kernels do not implement it.
    #[error("tensor type {0} is not supported by the kernels")]
    UnsupportedType(DType),
    /// Sizes do not fit together.
    #[error("bad shape: {what}")]
    Shape { what: String },
}

impl KernelError {
    pub(crate) fn shape(what: impl Into<String>) -> Self {
        KernelError::Shape { what: what.into() }
    }
}
