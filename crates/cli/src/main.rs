//! `autoglm`: the command line. Wiring only — parsing arguments, resolving models through the
//! hub, and printing what the library crates return. Exit status: 0 success, 1 failure, 2 usage.

mod agent_cmd;
mod keys_cmd;
mod model_cmd;
mod telemetry;

use std::io::{BufRead, Write};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use autoglm_engine::{BenchConfig, Engine, EngineConfig, FinishReason, SamplingParams};
use autoglm_hub::{DEFAULT_MODEL, Hub};
use autoglm_tokenizer::ChatMessage;
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "autoglm",
    version,
    about = "Open-AutoGLM: an autonomous-agent runtime with its own embedded LLM engine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Carry out GOAL with the agent: plan, tools, checks; the answer on stdout.
    Run {
        #[command(flatten)]
        backend: agent_cmd::BackendArgs,
        /// The task's working folder (default: a new one under $AUTOGLM_HOME/workspaces).
        #[arg(long)]
        workspace: Option<std::path::PathBuf>,
        /// Print exactly one JSON object (task_id, status, answer, steps, usage) on stdout.
        #[arg(long)]
        json: bool,
        goal: String,
    },
    /// List tasks, newest first.
    Tasks {
        #[arg(long)]
        json: bool,
    },
    /// Continue unfinished tasks from their journals (all of them when no id is given).
    Resume {
        #[command(flatten)]
        backend: agent_cmd::BackendArgs,
        #[arg(long)]
        json: bool,
        task_id: Option<String>,
    },
    /// Show a task's steps as a tree with timings and token counts.
    Trace {
        #[arg(long)]
        json: bool,
        task_id: String,
    },
    /// Print the token ids of TEXT as a JSON array (no BOS added).
    Tokenize {
        #[command(flatten)]
        model: ModelArgs,
        /// Recognise special-token text such as <|im_start|> as special tokens.
        #[arg(long)]
        special: bool,
        text: String,
    },
    /// Generate a completion and stream it to stdout.
    Generate {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        sampling: SamplingArgs,
        /// Use PROMPT as it stands instead of rendering it as a user message with the chat template.
        #[arg(long)]
        raw: bool,
        /// Print timing figures to stderr at the end.
        #[arg(long)]
        verbose: bool,
        prompt: String,
    },
    /// Talk with the model interactively.
    Chat {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        sampling: SamplingArgs,
        /// A system prompt for the conversation.
        #[arg(long)]
        system: Option<String>,
        /// Print token counts and speeds to stderr after each reply.
        #[arg(long)]
        verbose: bool,
    },
    /// Measure prompt-processing and generation speed (like llama-bench's pp/tg).
    Bench {
        #[command(flatten)]
        model: ModelArgs,
        /// Prompt tokens for the pp test.
        #[arg(short = 'p', long = "prompt-tokens", default_value_t = 512)]
        pp: usize,
        /// Generated tokens for the tg test.
        #[arg(short = 'n', long = "gen-tokens", default_value_t = 128)]
        tg: usize,
        /// Also measure B sequences decoding together (aggregate tokens/s).
        #[arg(long, default_value_t = 0)]
        batch: usize,
        /// Prompt tokens each batched sequence holds before its timed decode (as llama-batched-bench's -npp).
        #[arg(long, default_value_t = 128)]
        batch_prompt: usize,
        /// Repetitions (the median is reported).
        #[arg(short = 'r', long, default_value_t = 5)]
        reps: usize,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Serve the OpenAI-compatible API and the tasks API (agent tasks on a worker pool, resumed after a restart).
    Serve {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Requests allowed to wait beyond the running batch; past it, 429 at once.
        #[arg(long, default_value_t = 64)]
        max_queue: usize,
        /// KV cache budget in MiB.
        #[arg(long, default_value_t = 512)]
        kv_cache_mb: usize,
        /// How the KV cache stores values: f16, or q8_0 (8-bit blocks, nearly twice the tokens
        /// in the same budget).
        #[arg(long, default_value = "f16")]
        kv_cache_type: autoglm_model::KvDtype,
        /// Most sequences decoding together.
        #[arg(long, default_value_t = 16)]
        max_batch: usize,
        /// Agent tasks running at once (the tasks API's worker pool).
        #[arg(long, default_value_t = 2)]
        task_workers: usize,
        /// Submitted tasks allowed to wait for a worker; past it, 429.
        #[arg(long, default_value_t = 64)]
        max_queued_tasks: usize,
        /// Serve without API keys, every request as the one local user (for a single user on
        /// loopback; see `autoglm keys`).
        #[arg(long)]
        no_auth: bool,
        /// Export task spans (task, steps, model and tool calls) by OTLP/HTTP to this
        /// collector, e.g. http://127.0.0.1:4318 (default: $OTEL_EXPORTER_OTLP_ENDPOINT).
        #[arg(long, value_name = "URL")]
        otlp_endpoint: Option<String>,
        /// Key of the HMAC-SHA256 signature of task webhooks (default: $AUTOGLM_WEBHOOK_SECRET,
        /// which keeps it out of the process list); without one, webhooks are refused.
        #[arg(long, value_name = "SECRET")]
        webhook_secret: Option<String>,
        /// Hosts task webhooks may be sent to: example.org, *.example.org, host:port
        /// (repeatable or comma-separated; none by default, so webhooks are refused).
        #[arg(
            long = "webhook-allow-host",
            value_name = "HOST",
            value_delimiter = ','
        )]
        webhook_allow_host: Vec<String>,
    },
    /// Manage API keys: create, list, revoke.
    Keys {
        #[command(subcommand)]
        command: keys_cmd::KeysCommand,
    },
    /// Show the audit log (who did what, when), newest first.
    Audit(keys_cmd::AuditArgs),
    /// Manage models: list, pull, rm, info.
    Model {
        #[command(subcommand)]
        command: model_cmd::ModelCommand,
    },
}

