//! The agent: a goal becomes a plan of subtasks (run concurrently when their dependencies are
//! done), each carried out in think → tool call → observation rounds, checked by reflection
//! (retry, or replan, within budgets), and summed up in a final answer. Every step is journaled
//! in the store before it is acted on, so [`Agent::resume`] continues an interrupted task
//! without repeating completed model or tool calls.
//!
//! The agent depends on [`LlmClient`] and the tool registry only: it runs the same on the
//! embedded engine, on any OpenAI-compatible server, and on a scripted client in tests.

mod follow;
mod journal;
mod memory;
mod prompts;
mod run;
mod spans;
mod trace;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use autoglm_llm::{LlmClient, Usage};
use autoglm_store::{Store, StoreError};
use autoglm_tools::{Cancel, ToolRegistry};
use serde_json::{Value, json};
use tokio::sync::broadcast;

pub use prompts::Subtask;
pub use trace::{trace, trace_tree};

/// Statuses of a task that has not ended: a worker (or `resume`) may still drive it.
pub const UNFINISHED: &[&str] = &["queued", "running", "waiting_approval"];

/// Limits and knobs of one task.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Model calls per task, all subtasks together.
    pub max_steps: usize,
    /// New plans after a failure.
    pub max_replans: usize,
    /// Attempts of one subtask after the first.
    pub max_retries: usize,
    /// Prompt plus completion tokens per task.
    pub max_tokens: usize,
    /// Wall-clock limit of one run (a resumed run gets it afresh).
    pub max_duration: Duration,
    /// Tool rounds per subtask attempt.
    pub max_rounds: usize,
    /// Subtasks in one plan.
    pub max_plan_steps: usize,
    /// Asking again when a reply does not parse (unconstrained backends).
    pub malformed_retries: usize,
    pub tool_timeout: Duration,
    /// Hosts `http_fetch` may reach (`ToolContext::http_allow`). Policy of whoever runs the
    /// agent, not of the task: a resumed task gets the allowlist of the run that resumes it.
    pub http_allow: Vec<String>,
    /// Tokens one reply may have.
    pub reply_tokens: usize,
    /// Tokens one request may fill, prompt and reply together (the model's context, or less):
    /// older tool rounds are compacted to stay within it.
    pub context_tokens: usize,
    pub temperature: f32,
    pub tenant: String,
    /// Memories recalled at planning time.
    pub recall: usize,
    /// Where tasks without a workspace of their own get one (`<this>/<task id>`).
    pub workspaces: PathBuf,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            max_steps: 40,
            max_replans: 1,
            max_retries: 1,
            max_tokens: 200_000,
            max_duration: Duration::from_secs(600),
            max_rounds: 6,
            max_plan_steps: 4,
            malformed_retries: 2,
            tool_timeout: Duration::from_secs(30),
            http_allow: Vec::new(),
            reply_tokens: 400,
            context_tokens: 8192,
            temperature: 0.0,
            tenant: "default".into(),
            recall: 3,
            workspaces: std::env::temp_dir().join("autoglm-workspaces"),
        }
    }
}

/// The kinds of step records (the journal's and the event stream's vocabulary).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StepKind {
    Plan,
    ModelCall,
    ToolCall,
    ToolResult,
    Reflection,
    /// A guard stepped in (a repeated action, a budget).
    Guard,
    /// A tool marked "ask" waits for a person's decision before it runs.
    ApprovalRequested,
    /// The decision on an approval request.
    Approval,
    Final,
    /// A delivery of the task's webhook, journaled by the server after the final record.
    Webhook,
}

impl StepKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::Plan => "plan",
            StepKind::ModelCall => "model_call",
            StepKind::ToolCall => "tool_call",
            StepKind::ToolResult => "tool_result",
            StepKind::Reflection => "reflection",
            StepKind::Guard => "guard",
            StepKind::ApprovalRequested => "approval_requested",
            StepKind::Approval => "approval",
            StepKind::Final => "final",
            StepKind::Webhook => "webhook",
        }
    }

    pub fn parse(s: &str) -> Option<StepKind> {
        Some(match s {
            "plan" => StepKind::Plan,
            "model_call" => StepKind::ModelCall,
            "tool_call" => StepKind::ToolCall,
            "tool_result" => StepKind::ToolResult,
            "reflection" => StepKind::Reflection,
            "guard" => StepKind::Guard,
            "approval_requested" => StepKind::ApprovalRequested,
            "approval" => StepKind::Approval,
            "final" => StepKind::Final,
            "webhook" => StepKind::Webhook,
            _ => return None,
        })
    }
}

/// A step record as it is journaled, for live views.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub task_id: String,
    pub seq: i64,
    pub kind: StepKind,
    pub payload: Value,
}

/// How a task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Succeeded,
    Failed(String),
    BudgetExhausted(String),
    Cancelled,
}

