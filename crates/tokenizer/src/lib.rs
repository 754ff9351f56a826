//! The text side of a model: a tokenizer built from GGUF metadata that reproduces llama.cpp's
//! tokenisation exactly, a streaming detokenizer that never splits a UTF-8 character, and chat
//! templates rendered the way Hugging Face transformers renders them.
//!
//! ```no_run
//! use autoglm_tokenizer::{ChatMessage, ChatTemplate, StreamDecoder, Tokenizer};
//! let file = autoglm_gguf::GgufFile::open("model.gguf")?;
//! let tok = Tokenizer::from_gguf(&file)?;
//! let tmpl = ChatTemplate::from_gguf(&file, &tok)?.expect("model has a chat template");
//! let prompt = tmpl.render(&[ChatMessage::user("Hi!")], None, true)?;
//! let mut ids = Vec::new();
//! if tok.add_bos() {
//!     ids.extend(tok.bos_id());
//! }
//! ids.extend(tok.encode(&prompt, true));
//! let mut stream = StreamDecoder::new(&tok, false);
//! for &id in &ids {
//!     print!("{}", stream.push(id));
//! }
//! print!("{}", stream.flush());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Supported tokenizer models: "gpt2" (byte-level BPE, with the common llama.cpp
//! pre-tokenizers) and "llama" (SentencePiece-style BPE by score).

mod bpe;
mod pretok;
mod special;
mod spm;
mod stream;
mod template;
mod tokenizer;
mod unicode;
mod vocab;

pub use stream::{OwnedStreamDecoder, StreamDecoder};
pub use template::{ChatMessage, ChatTemplate};
pub use tokenizer::{SUPPORTED_MODELS, Tokenizer};

/// Everything that can go wrong building a tokenizer or rendering a chat template.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("metadata key '{0}' is missing (needed to build the tokenizer)")]
    MissingKey(String),
    #[error("invalid tokenizer metadata: {0}")]
    Metadata(String),
    #[error("unsupported tokenizer model \"{name}\" (supported: {supported})")]
    UnsupportedModel { name: String, supported: String },
    #[error("unsupported pre-tokenizer \"{name}\" (supported: {supported})")]
    UnsupportedPreTokenizer { name: String, supported: String },
    #[error("chat template syntax error: {0}")]
    TemplateSyntax(String),
    #[error("chat template render error: {0}")]
    TemplateRender(String),
    /// The template called `raise_exception(msg)`, i.e. it rejects these messages.
    #[error("chat template raised an exception: {0}")]
    TemplateException(String),
}

/// Names of the pre-tokenizers (`tokenizer.ggml.pre`) supported for "gpt2" models.
pub fn supported_pre_tokenizers() -> &'static [&'static str] {
    pretok::SUPPORTED
}
