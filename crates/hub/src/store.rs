//! On-disk layout of the cache and the primitives that keep it consistent.
//!
//! Layout under the models directory:
//!
//! ```text
//! <models>/<name>/<file name>          the verified model file (appears only by atomic rename)
//! <models>/<name>/<file name>.sha256   "HASH  FILE" marker, written after the hash checked out
//! <models>/<name>/.lock                exclusive lock held while pulling, verifying or removing
//! <models>/<name>/.pull-*              pip's scratch directory during a pull (cleaned up)
//! <models>/<name>/.<file name>.*.partial   the file being assembled (renamed or deleted)
//! <models>/hf/                         the Hugging Face hub cache (hf-hub's own layout)
//! ```
//!
//! Since the model file only ever appears via `rename` of a fully written and hashed temp file,
//! readers never need the lock: a file that exists is complete. The sidecar lets later runs skip
//! re-hashing a few hundred megabytes; it is `sha256sum -c` compatible.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::HubError;

/// Name of the directory holding the Hugging Face cache inside the models directory.
pub const HF_DIR: &str = "hf";
/// Name of the lock file inside a model directory.
pub const LOCK_FILE: &str = ".lock";
/// Prefix of pip scratch directories.
pub(crate) const PULL_DIR_PREFIX: &str = ".pull-";
/// Suffix of partially assembled model files.
pub(crate) const PARTIAL_SUFFIX: &str = ".partial";

/// `<models>/<name>`.
pub fn model_dir(models_dir: &Path, name: &str) -> PathBuf {
    models_dir.join(name)
}

/// `<models>/<name>/<file name>`.
pub fn model_file(models_dir: &Path, name: &str, file_name: &str) -> PathBuf {
    model_dir(models_dir, name).join(file_name)
}

/// `<file>.sha256`, the verified marker next to a model file.
pub fn sidecar_path(file: &Path) -> PathBuf {
    let mut s = file.as_os_str().to_os_string();
    s.push(".sha256");
    PathBuf::from(s)
}

/// An exclusive lock on `<dir>/.lock`, released when dropped (closing the file releases it,
/// also when the process dies, so a crashed pull never leaves the cache locked).
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: File,
}

impl DirLock {
    /// Create `dir` if needed and lock it, telling `progress` if we have to wait for another
    /// process (or thread) first.
    pub(crate) fn acquire(
        dir: &Path,
        what: &str,
        progress: &mut dyn FnMut(&str),
    ) -> Result<DirLock, HubError> {
        fs::create_dir_all(dir).map_err(HubError::io("creating directory", dir))?;
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(HubError::io("opening lock file", &path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                progress(&format!("waiting for another pull of {what} to finish…"));
                file.lock().map_err(HubError::io("locking", &path))?;
            }
            Err(fs::TryLockError::Error(e)) => return Err(HubError::io("locking", &path)(e)),
        }
        Ok(DirLock { _file: file })
    }
}

/// Lower-case hex of a digest.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// SHA-256 of a file, streamed in 1 MiB reads.
pub(crate) fn sha256_file(path: &Path) -> Result<String, HubError> {
    let mut f = File::open(path).map_err(HubError::io("opening", path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(HubError::io("reading", path)(e)),
        };
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// The hash recorded in a sidecar, if it exists and is readable.
pub(crate) fn read_sidecar(file: &Path) -> Option<String> {
    let text = fs::read_to_string(sidecar_path(file)).ok()?;
    text.split_whitespace().next().map(str::to_ascii_lowercase)
}

/// Write `HASH  FILE_NAME\n` next to `file`, atomically so a crash never leaves half a marker.
pub(crate) fn write_sidecar(file: &Path, sha256: &str) -> Result<(), HubError> {
    let sidecar = sidecar_path(file);
    let dir = sidecar.parent().unwrap_or(Path::new("."));
    let file_name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut tmp = temp_file_in(dir, ".sidecar-")?;
    writeln!(tmp, "{sha256}  {file_name}").map_err(HubError::io("writing", tmp.path()))?;
    tmp.persist(&sidecar)
        .map_err(|e| HubError::io("renaming temp file to", &sidecar)(e.error))?;
    Ok(())
}

/// A temp file in `dir` named `<prefix>….partial` (so [`clean_stale`] recognises leftovers),
/// created with ordinary `0644 & !umask` permissions: tempfile's default of 0600 would make the
/// renamed model unreadable to other users of a shared cache.
pub(crate) fn temp_file_in(dir: &Path, prefix: &str) -> Result<tempfile::NamedTempFile, HubError> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(prefix).suffix(PARTIAL_SUFFIX);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(fs::Permissions::from_mode(0o644));
    }
    builder
        .tempfile_in(dir)
        .map_err(HubError::io("creating temp file in", dir))
}

