//! The agent's tools. A [`Tool`] has a name, a description, a JSON Schema for its arguments
//! (which the embedded engine turns into a grammar, so calls always match it) and an async
//! `call` that gets a [`ToolContext`]: the task's workspace, limits and cancellation.
//! [`ToolRegistry`] holds the tools of a task, validates arguments against the declared shape
//! before calling, and enforces each tool's time limit.
//!
//! Built in here: `calculator` (exact arithmetic), the workspace file tools `read_file`,
//! `write_file`, `list_dir`, `sql` and the memory tools, and on Linux `shell` and `python`,
//! which run programs in the workspace under an OS sandbox (`sandbox.rs`: Landlock, seccomp,
//! resource limits; [`sandbox_level`] says what the kernel allows).

mod calculator;
mod data;
#[cfg(target_os = "linux")]
mod exec;
mod fetch;
mod files;
#[cfg(target_os = "linux")]
mod sandbox;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;

pub use calculator::{Calculator, evaluate, format_value};
pub use data::{MemorySave, MemorySearch, Sql};
#[cfg(target_os = "linux")]
pub use exec::{Python, Shell};
pub use fetch::{FetchLimits, HostPattern, HttpFetch, PageText, host_allowed, html_to_text};
pub use files::{ListDir, ReadFile, WriteFile, confine, head_tail};
#[cfg(target_os = "linux")]
pub use sandbox::{Limits, SandboxConfig, SandboxLevel, sandbox_level};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ToolError {
    #[error("no tool named {0:?}")]
    Unknown(String),
    #[error("invalid arguments: {0}")]
    InvalidArguments(String),
    #[error("refused: {0}")]
    Denied(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("cancelled")]
    Cancelled,
    #[error("{0}")]
    Failed(String),
}

/// What a tool returns to the model.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolOutput {
    pub content: String,
}

impl ToolOutput {
    pub fn text(content: impl Into<String>) -> ToolOutput {
        ToolOutput {
            content: content.into(),
        }
    }
}

/// A required string argument (the registry's shape check ran first, so this only guards
/// direct callers).
pub(crate) fn str_arg<'a>(args: &'a Value, key: &str) -> Result<&'a str, ToolError> {
    args.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| ToolError::InvalidArguments(format!("\"{key}\" (a string) is required")))
}

/// Cancellation shared by a task and everything it runs.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Resolves once cancelled (polling; tools are slow compared to 20 ms).
    pub async fn cancelled(&self) {
        while !self.is_cancelled() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Everything a call may use.
#[derive(Debug, Clone)]
pub struct ToolContext {
    /// The task's directory; file tools stay inside it.
    pub workspace: PathBuf,
    /// Default limit per call (a tool may declare its own).
    pub timeout: Duration,
    /// Most bytes of output a tool returns (longer output is cut to head and tail).
    pub max_output: usize,
    pub cancel: Cancel,
    /// The `sql` tool may change databases.
    pub allow_sql_writes: bool,
    /// Hosts `http_fetch` may reach (see [`HostPattern`]); empty refuses every URL.
    pub http_allow: Vec<String>,
}

impl ToolContext {
    pub fn new(workspace: impl Into<PathBuf>) -> ToolContext {
        ToolContext {
            workspace: workspace.into(),
            timeout: Duration::from_secs(30),
            max_output: 16 * 1024,
            cancel: Cancel::default(),
            allow_sql_writes: false,
            http_allow: Vec::new(),
        }
    }
}

pub trait Tool: Send + Sync {
    fn name(&self) -> &str;
    fn description(&self) -> &str;
    /// JSON Schema of the arguments object.
    fn parameters(&self) -> Value;
    /// Time limit for one call, if not the context's.
    fn timeout(&self) -> Option<Duration> {
        None
    }
    fn call<'a>(
        &'a self,
        args: Value,
        ctx: &'a ToolContext,
    ) -> BoxFuture<'a, Result<ToolOutput, ToolError>>;
}

/// The tools offered to one task, by name.
#[derive(Clone, Default)]
pub struct ToolRegistry {
    tools: BTreeMap<String, Arc<dyn Tool>>,
}

impl std::fmt::Debug for ToolRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.tools.keys()).finish()
    }
}

impl ToolRegistry {
    pub fn new() -> ToolRegistry {
        ToolRegistry::default()
    }

