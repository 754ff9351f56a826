//! Workspace files: `read_file`, `write_file`, `list_dir`, each confined to the task's
//! workspace directory. Paths are relative; `..` components, absolute paths and symbolic links
//! that lead outside are refused before anything is opened.

use std::path::{Component, Path, PathBuf};

use serde_json::{Value, json};

use crate::{BoxFuture, Tool, ToolContext, ToolError, ToolOutput, str_arg};

/// Largest file `read_file` returns whole; longer files come back as head and tail.
const READ_LIMIT: usize = 64 * 1024;
const WRITE_LIMIT: usize = 4 * 1024 * 1024;
const LIST_LIMIT: usize = 500;

/// `path` inside `workspace`, or why not. The deepest existing ancestor is resolved (following
/// symlinks) and must still be inside the resolved workspace.
pub fn confine(workspace: &Path, path: &str) -> Result<PathBuf, ToolError> {
    let bad = |m: String| ToolError::Denied(m);
    if path.contains('\0') {
        return Err(bad("the path contains a NUL byte".into()));
    }
    let rel = Path::new(path);
    let mut clean = PathBuf::new();
    for c in rel.components() {
        match c {
            Component::Normal(p) => clean.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(bad(format!(
                    "{path:?}: '..' is not allowed; paths stay inside the workspace"
                )));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(bad(format!(
                    "{path:?}: absolute paths are not allowed; use a path relative to the workspace"
                )));
            }
        }
    }
    let root = workspace
        .canonicalize()
        .map_err(|e| ToolError::Failed(format!("the workspace {}: {e}", workspace.display())))?;
    let full = root.join(&clean);
    // Resolve the longest existing prefix: a symlink anywhere along it must not lead out.
    let mut existing = full.clone();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (
            existing.file_name().map(|n| n.to_owned()),
            existing.parent(),
        ) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            _ => break,
        }
    }
    let resolved = existing
        .canonicalize()
        .map_err(|e| ToolError::Failed(format!("{path}: {e}")))?;
    if !resolved.starts_with(&root) {
        return Err(bad(format!(
            "{path:?} leads outside the workspace (through a symbolic link)"
        )));
    }
    let mut out = resolved;
    for name in rest.into_iter().rev() {
        out.push(name);
    }
    Ok(out)
}

/// Head and tail of a long text with a marker saying how much was left out.
pub fn head_tail(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_string();
    }
    let half = limit / 2;
    let mut a = half;
    while !text.is_char_boundary(a) {
        a -= 1;
    }
    let mut b = text.len() - half;
    while !text.is_char_boundary(b) {
        b += 1;
    }
    format!(
        "{}\n[... {} bytes left out ...]\n{}",
        &text[..a],
        b - a,
        &text[b..]
    )
}

pub struct ReadFile;
pub struct WriteFile;
pub struct ListDir;

impl Tool for ReadFile {
    fn name(&self) -> &str {
        "read_file"
    }
    fn description(&self) -> &str {
        "Read a text file from the workspace. Example: {\"path\": \"notes/todo.txt\"}"
    }
    fn parameters(&self) -> Value {
        json!({"type": "object", "properties": {"path": {"type": "string", "maxLength": 200}},
               "required": ["path"], "additionalProperties": false})
    }
    fn call<'a>(
        &'a self,
        args: Value,
        ctx: &'a ToolContext,
    ) -> BoxFuture<'a, Result<ToolOutput, ToolError>> {
        Box::pin(async move {
            let path = confine(&ctx.workspace, str_arg(&args, "path")?)?;
            let bytes = tokio::fs::read(&path)
                .await
                .map_err(|e| ToolError::Failed(format!("cannot read {}: {e}", rel(ctx, &path))))?;
            let text = String::from_utf8_lossy(&bytes);
            Ok(ToolOutput::text(head_tail(&text, READ_LIMIT)))
        })
    }
}

