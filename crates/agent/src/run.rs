//! One task from its journal to its end: plan, subtasks in dependency waves (concurrently
//! within a wave), think → act → observe rounds, reflection with retry and replanning, the
//! final answer, and the guards (steps, tokens, time, repeated actions, cancellation).
//!
//! Every model and tool call goes through [`TaskRun::model_call`] / [`TaskRun::tool_call`],
//! which return the journaled result when the record exists: that is all resuming needs,
//! because the control flow depends only on those results and the configuration.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use autoglm_llm::{ChatRequest, ChatResponse, Message, ToolCall, ToolChoice, ToolDef, Usage};
use autoglm_store::{Record, TaskRow, now_ms};
use autoglm_tools::{Cancel, MemorySave, MemorySearch, ToolContext, ToolError, ToolRegistry};
use serde_json::{Value, json};
use tracing::Instrument;

use crate::journal::Journal;
use crate::memory::{self, Window};
use crate::prompts::{self, Subtask};
use crate::{Agent, AgentError, Status, StepKind, TaskOutcome, spans};

/// Why a task stops early.
enum Stop {
    Budget(String),
    Cancelled,
    Failed(String),
    Store(AgentError),
}

impl From<AgentError> for Stop {
    fn from(e: AgentError) -> Stop {
        Stop::Store(e)
    }
}

struct TaskRun<'a> {
    agent: &'a Agent,
    /// The agent's configuration with this task's budgets.
    cfg: crate::AgentConfig,
    /// The tools this task may use, memory bound to its tenant.
    tools: ToolRegistry,
    /// Tools that wait for a person's approval before each call.
    ask: Vec<String>,
    tenant: String,
    cancel: Cancel,
    /// Numbers approval requests one at a time (concurrent subtasks may ask together).
    approvals: tokio::sync::Mutex<()>,
    journal: Journal,
    goal: String,
    ctx: ToolContext,
    tool_defs: Vec<ToolDef>,
    steps: AtomicUsize,
    tokens: AtomicUsize,
    started: Instant,
    usage: Mutex<Usage>,
}

/// Unregisters a task from the agent's running set and stops its cancel watcher, also when
/// the run's future is dropped mid-way (a server shutting down).
struct Running<'a> {
    agent: &'a Agent,
    id: String,
    watcher: tokio::task::JoinHandle<()>,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.watcher.abort();
        self.agent
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

fn list(v: &Value) -> Option<Vec<String>> {
    v.as_array().map(|a| {
        a.iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect()
    })
}

impl Agent {
    /// The task's budgets from its settings (the agent's where a setting is absent).
    fn task_config(&self, settings: &Value) -> crate::AgentConfig {
        let mut cfg = self.cfg.clone();
        let n = |k: &str| settings[k].as_u64().map(|v| v as usize);
        if let Some(v) = n("max_steps") {
            cfg.max_steps = v;
        }
        if let Some(v) = n("max_tokens") {
            cfg.max_tokens = v;
        }
        if let Some(v) = settings["max_duration_ms"].as_u64() {
            cfg.max_duration = std::time::Duration::from_millis(v);
        }
        cfg
    }

    /// The task's tools: the subset its settings name, memory tools bound to its tenant.
    fn task_tools(&self, settings: &Value, tenant: &str) -> Result<ToolRegistry, String> {
        let mut tools = match list(&settings["tools"]) {
            Some(names) => self.tools.select(&names).map_err(|e| e.to_string())?,
            None => self.tools.clone(),
        };
        if tools.get("memory_search").is_some() {
            tools.add(std::sync::Arc::new(MemorySearch {
                store: self.store.clone(),
                tenant: tenant.to_string(),
            }));
        }
        if tools.get("memory_save").is_some() {
            tools.add(std::sync::Arc::new(MemorySave {
                store: self.store.clone(),
                tenant: tenant.to_string(),
            }));
        }
        Ok(tools)
    }