/// True if `file` is a regular file of the expected size whose sidecar records `sha256`,
/// i.e. it was verified before and need not be hashed again.
pub(crate) fn is_verified(file: &Path, sha256: &str, size: Option<u64>) -> bool {
    let Ok(meta) = fs::metadata(file) else {
        return false;
    };
    meta.is_file()
        && size.is_none_or(|s| meta.len() == s)
        && read_sidecar(file).is_some_and(|h| h.eq_ignore_ascii_case(sha256))
}

/// Remove scratch files a killed pull may have left behind. Only called with the lock held, so
/// nothing in use can be deleted.
pub(crate) fn clean_stale(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let path = entry.path();
        // Best effort: a leftover we cannot delete is harmless, it is just wasted space.
        if name.starts_with(PULL_DIR_PREFIX) {
            let _ = fs::remove_dir_all(&path);
        } else if name.starts_with('.') && name.ends_with(PARTIAL_SUFFIX) {
            let _ = fs::remove_file(&path);
        }
    }
}

/// A writer that hashes everything written through it, so extraction and verification are a
/// single pass over the data.
pub(crate) struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> HashingWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
        }
    }

    /// The inner writer and the hex digest of everything written.
    pub(crate) fn finish(self) -> (W, String) {
        (self.inner, hex(&self.hasher.finalize()))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_paths() {
        let m = Path::new("/models");
        assert_eq!(
            model_dir(m, "smollm2-135m"),
            Path::new("/models/smollm2-135m")
        );
        assert_eq!(
            model_file(m, "gemma3-270m", "gemma-3-270m-q4_k_m.gguf"),
            Path::new("/models/gemma3-270m/gemma-3-270m-q4_k_m.gguf")
        );
        assert_eq!(
            sidecar_path(Path::new("/models/a/x.gguf")),
            Path::new("/models/a/x.gguf.sha256")
        );
    }

    #[test]
    fn hashing_and_sidecar() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("x.gguf");
        fs::write(&file, b"abc")?;
        let want = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(sha256_file(&file)?, want);

        let mut w = HashingWriter::new(Vec::new());
        w.write_all(b"a")?;
        w.write_all(b"bc")?;
        let (bytes, h) = w.finish();
        assert_eq!((bytes.as_slice(), h.as_str()), (&b"abc"[..], want));

        assert!(!is_verified(&file, want, Some(3)));
        write_sidecar(&file, want)?;
        assert_eq!(
            fs::read_to_string(sidecar_path(&file))?,
            format!("{want}  x.gguf\n")
        );
        assert!(is_verified(&file, want, Some(3)));
        assert!(is_verified(&file, &want.to_uppercase(), None));
        assert!(
            !is_verified(&file, want, Some(4)),
            "size mismatch must re-verify"
        );
        assert!(!is_verified(&file, &"0".repeat(64), Some(3)));
        Ok(())
    }

    #[test]
    fn stale_scratch_is_cleaned() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        fs::create_dir(dir.path().join(".pull-abc"))?;
        fs::write(dir.path().join(".pull-abc/w.whl"), b"x")?;
        fs::write(dir.path().join(".x.gguf.123.partial"), b"x")?;
        fs::write(dir.path().join("x.gguf"), b"keep")?;
        fs::write(dir.path().join(LOCK_FILE), b"")?;
        clean_stale(dir.path());
        let mut left: Vec<String> = fs::read_dir(dir.path())?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        left.sort();
        assert_eq!(left, vec![LOCK_FILE.to_string(), "x.gguf".to_string()]);
        Ok(())
    }
}
