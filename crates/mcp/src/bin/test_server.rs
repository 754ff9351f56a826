//! A small MCP server for the tests, built on rmcp's server side (feature `test-server`):
//! started as a separate process, over stdio (`--stdio`, the default) or streamable HTTP
//! (`--http`: binds 127.0.0.1:0 and prints `listening on http://…/mcp` as its first line).
//! `--exit` writes a complaint to stderr and exits before speaking MCP; `--mute` reads stdin and
//! never answers. With `$AUTOGLM_MCP_TEST_PIDFILE` set, the stdio server writes its process id
//! there. Its tools:
//!
//! - `echo {text}` → `echo: <text>`
//! - `add {a, b}` → the sum
//! - `fail {}` → an `isError` result
//! - `mixed {}` → text and an image
//! - `env var {}` (a name that needs sanitising) → `$AUTOGLM_MCP_TEST_GREETING`
//! - `sleep {ms}` → `slept` after `ms` milliseconds
//! - a tool with an 80-character name (truncation)

use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ErrorData,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{RoleServer, ServerHandler, ServiceExt};
use serde_json::{Map, Value, json};

#[derive(Clone)]
struct TestServer;

fn schema(v: Value) -> Arc<Map<String, Value>> {
    match v {
        Value::Object(m) => Arc::new(m),
        _ => Arc::new(Map::new()),
    }
}

fn tools() -> Vec<Tool> {
    vec![
        Tool::new(
            "echo",
            "Repeats the text.",
            schema(
                json!({"type": "object", "properties": {"text": {"type": "string"}},
                          "required": ["text"]}),
            ),
        ),
        Tool::new(
            "add",
            "Adds two numbers.",
            schema(
                json!({"type": "object", "properties": {"a": {"type": "number"},
                          "b": {"type": "number"}}, "required": ["a", "b"],
                          "additionalProperties": false}),
            ),
        ),
        Tool::new("fail", "Always fails.", schema(json!({"type": "object"}))),
        Tool::new(
            "mixed",
            "Text and an image.",
            schema(json!({"type": "object"})),
        ),
        Tool::new(
            "env var",
            "The greeting from the environment.",
            // No "type": the client must add it.
            schema(json!({"properties": {}})),
        ),
        Tool::new(
            "sleep",
            "Sleeps.",
            schema(
                json!({"type": "object", "properties": {"ms": {"type": "integer"}},
                          "required": ["ms"]}),
            ),
        ),
        Tool::new(
            "x".repeat(80),
            "A long name.",
            schema(json!({"type": "object"})),
        ),
    ]
}

fn text(t: impl Into<String>) -> Result<CallToolResponse, ErrorData> {
    Ok(CallToolResult::success(vec![ContentBlock::text(t)]).into())
}

impl ServerHandler for TestServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(tools()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let args = request.arguments.unwrap_or_default();
        let num = |k: &str| args.get(k).and_then(Value::as_f64).unwrap_or(0.0);
        match &*request.name {
            "echo" => text(format!(
                "echo: {}",
                args.get("text").and_then(Value::as_str).unwrap_or("")
            )),
            "add" => text(format!("{}", num("a") + num("b"))),
            "fail" => Ok(CallToolResult::error(vec![ContentBlock::text(
                "the fail tool failed on purpose",
            )])
            .into()),
            "mixed" => Ok(CallToolResult::success(vec![
                ContentBlock::text("a picture:"),
                ContentBlock::image("iVBORw0KGgo=", "image/png"),
            ])
            .into()),
            "env var" => text(
                std::env::var("AUTOGLM_MCP_TEST_GREETING").unwrap_or_else(|_| "(unset)".into()),
            ),
            "sleep" => {
                tokio::time::sleep(Duration::from_millis(num("ms") as u64)).await;
                text("slept")
            }
            n if n.len() == 80 => text("long"),
            n => Err(ErrorData::invalid_params(format!("no tool {n}"), None)),
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mode = std::env::args().nth(1).unwrap_or_else(|| "--stdio".into());
    match mode.as_str() {
        "--stdio" => {
            // Lets a test watch this process end when its client goes.
            if let Ok(f) = std::env::var("AUTOGLM_MCP_TEST_PIDFILE") {
                let _ = std::fs::write(f, std::process::id().to_string());
            }
            let Ok(service) = TestServer.serve(rmcp::transport::stdio()).await else {
                eprintln!("test server: the client went away during initialisation");
                std::process::exit(1);
            };
            let _ = service.waiting().await;
        }
        "--http" => {
            use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
            use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
            let service: StreamableHttpService<TestServer, LocalSessionManager> =
                StreamableHttpService::new(
                    || Ok(TestServer),
                    Default::default(),
                    StreamableHttpServerConfig::default(),
                );
            let app = axum::Router::new().nest_service("/mcp", service);
            let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("test server: cannot bind: {e}");
                    std::process::exit(1);
                }
            };
            match listener.local_addr() {
                Ok(a) => println!("listening on http://{a}/mcp"),
                Err(e) => {
                    eprintln!("test server: {e}");
                    std::process::exit(1);
                }
            }
            let _ = axum::serve(listener, app).await;
        }
        "--exit" => {
            eprintln!("test server: refusing to start on purpose");
            std::process::exit(3);
        }
        "--mute" => {
            // Keep stdin open and say nothing: the client's time limit must end the wait.
            let mut sink = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut tokio::io::stdin(), &mut sink).await;
        }
        m => {
            eprintln!("test server: unknown mode {m}");
            std::process::exit(2);
        }
    }
}
