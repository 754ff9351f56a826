//! The agent loop against scripted models: planning, parallel subtasks, tools, reflection with
//! retry and replanning, each guard, malformed replies, cancellation, and resuming after the
//! run was cut off — with the journal checked record by record.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use autoglm_agent::{Agent, AgentConfig, Status, TaskOutcome};
use autoglm_llm::{
    BoxFuture, Capabilities, ChatRequest, ChatResponse, DeltaSink, LlmClient, LlmError,
    ScriptedClient,
};
use autoglm_store::Store;
use autoglm_tools::{Tool, ToolContext, ToolError, ToolOutput, ToolRegistry};
use serde_json::{Value, json};

/// A model whose reply depends on the request (so concurrent subtasks get the right one),
/// optionally slow, counting calls.
struct Router {
    f: Box<dyn Fn(&ChatRequest) -> ChatResponse + Send + Sync>,
    delay: Duration,
    calls: AtomicUsize,
    /// From this call on, never answer (a process that died mid-call).
    hang_from: usize,
}

impl LlmClient for Router {
    fn describe(&self) -> String {
        "router".into()
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities { constrained: false }
    }
    fn chat<'a>(
        &'a self,
        req: &'a ChatRequest,
        _d: Option<DeltaSink>,
    ) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        Box::pin(async move {
            if self.calls.fetch_add(1, Ordering::SeqCst) >= self.hang_from {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(self.delay).await;
            Ok((self.f)(req))
        })
    }
}

fn router(
    delay_ms: u64,
    f: impl Fn(&ChatRequest) -> ChatResponse + Send + Sync + 'static,
) -> Arc<Router> {
    Arc::new(Router {
        f: Box::new(f),
        delay: Duration::from_millis(delay_ms),
        calls: AtomicUsize::new(0),
        hang_from: usize::MAX,
    })
}

fn last_user(req: &ChatRequest) -> String {
    req.messages
        .iter()
        .rev()
        .find(|m| m.role == autoglm_llm::Role::User)
        .map(|m| m.content.clone())
        .unwrap_or_default()
}

fn is_plan(req: &ChatRequest) -> bool {
    req.messages[0].content.starts_with("You plan tasks")
}

fn is_check(req: &ChatRequest) -> bool {
    req.messages[0].content.starts_with("You check results")
}

fn plan(steps: &[(&str, &[usize])]) -> ChatResponse {
    let steps: Vec<Value> = steps
        .iter()
        .map(|(t, d)| json!({"task": t, "depends_on": d}))
        .collect();
    ChatResponse::text(json!({ "steps": steps }).to_string())
}

fn ok() -> ChatResponse {
    ChatResponse::text(r#"{"ok": true, "reason": "fine"}"#)
}

/// Counts its calls; echoes its argument.
struct Counter(Arc<AtomicUsize>);

impl Tool for Counter {
    fn name(&self) -> &str {
        "counter"
    }
    fn description(&self) -> &str {
        "counts"
    }
    fn parameters(&self) -> Value {
        json!({"type": "object", "properties": {"x": {"type": "string"}}, "required": ["x"]})
    }
    fn call<'a>(
        &'a self,
        args: Value,
        _ctx: &'a ToolContext,
    ) -> BoxFuture<'a, Result<ToolOutput, ToolError>> {
        Box::pin(async move {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(ToolOutput::text(format!("counted {}", args["x"])))
        })
    }
}

struct Setup {
    agent: Agent,
    store: Arc<Store>,
    _dir: tempfile::TempDir,
    ws: std::path::PathBuf,
    counted: Arc<AtomicUsize>,
}

fn setup(llm: Arc<dyn LlmClient>, cfg: AgentConfig) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("state.db")).unwrap());
    let counted = Arc::new(AtomicUsize::new(0));
    let mut tools = ToolRegistry::builtin();
    tools.add(Arc::new(Counter(counted.clone())));
    let ws = dir.path().join("ws");
    Setup {
        agent: Agent::new(llm, tools, store.clone(), cfg),
        store,
        _dir: dir,
        ws,
        counted,
    }
}

