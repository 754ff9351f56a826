//! The task worker pool: a bounded queue of submitted tasks ordered by priority class with
//! ageing (`queue.rs`), N workers driving tasks to their end through the agent, restart recovery (unfinished tasks
//! re-enqueued at start; the agent resumes them from their journals), and the task metrics.
//!
//! Tasks' model calls go through the agent's [`LlmClient`] — by default the embedded client
//! over the same engine handle the OpenAI API uses, so task steps and API requests are batched
//! into the same forward steps.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use autoglm_agent::{Agent, AgentConfig, AgentError, StepKind, TaskSpec, UNFINISHED};
use autoglm_llm::LlmClient;
use autoglm_store::{TaskRow, now_ms};
use autoglm_tools::ToolRegistry;

use crate::queue::TaskQueue;
use crate::webhook::{WebhookConfig, WebhookMetrics, Webhooks};

/// How the pool is set up. `Default`: two workers, 64 queued tasks, a 60 s priority step,
/// the embedded model.
pub struct TasksConfig {
    /// Tasks running at once.
    pub workers: usize,
    /// Submitted tasks allowed to wait for a worker; past it a submission gets 429.
    pub max_queued: usize,
    /// Waiting this long raises a queued task by one priority class (see `queue.rs`).
    pub priority_step: Duration,
    /// Where and how task webhooks may be delivered (default: nowhere).
    pub webhooks: WebhookConfig,
    /// The model tasks use (`None`: the embedded client over the server's engine).
    pub llm: Option<Arc<dyn LlmClient>>,
    /// The tools tasks may use (`None`: the built-ins and memory).
    pub tools: Option<ToolRegistry>,
    /// Budgets and knobs; a task's own settings override the budgets.
    pub agent: AgentConfig,
}

impl Default for TasksConfig {
    fn default() -> Self {
        TasksConfig {
            workers: 2,
            max_queued: 64,
            priority_step: Duration::from_secs(60),
            webhooks: WebhookConfig::default(),
            llm: None,
            tools: None,
            agent: AgentConfig::default(),
        }
    }
}

/// Queue classes: interactive before batch before background, each class worth
/// [`TasksConfig::priority_step`] of waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TaskPriority {
    Interactive = 0,
    Batch = 1,
    Background = 2,
}

impl TaskPriority {
    pub(crate) fn parse(s: &str) -> Option<TaskPriority> {
        Some(match s {
            "interactive" => TaskPriority::Interactive,
            "batch" => TaskPriority::Batch,
            "background" => TaskPriority::Background,
            _ => return None,
        })
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            TaskPriority::Interactive => "interactive",
            TaskPriority::Batch => "batch",
            TaskPriority::Background => "background",
        }
    }
}

/// Why a submission was not taken.
#[derive(Debug)]
pub(crate) enum Refused {
    /// The queue is full; try again in about this long.
    Full {
        retry_after: Duration,
    },
    Agent(AgentError),
}

pub(crate) struct Runner {
    pub(crate) agent: Agent,
    queue: Mutex<TaskQueue>,
    wake: tokio::sync::Notify,
    max_queued: usize,
    workers: usize,
    started: AtomicBool,
    pub(crate) metrics: TaskMetrics,
    pub(crate) webhooks: Arc<Webhooks>,
}

