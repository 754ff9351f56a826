//! Parsing of the `--model` argument into a [`ModelRef`].
//!
//! Parsing is pure (no file-system or network access) so it can be tested exhaustively and so
//! that a typo is reported before anything slow happens; existence checks happen in
//! [`crate::Hub::resolve`].

use std::path::PathBuf;

use crate::catalog::{CatalogEntry, find_entry, known_names};
use crate::error::HubError;

/// What a `--model` argument refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelRef {
    /// A model from the built-in catalogue.
    Catalog(&'static CatalogEntry),
    /// A GGUF file on the local disk, used as is.
    Path(PathBuf),
    /// A file in a Hugging Face model repository.
    Hf {
        /// `OWNER/REPO`.
        repo: String,
        /// File path inside the repository (may contain `/`).
        file: String,
        /// Branch, tag or commit; `None` means `main`.
        revision: Option<String>,
    },
}

impl std::fmt::Display for ModelRef {
    /// Formats the reference so that parsing the output gives the same reference back.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelRef::Catalog(e) => f.write_str(e.name),
            ModelRef::Path(p) => write!(f, "{}", p.display()),
            ModelRef::Hf {
                repo,
                file,
                revision,
            } => {
                write!(f, "hf:{repo}/{file}")?;
                if let Some(r) = revision {
                    write!(f, "@{r}")?;
                }
                Ok(())
            }
        }
    }
}

/// The prefix that selects the Hugging Face hub.
pub const HF_PREFIX: &str = "hf:";

/// Parse a `--model` argument.
///
/// * `hf:OWNER/REPO/FILE.gguf[@REVISION]` → [`ModelRef::Hf`];
/// * anything containing a path separator or ending in `.gguf` → [`ModelRef::Path`];
/// * otherwise a catalogue name, or [`HubError::UnknownModel`] listing the known names.
pub fn parse_model_ref(s: &str) -> Result<ModelRef, HubError> {
    let invalid = |reason: &str| HubError::InvalidRef {
        spec: s.to_string(),
        reason: reason.to_string(),
    };
    if s.is_empty() {
        return Err(invalid("empty model reference"));
    }
    if let Some(rest) = s.strip_prefix(HF_PREFIX) {
        return parse_hf(rest).map_err(|reason| invalid(&reason));
    }
    if s.contains('/') || s.contains(std::path::MAIN_SEPARATOR) || ends_with_gguf(s) {
        return Ok(ModelRef::Path(PathBuf::from(s)));
    }
    find_entry(s)
        .map(ModelRef::Catalog)
        .ok_or_else(|| HubError::UnknownModel {
            name: s.to_string(),
            known: known_names(),
        })
}

fn ends_with_gguf(s: &str) -> bool {
    s.len() >= 5
        && s.is_char_boundary(s.len() - 5)
        && s[s.len() - 5..].eq_ignore_ascii_case(".gguf")
}

const HF_FORM: &str = "expected hf:OWNER/REPO/FILE.gguf or hf:OWNER/REPO/FILE.gguf@REVISION";

fn parse_hf(rest: &str) -> Result<ModelRef, String> {
    // The revision comes after the last `@`: repository ids and GGUF file names never contain
    // one, while a revision may contain `/` (e.g. `refs/pr/1`), so splitting at `@` first is the
    // unambiguous order.
    let (main, revision) = match rest.rsplit_once('@') {
        Some((main, rev)) => {
            if rev.is_empty() {
                return Err(format!("empty revision after `@`; {HF_FORM}"));
            }
            check_revision(rev)?;
            (main, Some(rev.to_string()))
        }
        None => (rest, None),
    };
    let mut it = main.splitn(3, '/');
    let (owner, repo, file) = match (it.next(), it.next(), it.next()) {
        (Some(o), Some(r), Some(f)) if !o.is_empty() && !r.is_empty() && !f.is_empty() => (o, r, f),
        _ => return Err(HF_FORM.to_string()),
    };
    check_repo_part("owner", owner)?;
    check_repo_part("repository", repo)?;
    check_file(file)?;
    Ok(ModelRef::Hf {
        repo: format!("{owner}/{repo}"),
        file: file.to_string(),
        revision,
    })
}

fn check_repo_part(what: &str, s: &str) -> Result<(), String> {
    // Hub ids are `[A-Za-z0-9._-]`, and `--` is reserved because the cache folder name uses it
    // as the separator between owner and repository.
    let ok_chars = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok_chars || s.contains("--") || s.contains("..") || s.starts_with('.') {
        return Err(format!(
            "bad {what} `{s}`: use letters, digits, `-`, `_` and `.`; {HF_FORM}"
        ));
    }
    Ok(())
}

fn check_file(file: &str) -> Result<(), String> {
    // The file name becomes a path under our cache; refuse anything that could escape it.
    if file
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
        || file.contains('\\')
        || file.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(format!("bad file path `{file}`; {HF_FORM}"));
    }
    if !ends_with_gguf(file) {
        return Err(format!("`{file}` is not a .gguf file; {HF_FORM}"));
    }
    Ok(())
}

