//! `autoglm run`, `tasks`, `resume`, `trace`: wiring the agent to a backend, the tools and the
//! state directory, a live view of the journal on stderr, and the answer (or one JSON object)
//! on stdout.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use autoglm_agent::{Agent, AgentConfig, Event, Status, StepKind, TaskOutcome};
use autoglm_llm::{EmbeddedClient, LlmClient, OpenAiClient, OpenAiConfig};
use autoglm_store::Store;
use autoglm_tools::ToolRegistry;
use clap::{Args, ValueEnum};
use serde_json::{Value, json};

use crate::ModelArgs;
use crate::telemetry::Telemetry;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// The built-in engine, in this process.
    Embedded,
    /// Any OpenAI-compatible server (--base-url).
    Openai,
}

#[derive(Args, Clone)]
pub struct BackendArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, value_enum, default_value = "embedded")]
    pub backend: Backend,
    /// The server's API root, e.g. http://127.0.0.1:8080/v1 (with --backend openai).
    #[arg(long)]
    pub base_url: Option<String>,
    /// Sent as a bearer token (default: $AUTOGLM_API_KEY, then $OPENAI_API_KEY).
    #[arg(long)]
    pub api_key: Option<String>,
    /// Tools offered to the agent, comma-separated (default: all built-in and MCP tools,
    /// http_fetch only with --allow-host).
    #[arg(long, value_delimiter = ',')]
    pub tools: Option<Vec<String>>,
    /// Model calls per task.
    #[arg(long, default_value_t = 40)]
    pub max_steps: usize,
    /// MCP servers whose tools are offered too, named SERVER__TOOL (default:
    /// $AUTOGLM_HOME/mcp.json when it exists).
    #[arg(long, value_name = "FILE")]
    pub mcp_config: Option<PathBuf>,
    /// Hosts http_fetch may reach: example.org, *.example.org, host:port (repeatable or
    /// comma-separated; none given, http_fetch is not offered by default).
    #[arg(long = "allow-host", value_name = "HOST", value_delimiter = ',')]
    pub allow_host: Vec<String>,
    /// Export the task's spans (task, steps, model and tool calls) by OTLP/HTTP to this
    /// collector, e.g. http://127.0.0.1:4318 (default: $OTEL_EXPORTER_OTLP_ENDPOINT).
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
}