#[derive(Args, Clone)]
struct ModelArgs {
    /// A catalogue name (smollm2-135m, gemma3-270m), a path to a .gguf file, or hf:OWNER/REPO/FILE.gguf.
    #[arg(long, short = 'm', default_value = DEFAULT_MODEL)]
    model: String,
    /// Worker threads (default: all cores).
    #[arg(long, short = 't')]
    threads: Option<usize>,
}

#[derive(Args, Clone)]
struct SamplingArgs {
    /// 0 means greedy.
    #[arg(long, default_value_t = 0.7, allow_negative_numbers = true)]
    temperature: f32,
    #[arg(long, default_value_t = 0.95, allow_negative_numbers = true)]
    top_p: f32,
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    #[arg(long, default_value_t = 0.05, allow_negative_numbers = true)]
    min_p: f32,
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    repetition_penalty: f32,
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    presence_penalty: f32,
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    frequency_penalty: f32,
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long, default_value_t = 512)]
    max_tokens: usize,
    /// Stop before this string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
}

impl SamplingArgs {
    fn params(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            seed: self.seed,
            max_tokens: self.max_tokens,
            stop: self.stop.clone(),
            ..SamplingParams::default()
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    ExitCode::SUCCESS
                }
                _ => ExitCode::from(2),
            };
        }
    };
    // Agent commands report the task's end in their exit status.
    let agent_result = match &cli.command {
        Command::Run {
            backend,
            workspace,
            json,
            goal,
        } => Some(agent_cmd::run(backend, workspace.clone(), *json, goal)),
        Command::Resume {
            backend,
            json,
            task_id,
        } => Some(agent_cmd::resume(backend, task_id.as_deref(), *json)),
        _ => None,
    };
    if let Some(r) = agent_result {
        return match r {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        };
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Tokenize {
            model,
            special,
            text,
        } => {
            let path = resolve(&model.model)?;
            let file = autoglm_gguf::GgufFile::open(&path)?;
            let tok = autoglm_tokenizer::Tokenizer::from_gguf(&file)?;
            println!("{}", serde_json::to_string(&tok.encode(&text, special))?);
            Ok(())
        }
        Command::Generate {
            model,
            sampling,
            raw,
            verbose,
            prompt,
        } => {
            let params = sampling.params();
            params.validate()?;
            let mut engine = load_engine(&model)?;
            let ids = if raw {
                engine.raw_prompt(&prompt)
            } else {
                note_builtin_template(&engine, &model.model);
                engine.chat_prompt(&[ChatMessage::user(prompt)])?
            };
            let mut stdout = std::io::stdout().lock();
            let g = engine.generate(&ids, &params, &mut |t| {
                // A closed pipe (e.g. `| head`) ends generation quietly.
                stdout
                    .write_all(t.as_bytes())
                    .and_then(|_| stdout.flush())
                    .is_ok()
            })?;
            let _ = writeln!(stdout);
            if verbose {
                report(&g);
            }
            Ok(())
        }
        Command::Chat {
            model,
            sampling,
            system,
            verbose,
        } => chat(&model, &sampling, system, verbose),
        Command::Bench {
            model,
            pp,
            tg,
            batch,
            batch_prompt,
            reps,
            json,
        } => {
            let per_seq = pp.max(tg).max(batch_prompt + tg) + 16;
            let mut engine = load_engine_with(&model, batch.max(1) * per_seq)?;
            let cfg = BenchConfig {
                pp_tokens: pp,
                tg_tokens: tg,
                batch,
                batch_prompt,
                repetitions: reps,
            };
            let r = engine.bench(&cfg, &mut |line| eprintln!("{line}"))?;
            if json {
                let obj = serde_json::json!({
                    "model": model.model,
                    "threads": engine.threads(),
                    "pp_tokens": pp,
                    "pp_tok_s": r.pp_tok_s.map(round1),
                    "tg_tokens": tg,
                    "tg_tok_s": r.tg_tok_s.map(round1),
                    "batch": batch,
                    "batch_tg_tok_s": r.batch_tg_tok_s.map(round1),
                });
                println!("{obj}");
            } else {
                println!("| model | threads | test | tokens/s |");
                println!("| --- | --- | --- | --- |");
                let t = engine.threads();
                if let Some(v) = r.pp_tok_s {
                    println!("| {} | {t} | pp{pp} | {v:.1} |", model.model);
                }
                if let Some(v) = r.tg_tok_s {
                    println!("| {} | {t} | tg{tg} | {v:.1} |", model.model);
                }
                if let Some(v) = r.batch_tg_tok_s {
                    println!(
                        "| {} | {t} | {batch} x tg{tg} (aggregate) | {v:.1} |",
                        model.model
                    );
                }
            }
            Ok(())
        }
        Command::Serve {
            model,
            host,
            port,
            max_queue,
            kv_cache_mb,
            kv_cache_type,
            max_batch,
            task_workers,
            max_queued_tasks,
            no_auth,
            otlp_endpoint,
            webhook_secret,
            webhook_allow_host,
        } => {
            if task_workers == 0 {
                bail!("--task-workers must be at least 1");
            }
            for h in &webhook_allow_host {
                autoglm_tools::HostPattern::parse(h)
                    .map_err(|e| anyhow::anyhow!("--webhook-allow-host: {e}"))?;
            }
            let webhook_secret = webhook_secret
                .or_else(|| std::env::var("AUTOGLM_WEBHOOK_SECRET").ok())
                .filter(|s| !s.is_empty());
            let path = resolve(&model.model)?;
            let loaded = autoglm_model::Model::load(&path)
                .with_context(|| format!("loading {}", path.display()))?;
            let mut cfg = autoglm_engine::ServeConfig {
                kv_cache_mb,
                kv_dtype: kv_cache_type,
                max_queue,
                max_running: max_batch.max(1),
                ..Default::default()
            };
            if let Some(t) = model.threads {
                if t == 0 {
                    bail!("--threads must be at least 1");
                }
                cfg.threads = t;
            }
            let addr: std::net::SocketAddr = format!("{host}:{port}")
                .parse()
                .with_context(|| format!("invalid address {host}:{port}"))?;
            let store = agent_cmd::open_store()?;
            let auth = if no_auth {
                if !addr.ip().is_loopback() {
                    eprintln!(
                        "warning: --no-auth on {host}, which is not a loopback address: anyone \
                         who can reach it has full access"
                    );
                }
                autoglm_server::AuthMode::None
            } else {
                if store.keys(None)?.iter().all(|k| k.revoked()) {
                    eprintln!(
                        "note: no API keys yet, so every request but /health and the web UI's \
                         files will be refused; create one with \
                         `autoglm keys create --tenant NAME --scopes models,tasks`"
                    );
                }
                autoglm_server::AuthMode::Keys
            };
            let engine = autoglm_engine::EngineHandle::start(loaded, cfg)?;
            engine.prepare_constraints();
            let tasks = autoglm_server::TasksConfig {
                workers: task_workers,
                max_queued: max_queued_tasks,
                webhooks: autoglm_server::WebhookConfig {
                    secret: webhook_secret,
                    allow_hosts: webhook_allow_host,
                    ..Default::default()
                },
                agent: autoglm_agent::AgentConfig {
                    workspaces: agent_cmd::home()?.join("workspaces"),
                    ..Default::default()
                },
                ..Default::default()
            };
            let state =
                autoglm_server::AppState::with_engine(engine, &model.model, store, auth, tasks);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let mut telemetry = telemetry::Telemetry::init(otlp_endpoint.as_deref())?;
            let served = rt.block_on(autoglm_server::serve(state, addr, |a| {
                // One line: tests read it and close the pipe, and a later line would then fail.
                eprintln!(
                    "serving {} on http://{a}/v1 — web UI at http://{a}/ (Ctrl-C to stop)",
                    model.model
                );
            }));
            // Tasks still running end (and close their spans) with the runtime; then the
            // spans still queued are sent.
            drop(rt);
            telemetry.shutdown();
            served?;
            Ok(())
        }
        Command::Model { command } => model_cmd::run(command),
        Command::Tasks { json } => agent_cmd::tasks(json),
        Command::Keys { command } => keys_cmd::keys(command),
        Command::Audit(a) => keys_cmd::audit(a),
        Command::Trace { json, task_id } => agent_cmd::trace(&task_id, json),
        Command::Run { .. } | Command::Resume { .. } => unreachable!("handled in main"),
    }
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

