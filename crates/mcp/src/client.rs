//! Connecting to servers and their tools as [`Tool`]s.

use std::collections::{BTreeSet, HashMap};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use autoglm_tools::{BoxFuture, Tool, ToolContext, ToolError, ToolOutput};
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, ContentBlock,
    Implementation, ResourceContents,
};
use rmcp::service::RunningService;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{RoleClient, ServiceExt};
use serde_json::{Map, Value};
use tokio::io::AsyncReadExt;

use crate::{McpConfig, McpError, ServerConfig};

/// Longest tool name: what OpenAI-style APIs accept, and more than a model needs.
const MAX_NAME: usize = 64;
/// Longest description passed on; some servers write manuals into theirs.
const MAX_DESCRIPTION: usize = 1024;
/// How much of a stdio server's stderr is kept for error messages.
const STDERR_TAIL: usize = 2048;

/// Time limits for reaching a server.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Starting (or reaching) the server and the MCP handshake. Generous: a server started
    /// through a package runner may install itself first.
    pub connect_timeout: Duration,
    /// Listing its tools (all pages).
    pub list_timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            connect_timeout: Duration::from_secs(60),
            list_timeout: Duration::from_secs(30),
        }
    }
}

/// `<server>__<tool>` with every character outside `[A-Za-z0-9_-]` replaced by `_`, at most
/// 64 characters.
pub fn tool_name(server: &str, tool: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    let mut n = format!("{}__{}", clean(server), clean(tool));
    n.truncate(MAX_NAME); // ASCII only by now, so any cut is on a character boundary
    n
}

/// One server's live connection, shared by its tools.
struct Connection {
    server: String,
    service: RunningService<RoleClient, ClientConfig>,
    /// The end of a stdio server's stderr: why it died, usually.
    stderr: Option<Arc<Mutex<String>>>,
}

impl Connection {
    fn stderr_tail(&self) -> String {
        stderr_text(self.stderr.as_ref())
    }
}

fn stderr_text(buf: Option<&Arc<Mutex<String>>>) -> String {
    let Some(buf) = buf else {
        return String::new();
    };
    let s = match buf.lock() {
        Ok(s) => s.trim().to_string(),
        Err(p) => p.into_inner().trim().to_string(),
    };
    if s.is_empty() {
        s
    } else {
        format!(" (its stderr: {s})")
    }
}

/// A tool of an MCP server.
pub struct McpTool {
    name: String,
    /// The server's own name for it.
    remote: String,
    description: String,
    parameters: Value,
    conn: Arc<Connection>,
}

impl McpTool {
    pub fn server(&self) -> &str {
        &self.conn.server
    }

    pub fn remote_name(&self) -> &str {
        &self.remote
    }
}

impl Tool for McpTool {
    fn name(&self) -> &str {
        &self.name
    }
    fn description(&self) -> &str {
        &self.description
    }
    fn parameters(&self) -> Value {
        self.parameters.clone()
    }
    fn call<'a>(
        &'a self,
        args: Value,
        _ctx: &'a ToolContext,
    ) -> BoxFuture<'a, Result<ToolOutput, ToolError>> {
        Box::pin(async move {
            let args = match args {
                Value::Object(m) => m,
                Value::Null => Map::new(),
                v => {
                    return Err(ToolError::InvalidArguments(format!(
                        "arguments must be a JSON object, got {v}"
                    )));
                }
            };
            let params = CallToolRequestParams::new(self.remote.clone()).with_arguments(args);
            // The peer's call, not the service's: this client answers no input requests, so a
            // server asking for input is an error rather than a loop.
            let r = self
                .conn
                .service
                .peer()
                .call_tool(params)
                .await
                .map_err(|e| {
                    ToolError::Failed(format!(
                        "MCP server {}: {e}{}",
                        self.conn.server,
                        self.conn.stderr_tail()
                    ))
                })?;
            let text = render(&r);
            if r.is_error == Some(true) {
                return Err(ToolError::Failed(if text.is_empty() {
                    format!("{} reported an error without a message", self.name)
                } else {
                    text
                }));
            }
            Ok(ToolOutput::text(text))
        })
    }
}