/// `$AUTOGLM_HOME`, default `~/.local/share/autoglm`: the database and task workspaces.
pub fn home() -> Result<PathBuf> {
    let dir = match std::env::var_os("AUTOGLM_HOME") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => {
            let h = std::env::var_os("HOME").context("neither AUTOGLM_HOME nor HOME is set")?;
            PathBuf::from(h).join(".local/share/autoglm")
        }
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

pub fn open_store() -> Result<Arc<Store>> {
    let path = home()?.join("autoglm.db");
    Ok(Arc::new(Store::open(&path).with_context(|| {
        format!("opening the state database {}", path.display())
    })?))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Must run inside the runtime (the embedded engine's handle is used from async code).
fn client(b: &BackendArgs) -> Result<Arc<dyn LlmClient>> {
    Ok(match b.backend {
        Backend::Embedded => {
            if b.base_url.is_some() {
                bail!("--base-url needs --backend openai");
            }
            let path = crate::resolve(&b.model.model)?;
            let model = autoglm_model::Model::load(&path)
                .with_context(|| format!("loading {}", path.display()))?;
            let mut cfg = autoglm_engine::ServeConfig::default();
            if let Some(t) = b.model.threads {
                if t == 0 {
                    bail!("--threads must be at least 1");
                }
                cfg.threads = t;
            }
            let engine = autoglm_engine::EngineHandle::start(model, cfg)?;
            engine.prepare_constraints();
            Arc::new(EmbeddedClient::new(engine))
        }
        Backend::Openai => {
            let base_url = b
                .base_url
                .clone()
                .context("--backend openai needs --base-url (e.g. http://127.0.0.1:8080/v1)")?;
            let api_key = b
                .api_key
                .clone()
                .or_else(|| std::env::var("AUTOGLM_API_KEY").ok())
                .or_else(|| std::env::var("OPENAI_API_KEY").ok());
            // Our own server constrains tool calls; others are read tolerantly.
            Arc::new(OpenAiClient::new(OpenAiConfig {
                base_url,
                api_key,
                model: b.model.model.clone(),
                ..OpenAiConfig::default()
            })?)
        }
    })
}

/// The tools of the MCP servers in `--mcp-config` (or `$AUTOGLM_HOME/mcp.json`); servers that
/// fail are warnings, a configuration that does not parse is an error.
async fn mcp_tools(b: &BackendArgs) -> Result<Vec<Arc<dyn autoglm_tools::Tool>>> {
    let path = match &b.mcp_config {
        Some(p) => p.clone(),
        None => {
            let p = home()?.join("mcp.json");
            if !p.exists() {
                return Ok(Vec::new());
            }
            p
        }
    };
    let cfg = autoglm_mcp::load_config(&path)?;
    let (tools, failed) =
        autoglm_mcp::connect_all(&cfg, &autoglm_mcp::ConnectOptions::default()).await;
    for (server, e) in failed {
        eprintln!("warning: MCP server {server} ({}): {e}", path.display());
    }
    Ok(tools)
}

async fn agent(b: &BackendArgs, store: Arc<Store>) -> Result<Agent> {
    for h in &b.allow_host {
        autoglm_tools::HostPattern::parse(h).map_err(anyhow::Error::msg)?;
    }
    let mut all = ToolRegistry::with_memory(store.clone(), &AgentConfig::default().tenant);
    // Before selection, so --tools can name them.
    for t in mcp_tools(b).await? {
        all.add(t);
    }
    let tools = match &b.tools {
        // Without allowed hosts http_fetch refuses everything: not worth a model's attention.
        None if b.allow_host.is_empty() => {
            let names: Vec<String> = all
                .names()
                .into_iter()
                .filter(|n| n != "http_fetch")
                .collect();
            all.select(&names)?
        }
        None => all,
        Some(names) => {
            if b.allow_host.is_empty() && names.iter().any(|n| n == "http_fetch") {
                eprintln!(
                    "warning: http_fetch refuses every URL until hosts are allowed (--allow-host)"
                );
            }
            all.select(names)?
        }
    };
    let cfg = AgentConfig {
        max_steps: b.max_steps.max(1),
        workspaces: home()?.join("workspaces"),
        http_allow: b.allow_host.clone(),
        ..AgentConfig::default()
    };
    Ok(Agent::new(client(b)?, tools, store, cfg))
}

fn short(v: &Value, n: usize) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    let one_line = s.replace('\n', " ");
    if one_line.chars().count() > n {
        format!("{}…", one_line.chars().take(n).collect::<String>())
    } else {
        one_line
    }
}

/// One line of the live view for a journal record.
fn live_line(e: &Event) -> Option<String> {
    let p = &e.payload;
    Some(match e.kind {
        StepKind::Plan => {
            let mut s = String::from(if p["replan"] == true {
                "new plan:"
            } else {
                "plan:"
            });
            for st in p["steps"].as_array().into_iter().flatten() {
                s.push_str(&format!("\n  {}. {}", st["id"], short(&st["task"], 100)));
            }
            s
        }
        StepKind::ModelCall => {
            let ms = (p["ended_ms"].as_i64()? - p["started_ms"].as_i64()?).max(1);
            let out = p["usage"]["completion_tokens"].as_u64().unwrap_or(0);
            format!(
                "  · {} (step {}): {} tokens in {:.1} s, {:.0} tokens/s",
                p["purpose"].as_str().unwrap_or("model"),
                p["subtask"],
                out,
                ms as f64 / 1000.0,
                out as f64 * 1000.0 / ms as f64
            )
        }
        StepKind::ToolCall => format!(
            "  → {} {}",
            p["tool"].as_str()?,
            short(&p["arguments"], 120)
        ),
        StepKind::ToolResult => format!("  ← {}", short(&p["output"], 120)),
        StepKind::Reflection => format!(
            "  ✓ check {}: {}",
            if p["ok"] == true { "passed" } else { "failed" },
            short(&p["reason"], 100)
        ),
        StepKind::Guard => format!("  ! {}: {}", p["guard"].as_str()?, short(&p["detail"], 100)),
        StepKind::ApprovalRequested => format!(
            "  ? approval {} needed for {} {}",
            p["n"],
            p["tool"].as_str()?,
            short(&p["arguments"], 100)
        ),
        StepKind::Approval => format!(
            "  {} approval {}",
            if p["approve"] == true {
                "granted"
            } else {
                "denied"
            },
            p["n"]
        ),
        StepKind::Final => format!("done: {}", p["status"].as_str()?),
        // The server's, after the task's end.
        StepKind::Webhook => return None,
    })
}

/// Runs `fut` with the journal printed to stderr as it is written; Ctrl-C cancels the task.
fn drive(
    rt: &tokio::runtime::Runtime,
    agent: &Agent,
    fut: impl std::future::Future<Output = Result<TaskOutcome, autoglm_agent::AgentError>>,
) -> Result<TaskOutcome> {
    let mut events = agent.subscribe();
    let cancel = agent.cancel_handle();
    rt.block_on(async move {
        let printer = tokio::spawn(async move {
            while let Ok(e) = events.recv().await {
                if let Some(l) = live_line(&e) {
                    eprintln!("{l}");
                }
            }
        });
        let ctrl_c = tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("cancelling…");
                cancel.cancel();
            }
        });
        let out = fut.await;
        // Let the printer drain what was sent.
        tokio::time::sleep(Duration::from_millis(20)).await;
        printer.abort();
        ctrl_c.abort();
        Ok(out?)
    })
}