    pub(crate) async fn drive(&self, id: &str) -> Result<TaskOutcome, AgentError> {
        let cancel = Cancel::default();
        let (task, journal) = {
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            if running.contains_key(id) {
                return Err(AgentError::Busy(id.to_string()));
            }
            // Read under the lock: a concurrent `cancel` either finds us registered or has
            // already journaled its final record, which this load then sees.
            let task = self.store.task(id)?;
            let journal = Journal::load(self.store.clone(), id, self.events.clone())?;
            running.insert(id.to_string(), cancel.clone());
            (task, journal)
        };
        let global = self.cancel.clone();
        let task_cancel = cancel.clone();
        let _running = Running {
            agent: self,
            id: id.to_string(),
            // The agent-wide cancel (Ctrl-C in the CLI) reaches every task it runs.
            watcher: tokio::spawn(async move {
                global.cancelled().await;
                task_cancel.cancel();
            }),
        };
        let span = spans::task(id, &task.tenant, self.llm.as_ref());
        let out = self
            .drive_registered(id, task, journal, cancel)
            .instrument(span.clone())
            .await;
        spans::task_ended(
            &span,
            match &out {
                Ok(o) => Ok((o.status.as_str(), o.usage)),
                Err(_) => Err("store_error"),
            },
        );
        out
    }

    /// The run itself, once `drive` has registered the task as running.
    async fn drive_registered(
        &self,
        id: &str,
        task: TaskRow,
        journal: Journal,
        cancel: Cancel,
    ) -> Result<TaskOutcome, AgentError> {
        if journal.recorded("final", StepKind::Final).is_none() {
            if task.status != "running" {
                self.store.set_status(id, "running", None)?;
            }
            let workspace = task
                .settings
                .get("workspace")
                .and_then(Value::as_str)
                .map_or_else(std::env::temp_dir, PathBuf::from);
            let cfg = self.task_config(&task.settings);
            let mut ctx = ToolContext::new(workspace);
            ctx.timeout = cfg.tool_timeout;
            ctx.http_allow = self.cfg.http_allow.clone();
            ctx.cancel = cancel.clone();
            let (status, answer, journal) = match self.task_tools(&task.settings, &task.tenant) {
                Err(e) => (
                    Status::Failed(format!("the task's tools: {e}")),
                    None,
                    journal,
                ),
                Ok(tools) => {
                    let run = TaskRun {
                        agent: self,
                        tool_defs: tools
                            .iter()
                            .map(|t| ToolDef {
                                name: t.name().to_string(),
                                description: t.description().to_string(),
                                parameters: t.parameters(),
                            })
                            .collect(),
                        cfg,
                        tools,
                        ask: list(&task.settings["ask"]).unwrap_or_default(),
                        tenant: task.tenant.clone(),
                        cancel: cancel.clone(),
                        approvals: tokio::sync::Mutex::new(()),
                        journal,
                        goal: task.goal.clone(),
                        ctx,
                        steps: AtomicUsize::new(0),
                        tokens: AtomicUsize::new(0),
                        started: Instant::now(),
                        usage: Mutex::new(Usage::default()),
                    };
                    let (status, answer) = match run.execute().await {
                        Ok(a) => (Status::Succeeded, Some(a)),
                        Err(Stop::Budget(r)) => (Status::BudgetExhausted(r), None),
                        Err(Stop::Cancelled) => (Status::Cancelled, None),
                        Err(Stop::Failed(r)) => (Status::Failed(r), None),
                        // The store failed: leave the task unfinished so it can be resumed.
                        Err(Stop::Store(e)) => return Err(e),
                    };
                    (status, answer, run.journal)
                }
            };
            let t = now_ms();
            journal.append(
                StepKind::Final,
                json!({"key": "final", "status": status.as_str(), "reason": status.reason(),
                       "answer": answer, "started_ms": t, "ended_ms": t}),
            )?;
        }
        self.finish(id, &task)
    }

    /// Status and memory follow the final record (also when an earlier run crashed between).
    fn finish(&self, id: &str, task: &TaskRow) -> Result<TaskOutcome, AgentError> {
        let fin = self
            .store
            .records(id)?
            .into_iter()
            .rev()
            .find(|r| r.kind == "final")
            .map(|r| r.payload)
            .unwrap_or(Value::Null);
        let status = fin["status"].as_str().unwrap_or("failed");
        let answer = fin["answer"].as_str();
        self.store.set_status(id, status, answer)?;
        if let (Some(a), "succeeded") = (answer, status) {
            self.store.save_memory(
                &task.tenant,
                "outcome",
                &format!("Goal: {}\nAnswer: {a}", task.goal),
                Some(id),
            )?;
        }
        Agent::outcome(&self.store, id)
    }
}