/// The result's content as text: text items as they are, others named (a model reading text
/// cannot use an image's base64), structured content when there is nothing else.
fn render(r: &CallToolResult) -> String {
    let mut parts = Vec::new();
    for c in &r.content {
        parts.push(match c {
            ContentBlock::Text(t) => t.text.clone(),
            ContentBlock::Image(i) => format!("[image ({}), not shown]", i.mime_type),
            ContentBlock::Audio(a) => format!("[audio ({}), not shown]", a.mime_type),
            ContentBlock::Resource(e) => match &e.resource {
                ResourceContents::TextResourceContents { uri, text, .. } => {
                    format!("[resource {uri}]\n{text}")
                }
                ResourceContents::BlobResourceContents { uri, mime_type, .. } => format!(
                    "[resource {uri} ({}), binary, not shown]",
                    mime_type.as_deref().unwrap_or("unknown type")
                ),
                _ => "[a resource of a kind this client does not know, not shown]".to_string(),
            },
            ContentBlock::ResourceLink(l) => format!("[resource link {} ({})]", l.uri, l.name),
            _ => "[content of a kind this client does not know, not shown]".to_string(),
        });
    }
    if parts.is_empty()
        && let Some(s) = &r.structured_content
    {
        parts.push(s.to_string());
    }
    parts.join("\n")
}

fn client_info() -> ClientConfig {
    let mut me = Implementation::default();
    me.name = "autoglm".into();
    me.version = env!("CARGO_PKG_VERSION").into();
    ClientConfig::new(ClientCapabilities::default(), me)
}

/// Keeps the last [`STDERR_TAIL`] bytes the child writes to stderr, reading until it closes
/// (a child blocked on a full pipe would stop answering).
fn drain_stderr(mut err: tokio::process::ChildStderr) -> Arc<Mutex<String>> {
    let buf = Arc::new(Mutex::new(String::new()));
    let keep = buf.clone();
    tokio::spawn(async move {
        let mut chunk = [0u8; 1024];
        while let Ok(n) = err.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            let Ok(mut s) = keep.lock() else { break };
            s.push_str(&String::from_utf8_lossy(&chunk[..n]));
            if s.len() > STDERR_TAIL {
                let mut cut = s.len() - STDERR_TAIL;
                while !s.is_char_boundary(cut) {
                    cut += 1;
                }
                s.drain(..cut);
            }
        }
    });
    buf
}

async fn start(
    cfg: &ServerConfig,
    opts: &ConnectOptions,
) -> Result<
    (
        RunningService<RoleClient, ClientConfig>,
        Option<Arc<Mutex<String>>>,
    ),
    McpError,
> {
    let limit = |what| McpError::Timeout {
        what,
        after: opts.connect_timeout,
    };
    match cfg {
        ServerConfig::Stdio {
            command,
            args,
            env,
            cwd,
        } => {
            let mut cmd = tokio::process::Command::new(command);
            cmd.args(args).envs(env).kill_on_drop(true);
            if let Some(d) = cwd {
                cmd.current_dir(d);
            }
            let (proc, err) = TokioChildProcess::builder(cmd)
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|source| McpError::Spawn {
                    command: command.clone(),
                    source,
                })?;
            let stderr = err.map(drain_stderr);
            let service = tokio::time::timeout(opts.connect_timeout, client_info().serve(proc))
                .await
                .map_err(|_| limit("starting the server and initialising"))?
                .map_err(|e| {
                    McpError::Initialize(format!("{e}{}", stderr_text(stderr.as_ref())))
                })?;
            Ok((service, stderr))
        }
        ServerConfig::Http { url, headers } => {
            // ring, as in the other HTTP clients of the workspace; installing twice is harmless.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let http = reqwest::Client::builder()
                // A redirect would replay the session and the headers (a token) elsewhere.
                .redirect(reqwest::redirect::Policy::none())
                .connect_timeout(opts.connect_timeout)
                .build()
                .map_err(|e| McpError::Initialize(format!("cannot start the HTTP client: {e}")))?;
            let mut custom = HashMap::new();
            for (k, v) in headers {
                // Checked by the config loader; a config built in code gets the same message.
                let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                    .map_err(|_| McpError::Config(format!("header name {k:?} is not valid")))?;
                let value = reqwest::header::HeaderValue::from_str(v).map_err(|_| {
                    McpError::Config(format!("the value of header {k:?} is not valid"))
                })?;
                custom.insert(name, value);
            }
            let transport = StreamableHttpClientTransport::with_client(
                http,
                StreamableHttpClientTransportConfig::with_uri(url.as_str()).custom_headers(custom),
            );
            let service =
                tokio::time::timeout(opts.connect_timeout, client_info().serve(transport))
                    .await
                    .map_err(|_| limit("reaching the server and initialising"))?
                    .map_err(|e| McpError::Initialize(e.to_string()))?;
            Ok((service, None))
        }
    }
}

