//! The MCP client against a real server process (`autoglm-mcp-test-server`, built by cargo for
//! these tests) over both transports: listing, names and schemas, calls through the registry,
//! error results, servers that fail or hang, and connections living as long as their tools.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use autoglm_mcp::{
    ConnectOptions, McpConfig, McpError, ServerConfig, connect, connect_all, load_config,
    parse_config, tool_name,
};
use autoglm_tools::{Tool, ToolContext, ToolError, ToolRegistry};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

const SERVER: &str = env!("CARGO_BIN_EXE_autoglm-mcp-test-server");

fn stdio(args: &[&str], env: &[(&str, &str)]) -> ServerConfig {
    ServerConfig::Stdio {
        command: SERVER.into(),
        args: args.iter().map(|a| a.to_string()).collect(),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        cwd: None,
    }
}

/// The test server over HTTP in its own process, and its URL.
async fn http_server() -> (tokio::process::Child, String) {
    let mut child = tokio::process::Command::new(SERVER)
        .arg("--http")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the test server starts");
    let out = child.stdout.take().expect("stdout is piped");
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(20),
        tokio::io::BufReader::new(out).read_line(&mut line),
    )
    .await
    .expect("the server says where it listens in time")
    .expect("reading its stdout");
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    (child, url)
}

fn ctx() -> ToolContext {
    ToolContext::new(std::env::temp_dir())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_of_stdio_and_http_servers_work_and_broken_servers_are_reported() {
    let (_http, url) = http_server().await;
    let mut cfg = McpConfig::default();
    cfg.servers.insert(
        "local".into(),
        stdio(&[], &[("AUTOGLM_MCP_TEST_GREETING", "hello from env")]),
    );
    cfg.servers.insert(
        "remote".into(),
        ServerConfig::Http {
            url,
            headers: BTreeMap::from([("X-Test".into(), "1".into())]),
        },
    );
    cfg.servers.insert(
        "missing".into(),
        ServerConfig::Stdio {
            command: "/nonexistent/mcp-server".into(),
            args: vec![],
            env: BTreeMap::new(),
            cwd: None,
        },
    );
    cfg.servers.insert("quits".into(), stdio(&["--exit"], &[]));
    let (tools, failed) = connect_all(&cfg, &ConnectOptions::default()).await;

    // The two broken servers, with what went wrong, and nothing else.
    let failed: BTreeMap<String, String> = failed
        .into_iter()
        .map(|(s, e)| (s, e.to_string()))
        .collect();
    assert_eq!(failed.keys().collect::<Vec<_>>(), ["missing", "quits"]);
    assert!(
        failed["missing"].starts_with("cannot start \"/nonexistent/mcp-server\""),
        "{}",
        failed["missing"]
    );
    assert!(
        failed["quits"].contains("its stderr: test server: refusing to start on purpose"),
        "{}",
        failed["quits"]
    );

    let long = format!("local__{}", "x".repeat(64 - "local__".len()));
    let mut names: Vec<&str> = tools.iter().map(|t| t.name()).collect();
    names.sort();
    let mut want = vec![
        "local__add",
        "local__echo",
        "local__env_var",
        "local__fail",
        "local__mixed",
        "local__sleep",
        &long,
        "remote__add",
        "remote__echo",
        "remote__env_var",
        "remote__fail",
        "remote__mixed",
        "remote__sleep",
    ];
    let long_remote = format!("remote__{}", "x".repeat(64 - "remote__".len()));
    want.push(&long_remote);
    want.sort();
    assert_eq!(names, want);

    let mut reg = ToolRegistry::builtin();
    for t in &tools {
        reg.add(t.clone());
    }
    let add = reg.get("remote__add").expect("listed");
    assert_eq!(add.description(), "Adds two numbers.");
    assert_eq!(
        add.parameters(),
        json!({"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
               "required": ["a", "b"], "additionalProperties": false})
    );
    // The server left out "type"; the client says "object".
    assert_eq!(
        reg.get("local__env_var").expect("listed").parameters(),
        json!({"type": "object", "properties": {}})
    );

    let c = ctx();
    // (tool, arguments, output or error)
    let cases: Vec<(&str, Value, Result<&str, ToolError>)> = vec![
        ("local__echo", json!({"text": "hi"}), Ok("echo: hi")),
        ("remote__echo", json!({"text": "über"}), Ok("echo: über")),
        ("remote__add", json!({"a": 2, "b": 3.5}), Ok("5.5")),
        ("local__env_var", json!({}), Ok("hello from env")),
        // The HTTP server is its own process, started without the variable.
        ("remote__env_var", json!({}), Ok("(unset)")),
        (
            "local__mixed",
            json!({}),
            Ok("a picture:\n[image (image/png), not shown]"),
        ),
        (&long, json!({}), Ok("long")),
        (
            "local__fail",
            json!({}),
            Err(ToolError::Failed("the fail tool failed on purpose".into())),
        ),
        (
            "remote__fail",
            json!({}),
            Err(ToolError::Failed("the fail tool failed on purpose".into())),
        ),
        // Shape checks apply before anything reaches the server.
        (
            "remote__add",
            json!({"a": 1}),
            Err(ToolError::InvalidArguments("\"b\" is required".into())),
        ),
        (
            "local__add",
            json!({"a": 1, "b": 2, "c": 3}),
            Err(ToolError::InvalidArguments("unknown argument \"c\"".into())),
        ),
        (
            "local__echo",
            json!({"text": 5}),
            Err(ToolError::InvalidArguments(
                "\"text\" must be of type string".into(),
            )),
        ),
    ];
    for (name, args, want) in cases {
        let got = reg.call(name, args.clone(), &c).await.map(|o| o.content);
        assert_eq!(got, want.map(str::to_string), "{name} {args}");
    }
    // Built-ins and MCP tools side by side, selected by name as `--tools` does.
    let some = reg
        .select(&["calculator".into(), "local__echo".into()])
        .expect("both exist");
    assert_eq!(some.names(), ["calculator", "local__echo"]);

    // The registry's time limit ends a slow call; the connection is still good afterwards.
    for server in ["local", "remote"] {
        let mut quick = ctx();
        quick.timeout = Duration::from_millis(300);
        let sleep = format!("{server}__sleep");
        let e = reg
            .call(&sleep, json!({"ms": 10_000}), &quick)
            .await
            .unwrap_err();
        assert_eq!(
            e,
            ToolError::Timeout(Duration::from_millis(300)),
            "{server}"
        );
        let again = reg
            .call(&sleep, json!({"ms": 1}), &quick)
            .await
            .map(|o| o.content);
        assert_eq!(again, Ok("slept".to_string()), "{server}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_hits_the_time_limit() {
    let opts = ConnectOptions {
        connect_timeout: Duration::from_millis(500),
        ..ConnectOptions::default()
    };
    let started = Instant::now();
    let e = connect("mute", &stdio(&["--mute"], &[]), &opts)
        .await
        .err()
        .expect("no answer, no tools");
    assert!(matches!(e, McpError::Timeout { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "starting the server and initialising took longer than 500ms"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    // Nothing listens there: an error, not a hang.
    let e = connect(
        "gone",
        &ServerConfig::Http {
            url: "http://127.0.0.1:9/mcp".into(),
            headers: BTreeMap::new(),
        },
        &opts,
    )
    .await
    .err()
    .expect("nothing to connect to");
    assert!(
        matches!(e, McpError::Initialize(_) | McpError::Timeout { .. }),
        "{e:?}"
    );
}

/// Whether process `pid` has ended (gone, or a zombie waiting to be reaped).
fn ended(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_process_lives_as_long_as_its_tools() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pidfile = dir.path().join("pid");
    let pidfile_s = pidfile.to_string_lossy().to_string();
    let tools = connect(
        "p",
        &stdio(&[], &[("AUTOGLM_MCP_TEST_PIDFILE", &pidfile_s)]),
        &ConnectOptions::default(),
    )
    .await
    .expect("connects");
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .expect("the server wrote its pid")
        .trim()
        .parse()
        .expect("a pid");
    let mut tools: Vec<Arc<dyn Tool>> = tools.into_iter().map(|t| Arc::new(t) as _).collect();
    // Keep one tool: the connection must stay up for it.
    let echo = tools.remove(
        tools
            .iter()
            .position(|t| t.name() == "p__echo")
            .expect("echo"),
    );
    drop(tools);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !ended(pid),
        "the server stopped while a tool of it was alive"
    );
    let out = echo
        .call(json!({"text": "still here"}), &ctx())
        .await
        .expect("the call works");
    assert_eq!(out.content, "echo: still here");
    drop(echo);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ended(pid) {
        assert!(
            Instant::now() < deadline,
            "the server outlived its last tool"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn tool_names() {
    // (server, tool, name)
    let long = "a".repeat(100);
    let cases = [
        ("fs", "read_file", "fs__read_file"),
        ("my server", "do it!", "my_server__do_it_"),
        ("git-hub", "list.repos/v2", "git-hub__list_repos_v2"),
        ("ü", "ä", "____"),
        ("s", &long, &*format!("s__{}", "a".repeat(61))),
    ];
    for (server, tool, want) in cases {
        assert_eq!(tool_name(server, tool), want);
        assert!(tool_name(server, tool).len() <= 64);
    }
}

#[test]
fn configuration_files() {
    let good = r#"{"mcpServers": {
        "fs": {"command": "npx", "args": ["-y", "srv", "/data"], "env": {"K": "v"},
               "autoApprove": ["x"]},
        "web": {"type": "http", "url": "http://127.0.0.1:9000/mcp",
                "headers": {"Authorization": "Bearer t"}},
        "off": {"command": "nothing", "disabled": true}}}"#;
    let cfg = parse_config(good).expect("parses");
    assert_eq!(cfg.servers.len(), 2);
    assert_eq!(
        cfg.servers["fs"],
        ServerConfig::Stdio {
            command: "npx".into(),
            args: vec!["-y".into(), "srv".into(), "/data".into()],
            env: BTreeMap::from([("K".into(), "v".into())]),
            cwd: None,
        }
    );
    assert_eq!(
        cfg.servers["web"],
        ServerConfig::Http {
            url: "http://127.0.0.1:9000/mcp".into(),
            headers: BTreeMap::from([("Authorization".into(), "Bearer t".into())]),
        }
    );
    // VS Code's spelling.
    assert_eq!(
        parse_config(r#"{"servers": {"a": {"url": "https://example.org/mcp"}}}"#)
            .expect("parses")
            .servers
            .len(),
        1
    );

    // (file, what the error says)
    let bad = [
        ("", "not valid JSON"),
        ("[]", "must hold a JSON object"),
        ("{}", "no \"mcpServers\" object"),
        (r#"{"mcpServers": []}"#, "must be an object of servers"),
        (
            r#"{"mcpServers": {"a": 1}}"#,
            "server \"a\": must be an object",
        ),
        (
            r#"{"mcpServers": {"a": {}}}"#,
            "server \"a\": needs \"command\"",
        ),
        (
            r#"{"mcpServers": {"a": {"command": "x", "url": "http://h/"}}}"#,
            "not both",
        ),
        (
            r#"{"mcpServers": {"a": {"command": ""}}}"#,
            "\"command\" is empty",
        ),
        (
            r#"{"mcpServers": {"a": {"command": "x", "args": "-v"}}}"#,
            "\"args\" must be an array of strings",
        ),
        (
            r#"{"mcpServers": {"a": {"command": "x", "args": [1]}}}"#,
            "\"args\" must be an array of strings",
        ),
        (
            r#"{"mcpServers": {"a": {"command": "x", "env": {"K": 1}}}}"#,
            "\"env\".K must be a string",
        ),
        (r#"{"mcpServers": {"a": {"url": "nope"}}}"#, "is not a URL"),
        (
            r#"{"mcpServers": {"a": {"url": "ftp://h/x"}}}"#,
            "must be http or https",
        ),
        (
            r#"{"mcpServers": {"a": {"url": "http://h/", "headers": {"Bad Name": "v"}}}}"#,
            "header name \"Bad Name\" is not valid",
        ),
        (
            r#"{"mcpServers": {"a": {"url": "http://h/", "headers": {"X": "a\nb"}}}}"#,
            "the value of header \"X\" is not valid",
        ),
        (
            r#"{"mcpServers": {"a": {"type": "sse", "url": "http://h/sse"}}}"#,
            "SSE transport is not supported",
        ),
        (
            r#"{"mcpServers": {"a": {"type": "stdio", "url": "http://h/"}}}"#,
            "type \"stdio\" needs \"command\"",
        ),
        (
            r#"{"mcpServers": {"a": {"type": "ws", "command": "x"}}}"#,
            "unknown type \"ws\"",
        ),
        (r#"{"mcpServers": {}, "servers": {}}"#, "use one"),
    ];
    for (text, want) in bad {
        let e = parse_config(text).expect_err(text);
        assert!(matches!(e, McpError::Config(_)), "{text}: {e:?}");
        assert!(e.to_string().contains(want), "{text}: {e}");
    }

    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("mcp.json");
    let e = load_config(&missing).expect_err("no file");
    assert!(matches!(e, McpError::Read { .. }), "{e:?}");
    assert!(e.to_string().contains(&*missing.to_string_lossy()), "{e}");
    std::fs::write(&missing, "{\"mcpServers\": {\"a\": {}}}").expect("write");
    let e = load_config(&missing).expect_err("bad file");
    assert!(
        e.to_string()
            .starts_with(&format!("{}: server \"a\"", missing.display())),
        "{e}"
    );
}