impl Status {
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Succeeded => "succeeded",
            Status::Failed(_) => "failed",
            Status::BudgetExhausted(_) => "budget_exhausted",
            Status::Cancelled => "cancelled",
        }
    }

    pub fn reason(&self) -> Option<&str> {
        match self {
            Status::Failed(r) | Status::BudgetExhausted(r) => Some(r),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TaskOutcome {
    pub task_id: String,
    pub status: Status,
    pub answer: Option<String>,
    /// The journal's records, in order.
    pub steps: Vec<Value>,
    pub usage: Usage,
}

impl TaskOutcome {
    /// The `autoglm run --json` object.
    pub fn to_json(&self) -> Value {
        json!({
            "task_id": self.task_id,
            "status": self.status.as_str(),
            "reason": self.status.reason(),
            "answer": self.answer,
            "steps": self.steps,
            "usage": {"prompt_tokens": self.usage.prompt_tokens,
                      "completion_tokens": self.usage.completion_tokens,
                      "cached_tokens": self.usage.cached_tokens},
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("task {0} has already ended ({1})")]
    Ended(String, String),
    #[error("task {0} is already being run by this agent")]
    Busy(String),
    #[error("unknown tool {0}")]
    UnknownTool(String),
    #[error("task {task} has no pending approval {n}")]
    NoApproval { task: String, n: u64 },
    #[error("cannot create the workspace {path}: {source}")]
    Workspace {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Runs tasks. Cheap to share (`Arc` inside).
#[derive(Clone)]
pub struct Agent {
    pub(crate) llm: Arc<dyn LlmClient>,
    pub(crate) tools: ToolRegistry,
    pub(crate) store: Arc<Store>,
    pub(crate) cfg: AgentConfig,
    pub(crate) events: broadcast::Sender<Event>,
    pub(crate) cancel: Cancel,
    /// Tasks being driven by this agent now, with their own cancellation.
    pub(crate) running: Arc<Mutex<HashMap<String, Cancel>>>,
    /// Woken when an approval is decided, so a waiting task looks at its journal again.
    pub(crate) decided: Arc<tokio::sync::Notify>,
}

/// What a task is asked to do, within which limits. It is stored in the task's settings, so a
/// task resumed later (after a restart) runs with the same tools and budgets.
#[derive(Debug, Clone, Default)]
pub struct TaskSpec {
    pub goal: String,
    pub tenant: String,
    /// Default: a fresh folder under `AgentConfig::workspaces`.
    pub workspace: Option<PathBuf>,
    /// A subset of the agent's tools by name (`None`: all of them).
    pub tools: Option<Vec<String>>,
    /// Tools that wait for a person's approval before every call.
    pub ask: Vec<String>,
    /// Overrides of the agent's budgets for this task.
    pub max_steps: Option<usize>,
    pub max_tokens: Option<usize>,
    pub max_duration: Option<Duration>,
    /// The caller's own data (the server keeps the queue priority here), stored unread.
    pub meta: Value,
}

impl Agent {
    pub fn new(
        llm: Arc<dyn LlmClient>,
        tools: ToolRegistry,
        store: Arc<Store>,
        cfg: AgentConfig,
    ) -> Agent {
        Agent {
            llm,
            tools,
            store,
            cfg,
            events: broadcast::channel(1024).0,
            cancel: Cancel::default(),
            running: Arc::default(),
            decided: Arc::default(),
        }
    }

    /// Names of the tools this agent can offer.
    pub fn tool_names(&self) -> Vec<String> {
        self.tools.names()
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Every step record of every task this agent runs, as it is journaled.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Stops running tasks at their next step; they end `cancelled`.
    pub fn cancel_handle(&self) -> Cancel {
        self.cancel.clone()
    }

    /// Creates a task for `goal` working in `workspace` (default: a fresh folder under
    /// `AgentConfig::workspaces`) and runs it to its end.
    pub async fn run(
        &self,
        goal: &str,
        workspace: Option<PathBuf>,
    ) -> Result<TaskOutcome, AgentError> {
        let spec = TaskSpec {
            goal: goal.to_string(),
            tenant: self.cfg.tenant.clone(),
            workspace,
            ..TaskSpec::default()
        };
        let id = self.create(&spec, "running")?;
        self.drive(&id).await
    }

    /// Creates a task without running it (status "queued"); [`Agent::resume`] runs it later.
    pub fn submit(&self, spec: &TaskSpec) -> Result<String, AgentError> {
        self.create(spec, "queued")
    }

    fn create(&self, spec: &TaskSpec, status: &str) -> Result<String, AgentError> {
        let names = self.tools.names();
        for n in spec.tools.iter().flatten().chain(&spec.ask) {
            if !names.contains(n) {
                return Err(AgentError::UnknownTool(format!(
                    "{n} (available: {})",
                    names.join(", ")
                )));
            }
        }
        let id = new_task_id();
        let workspace = spec
            .workspace
            .clone()
            .unwrap_or_else(|| self.cfg.workspaces.join(&id));
        std::fs::create_dir_all(&workspace).map_err(|source| AgentError::Workspace {
            path: workspace.display().to_string(),
            source,
        })?;
        let tools = spec.tools.clone().unwrap_or(names);
        let settings = json!({"workspace": workspace, "backend": self.llm.describe(),
                              "tools": tools, "ask": spec.ask,
                              "max_steps": spec.max_steps.unwrap_or(self.cfg.max_steps),
                              "max_tokens": spec.max_tokens.unwrap_or(self.cfg.max_tokens),
                              "max_duration_ms": spec.max_duration.unwrap_or(self.cfg.max_duration).as_millis() as u64,
                              "meta": spec.meta});
        self.store
            .insert_task(&id, &spec.tenant, &spec.goal, status, &settings)?;
        Ok(id)
    }

    /// Drives an unfinished task (queued, running or waiting for an approval) to its end from
    /// its journal: completed model and tool calls are replayed, not made again.
    pub async fn resume(&self, task_id: &str) -> Result<TaskOutcome, AgentError> {
        let t = self.store.task(task_id)?;
        if !UNFINISHED.contains(&t.status.as_str()) {
            return Err(AgentError::Ended(t.id, t.status));
        }
        self.drive(task_id).await
    }

    /// Cancels one task: a task this agent is running stops at its next step; a task nobody
    /// runs (queued, or left unfinished by a crash) is ended `cancelled` at once. Returns
    /// false when the task had already ended (cancelling is idempotent).
    pub fn cancel(&self, task_id: &str) -> Result<bool, AgentError> {
        // Under the lock: `drive` registers itself and reads the journal under it too, so the
        // task either is registered here or sees the final record written below.
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = running.get(task_id) {
            c.cancel();
            return Ok(true);
        }
        let t = self.store.task(task_id)?;
        if !UNFINISHED.contains(&t.status.as_str()) {
            return Ok(false);
        }
        let journal = journal::Journal::load(self.store.clone(), task_id, self.events.clone())?;
        if journal.recorded("final", StepKind::Final).is_none() {
            let now = autoglm_store::now_ms();
            journal.append(
                StepKind::Final,
                json!({"key": "final", "status": "cancelled", "reason": null, "answer": null,
                       "started_ms": now, "ended_ms": now}),
            )?;
        }
        self.store.set_status(task_id, "cancelled", None)?;
        Ok(true)
    }

    /// Whether this agent is driving the task right now.
    pub fn is_running(&self, task_id: &str) -> bool {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(task_id)
    }

    /// Grants or denies pending approval `n` of a task. The decision is journaled, so it holds
    /// across restarts; the waiting task continues (a denied call's result says so).
    pub fn decide(
        &self,
        task_id: &str,
        n: u64,
        approve: bool,
        reason: Option<&str>,
    ) -> Result<(), AgentError> {
        let records = self.store.records(task_id)?;
        let request = records.iter().find(|r| {
            r.kind == StepKind::ApprovalRequested.as_str() && r.payload["n"].as_u64() == Some(n)
        });
        let Some(request) = request else {
            return Err(AgentError::NoApproval {
                task: task_id.to_string(),
                n,
            });
        };
        let key = request.payload["key"].as_str().unwrap_or("").to_string();
        let decided = records.iter().any(|r| {
            r.kind == StepKind::Approval.as_str() && r.payload["key"].as_str() == Some(&key)
        });
        if decided || records.iter().any(|r| r.kind == "final") {
            return Err(AgentError::NoApproval {
                task: task_id.to_string(),
                n,
            });
        }
        let journal = journal::Journal::load(self.store.clone(), task_id, self.events.clone())?;
        let now = autoglm_store::now_ms();
        journal.append(
            StepKind::Approval,
            json!({"key": key, "n": n, "approve": approve, "reason": reason,
                   "started_ms": now, "ended_ms": now}),
        )?;
        self.decided.notify_waiters();
        Ok(())
    }

    /// The task's records after sequence number `after`, then the ones still to come, until
    /// the task's final record (see [`follow`]).
    pub fn follow(
        &self,
        task_id: &str,
        after: i64,
    ) -> impl futures_util::Stream<Item = Result<Event, AgentError>> + Send + 'static {
        follow::follow(
            self.store.clone(),
            self.events.subscribe(),
            task_id.to_string(),
            after,
        )
    }

    /// A finished or running task's outcome as recorded (for `trace`).
    pub fn outcome(store: &Store, task_id: &str) -> Result<TaskOutcome, AgentError> {
        let t = store.task(task_id)?;
        let records = store.records(task_id)?;
        Ok(run::outcome_from(&t, &records))
    }
}

/// Unique enough across processes: milliseconds and a per-process random tail.
fn new_task_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let ms = autoglm_store::now_ms();
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_i64(ms);
    h.write_u32(std::process::id());
    format!("t{ms:x}{:04x}", h.finish() & 0xffff)
}