/// The outcome as recorded: status from the task row, steps from the journal.
pub(crate) fn outcome_from(task: &TaskRow, records: &[Record]) -> TaskOutcome {
    let mut usage = Usage::default();
    let mut reason = None;
    let steps = records
        .iter()
        .map(|r| {
            if r.kind == "model_call" {
                let u = &r.payload["usage"];
                let n = |k: &str| u[k].as_u64().unwrap_or(0) as usize;
                usage.add(Usage {
                    prompt_tokens: n("prompt_tokens"),
                    completion_tokens: n("completion_tokens"),
                    cached_tokens: n("cached_tokens"),
                });
            }
            if r.kind == "final" {
                reason = r.payload["reason"].as_str().map(str::to_string);
            }
            let mut step = json!({"seq": r.seq, "kind": r.kind, "at_ms": r.at_ms});
            if let Value::Object(p) = &r.payload {
                for (k, v) in p {
                    step[k] = v.clone();
                }
            }
            step
        })
        .collect();
    let status = match task.status.as_str() {
        "succeeded" => Status::Succeeded,
        "cancelled" => Status::Cancelled,
        "budget_exhausted" => Status::BudgetExhausted(reason.unwrap_or_default()),
        "running" => Status::Failed("still running".into()),
        _ => Status::Failed(reason.unwrap_or_default()),
    };
    TaskOutcome {
        task_id: task.id.clone(),
        status,
        answer: task.answer.clone(),
        steps,
        usage,
    }
}

/// The answer without a wrapper echoed from the conversation format: small models asked for
/// text right after a tool result sometimes answer `<tool_response>391</tool_response>`, or
/// `391` followed by the closing tag alone.
fn unwrap_echo(text: &str) -> &str {
    let t = text.trim();
    if let Some(inner) = t
        .strip_prefix("<tool_response>")
        .and_then(|r| r.strip_suffix("</tool_response>"))
    {
        return inner.trim();
    }
    t.strip_suffix("</tool_response>").map_or(t, str::trim)
}

/// Whether `text` names the tool `name`: its name itself, or every word of it in any order
/// ("write the text to a file" names `write_file`, "save to memory" names `memory_save`).
fn names_tool(text: &str, name: &str) -> bool {
    let text = text.to_lowercase();
    if text.contains(name) {
        return true;
    }
    let words: Vec<&str> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    let has = |part: &str| {
        words
            .iter()
            .any(|w| *w == part || w.strip_suffix('s') == Some(part))
    };
    name.split('_').all(has)
}

/// Arguments in a canonical text form, to recognise a repeated action.
fn signature(call: &ToolCall) -> (String, String) {
    (call.name.clone(), call.arguments.to_string())
}