impl Tool for WriteFile {
    fn name(&self) -> &str {
        "write_file"
    }
    fn description(&self) -> &str {
        "Write a text file in the workspace (created or replaced; folders are created). Example: {\"path\": \"out/result.txt\", \"content\": \"42\"}"
    }
    fn parameters(&self) -> Value {
        json!({"type": "object", "properties": {"path": {"type": "string", "maxLength": 200},
               "content": {"type": "string"}},
               "required": ["path", "content"], "additionalProperties": false})
    }
    fn call<'a>(
        &'a self,
        args: Value,
        ctx: &'a ToolContext,
    ) -> BoxFuture<'a, Result<ToolOutput, ToolError>> {
        Box::pin(async move {
            let content = str_arg(&args, "content")?;
            if content.len() > WRITE_LIMIT {
                return Err(ToolError::InvalidArguments(format!(
                    "content over {WRITE_LIMIT} bytes"
                )));
            }
            let path = confine(&ctx.workspace, str_arg(&args, "path")?)?;
            if let Some(parent) = path.parent() {
                tokio::fs::create_dir_all(parent)
                    .await
                    .map_err(|e| ToolError::Failed(format!("cannot create folders: {e}")))?;
            }
            // A symlink planted at the final component would redirect the write.
            if tokio::fs::symlink_metadata(&path)
                .await
                .is_ok_and(|m| m.file_type().is_symlink())
            {
                return Err(ToolError::Denied(format!(
                    "{} is a symbolic link",
                    rel(ctx, &path)
                )));
            }
            tokio::fs::write(&path, content)
                .await
                .map_err(|e| ToolError::Failed(format!("cannot write {}: {e}", rel(ctx, &path))))?;
            Ok(ToolOutput::text(format!(
                "wrote {} bytes to {}",
                content.len(),
                rel(ctx, &path)
            )))
        })
    }
}

impl Tool for ListDir {
    fn name(&self) -> &str {
        "list_dir"
    }
    fn description(&self) -> &str {
        "List a folder of the workspace (\".\" for the top). Example: {\"path\": \".\"}"
    }
    fn parameters(&self) -> Value {
        json!({"type": "object", "properties": {"path": {"type": "string", "maxLength": 200}},
               "required": ["path"], "additionalProperties": false})
    }
    fn call<'a>(
        &'a self,
        args: Value,
        ctx: &'a ToolContext,
    ) -> BoxFuture<'a, Result<ToolOutput, ToolError>> {
        Box::pin(async move {
            let path = confine(&ctx.workspace, str_arg(&args, "path")?)?;
            let mut rd = tokio::fs::read_dir(&path)
                .await
                .map_err(|e| ToolError::Failed(format!("cannot list {}: {e}", rel(ctx, &path))))?;
            let mut entries = Vec::new();
            while let Ok(Some(e)) = rd.next_entry().await {
                let name = e.file_name().to_string_lossy().into_owned();
                let kind = match e.file_type().await {
                    Ok(t) if t.is_dir() => "/",
                    Ok(t) if t.is_symlink() => "@",
                    _ => "",
                };
                entries.push(format!("{name}{kind}"));
            }
            entries.sort();
            let total = entries.len();
            entries.truncate(LIST_LIMIT);
            let mut text = entries.join("\n");
            if total > LIST_LIMIT {
                text.push_str(&format!("\n[... {} more]", total - LIST_LIMIT));
            }
            if total == 0 {
                text = "(empty)".into();
            }
            Ok(ToolOutput::text(text))
        })
    }
}

/// A path as the model should see it: relative to the workspace.
fn rel(ctx: &ToolContext, p: &Path) -> String {
    let root = ctx
        .workspace
        .canonicalize()
        .unwrap_or_else(|_| ctx.workspace.clone());
    p.strip_prefix(&root).unwrap_or(p).display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_workspace() {
        let ws = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(ws.path().join("sub")).unwrap();
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(outside.path(), ws.path().join("escape")).unwrap();
            std::os::unix::fs::symlink(ws.path().join("sub"), ws.path().join("inside")).unwrap();
        }
        let root = ws.path().canonicalize().unwrap();
        let check = |p: &str, ok: bool| {
            let r = confine(ws.path(), p);
            assert_eq!(r.is_ok(), ok, "{p}: {r:?}");
            if let Ok(path) = r {
                assert!(path.starts_with(&root), "{p}: {path:?}");
            }
        };
        check("a.txt", true);
        check("./sub/new/deeper.txt", true);
        check("sub", true);
        check(".", true);
        check("../x", false);
        check("sub/../../x", false);
        check("/etc/passwd", false);
        check("escape/file", false);
        check("escape", false);
        check("inside/file", true);
        check("bad\0name", false);
    }

    #[test]
    fn head_and_tail_keep_both_ends() {
        let t = "a".repeat(50) + &"b".repeat(50);
        let h = head_tail(&t, 20);
        assert!(
            h.starts_with("aaaaaaaaaa\n[... 80 bytes left out ...]\nbbbbbbbbbb"),
            "{h}"
        );
        assert_eq!(head_tail("short", 20), "short");
    }
}
