//! The configuration file: the `mcp.json` convention of Claude Desktop and others.
//!
//! ```json
//! {"mcpServers": {
//!   "fs":   {"command": "npx", "args": ["-y", "some-mcp-server", "/data"], "env": {"K": "v"}},
//!   "docs": {"url": "http://127.0.0.1:9000/mcp", "headers": {"Authorization": "Bearer …"}}
//! }}
//! ```
//!
//! A server with `command` is started as a child process and spoken to over its stdin/stdout;
//! one with `url` is reached over streamable HTTP. `"servers"` is accepted for `"mcpServers"`
//! (VS Code's spelling), `"type"` may say `stdio` or `http` explicitly, `"disabled": true` leaves
//! a server out, and keys other tools add (`autoApprove`, …) are ignored. Everything this crate
//! uses is checked here, so a bad file is an error naming the server and the key before
//! anything starts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::McpError;

/// The servers of one configuration file, by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct McpConfig {
    pub servers: BTreeMap<String, ServerConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ServerConfig {
    /// A child process speaking MCP on stdin/stdout. It inherits our environment plus `env`.
    Stdio {
        command: String,
        args: Vec<String>,
        env: BTreeMap<String, String>,
        cwd: Option<PathBuf>,
    },
    /// Streamable HTTP; `headers` go with every request (e.g. `Authorization`).
    Http {
        url: String,
        headers: BTreeMap<String, String>,
    },
}

/// Reads and checks `path`.
pub fn load_config(path: &Path) -> Result<McpConfig, McpError> {
    let text = std::fs::read_to_string(path).map_err(|source| McpError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_config(&text).map_err(|e| match e {
        McpError::Config(msg) => McpError::Config(format!("{}: {msg}", path.display())),
        e => e,
    })
}

/// Checks a configuration given as JSON text.
pub fn parse_config(text: &str) -> Result<McpConfig, McpError> {
    let v: Value =
        serde_json::from_str(text).map_err(|e| McpError::Config(format!("not valid JSON: {e}")))?;
    let Some(root) = v.as_object() else {
        return Err(McpError::Config(
            "the file must hold a JSON object with \"mcpServers\"".into(),
        ));
    };
    let servers = match (root.get("mcpServers"), root.get("servers")) {
        (Some(s), None) | (None, Some(s)) => s,
        (Some(_), Some(_)) => {
            return Err(McpError::Config(
                "both \"mcpServers\" and \"servers\" are given; use one".into(),
            ));
        }
        (None, None) => {
            return Err(McpError::Config(
                "no \"mcpServers\" object (expected {\"mcpServers\": {\"name\": {...}}})".into(),
            ));
        }
    };
    let Some(servers) = servers.as_object() else {
        return Err(McpError::Config(
            "\"mcpServers\" must be an object of servers by name".into(),
        ));
    };
    let mut cfg = McpConfig::default();
    for (name, s) in servers {
        let bad = |m: String| McpError::Config(format!("server {name:?}: {m}"));
        if name.is_empty() {
            return Err(McpError::Config("a server has an empty name".into()));
        }
        let Some(s) = s.as_object() else {
            return Err(bad("must be an object".into()));
        };
        if s.get("disabled").and_then(Value::as_bool) == Some(true) {
            continue;
        }
        cfg.servers.insert(name.clone(), server(s).map_err(bad)?);
    }
    Ok(cfg)
}

fn server(s: &Map<String, Value>) -> Result<ServerConfig, String> {
    let kind = match s.get("type") {
        None => None,
        Some(Value::String(t)) => Some(t.as_str()),
        Some(_) => return Err("\"type\" must be a string".into()),
    };
    let stdio = match (kind, s.contains_key("command"), s.contains_key("url")) {
        (_, true, true) => return Err("give either \"command\" or \"url\", not both".into()),
        (Some("sse"), ..) => {
            return Err(
                "the SSE transport is not supported; use a streamable HTTP endpoint (\"url\")"
                    .into(),
            );
        }
        (Some("stdio"), _, false) | (None, true, false) => true,
        (Some("http" | "streamable-http" | "streamableHttp"), false, _) | (None, false, true) => {
            false
        }
        (Some(t @ ("stdio" | "http" | "streamable-http" | "streamableHttp")), ..) => {
            return Err(format!(
                "type {t:?} needs {}",
                if t == "stdio" {
                    "\"command\""
                } else {
                    "\"url\""
                }
            ));
        }
        (Some(t), ..) => {
            return Err(format!(
                "unknown type {t:?} (expected \"stdio\" or \"http\")"
            ));
        }
        (None, false, false) => {
            return Err(
                "needs \"command\" (a program to start) or \"url\" (an HTTP endpoint)".into(),
            );
        }
    };
    if stdio {
        let command = string(s, "command")?.ok_or("type \"stdio\" needs \"command\"")?;
        if command.trim().is_empty() {
            return Err("\"command\" is empty".into());
        }
        let args = match s.get("args") {
            None => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| x.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or("\"args\" must be an array of strings")?,
            Some(_) => return Err("\"args\" must be an array of strings".into()),
        };
        Ok(ServerConfig::Stdio {
            command,
            args,
            env: string_map(s, "env")?,
            cwd: string(s, "cwd")?.map(PathBuf::from),
        })
    } else {
        let url = string(s, "url")?.ok_or("type \"http\" needs \"url\"")?;
        let parsed =
            reqwest::Url::parse(&url).map_err(|e| format!("\"url\" {url:?} is not a URL: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!("\"url\" {url:?} must be http or https"));
        }
        let headers = string_map(s, "headers")?;
        for (k, v) in &headers {
            reqwest::header::HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| format!("header name {k:?} is not valid"))?;
            reqwest::header::HeaderValue::from_str(v)
                .map_err(|_| format!("the value of header {k:?} is not valid"))?;
        }
        Ok(ServerConfig::Http { url, headers })
    }
}

fn string(s: &Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match s.get(key) {
        None => Ok(None),
        Some(Value::String(v)) => Ok(Some(v.clone())),
        Some(_) => Err(format!("\"{key}\" must be a string")),
    }
}

fn string_map(s: &Map<String, Value>, key: &str) -> Result<BTreeMap<String, String>, String> {
    match s.get(key) {
        None => Ok(BTreeMap::new()),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| match v {
                Value::String(v) => Ok((k.clone(), v.clone())),
                _ => Err(format!("\"{key}\".{k} must be a string")),
            })
            .collect(),
        Some(_) => Err(format!("\"{key}\" must be an object of strings")),
    }
}