impl TaskRun<'_> {
    fn cfg(&self) -> &crate::AgentConfig {
        &self.cfg
    }

    /// The span of one step of this task (see [`spans`]).
    fn step(&self, kind: &str, n: usize, key: &str) -> tracing::Span {
        spans::step(&self.journal.task_id, kind, n, key)
    }

    async fn execute(&self) -> Result<String, Stop> {
        let cfg = self.cfg();
        let memories: Vec<String> = if cfg.recall > 0 {
            self.journal
                .store()
                .search_memory(&self.tenant, &self.goal, cfg.recall)
                .map_err(AgentError::from)?
                .into_iter()
                .map(|m| m.text)
                .collect()
        } else {
            Vec::new()
        };
        let mut planno = 0;
        let mut plan = self
            .plan(planno, &memories, None)
            .instrument(self.step("plan", 0, &format!("plan{planno}")))
            .await?;
        // Results of finished subtasks of earlier plans, then of the current one.
        let mut carried: Vec<(String, String)> = Vec::new();
        loop {
            let mut results: BTreeMap<usize, String> = BTreeMap::new();
            let mut failure = None;
            while results.len() < plan.len() && failure.is_none() {
                let ready: Vec<&Subtask> = plan
                    .iter()
                    .filter(|s| !results.contains_key(&s.id))
                    .filter(|s| s.depends_on.iter().all(|d| results.contains_key(d)))
                    .collect();
                let outs = futures_util::future::join_all(ready.iter().map(|s| {
                    let mut earlier = carried.clone();
                    for d in &s.depends_on {
                        if let (Some(dep), Some(r)) = (plan.get(d - 1), results.get(d)) {
                            earlier.push((dep.task.clone(), r.clone()));
                        }
                    }
                    let key = format!("plan{planno}/s{}", s.id);
                    self.subtask(planno, s, earlier)
                        .instrument(self.step("subtask", s.id, &key))
                }))
                .await;
                for (s, out) in ready.iter().zip(outs) {
                    match out? {
                        Ok(r) => {
                            results.insert(s.id, r);
                        }
                        Err(reason) => {
                            failure.get_or_insert(format!("step {} ({}): {reason}", s.id, s.task));
                        }
                    }
                }
            }
            for s in &plan {
                if let Some(r) = results.get(&s.id) {
                    carried.push((s.task.clone(), r.clone()));
                }
            }
            let feedback = match failure {
                // A one-step plan was already checked against the goal with its step.
                None if plan.len() == 1 && carried.len() == 1 => return Ok(carried[0].1.clone()),
                None => match self
                    .answer(planno, &carried)
                    .instrument(self.step("answer", 0, &format!("plan{planno}/final")))
                    .await?
                {
                    Ok(answer) => return Ok(answer),
                    Err(feedback) => feedback,
                },
                Some(f) => f,
            };
            if planno >= cfg.max_replans {
                return Err(Stop::Failed(feedback));
            }
            planno += 1;
            plan = self
                .plan(planno, &memories, Some(&feedback))
                .instrument(self.step("plan", 0, &format!("plan{planno}")))
                .await?;
        }
    }

    /// The final answer composed from the steps' results and checked against the goal;
    /// `Ok(Err(feedback))` when the check fails.
    async fn answer(
        &self,
        planno: usize,
        carried: &[(String, String)],
    ) -> Result<Result<String, String>, Stop> {
        let answer = self.compose(planno, carried).await?;
        let key = format!("plan{planno}/final");
        let (ok, reason) = self.reflect(&key, "the whole goal", &answer).await?;
        Ok(if ok {
            Ok(answer)
        } else {
            Err(format!(
                "the final answer {answer:?} was judged wrong: {reason}"
            ))
        })
    }

    /// One subtask with its retries; `Ok(Err(reason))` when every attempt failed its check.
    async fn subtask(
        &self,
        planno: usize,
        s: &Subtask,
        earlier: Vec<(String, String)>,
    ) -> Result<Result<String, String>, Stop> {
        let mut feedback: Option<String> = None;
        let mut last = String::new();
        for attempt in 0..=self.cfg().max_retries {
            let key = format!("plan{planno}/s{}/a{attempt}", s.id);
            match self.attempt(&key, s, &earlier, feedback.as_deref()).await? {
                Ok(result) => {
                    let (ok, reason) = self.reflect(&key, &s.task, &result).await?;
                    if ok {
                        return Ok(Ok(result));
                    }
                    last = format!("the result {result:?} failed its check: {reason}");
                }
                Err(reason) => last = reason,
            }
            feedback = Some(format!(
                "An earlier attempt at this step went wrong: {last}"
            ));
        }
        Ok(Err(last))
    }

    /// Think → act → observe rounds until the model answers in text.
    async fn attempt(
        &self,
        key: &str,
        s: &Subtask,
        earlier: &[(String, String)],
        feedback: Option<&str>,
    ) -> Result<Result<String, String>, Stop> {
        // Tools the step or the goal names are the ones offered (all of them when none is
        // named): a short tool list keeps small models on task and prompts short.
        let text = format!("{} {}", s.task, self.goal);
        let mentioned = |n: &str| names_tool(&text, n);
        let named_defs: Vec<ToolDef> = self
            .tool_defs
            .iter()
            .filter(|t| mentioned(&t.name))
            .cloned()
            .collect();
        let defs = if named_defs.is_empty() {
            self.tool_defs.clone()
        } else {
            named_defs
        };
        let names: Vec<String> = defs.iter().map(|t| t.name.clone()).collect();
        let mut user = prompts::executor_user(&self.goal, &s.task, earlier);
        if let Some(f) = feedback {
            user.push('\n');
            user.push_str(f);
        }
        // The tool list is rendered into the prompt too; the rest of the context is the
        // conversation's.
        let defs_tokens: usize = defs
            .iter()
            .map(|d| memory::approx_tokens(&serde_json::to_string(d).unwrap_or_default()))
            .sum();
        let budget = self
            .cfg()
            .context_tokens
            .saturating_sub(self.cfg().reply_tokens + defs_tokens);
        let mut window = Window::new(
            vec![
                Message::system(prompts::executor_system(&names)),
                Message::user(user),
            ],
            budget,
        );
        // A tool the step or the goal names is called first: small models need the nudge,
        // large ones would call it anyway.
        let named = names.iter().find(|n| mentioned(n));
        let mut seen: HashMap<(String, String), String> = HashMap::new();
        let mut repeats = 0;
        let mut force_text = false;
        for round in 0..self.cfg().max_rounds {
            let rkey = format!("{key}/r{round}");
            let choice = match named {
                _ if force_text || names.is_empty() => ToolChoice::None,
                Some(n) if round == 0 => ToolChoice::Function(n.clone()),
                _ => ToolChoice::Auto,
            };
            let mut req = self.request(window.messages());
            if choice != ToolChoice::None {
                req.tools = defs.clone();
            }
            req.tool_choice = choice;
            let resp = self.model_call(&rkey, "execute", s.id, &req).await?;
            if resp.tool_calls.is_empty() {
                let answer = unwrap_echo(&resp.content);
                if answer.is_empty() {
                    return Ok(Err("the model gave an empty answer".into()));
                }
                return Ok(Ok(answer.to_string()));
            }
            let mut round = vec![Message::assistant_calls(
                resp.content.clone(),
                resp.tool_calls.clone(),
            )];
            for (i, call) in resp.tool_calls.iter().enumerate() {
                let tkey = format!("{rkey}/t{i}");
                let sig = signature(call);
                if let Some(prev) = seen.get(&sig) {
                    repeats += 1;
                    self.guard(
                        &tkey,
                        s.id,
                        "repeated_action",
                        &format!("{} called again with the same arguments", call.name),
                    )?;
                    if repeats >= 2 {
                        return Ok(Err(format!(
                            "the model kept repeating {} with the same arguments",
                            call.name
                        )));
                    }
                    // The same observation again, and the next round must answer in text.
                    // Not a note in words: small models echo such notes as their answer.
                    round.push(Message::tool_result(call.id.clone(), prev.clone()));
                    force_text = true;
                    continue;
                }
                let out = self.tool_call(&tkey, s.id, call).await?;
                seen.insert(sig, out.clone());
                round.push(Message::tool_result(call.id.clone(), out));
            }
            window.push_round(round);
        }
        Ok(Err(format!(
            "no result after {} rounds of tool calls",
            self.cfg().max_rounds
        )))
    }

    fn request(&self, messages: Vec<Message>) -> ChatRequest {
        let mut r = ChatRequest::new(messages);
        r.max_tokens = self.cfg().reply_tokens;
        r.temperature = self.cfg().temperature;
        r.seed = Some(0);
        r
    }

    /// Asks for JSON matching `schema`; on a reply that does not parse (only possible on
    /// unconstrained backends) asks again with the error shown, a bounded number of times.
    async fn structured<T>(
        &self,
        key: &str,
        purpose: &str,
        messages: Vec<Message>,
        schema: Value,
        parse: impl Fn(&Value) -> Result<T, String>,
    ) -> Result<Result<T, String>, Stop> {
        let mut messages = messages;
        let mut last = String::new();
        for attempt in 0..=self.cfg().malformed_retries {
            let mut req = self.request(messages.clone());
            req.json_schema = Some(schema.clone());
            req.tool_choice = ToolChoice::None;
            let resp = self
                .model_call(&format!("{key}/m{attempt}"), purpose, 0, &req)
                .await?;
            match prompts::extract_json(&resp.content).and_then(|v| parse(&v)) {
                Ok(t) => return Ok(Ok(t)),
                Err(e) => {
                    last = e.clone();
                    messages.push(Message::assistant(resp.content));
                    messages.push(Message::user(format!(
                        "That reply could not be used: {e}. Answer again with JSON only, \
                         matching this schema: {schema}"
                    )));
                }
            }
        }
        Ok(Err(last))
    }

    async fn plan(
        &self,
        n: usize,
        memories: &[String],
        feedback: Option<&str>,
    ) -> Result<Vec<Subtask>, Stop> {
        let max = self.cfg().max_plan_steps.max(1);
        let key = format!("plan{n}");
        let messages = vec![
            Message::system(prompts::planner_system(max)),
            Message::user(prompts::planner_user(&self.goal, memories, feedback)),
        ];
        let plan = match self
            .structured(&key, "plan", messages, prompts::plan_schema(max), |v| {
                prompts::parse_plan(v, max)
            })
            .await?
        {
            Ok(p) => p,
            Err(e) => {
                self.guard(
                    &key,
                    0,
                    "plan_unreadable",
                    &format!("using the goal as the only step: {e}"),
                )?;
                vec![Subtask {
                    id: 1,
                    task: self.goal.clone(),
                    depends_on: Vec::new(),
                }]
            }
        };
        if self.journal.recorded(&key, StepKind::Plan).is_none() {
            let t = now_ms();
            let steps: Vec<Value> = plan
                .iter()
                .map(|s| json!({"id": s.id, "task": s.task, "depends_on": s.depends_on}))
                .collect();
            self.journal.append(
                StepKind::Plan,
                json!({"key": key, "steps": steps, "replan": n > 0, "feedback": feedback,
                       "started_ms": t, "ended_ms": t}),
            )?;
        }
        Ok(plan)
    }

    async fn reflect(&self, key: &str, step: &str, result: &str) -> Result<(bool, String), Stop> {
        let rkey = format!("{key}/check");
        let messages = vec![
            Message::system("You check results strictly but fairly. Answer with JSON only."),
            Message::user(prompts::reflection_user(&self.goal, step, result)),
        ];
        let (ok, reason) = self
            .structured(
                &rkey,
                "reflection",
                messages,
                prompts::reflection_schema(),
                prompts::parse_reflection,
            )
            .await?
            // An unreadable check does not sink a result.
            .unwrap_or_else(|e| {
                (
                    true,
                    format!("the check could not be read ({e}); result kept"),
                )
            });
        if self.journal.recorded(&rkey, StepKind::Reflection).is_none() {
            let t = now_ms();
            self.journal.append(
                StepKind::Reflection,
                json!({"key": rkey, "step": step, "ok": ok, "reason": reason,
                       "started_ms": t, "ended_ms": t}),
            )?;
        }
        Ok((ok, reason))
    }

    async fn compose(&self, planno: usize, results: &[(String, String)]) -> Result<String, Stop> {
        let req = self.request(vec![
            Message::system("You write the final answer to the user's goal from the results of its steps. Be direct."),
            Message::user(prompts::final_user(&self.goal, results)),
        ]);
        let resp = self
            .model_call(&format!("plan{planno}/compose"), "final_answer", 0, &req)
            .await?;
        Ok(resp.content.trim().to_string())
    }

    fn guard(&self, key: &str, subtask: usize, guard: &str, detail: &str) -> Result<(), Stop> {
        let gkey = format!("{key}/guard/{guard}");
        if self.journal.recorded(&gkey, StepKind::Guard).is_none() {
            let t = now_ms();
            self.journal.append(
                StepKind::Guard,
                json!({"key": gkey, "subtask": subtask, "guard": guard, "detail": detail,
                       "started_ms": t, "ended_ms": t}),
            )?;
        }
        Ok(())
    }

    /// Budget and cancellation checks before a model call.
    fn check_budgets(&self) -> Result<(), Stop> {
        let cfg = self.cfg();
        if self.cancel.is_cancelled() {
            return Err(Stop::Cancelled);
        }
        if self.steps.load(Ordering::SeqCst) >= cfg.max_steps {
            return Err(Stop::Budget(format!(
                "the step limit ({}) was reached",
                cfg.max_steps
            )));
        }
        if self.tokens.load(Ordering::SeqCst) >= cfg.max_tokens {
            return Err(Stop::Budget(format!(
                "the token budget ({}) was spent",
                cfg.max_tokens
            )));
        }
        if self.started.elapsed() >= cfg.max_duration {
            return Err(Stop::Budget(format!(
                "the time limit ({:?}) was reached",
                cfg.max_duration
            )));
        }
        Ok(())
    }

    fn count(&self, u: &Usage) {
        self.steps.fetch_add(1, Ordering::SeqCst);
        self.tokens
            .fetch_add(u.prompt_tokens + u.completion_tokens, Ordering::SeqCst);
        self.usage.lock().unwrap_or_else(|p| p.into_inner()).add(*u);
    }

    async fn model_call(
        &self,
        key: &str,
        purpose: &str,
        subtask: usize,
        req: &ChatRequest,
    ) -> Result<ChatResponse, Stop> {
        if let Some(rec) = self.journal.recorded(key, StepKind::ModelCall)
            && let Ok(resp) = serde_json::from_value::<ChatResponse>(rec["response"].clone())
        {
            self.count(&resp.usage);
            return Ok(resp);
        }
        self.check_budgets()?;
        let started = now_ms();
        let cancel = self.cancel.clone();
        let llm = self.agent.llm.as_ref();
        let span = spans::chat(&self.journal.task_id, key, purpose, subtask, llm, req);
        let resp = tokio::select! {
            r = llm.chat(req, None).instrument(span.clone()) => {
                r.map_err(|e| {
                    spans::failed(&span, "model_error");
                    Stop::Failed(format!("model call failed: {e}"))
                })?
            }
            _ = cancel.cancelled() => {
                spans::failed(&span, "cancelled");
                return Err(Stop::Cancelled);
            }
        };
        spans::chat_ended(&span, &resp);
        self.count(&resp.usage);
        self.journal.append(
            StepKind::ModelCall,
            json!({"key": key, "purpose": purpose, "subtask": subtask,
                   "started_ms": started, "ended_ms": now_ms(),
                   "messages": req.messages.len(), "tool_choice": req.tool_choice,
                   "response": resp, "usage": resp.usage}),
        )?;
        Ok(resp)
    }

    /// Runs a tool call, journaling the call before and the result after; a recorded result
    /// is returned as it was. A call recorded without a result was cut off by a crash and
    /// runs again (at-least-once for the interrupted call only).
    async fn tool_call(&self, key: &str, subtask: usize, call: &ToolCall) -> Result<String, Stop> {
        if let Some(rec) = self.journal.recorded(key, StepKind::ToolResult) {
            return Ok(rec["output"].as_str().unwrap_or("").to_string());
        }
        if self.cancel.is_cancelled() {
            return Err(Stop::Cancelled);
        }
        let description = self
            .tools
            .get(&call.name)
            .map(|t| t.description().to_string());
        let span = spans::tool(
            &self.journal.task_id,
            key,
            subtask,
            call,
            description.as_deref(),
        );
        if self.ask.contains(&call.name)
            && let Err(denied) = self
                .approval(key, subtask, call)
                .instrument(span.clone())
                .await?
        {
            span.record("autoglm.tool.denied", true);
            let t = now_ms();
            self.journal.append(
                StepKind::ToolResult,
                json!({"key": key, "subtask": subtask, "tool": call.name, "output": denied,
                       "ok": false, "denied": true, "started_ms": t, "ended_ms": t}),
            )?;
            return Ok(denied);
        }
        let started = now_ms();
        // A call journaled without its result was cut off; it runs again, journaled once.
        if self.journal.recorded(key, StepKind::ToolCall).is_none() {
            self.journal.append(
                StepKind::ToolCall,
                json!({"key": key, "subtask": subtask, "tool": call.name,
                       "arguments": call.arguments, "call_id": call.id,
                       "started_ms": started, "ended_ms": started}),
            )?;
        }
        let (output, ok) = match self
            .tools
            .call(&call.name, call.arguments.clone(), &self.ctx)
            .instrument(span.clone())
            .await
        {
            Ok(o) => (o.content, true),
            Err(ToolError::Cancelled) => {
                spans::failed(&span, "cancelled");
                return Err(Stop::Cancelled);
            }
            Err(e) => {
                spans::failed(&span, "tool_error");
                (format!("error: {e}"), false)
            }
        };
        self.journal.append(
            StepKind::ToolResult,
            json!({"key": key, "subtask": subtask, "tool": call.name, "output": output, "ok": ok,
                   "started_ms": started, "ended_ms": now_ms()}),
        )?;
        Ok(output)
    }

    /// Asks a person before a call of a tool marked "ask": journals the request (once, with
    /// its number in the task) and waits for the journaled decision. `Ok(Err(text))` when it
    /// was denied: the text is what the model is told instead of the tool's result.
    async fn approval(
        &self,
        key: &str,
        subtask: usize,
        call: &ToolCall,
    ) -> Result<Result<(), String>, Stop> {
        let mut waiting = false;
        let decision = loop {
            // Registered before looking, so a decision made in between still wakes us.
            let woken = self.agent.decided.notified();
            if let Some(d) = self.journal.reload(key, StepKind::Approval)? {
                break d;
            }
            if self
                .journal
                .recorded(key, StepKind::ApprovalRequested)
                .is_none()
            {
                let _one_at_a_time = self.approvals.lock().await;
                let n = 1 + self
                    .journal
                    .store()
                    .records(&self.journal.task_id)
                    .map_err(AgentError::from)?
                    .iter()
                    .filter(|r| r.kind == StepKind::ApprovalRequested.as_str())
                    .count();
                let t = now_ms();
                self.journal.append(
                    StepKind::ApprovalRequested,
                    json!({"key": key, "n": n, "subtask": subtask, "tool": call.name,
                           "arguments": call.arguments, "started_ms": t, "ended_ms": t}),
                )?;
            }
            if !waiting {
                waiting = true;
                self.journal
                    .store()
                    .set_status(&self.journal.task_id, "waiting_approval", None)
                    .map_err(AgentError::from)?;
            }
            tokio::select! {
                _ = woken => {}
                // Decisions journaled by another process never notify this one.
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                _ = self.cancel.cancelled() => return Err(Stop::Cancelled),
            }
        };
        if waiting {
            self.journal
                .store()
                .set_status(&self.journal.task_id, "running", None)
                .map_err(AgentError::from)?;
        }
        if decision["approve"] == true {
            return Ok(Ok(()));
        }
        let why = decision["reason"]
            .as_str()
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        Ok(Err(format!(
            "The call of {} was denied by a person{why}. Do not call it again; answer without it.",
            call.name
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::names_tool;
    #[test]
    fn tools_are_named_by_their_words() {
        let check = |text: &str, tool: &str, expect: bool| {
            assert_eq!(names_tool(text, tool), expect, "{text:?} names {tool}?");
        };
        check("What is 17 * 23? Use the calculator.", "calculator", true);
        check(
            "Write the text 'hi' to a file named a.txt",
            "write_file",
            true,
        );
        check(
            "Save to memory: the meeting is on Friday",
            "memory_save",
            true,
        );
        check("Use read_file on notes.txt", "read_file", true);
        check("List the files in the dir", "list_dir", true);
        check("Read the notes", "read_file", false);
        check("What is the capital of France?", "calculator", false);
        check("Reading a profile", "read_file", false);
    }

    #[test]
    fn echoed_wrappers_are_removed() {
        assert_eq!(
            super::unwrap_echo("<tool_response>\n391\n</tool_response>"),
            "391"
        );
        assert_eq!(super::unwrap_echo(" 391 "), "391");
        assert_eq!(super::unwrap_echo("391\n</tool_response>"), "391");
        assert_eq!(
            super::unwrap_echo("<tool_response>half"),
            "<tool_response>half"
        );
    }
}