    /// `calculator`, `read_file`, `write_file`, `list_dir`, `sql`, `http_fetch`, and on Linux
    /// `shell` and `python` (sandboxed as [`sandbox_level`] reports).
    pub fn builtin() -> ToolRegistry {
        let mut r = ToolRegistry::new();
        r.add(Arc::new(Calculator));
        r.add(Arc::new(ReadFile));
        r.add(Arc::new(WriteFile));
        r.add(Arc::new(ListDir));
        r.add(Arc::new(Sql));
        r.add(Arc::new(HttpFetch::default()));
        #[cfg(target_os = "linux")]
        {
            let sandbox = SandboxConfig::default();
            r.add(Arc::new(Shell(sandbox.clone())));
            r.add(Arc::new(Python(sandbox)));
        }
        r
    }

    /// The built-ins plus `memory_search` and `memory_save` over `store` for `tenant`.
    pub fn with_memory(store: Arc<autoglm_store::Store>, tenant: &str) -> ToolRegistry {
        let mut r = ToolRegistry::builtin();
        r.add(Arc::new(MemorySearch {
            store: store.clone(),
            tenant: tenant.to_string(),
        }));
        r.add(Arc::new(MemorySave {
            store,
            tenant: tenant.to_string(),
        }));
        r
    }

    pub fn add(&mut self, tool: Arc<dyn Tool>) {
        self.tools.insert(tool.name().to_string(), tool);
    }

    /// Keeps only the named tools; unknown names are an error listing what exists.
    pub fn select(&self, names: &[String]) -> Result<ToolRegistry, ToolError> {
        let mut r = ToolRegistry::new();
        for n in names {
            let t = self.tools.get(n).ok_or_else(|| {
                ToolError::Unknown(format!("{n} (available: {})", self.names().join(", ")))
            })?;
            r.add(t.clone());
        }
        Ok(r)
    }