fn kinds(o: &TaskOutcome) -> Vec<String> {
    o.steps
        .iter()
        .map(|s| s["kind"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn plan_tool_call_reflection_answer() {
    let llm = Arc::new(ScriptedClient::new(vec![
        plan(&[("Compute 17 * 23 with the calculator", &[])]),
        ChatResponse::call("calculator", json!({"expression": "17 * 23"})),
        ChatResponse::text("17 * 23 = 391"),
        ok(),
    ]));
    let s = setup(llm.clone(), AgentConfig::default());
    let o = s
        .agent
        .run("What is 17 * 23?", Some(s.ws.clone()))
        .await
        .unwrap();
    assert_eq!(o.status, Status::Succeeded, "{o:?}");
    assert_eq!(o.answer.as_deref(), Some("17 * 23 = 391"));
    assert_eq!(
        kinds(&o),
        [
            "model_call",
            "plan",
            "model_call",
            "tool_call",
            "tool_result",
            "model_call",
            "model_call",
            "reflection",
            "final"
        ]
    );
    let call = o.steps.iter().find(|s| s["kind"] == "tool_call").unwrap();
    assert_eq!(call["tool"], "calculator");
    assert_eq!(call["arguments"], json!({"expression": "17 * 23"}));
    let result = o.steps.iter().find(|s| s["kind"] == "tool_result").unwrap();
    assert_eq!(result["output"], "391");
    for st in &o.steps {
        assert!(st["started_ms"].as_i64() <= st["ended_ms"].as_i64(), "{st}");
    }
    // The step named the calculator, so the first round asked for it by name.
    let reqs = llm.requests();
    assert_eq!(
        reqs[1].tool_choice,
        autoglm_llm::ToolChoice::Function("calculator".into())
    );
    // The tool result went back to the model as a tool message.
    assert_eq!(reqs[2].messages.last().unwrap().content, "391");
    // The outcome is stored, and remembered for later goals.
    assert_eq!(s.store.task(&o.task_id).unwrap().status, "succeeded");
    let mem = s.store.search_memory("default", "17 * 23", 3).unwrap();
    assert!(mem[0].text.contains("391"), "{mem:?}");
    assert_eq!(o.to_json()["status"], "succeeded");
}

#[tokio::test]
async fn independent_subtasks_run_concurrently_and_feed_the_next() {
    let llm = router(150, |req| {
        let u = last_user(req);
        if is_plan(req) {
            plan(&[
                ("find A", &[]),
                ("find B", &[]),
                ("combine A and B", &[1, 2]),
            ])
        } else if is_check(req) {
            ok()
        } else if u.contains("This step: find A") {
            ChatResponse::text("A is 1")
        } else if u.contains("This step: find B") {
            ChatResponse::text("B is 2")
        } else if u.contains("This step: combine") {
            assert!(u.contains("A is 1") && u.contains("B is 2"), "{u}");
            ChatResponse::text("A+B is 3")
        } else {
            ChatResponse::text("The answer is 3")
        }
    });
    let s = setup(llm.clone(), AgentConfig::default());
    let o = s
        .agent
        .run("Add A and B", Some(s.ws.clone()))
        .await
        .unwrap();
    assert_eq!(o.status, Status::Succeeded, "{o:?}");
    assert_eq!(o.answer.as_deref(), Some("The answer is 3"));
    // Steps 1 and 2 overlapped in time; step 3 started after both ended.
    let span = |sub: u64| {
        let calls: Vec<&Value> = o
            .steps
            .iter()
            .filter(|s| {
                s["kind"] == "model_call" && s["subtask"] == sub && s["purpose"] == "execute"
            })
            .collect();
        (
            calls[0]["started_ms"].as_i64().unwrap(),
            calls[0]["ended_ms"].as_i64().unwrap(),
        )
    };
    let (a, b, c) = (span(1), span(2), span(3));
    assert!(a.0 < b.1 && b.0 < a.1, "{a:?} {b:?}");
    assert!(c.0 >= a.1.max(b.1), "{c:?}");
}

#[tokio::test]
async fn a_failed_check_retries_the_step_then_replans() {
    // The step's first answer fails its check; the retry passes.
    let tries = Arc::new(AtomicUsize::new(0));
    let t = tries.clone();
    let llm = router(0, move |req| {
        if is_plan(req) {
            plan(&[("answer", &[])])
        } else if is_check(req) {
            if last_user(req).contains("Result: wrong") {
                ChatResponse::text(r#"{"ok": false, "reason": "not right"}"#)
            } else {
                ok()
            }
        } else if t.fetch_add(1, Ordering::SeqCst) == 0 {
            ChatResponse::text("wrong")
        } else {
            assert!(
                last_user(req).contains("not right"),
                "feedback reaches the retry"
            );
            ChatResponse::text("right")
        }
    });
    let s = setup(llm, AgentConfig::default());
    let o = s.agent.run("Answer", Some(s.ws.clone())).await.unwrap();
    assert_eq!(
        (o.status.clone(), o.answer.as_deref()),
        (Status::Succeeded, Some("right"))
    );
    let checks: Vec<bool> = o
        .steps
        .iter()
        .filter(|s| s["kind"] == "reflection")
        .map(|s| s["ok"].as_bool().unwrap())
        .collect();
    assert_eq!(checks, [false, true]);

    // Always wrong: retries run out, a new plan is made (with the reason), then the task fails.
    let llm = router(0, |req| {
        if is_plan(req) {
            plan(&[("answer", &[])])
        } else if is_check(req) {
            ChatResponse::text(r#"{"ok": false, "reason": "still wrong"}"#)
        } else {
            ChatResponse::text("wrong")
        }
    });
    let s = setup(llm, AgentConfig::default());
    let o = s.agent.run("Answer", Some(s.ws.clone())).await.unwrap();
    assert!(
        matches!(&o.status, Status::Failed(r) if r.contains("still wrong")),
        "{o:?}"
    );
    let plans: Vec<&Value> = o.steps.iter().filter(|s| s["kind"] == "plan").collect();
    assert_eq!(plans.len(), 2);
    assert_eq!(plans[1]["replan"], true);
    assert!(
        plans[1]["feedback"]
            .as_str()
            .unwrap()
            .contains("still wrong")
    );
}

#[tokio::test]
async fn guards_stop_loops_and_budgets() {
    // The same call again: the model is told and asked for its answer; the task still ends well.
    let llm = Arc::new(ScriptedClient::new(vec![
        plan(&[("count x", &[])]),
        ChatResponse::call("counter", json!({"x": "a"})),
        ChatResponse::call("counter", json!({"x": "a"})),
        ChatResponse::text("counted a"),
        ok(),
    ]));
    let s = setup(llm.clone(), AgentConfig::default());
    let o = s.agent.run("Count", Some(s.ws.clone())).await.unwrap();
    assert_eq!(o.status, Status::Succeeded, "{o:?}");
    assert_eq!(
        s.counted.load(Ordering::SeqCst),
        1,
        "the repeat was not executed"
    );
    assert!(o.steps.iter().any(|s| s["guard"] == "repeated_action"));
    assert_eq!(llm.requests()[3].tool_choice, autoglm_llm::ToolChoice::None);

    // A model that only ever calls tools: the round limit, then retries and replans, then failure.
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    let llm = router(0, move |req| {
        if is_plan(req) {
            plan(&[("count forever", &[])])
        } else {
            let i = n2.fetch_add(1, Ordering::SeqCst);
            ChatResponse::call("counter", json!({"x": i.to_string()}))
        }
    });
    let cfg = AgentConfig {
        max_rounds: 3,
        ..AgentConfig::default()
    };
    let s = setup(llm, cfg);
    let o = s.agent.run("Count", Some(s.ws.clone())).await.unwrap();
    assert!(
        matches!(&o.status, Status::Failed(r) if r.contains("3 rounds")),
        "{o:?}"
    );

    // Step budget.
    let llm = router(0, |req| {
        if is_plan(req) {
            plan(&[("a", &[]), ("b", &[1]), ("c", &[2])])
        } else if is_check(req) {
            ok()
        } else {
            ChatResponse::text("done")
        }
    });
    let s = setup(
        llm,
        AgentConfig {
            max_steps: 4,
            ..AgentConfig::default()
        },
    );
    let o = s
        .agent
        .run("Three things", Some(s.ws.clone()))
        .await
        .unwrap();
    assert!(
        matches!(&o.status, Status::BudgetExhausted(r) if r.contains("step limit (4)")),
        "{o:?}"
    );
    assert_eq!(
        o.steps.iter().filter(|s| s["kind"] == "model_call").count(),
        4
    );
    assert_eq!(s.store.task(&o.task_id).unwrap().status, "budget_exhausted");

    // Token budget (every reply reports usage).
    let llm = router(0, |req| {
        let mut r = if is_plan(req) {
            plan(&[("a", &[])])
        } else {
            ChatResponse::text("x")
        };
        r.usage.prompt_tokens = 600;
        r
    });
    let s = setup(
        llm,
        AgentConfig {
            max_tokens: 1000,
            ..AgentConfig::default()
        },
    );
    let o = s.agent.run("Spend", Some(s.ws.clone())).await.unwrap();
    assert!(
        matches!(&o.status, Status::BudgetExhausted(r) if r.contains("token budget")),
        "{o:?}"
    );
    assert_eq!(o.usage.prompt_tokens, 1200);

    // Wall clock.
    let llm = router(300, |req| {
        if is_plan(req) {
            plan(&[("slow", &[])])
        } else {
            ChatResponse::text("x")
        }
    });
    let s = setup(
        llm,
        AgentConfig {
            max_duration: Duration::from_millis(200),
            ..AgentConfig::default()
        },
    );
    let o = s.agent.run("Slow", Some(s.ws.clone())).await.unwrap();
    assert!(
        matches!(&o.status, Status::BudgetExhausted(r) if r.contains("time limit")),
        "{o:?}"
    );
}

#[tokio::test]
async fn malformed_replies_are_asked_again_with_the_error() {
    let llm = Arc::new(ScriptedClient::new(vec![
        ChatResponse::text("Sure, I will plan it!"),
        ChatResponse::text(
            "```json\n{\"steps\": [{\"task\": \"say hi\", \"depends_on\": []}]}\n```",
        ),
        // A call with arguments that are not an object: the error goes back as the result.
        ChatResponse::call("counter", json!("x=1")),
        ChatResponse::call("counter", json!({"x": "1"})),
        ChatResponse::text("hi"),
        ChatResponse::text("looks fine to me"),
        ok(),
    ]));
    let s = setup(llm.clone(), AgentConfig::default());
    let o = s.agent.run("Say hi", Some(s.ws.clone())).await.unwrap();
    assert_eq!(o.status, Status::Succeeded, "{o:?}");
    let reqs = llm.requests();
    assert!(
        last_user(&reqs[1]).contains("no JSON object"),
        "{:?}",
        reqs[1]
    );
    assert_eq!(
        reqs[3].messages.last().unwrap().content,
        "error: invalid arguments: arguments must be a JSON object, got \"x=1\""
    );
    assert!(last_user(&reqs[6]).contains("could not be used"));
    assert_eq!(s.counted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn cancellation_ends_the_task_cancelled() {
    let llm = router(200, |req| {
        if is_plan(req) {
            plan(&[("wait", &[])])
        } else {
            ChatResponse::text("x")
        }
    });
    let s = setup(llm, AgentConfig::default());
    let cancel = s.agent.cancel_handle();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        cancel.cancel();
    });
    let o = s.agent.run("Wait", Some(s.ws.clone())).await.unwrap();
    assert_eq!(o.status, Status::Cancelled, "{o:?}");
    assert_eq!(s.store.task(&o.task_id).unwrap().status, "cancelled");
}

#[tokio::test]
async fn a_run_cut_off_resumes_without_repeating_calls() {
    let script = || {
        vec![
            plan(&[("count a", &[]), ("count b", &[1])]),
            ChatResponse::call("counter", json!({"x": "a"})),
            ChatResponse::text("a counted"),
            ok(),
            ChatResponse::call("counter", json!({"x": "b"})),
            ChatResponse::text("b counted"),
            ok(),
            ChatResponse::text("both counted"),
            ok(),
        ]
    };
    // First run: the model stops answering after the first step's check, as if the process
    // died there; the run is dropped mid-flight.
    let first = Arc::new(Mutex::new(script()));
    let f2 = first.clone();
    let llm = Arc::new(Router {
        f: Box::new(move |_req| f2.lock().unwrap().remove(0)),
        delay: Duration::ZERO,
        calls: AtomicUsize::new(0),
        hang_from: 4,
    });
    let s = setup(llm.clone(), AgentConfig::default());
    let cut = tokio::time::timeout(
        Duration::from_millis(500),
        s.agent.run("Count a then b", Some(s.ws.clone())),
    )
    .await;
    assert!(cut.is_err(), "the first run was cut off");
    let tasks = s.store.tasks(None, 10).unwrap();
    let id = tasks[0].id.clone();
    assert_eq!(tasks[0].status, "running");
    let done_before = s.store.records(&id).unwrap().len();
    assert!(done_before >= 6, "{done_before}");
    assert_eq!(s.counted.load(Ordering::SeqCst), 1);

    // Resume with a model that has only the remaining replies.
    let rest = Arc::new(ScriptedClient::new(script().split_off(4)));
    let mut tools = ToolRegistry::builtin();
    tools.add(Arc::new(Counter(s.counted.clone())));
    let agent = Agent::new(rest.clone(), tools, s.store.clone(), AgentConfig::default());
    let o = agent.resume(&id).await.unwrap();
    assert_eq!(o.status, Status::Succeeded, "{o:?}");
    assert_eq!(o.answer.as_deref(), Some("both counted"));
    assert_eq!(
        rest.remaining(),
        0,
        "every remaining reply used, none of the first"
    );
    assert_eq!(
        s.counted.load(Ordering::SeqCst),
        2,
        "the first tool call was not repeated"
    );
    // Usage counts every model call once, the replayed ones included.
    assert_eq!(
        o.steps.iter().filter(|s| s["kind"] == "model_call").count(),
        9
    );
    assert!(
        agent.resume(&id).await.is_err(),
        "an ended task cannot be resumed"
    );
}

/// Tool rounds that outgrow the context are compacted: every request fits the budget, the
/// system prompt and the step's message stay a stable prefix, and older rounds survive as notes.
#[tokio::test]
async fn long_tool_rounds_are_compacted_to_fit_the_context() {
    let seen: Arc<Mutex<Vec<ChatRequest>>> = Arc::default();
    let log = seen.clone();
    let llm = router(0, move |req| {
        if is_plan(req) {
            return plan(&[("Count five long things with the counter", &[])]);
        }
        if is_check(req) {
            return ok();
        }
        if req.messages[0].content.starts_with("You carry out") {
            log.lock().unwrap().push(req.clone());
            let done = req.messages[1].content.matches("called counter").count()
                + req
                    .messages
                    .iter()
                    .filter(|m| m.role == autoglm_llm::Role::Tool)
                    .count();
            if done < 5 {
                let x = format!("item{done} {}", "word ".repeat(200));
                return ChatResponse::call("counter", json!({ "x": x }));
            }
            return ChatResponse::text("counted five");
        }
        ChatResponse::text("counted five things")
    });
    let cfg = AgentConfig {
        context_tokens: 1500,
        reply_tokens: 100,
        max_rounds: 8,
        ..AgentConfig::default()
    };
    let s = setup(llm, cfg);
    let o = s.agent.run("Count", Some(s.ws.clone())).await.unwrap();
    assert_eq!(o.status, Status::Succeeded, "{o:?}");
    assert_eq!(s.counted.load(Ordering::SeqCst), 5);
    let reqs = seen.lock().unwrap();
    assert_eq!(reqs.len(), 6);
    for (i, r) in reqs.iter().enumerate() {
        // The same conservative three bytes a token the agent counts with.
        let bytes: usize = r
            .messages
            .iter()
            .map(|m| {
                m.content.len()
                    + m.tool_calls
                        .iter()
                        .map(|c| c.arguments.to_string().len())
                        .sum::<usize>()
            })
            .sum::<usize>()
            + r.tools
                .iter()
                .map(|t| serde_json::to_string(t).unwrap().len())
                .sum::<usize>();
        assert!(bytes <= 3 * 1400, "request {i}: {bytes} bytes");
        assert_eq!(r.messages[0].content, reqs[0].messages[0].content);
        assert!(
            r.messages[1]
                .content
                .starts_with(&reqs[0].messages[1].content)
        );
    }
    let last = &reqs[5];
    assert!(
        last.messages[1]
            .content
            .contains("What you did earlier in this step:\n- called counter {\"x\":\"item0 word"),
        "{}",
        last.messages[1].content
    );
    // The newest round is still whole.
    let tail = last.messages.last().unwrap();
    assert_eq!(tail.role, autoglm_llm::Role::Tool);
    assert!(tail.content.contains("item4") && !tail.content.contains("[…]"));
}

#[tokio::test]
async fn the_http_allowlist_reaches_the_tools() {
    // The refusal names the allowlist the tool saw, so no request is sent anywhere.
    for (allow, seen) in [
        (vec![], "no hosts are allowed"),
        (
            vec!["docs.invalid".to_string()],
            "127.0.0.1 is not on the http_fetch allowlist (autoglm run --allow-host HOST) \
             (allowed: docs.invalid)",
        ),
    ] {
        let llm = Arc::new(ScriptedClient::new(vec![
            plan(&[("Fetch the page with http_fetch", &[])]),
            ChatResponse::call("http_fetch", json!({"url": "http://127.0.0.1:9/page"})),
            ChatResponse::text("It could not be fetched."),
            ok(),
        ]));
        let cfg = AgentConfig {
            http_allow: allow,
            ..AgentConfig::default()
        };
        let s = setup(llm, cfg);
        let o = s
            .agent
            .run("Fetch the page", Some(s.ws.clone()))
            .await
            .unwrap();
        let result = o.steps.iter().find(|s| s["kind"] == "tool_result").unwrap();
        let out = result["output"].as_str().unwrap();
        assert!(
            out.starts_with("error: refused: ") && out.contains(seen),
            "{out}"
        );
    }
}

/// A task submitted for a tenant runs later with its own settings: its tools subset, its step
/// budget, its tenant's memory.
#[tokio::test]
async fn submitted_tasks_run_later_with_their_own_settings_and_tenant() {
    let llm = router(0, |req| {
        if is_plan(req) {
            plan(&[("count it", &[])])
        } else if is_check(req) {
            ok()
        } else if req.messages.last().unwrap().role == autoglm_llm::Role::Tool {
            ChatResponse::text("counted it")
        } else {
            // Only the task's tools are offered.
            let names: Vec<&str> = req.tools.iter().map(|t| t.name.as_str()).collect();
            assert_eq!(names, ["counter"], "{names:?}");
            ChatResponse::call("counter", json!({"x": "a"}))
        }
    });
    let s = setup(llm, AgentConfig::default());
    let spec = autoglm_agent::TaskSpec {
        goal: "Count it".into(),
        tenant: "acme".into(),
        workspace: Some(s.ws.clone()),
        tools: Some(vec!["counter".into()]),
        max_steps: Some(7),
        meta: json!({"priority": "batch"}),
        ..Default::default()
    };
    let id = s.agent.submit(&spec).unwrap();
    let t = s.store.task(&id).unwrap();
    assert_eq!((t.status.as_str(), t.tenant.as_str()), ("queued", "acme"));
    assert_eq!(t.settings["max_steps"], 7);
    assert_eq!(t.settings["meta"]["priority"], "batch");
    assert!(s.store.records(&id).unwrap().is_empty(), "nothing ran yet");
    let o = s.agent.resume(&id).await.unwrap();
    assert_eq!(o.status, Status::Succeeded, "{o:?}");
    // The outcome is remembered for the task's tenant only.
    assert_eq!(
        s.store.search_memory("acme", "counted", 3).unwrap().len(),
        1
    );
    assert!(
        s.store
            .search_memory("default", "counted", 3)
            .unwrap()
            .is_empty()
    );
    // Unknown tools are refused at submission.
    let bad = autoglm_agent::TaskSpec {
        tools: Some(vec!["teleport".into()]),
        ..spec.clone()
    };
    assert!(matches!(
        s.agent.submit(&bad),
        Err(autoglm_agent::AgentError::UnknownTool(_))
    ));
    // The step budget of the task, not the agent's, applies.
    let tight = autoglm_agent::TaskSpec {
        max_steps: Some(1),
        ..spec
    };
    let id = s.agent.submit(&tight).unwrap();
    let o = s.agent.resume(&id).await.unwrap();
    assert!(matches!(o.status, Status::BudgetExhausted(_)), "{o:?}");
}

/// Cancelling one task by id leaves the others running; a queued task ends at once.
#[tokio::test]
async fn tasks_are_cancelled_by_id() {
    let llm = router(100, |req| {
        if is_plan(req) {
            plan(&[("wait", &[])])
        } else if is_check(req) {
            ok()
        } else {
            ChatResponse::text("waited")
        }
    });
    let s = setup(llm, AgentConfig::default());
    let spec = |goal: &str| autoglm_agent::TaskSpec {
        goal: goal.into(),
        tenant: "default".into(),
        ..Default::default()
    };
    let a = s.agent.submit(&spec("Wait a")).unwrap();
    let b = s.agent.submit(&spec("Wait b")).unwrap();
    let queued = s.agent.submit(&spec("Wait c")).unwrap();
    assert!(s.agent.cancel(&queued).unwrap());
    assert_eq!(s.store.task(&queued).unwrap().status, "cancelled");
    assert!(!s.agent.cancel(&queued).unwrap(), "idempotent");
    assert!(matches!(
        s.agent.resume(&queued).await,
        Err(autoglm_agent::AgentError::Ended(..))
    ));
    let agent = s.agent.clone();
    let a2 = a.clone();
    let ra = tokio::spawn(async move { agent.resume(&a2).await });
    let agent = s.agent.clone();
    let b2 = b.clone();
    let rb = tokio::spawn(async move { agent.resume(&b2).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(s.agent.is_running(&a));
    assert!(s.agent.cancel(&a).unwrap());
    let oa = ra.await.unwrap().unwrap();
    let ob = rb.await.unwrap().unwrap();
    assert_eq!(oa.status, Status::Cancelled);
    assert_eq!(ob.status, Status::Succeeded, "{ob:?}");
    assert!(!s.agent.is_running(&a));
}

/// Following a task: the journal so far, then live records, each once, then the end.
#[tokio::test]
async fn following_a_task_yields_every_record_once_then_ends() {
    use futures_util::StreamExt;
    let llm = router(60, |req| {
        if is_plan(req) {
            plan(&[("a", &[]), ("b", &[])])
        } else if is_check(req) {
            ok()
        } else if is_compose(req) {
            ChatResponse::text("both")
        } else {
            ChatResponse::text("done")
        }
    });
    let s = setup(llm, AgentConfig::default());
    let id = s
        .agent
        .submit(&autoglm_agent::TaskSpec {
            goal: "Do a and b".into(),
            tenant: "default".into(),
            ..Default::default()
        })
        .unwrap();
    // Followers made before the run and mid-way, first polled later: the records written in
    // between reach them twice (the broadcast they subscribed to, and the journal they read),
    // and must come out once.
    let early = s.agent.follow(&id, 0);
    let agent = s.agent.clone();
    let id2 = id.clone();
    let run = tokio::spawn(async move { agent.resume(&id2).await });
    tokio::time::sleep(Duration::from_millis(80)).await;
    let mid = s.agent.follow(&id, 0);
    tokio::time::sleep(Duration::from_millis(80)).await;
    let collect = |f: futures_util::stream::BoxStream<'static, _>| {
        f.map(|e: Result<autoglm_agent::Event, _>| e.unwrap().seq)
            .collect::<Vec<i64>>()
    };
    // Both are polled mid-way: the run takes five rounds of 60 ms.
    let (seen, seen_mid) = tokio::join!(collect(early.boxed()), collect(mid.boxed()));
    run.await.unwrap().unwrap();
    let all: Vec<i64> = s
        .store
        .records(&id)
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert!(all.len() > 8, "{all:?}");
    assert_eq!(seen, all);
    assert_eq!(seen_mid, all);
    let tail: Vec<i64> = s
        .agent
        .follow(&id, 3)
        .map(|e| e.unwrap().seq)
        .collect()
        .await;
    assert_eq!(tail, all[3..]);
}

fn is_compose(req: &ChatRequest) -> bool {
    req.messages[0]
        .content
        .starts_with("You write the final answer")
}