impl Runner {
    pub(crate) fn new(
        agent: Agent,
        workers: usize,
        max_queued: usize,
        priority_step: Duration,
        webhooks: WebhookConfig,
    ) -> Runner {
        let metrics = TaskMetrics::default();
        Runner {
            agent,
            queue: Mutex::new(TaskQueue::new(priority_step)),
            wake: tokio::sync::Notify::new(),
            max_queued,
            workers: workers.max(1),
            started: AtomicBool::new(false),
            webhooks: Arc::new(Webhooks::new(webhooks, metrics.webhooks.clone())),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TaskQueue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn queued(&self) -> usize {
        self.lock().len()
    }

    /// Creates the task (status "queued") and queues it, or refuses when the queue is full.
    pub(crate) fn submit(
        &self,
        spec: &TaskSpec,
        priority: TaskPriority,
    ) -> Result<TaskRow, Refused> {
        // The check and the push under one lock: concurrent submissions cannot overfill.
        let mut q = self.lock();
        let waiting = q.len();
        if waiting >= self.max_queued {
            return Err(Refused::Full {
                retry_after: self.metrics.expected_wait(waiting, self.workers),
            });
        }
        let id = self.agent.submit(spec).map_err(Refused::Agent)?;
        let row = self
            .agent
            .store()
            .task(&id)
            .map_err(|e| Refused::Agent(e.into()))?;
        q.push(id, priority, now_ms());
        drop(q);
        self.wake.notify_one();
        Ok(row)
    }

    /// Cancels a task: taken out of the queue if it waits there, stopped if it runs.
    pub(crate) fn cancel(&self, id: &str) -> Result<bool, AgentError> {
        self.lock().remove(id);
        let cancelled = self.agent.cancel(id)?;
        // A task nobody ran has ended now; a running one ends (and is reported) by its worker.
        self.webhooks.task_ended(self.agent.store(), id);
        Ok(cancelled)
    }

    fn pop(&self) -> Option<String> {
        self.lock().pop()
    }

    /// Starts the workers on the current runtime (once) and re-enqueues every unfinished task
    /// of every tenant, aged from their creation; returns how many were re-enqueued.
    pub(crate) fn start(self: &Arc<Self>) -> Result<usize, AgentError> {
        if self.started.swap(true, Ordering::SeqCst) {
            return Ok(0);
        }
        let mut unfinished = self.agent.store().tasks_with_status(UNFINISHED)?;
        // Oldest first, so tasks created in the same millisecond keep their order.
        unfinished.reverse();
        let n = unfinished.len();
        {
            let mut q = self.lock();
            for t in unfinished {
                let p = t.settings["meta"]["priority"]
                    .as_str()
                    .and_then(TaskPriority::parse)
                    .unwrap_or(TaskPriority::Interactive);
                q.push(t.id, p, t.created_ms);
            }
        }
        for _ in 0..self.workers {
            let me = self.clone();
            tokio::spawn(async move { me.work().await });
        }
        // Tool calls by tool and outcome, counted as they are journaled (replayed calls of a
        // resumed task are not journaled again, so they are not counted twice).
        let mut events = self.agent.subscribe();
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(e) if e.kind == StepKind::ToolResult => {
                        let Some(me) = me.upgrade() else { return };
                        let outcome = if e.payload["denied"] == true {
                            "denied"
                        } else if e.payload["ok"] == true {
                            "ok"
                        } else {
                            "error"
                        };
                        let tool = e.payload["tool"].as_str().unwrap_or("unknown");
                        me.metrics.tool_call(tool, outcome);
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        for _ in 0..n {
            self.wake.notify_one();
        }
        Ok(n)
    }

    async fn work(self: Arc<Self>) {
        loop {
            let id = loop {
                let woken = self.wake.notified();
                if let Some(id) = self.pop() {
                    break id;
                }
                woken.await;
            };
            let t0 = Instant::now();
            self.metrics.running.fetch_add(1, Ordering::Relaxed);
            match self.agent.resume(&id).await {
                Ok(o) => {
                    self.metrics.started.fetch_add(1, Ordering::Relaxed);
                    let steps = o.steps.iter().filter(|s| s["kind"] == "model_call").count();
                    self.metrics
                        .finished(o.status.as_str(), t0.elapsed(), steps as u64);
                    self.webhooks.task_ended(self.agent.store(), &id);
                }
                // Cancelled while it waited, or already being run: nothing to do.
                Err(AgentError::Ended(..) | AgentError::Busy(_)) => {}
                Err(e) => {
                    // The store failed: the task stays unfinished and resumes at next start.
                    self.metrics.started.fetch_add(1, Ordering::Relaxed);
                    self.metrics.finished("error", t0.elapsed(), 0);
                    eprintln!("task {id}: {e}");
                }
            }
            self.metrics.running.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A histogram with fixed bounds, in the Prometheus sense.
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        for (b, c) in self.bounds.iter().zip(&mut self.counts) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        use std::fmt::Write;
        let _ = writeln!(
            out,
            "# HELP autoglm_{name} {help}\n# TYPE autoglm_{name} histogram"
        );
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "autoglm_{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "autoglm_{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "autoglm_{name}_sum {:.6}", self.sum);
        let _ = writeln!(out, "autoglm_{name}_count {}", self.count);
    }
}

struct Finished {
    by_status: BTreeMap<String, u64>,
    duration: Histogram,
    steps: Histogram,
}

/// Counters of the pool, rendered beside the engine's in `/metrics`.
pub(crate) struct TaskMetrics {
    pub(crate) started: AtomicU64,
    pub(crate) running: AtomicU64,
    finished: Mutex<Finished>,
    tool_calls: Mutex<BTreeMap<(String, &'static str), u64>>,
    pub(crate) webhooks: Arc<WebhookMetrics>,
}

impl Default for TaskMetrics {
    fn default() -> Self {
        TaskMetrics {
            started: AtomicU64::new(0),
            running: AtomicU64::new(0),
            finished: Mutex::new(Finished {
                by_status: BTreeMap::new(),
                duration: Histogram::new(&[1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0]),
                steps: Histogram::new(&[1.0, 2.0, 5.0, 10.0, 20.0, 40.0, 100.0]),
            }),
            tool_calls: Mutex::default(),
            webhooks: Arc::default(),
        }
    }
}

impl TaskMetrics {
    fn finished_lock(&self) -> std::sync::MutexGuard<'_, Finished> {
        self.finished.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn finished(&self, status: &str, took: Duration, steps: u64) {
        let mut f = self.finished_lock();
        *f.by_status.entry(status.to_string()).or_default() += 1;
        f.duration.observe(took.as_secs_f64());
        f.steps.observe(steps as f64);
    }

    fn tool_call(&self, tool: &str, outcome: &'static str) {
        *self
            .tool_calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((tool.to_string(), outcome))
            .or_default() += 1;
    }

    /// A guess at when a queue slot frees: the mean task duration so far times the queue's
    /// turns, within 1 s ..= 5 min.
    fn expected_wait(&self, queued: usize, workers: usize) -> Duration {
        let f = self.finished_lock();
        let mean = if f.duration.count == 0 {
            5.0
        } else {
            f.duration.sum / f.duration.count as f64
        };
        let turns = (queued as f64 / workers.max(1) as f64).max(1.0);
        Duration::from_secs_f64((mean * turns).clamp(1.0, 300.0))
    }

    pub(crate) fn render(&self, out: &mut String, queued: usize) {
        use std::fmt::Write;
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = write!(
                out,
                "# HELP autoglm_{name} {help}\n# TYPE autoglm_{name} {kind}\nautoglm_{name} {value}\n"
            );
        };
        metric(
            "tasks_queued",
            "gauge",
            "Agent tasks waiting for a worker.",
            queued.to_string(),
        );
        metric(
            "tasks_running",
            "gauge",
            "Agent tasks a worker is driving.",
            self.running.load(Ordering::Relaxed).to_string(),
        );
        metric(
            "tasks_started_total",
            "counter",
            "Agent task runs started by a worker (a resumed task counts again).",
            self.started.load(Ordering::Relaxed).to_string(),
        );
        let f = self.finished_lock();
        let _ = writeln!(
            out,
            "# HELP autoglm_tasks_finished_total Agent task runs ended, by status.\n\
             # TYPE autoglm_tasks_finished_total counter"
        );
        for (status, n) in &f.by_status {
            let _ = writeln!(
                out,
                "autoglm_tasks_finished_total{{status=\"{status}\"}} {n}"
            );
        }
        f.duration.render(
            out,
            "task_duration_seconds",
            "Wall-clock time of a task run, from a worker taking it to its end.",
        );
        f.steps.render(
            out,
            "task_steps",
            "Model calls of a finished task, replayed ones included.",
        );
        drop(f);
        let _ = writeln!(
            out,
            "# HELP autoglm_task_tool_calls_total Tool calls of agent tasks, by tool and outcome.\n\
             # TYPE autoglm_task_tool_calls_total counter"
        );
        for ((tool, outcome), n) in self
            .tool_calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "autoglm_task_tool_calls_total{{tool=\"{tool}\",outcome=\"{outcome}\"}} {n}"
            );
        }
        self.webhooks.render(out);
    }
}