    pub fn names(&self) -> Vec<String> {
        self.tools.keys().cloned().collect()
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Tool>> {
        self.tools.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Tool>> {
        self.tools.values()
    }

    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }

    /// Calls `name`: arguments checked for the declared shape, the time limit and
    /// cancellation enforced, output capped.
    pub async fn call(
        &self,
        name: &str,
        args: Value,
        ctx: &ToolContext,
    ) -> Result<ToolOutput, ToolError> {
        let tool = self
            .tools
            .get(name)
            .ok_or_else(|| ToolError::Unknown(name.to_string()))?;
        check_shape(&tool.parameters(), &args)?;
        let limit = tool.timeout().unwrap_or(ctx.timeout);
        if ctx.cancel.is_cancelled() {
            return Err(ToolError::Cancelled);
        }
        let out = tokio::select! {
            r = tokio::time::timeout(limit, tool.call(args, ctx)) => {
                r.map_err(|_| ToolError::Timeout(limit))?
            }
            _ = ctx.cancel.cancelled() => return Err(ToolError::Cancelled),
        }?;
        Ok(ToolOutput::text(head_tail(&out.content, ctx.max_output)))
    }
}

/// The checks every caller needs before a tool runs: an object, required keys present, no
/// undeclared keys when the schema closes the object, and declared primitive types. Models
/// behind other servers are not constrained, so this is where their malformed calls stop.
pub fn check_shape(schema: &Value, args: &Value) -> Result<(), ToolError> {
    let bad = |m: String| Err(ToolError::InvalidArguments(m));
    let Some(obj) = args.as_object() else {
        return bad(format!("arguments must be a JSON object, got {args}"));
    };
    let props = schema.get("properties").and_then(Value::as_object);
    for r in schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if !obj.contains_key(r) {
            return bad(format!("\"{r}\" is required"));
        }
    }
    let closed = schema.get("additionalProperties") == Some(&Value::Bool(false));
    for (k, v) in obj {
        let Some(p) = props.and_then(|p| p.get(k)) else {
            if closed {
                return bad(format!("unknown argument \"{k}\""));
            }
            continue;
        };
        let ty = p.get("type").and_then(Value::as_str);
        let ok = match ty {
            Some("string") => v.is_string(),
            Some("integer") => v.is_i64() || v.is_u64(),
            Some("number") => v.is_number(),
            Some("boolean") => v.is_boolean(),
            Some("array") => v.is_array(),
            Some("object") => v.is_object(),
            _ => true,
        };
        if !ok {
            return bad(format!("\"{k}\" must be of type {}", ty.unwrap_or("?")));
        }
        if let (Some(max), Some(s)) = (p.get("maxLength").and_then(Value::as_u64), v.as_str())
            && s.chars().count() as u64 > max
        {
            return bad(format!("\"{k}\" is longer than {max} characters"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    struct Sleepy;
    impl Tool for Sleepy {
        fn name(&self) -> &str {
            "sleepy"
        }
        fn description(&self) -> &str {
            "sleeps"
        }
        fn parameters(&self) -> Value {
            json!({"type": "object", "properties": {}})
        }
        fn timeout(&self) -> Option<Duration> {
            Some(Duration::from_millis(50))
        }
        fn call<'a>(
            &'a self,
            _args: Value,
            _ctx: &'a ToolContext,
        ) -> BoxFuture<'a, Result<ToolOutput, ToolError>> {
            Box::pin(async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                Ok(ToolOutput::text("late"))
            })
        }
    }

    #[test]
    fn registry_checks_arguments_limits_time_and_cancels() {
        let ws = tempfile::tempdir().unwrap();
        let ctx = ToolContext::new(ws.path());
        let mut reg = ToolRegistry::builtin();
        reg.add(Arc::new(Sleepy));
        rt().block_on(async {
            let r = reg
                .call("calculator", json!({"expression": "6*7"}), &ctx)
                .await;
            assert_eq!(r.unwrap().content, "42");
            let check = |r: Result<ToolOutput, ToolError>, e: &str| {
                assert!(r.as_ref().unwrap_err().to_string().contains(e), "{r:?}");
            };
            check(reg.call("nope", json!({}), &ctx).await, "no tool named");
            check(
                reg.call("calculator", json!([1]), &ctx).await,
                "JSON object",
            );
            check(reg.call("calculator", json!({}), &ctx).await, "required");
            check(
                reg.call("calculator", json!({"expression": 5}), &ctx).await,
                "type string",
            );
            check(
                reg.call("calculator", json!({"expression": "1", "x": 1}), &ctx)
                    .await,
                "unknown argument",
            );
            check(reg.call("sleepy", json!({}), &ctx).await, "timed out");
            ctx.cancel.cancel();
            check(reg.call("sleepy", json!({}), &ctx).await, "cancelled");
        });
        let only = reg.select(&["calculator".into()]).unwrap();
        assert_eq!(only.names(), vec!["calculator"]);
        assert!(
            reg.select(&["teleport".into()])
                .unwrap_err()
                .to_string()
                .contains("available: calculator")
        );
    }

    #[test]
    fn file_tools_round_trip_in_the_workspace() {
        let ws = tempfile::tempdir().unwrap();
        let outside = format!(
            "{}-outside",
            ws.path().file_name().unwrap().to_string_lossy()
        );
        let escape = format!("../{outside}");
        let ctx = ToolContext::new(ws.path());
        let reg = ToolRegistry::builtin();
        rt().block_on(async {
            let w = reg
                .call(
                    "write_file",
                    json!({"path": "notes/a.txt", "content": "hello"}),
                    &ctx,
                )
                .await
                .unwrap();
            assert_eq!(w.content, "wrote 5 bytes to notes/a.txt");
            let r = reg
                .call("read_file", json!({"path": "notes/a.txt"}), &ctx)
                .await
                .unwrap();
            assert_eq!(r.content, "hello");
            let l = reg
                .call("list_dir", json!({"path": "."}), &ctx)
                .await
                .unwrap();
            assert_eq!(l.content, "notes/");
            let e = reg
                .call("write_file", json!({"path": escape, "content": ""}), &ctx)
                .await
                .unwrap_err();
            assert!(matches!(e, ToolError::Denied(_)), "{e}");
            let e = reg
                .call("read_file", json!({"path": "missing.txt"}), &ctx)
                .await
                .unwrap_err();
            assert!(e.to_string().contains("cannot read missing.txt"), "{e}");
        });
        // A name of its own: another program's /tmp/x must not fail this test.
        assert!(!ws.path().parent().unwrap().join(&outside).exists());
    }
}