fn print_outcome(o: &TaskOutcome, as_json: bool) {
    if as_json {
        println!("{}", o.to_json());
        return;
    }
    match (&o.status, &o.answer) {
        (Status::Succeeded, Some(a)) => println!("{a}"),
        (s, _) => eprintln!(
            "task {} ended {}{}",
            o.task_id,
            s.as_str(),
            s.reason().map(|r| format!(": {r}")).unwrap_or_default()
        ),
    }
    eprintln!(
        "task {} · {} prompt + {} generated tokens · autoglm trace {}",
        o.task_id, o.usage.prompt_tokens, o.usage.completion_tokens, o.task_id
    );
}

/// `autoglm run`: exit status 0 when the task succeeded.
pub fn run(
    b: &BackendArgs,
    workspace: Option<PathBuf>,
    json_out: bool,
    goal: &str,
) -> Result<bool> {
    if goal.trim().is_empty() {
        bail!("the goal is empty");
    }
    let mut telemetry = Telemetry::init(b.otlp_endpoint.as_deref())?;
    let store = open_store()?;
    let rt = runtime()?;
    let agent = rt.block_on(agent(b, store))?;
    let o = drive(&rt, &agent, agent.run(goal, workspace))?;
    // Dropped inside the runtime: closing MCP connections (and stdio servers) spawns tasks.
    rt.block_on(async move { drop(agent) });
    // The task's spans are sent before the answer is printed: a caller that reads the answer
    // and stops the collector finds them all there.
    telemetry.shutdown();
    print_outcome(&o, json_out);
    Ok(o.status == Status::Succeeded)
}