fn check_revision(rev: &str) -> Result<(), String> {
    // Revisions name a cache ref file, so the same escape rules as for files apply.
    if rev
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
        || rev
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || c == '\\')
    {
        return Err(format!("bad revision `{rev}`; {HF_FORM}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hf(repo: &str, file: &str, rev: Option<&str>) -> ModelRef {
        ModelRef::Hf {
            repo: repo.into(),
            file: file.into(),
            revision: rev.map(Into::into),
        }
    }

    #[test]
    fn good_refs() {
        let smol = find_entry("smollm2-135m").expect("catalogue");
        let gemma = find_entry("gemma3-270m").expect("catalogue");
        let cases: Vec<(&str, ModelRef)> = vec![
            ("smollm2-135m", ModelRef::Catalog(smol)),
            ("gemma3-270m", ModelRef::Catalog(gemma)),
            ("model.gguf", ModelRef::Path("model.gguf".into())),
            ("MODEL.GGUF", ModelRef::Path("MODEL.GGUF".into())),
            ("./smollm2-135m", ModelRef::Path("./smollm2-135m".into())),
            ("/abs/dir/x.gguf", ModelRef::Path("/abs/dir/x.gguf".into())),
            (
                "rel/dir/file.bin",
                ModelRef::Path("rel/dir/file.bin".into()),
            ),
            ("hf:o/r/f.gguf", hf("o/r", "f.gguf", None)),
            (
                "hf:bartowski/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct-Q4_K_M.gguf",
                hf(
                    "bartowski/SmolLM2-135M-Instruct-GGUF",
                    "SmolLM2-135M-Instruct-Q4_K_M.gguf",
                    None,
                ),
            ),
            ("hf:o/r/sub/dir/f.gguf", hf("o/r", "sub/dir/f.gguf", None)),
            ("hf:o/r/f.gguf@main", hf("o/r", "f.gguf", Some("main"))),
            ("hf:o/r/f.gguf@v1.0", hf("o/r", "f.gguf", Some("v1.0"))),
            (
                "hf:o/r/f.gguf@refs/pr/1",
                hf("o/r", "f.gguf", Some("refs/pr/1")),
            ),
            (
                "hf:o.x/r_y.z/f.gguf@0123456789abcdef0123456789abcdef01234567",
                hf(
                    "o.x/r_y.z",
                    "f.gguf",
                    Some("0123456789abcdef0123456789abcdef01234567"),
                ),
            ),
        ];
        for (input, want) in cases {
            match parse_model_ref(input) {
                Ok(got) => assert_eq!(got, want, "input {input:?}"),
                Err(e) => panic!("input {input:?} failed: {e}"),
            }
        }
    }

    #[test]
    fn bad_refs() {
        // (input, substring the error message must contain)
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("llama-7b", "unknown model `llama-7b`"),
            ("SMOLLM2-135M", "known models: smollm2-135m, gemma3-270m"),
            ("hf:", "expected hf:OWNER/REPO/FILE.gguf"),
            ("hf:owner", "expected hf:OWNER/REPO/FILE.gguf"),
            ("hf:owner/repo", "expected hf:OWNER/REPO/FILE.gguf"),
            ("hf:owner/repo/", "expected hf:OWNER/REPO/FILE.gguf"),
            ("hf:/repo/f.gguf", "expected hf:OWNER/REPO/FILE.gguf"),
            ("hf:owner//f.gguf", "expected hf:OWNER/REPO/FILE.gguf"),
            ("hf:o/r/f.gguf@", "empty revision"),
            ("hf:o/r/model.safetensors", "not a .gguf file"),
            ("hf:o/r/../x.gguf", "bad file path"),
            ("hf:o/r/a//x.gguf", "bad file path"),
            ("hf:o/r/a b.gguf", "bad file path"),
            ("hf:o w/r/x.gguf", "bad owner"),
            ("hf:o/r--x/f.gguf", "bad repository"),
            ("hf:../r/f.gguf", "bad owner"),
            ("hf:o/r/f.gguf@../../etc", "bad revision"),
            ("hf:o/r/f.gguf@a b", "bad revision"),
        ];
        for (input, needle) in cases {
            match parse_model_ref(input) {
                Ok(r) => panic!("input {input:?} unexpectedly parsed as {r:?}"),
                Err(e) => {
                    let msg = e.to_string();
                    assert!(
                        msg.contains(needle),
                        "input {input:?}: {msg:?} lacks {needle:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "smollm2-135m",
            "hf:o/r/f.gguf",
            "hf:o/r/d/f.gguf@refs/pr/2",
            "/x/y.gguf",
        ] {
            let r = parse_model_ref(s).expect("parses");
            assert_eq!(r.to_string(), s);
            assert_eq!(parse_model_ref(&r.to_string()).expect("reparses"), r);
        }
    }
}
