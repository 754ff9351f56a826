//! External tools over the Model Context Protocol.
//!
//! [`load_config`] reads an `mcp.json` (the `{"mcpServers": {...}}` convention, see [`config`]);
//! [`connect_all`] starts or reaches every server in it, lists their tools and returns each as
//! an [`autoglm_tools::Tool`] named `<server>__<tool>`, ready for a
//! [`ToolRegistry`](autoglm_tools::ToolRegistry). A server that fails to start, to initialise
//! or to list its tools in time is reported next to the tools of the others instead of stopping
//! them.
//!
//! Each tool holds its server's connection (the rmcp client service, shared by the server's
//! tools), so a connection lives exactly as long as some tool of it does; a stdio server's
//! process is killed when the last one goes. Calls go out as `tools/call`; text content comes
//! back as the tool's output, other content is named but not shown, and a result marked
//! `isError` becomes [`ToolError::Failed`](autoglm_tools::ToolError::Failed) with its text.
//! Time limits and cancellation of calls are the registry's, as for every tool: dropping a call
//! sends the server `notifications/cancelled`.

mod client;
pub mod config;

use std::path::PathBuf;
use std::time::Duration;

pub use client::{ConnectOptions, McpTool, connect, connect_all, tool_name};
pub use config::{McpConfig, ServerConfig, load_config, parse_config};

#[derive(Debug, thiserror::Error)]
pub enum McpError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The configuration is not what this crate understands (the message says where).
    #[error("{0}")]
    Config(String),
    #[error("cannot start {command:?}: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    /// The server did not complete the MCP handshake.
    #[error("initialising failed: {0}")]
    Initialize(String),
    #[error("listing tools failed: {0}")]
    List(String),
    #[error("{what} took longer than {after:?}")]
    Timeout { what: &'static str, after: Duration },
}