/// Connects to one server and lists its tools, named `<server>__<tool>`.
pub async fn connect(
    server: &str,
    cfg: &ServerConfig,
    opts: &ConnectOptions,
) -> Result<Vec<McpTool>, McpError> {
    let (service, stderr) = start(cfg, opts).await?;
    let conn = Arc::new(Connection {
        server: server.to_string(),
        service,
        stderr,
    });
    let listed = tokio::time::timeout(opts.list_timeout, conn.service.peer().list_all_tools())
        .await
        .map_err(|_| McpError::Timeout {
            what: "listing tools",
            after: opts.list_timeout,
        })?
        .map_err(|e| McpError::List(format!("{e}{}", conn.stderr_tail())))?;
    let mut tools = Vec::with_capacity(listed.len());
    for t in listed {
        let mut description = t
            .description
            .as_deref()
            .or(t.title.as_deref())
            .unwrap_or("")
            .trim()
            .to_string();
        if description.is_empty() {
            description = format!("Tool {:?} of the MCP server {server:?}.", t.name);
        }
        if description.chars().count() > MAX_DESCRIPTION {
            description = description.chars().take(MAX_DESCRIPTION - 1).collect();
            description.push('…');
        }
        let mut schema = (*t.input_schema).clone();
        // MCP requires an object schema; say so where a server left it implicit, so shape
        // checks and grammars see an object.
        schema
            .entry("type")
            .or_insert_with(|| Value::String("object".into()));
        tools.push(McpTool {
            name: tool_name(server, &t.name),
            remote: t.name.to_string(),
            description,
            parameters: Value::Object(schema),
            conn: conn.clone(),
        });
    }
    Ok(tools)
}

/// Connects to every server of `config` at once. Returns the tools of those that worked and,
/// for each that did not, its name and why. Names that collide after sanitising get a `_2`,
/// `_3`, … suffix.
pub async fn connect_all(
    config: &McpConfig,
    opts: &ConnectOptions,
) -> (Vec<Arc<dyn Tool>>, Vec<(String, McpError)>) {
    let results = futures_util::future::join_all(
        config
            .servers
            .iter()
            .map(|(name, cfg)| async move { (name.clone(), connect(name, cfg, opts).await) }),
    )
    .await;
    let mut tools: Vec<Arc<dyn Tool>> = Vec::new();
    let mut failed = Vec::new();
    let mut taken = BTreeSet::new();
    for (server, r) in results {
        match r {
            Ok(ts) => {
                for mut t in ts {
                    let mut n = 2;
                    while taken.contains(&t.name) {
                        let suffix = format!("_{n}");
                        let mut base = tool_name(&t.conn.server, &t.remote);
                        base.truncate(MAX_NAME - suffix.len());
                        t.name = base + &suffix;
                        n += 1;
                    }
                    taken.insert(t.name.clone());
                    tools.push(Arc::new(t));
                }
            }
            Err(e) => failed.push((server, e)),
        }
    }
    (tools, failed)
}