fn hub() -> Result<Hub> {
    Hub::from_env().context("locating the model cache")
}

/// Local path of a model, pulling it on first use with progress on stderr.
fn resolve(spec: &str) -> Result<std::path::PathBuf> {
    let hub = hub()?;
    let path = hub
        .resolve(spec, &mut |line| eprintln!("{line}"))
        .with_context(|| format!("getting model '{spec}'"))?;
    Ok(path)
}

fn load_engine(model: &ModelArgs) -> Result<Engine> {
    load_engine_with(model, 8192)
}

fn load_engine_with(model: &ModelArgs, kv_tokens: usize) -> Result<Engine> {
    let path = resolve(&model.model)?;
    let mut cfg = EngineConfig {
        kv_tokens,
        ..EngineConfig::default()
    };
    if let Some(t) = model.threads {
        if t == 0 {
            bail!("--threads must be at least 1");
        }
        cfg.threads = t;
    }
    Engine::load(&path, cfg).with_context(|| format!("loading {}", path.display()))
}

fn note_builtin_template(engine: &Engine, name: &str) {
    if engine.has_builtin_template() {
        eprintln!(
            "note: {name} has no chat template of its own (a base model?); using a built-in one. \
             Use --raw for plain text completion."
        );
    }
}

fn report(g: &autoglm_engine::Generation) {
    let pp = g.prompt_tokens as f64 / g.prefill_time.as_secs_f64().max(1e-9);
    let n = g.tokens.len();
    let tg = n.saturating_sub(1) as f64 / g.decode_time.as_secs_f64().max(1e-9);
    eprintln!(
        "[{} prompt tokens at {pp:.1} tok/s, {n} generated at {tg:.1} tok/s, finish: {:?}]",
        g.prompt_tokens, g.finish
    );
}

fn chat(
    model: &ModelArgs,
    sampling: &SamplingArgs,
    system: Option<String>,
    verbose: bool,
) -> Result<()> {
    let params = sampling.params();
    params.validate()?;
    let mut engine = load_engine(model)?;
    note_builtin_template(&engine, &model.model);
    let mut history: Vec<ChatMessage> = system.into_iter().map(ChatMessage::system).collect();
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    eprintln!(
        "chatting with {} — empty line or Ctrl-D to quit, /reset to start over",
        model.model
    );
    loop {
        eprint!("> ");
        let _ = std::io::stderr().flush();
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim();
        if line.is_empty() {
            break;
        }
        if line == "/reset" {
            history.retain(|m| m.role == "system");
            continue;
        }
        history.push(ChatMessage::user(line));
        let ids = engine.chat_prompt(&history)?;
        let g = engine.generate(&ids, &params, &mut |t| {
            let _ = stdout.write_all(t.as_bytes());
            let _ = stdout.flush();
            true
        })?;
        println!();
        if verbose {
            report(&g);
        }
        if g.finish == FinishReason::Length {
            eprintln!("[reply cut at {} tokens]", g.tokens.len());
        }
        history.push(ChatMessage::assistant(g.text));
    }
    Ok(())
}