/// `autoglm resume [ID]`: every unfinished task when no id is given.
pub fn resume(b: &BackendArgs, id: Option<&str>, json_out: bool) -> Result<bool> {
    let store = open_store()?;
    let ids: Vec<String> = match id {
        Some(i) => vec![i.to_string()],
        None => store
            .tasks_with_status(&["running"])?
            .into_iter()
            .map(|t| t.id)
            .collect(),
    };
    if ids.is_empty() {
        eprintln!("no unfinished tasks");
        return Ok(true);
    }
    let mut telemetry = Telemetry::init(b.otlp_endpoint.as_deref())?;
    let rt = runtime()?;
    let agent = rt.block_on(agent(b, store))?;
    let mut all_ok = true;
    for id in ids {
        eprintln!("resuming {id}");
        let o = drive(&rt, &agent, agent.resume(&id))?;
        print_outcome(&o, json_out);
        all_ok &= o.status == Status::Succeeded;
    }
    rt.block_on(async move { drop(agent) });
    telemetry.shutdown();
    Ok(all_ok)
}

/// `autoglm tasks`: newest first.
pub fn tasks(json_out: bool) -> Result<()> {
    let store = open_store()?;
    let list = store.tasks(None, 200)?;
    if json_out {
        let v: Vec<Value> = list
            .iter()
            .map(|t| {
                json!({"task_id": t.id, "status": t.status, "goal": t.goal,
                            "answer": t.answer, "created_ms": t.created_ms})
            })
            .collect();
        println!("{}", Value::Array(v));
        return Ok(());
    }
    for t in list {
        println!(
            "{}  {:<16}  {}",
            t.id,
            t.status,
            short(&Value::String(t.goal), 70)
        );
    }
    Ok(())
}

/// `autoglm trace ID`: the records as a tree by their keys, with timings and tokens.
pub fn trace(id: &str, json_out: bool) -> Result<()> {
    let store = open_store()?;
    if json_out {
        println!("{}", autoglm_agent::trace(&store, id)?);
        return Ok(());
    }
    let o = Agent::outcome(&store, id)?;
    println!(
        "task {} · {}{}",
        o.task_id,
        o.status.as_str(),
        o.status
            .reason()
            .map(|r| format!(": {r}"))
            .unwrap_or_default()
    );
    let t0 = o
        .steps
        .iter()
        .filter_map(|s| s["started_ms"].as_i64())
        .min()
        .unwrap_or(0);
    for s in &o.steps {
        let key = s["key"].as_str().unwrap_or("");
        let depth = key.matches('/').count();
        let ms = s["ended_ms"].as_i64().unwrap_or(0) - s["started_ms"].as_i64().unwrap_or(0);
        let at = s["started_ms"].as_i64().unwrap_or(t0) - t0;
        let what = match s["kind"].as_str().unwrap_or("") {
            "model_call" => format!(
                "model_call {} · {}+{} tokens",
                s["purpose"].as_str().unwrap_or(""),
                s["usage"]["prompt_tokens"],
                s["usage"]["completion_tokens"]
            ),
            "tool_call" => format!(
                "tool_call {} {}",
                s["tool"].as_str().unwrap_or(""),
                short(&s["arguments"], 80)
            ),
            "tool_result" => format!("tool_result {}", short(&s["output"], 80)),
            "plan" => format!("plan {} steps", s["steps"].as_array().map_or(0, Vec::len)),
            "reflection" => format!("reflection ok={} {}", s["ok"], short(&s["reason"], 60)),
            "guard" => format!(
                "guard {} {}",
                s["guard"].as_str().unwrap_or(""),
                short(&s["detail"], 60)
            ),
            "final" => format!(
                "final {} {}",
                s["status"].as_str().unwrap_or(""),
                short(&s["answer"], 60)
            ),
            k => k.to_string(),
        };
        println!(
            "{:>7.2}s {:>6} ms  {}{}  [{key}]",
            at as f64 / 1000.0,
            ms,
            "  ".repeat(depth),
            what
        );
    }
    println!(
        "usage: {} prompt ({} cached) + {} generated tokens",
        o.usage.prompt_tokens, o.usage.cached_tokens, o.usage.completion_tokens
    );
    Ok(())
}
