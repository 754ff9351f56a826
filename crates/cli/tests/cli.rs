//! End-to-end tests of the `autoglm` binary: the command-line contract (exact output forms and
//! exit codes) on the real catalogue models, and clear errors for bad input.

mod otlp;

use std::process::{Command, Output};

use autoglm_testkit::reference;
use serde_json::{Value, json};

fn autoglm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_autoglm"))
        .args(args)
        .output()
        .expect("binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Fails, showing the whole stderr, unless it contains `needle`.
#[track_caller]
fn assert_stderr_has(o: &Output, needle: &str) {
    let err = stderr(o);
    assert!(err.contains(needle), "{needle:?} not in: {err}");
}

/// Makes sure the catalogue models are in the cache before the binary needs them.
fn ensure(name: &str) {
    autoglm_testkit::model_path(name);
}

#[test]
fn tokenize_prints_a_json_array() {
    ensure("smollm2-135m");
    for line in reference("smollm2-135m", "tokenize.jsonl").iter().take(6) {
        let text = line["text"].as_str().unwrap();
        let o = autoglm(&["tokenize", text]);
        assert!(o.status.success(), "{}", stderr(&o));
        let got: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
        assert_eq!(got, line["ids"], "text {text:?}");
        let o = autoglm(&["tokenize", "--special", text]);
        let got: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
        assert_eq!(
            got, line["ids_parse_special"],
            "text {text:?} with --special"
        );
    }
}

/// `generate` without `--raw` renders the chat template; greedy output must reproduce
/// llama.cpp's recorded text on the lines without a near-tie (most part ways at one; see the
/// model crate's tests).
#[test]
fn generate_greedy_reproduces_llama_cpp_text() {
    ensure("smollm2-135m");
    let mut identical = 0;
    for line in reference("smollm2-135m", "greedy.jsonl").iter().take(12) {
        let prompt = line["prompt"].as_str().unwrap();
        let o = autoglm(&[
            "generate",
            "--temperature",
            "0",
            "--max-tokens",
            "48",
            prompt,
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let out = stdout(&o);
        // The command ends its output with one newline of its own.
        if out.strip_suffix('\n') == line["generated_text"].as_str() {
            identical += 1;
        }
    }
    assert!(
        identical >= 2,
        "only {identical}/12 generations identical to llama.cpp"
    );
}

#[test]
fn generate_raw_on_gemma() {
    ensure("gemma3-270m");
    let line = &reference("gemma3-270m", "greedy.jsonl")[0];
    let prompt = line["prompt_text"].as_str().unwrap();
    let o = autoglm(&[
        "generate",
        "--model",
        "gemma3-270m",
        "--raw",
        "--temperature",
        "0",
        "--max-tokens",
        "16",
        prompt,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stdout(&o).trim().is_empty());
}

#[test]
fn same_seed_same_text() {
    ensure("smollm2-135m");
    let args = [
        "generate",
        "--temperature",
        "1.0",
        "--seed",
        "7",
        "--max-tokens",
        "24",
        "Tell me a story.",
    ];
    let a = autoglm(&args);
    let b = autoglm(&args);
    assert!(a.status.success(), "{}", stderr(&a));
    assert_eq!(stdout(&a), stdout(&b));
}

#[test]
fn model_info_json_names_the_file() {
    ensure("smollm2-135m");
    let o = autoglm(&["model", "info", "smollm2-135m", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["architecture"], "llama");
    assert_eq!(v["quantization"], "Q4_1");
    assert_eq!(v["context_length"], 8192);
    assert_eq!(v["chat_template"], true);
    let path = v["path"].as_str().unwrap();
    assert!(std::path::Path::new(path).is_file(), "{path}");
    let params = v["parameters"].as_u64().unwrap();
    assert!((130_000_000..140_000_000).contains(&params), "{params}");
}

#[test]
fn bench_json_has_the_contract_keys() {
    ensure("smollm2-135m");
    let o = autoglm(&[
        "bench", "-p", "32", "-n", "8", "--batch", "2", "-r", "1", "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    for key in [
        "model",
        "threads",
        "pp_tokens",
        "pp_tok_s",
        "tg_tokens",
        "tg_tok_s",
        "batch",
        "batch_tg_tok_s",
    ] {
        assert!(v.get(key).is_some(), "missing {key} in {v}");
    }
    assert!(v["tg_tok_s"].as_f64().unwrap() > 0.0);
    assert_eq!(v["batch"], 2);
}

#[test]
fn bad_input_gets_clear_errors_and_status() {
    // Usage errors exit 2.
    let o = autoglm(&["generate"]);
    assert_eq!(o.status.code(), Some(2));
    let o = autoglm(&["frobnicate"]);
    assert_eq!(o.status.code(), Some(2));

    // Invalid sampling parameters, missing and corrupt model files exit 1 with a message.
    let check = |args: &[&str], expect: &str| {
        let o = autoglm(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(expect),
            "{args:?}: {:?} should mention {expect:?}",
            stderr(&o)
        );
    };
    check(&["generate", "--temperature", "-1", "hi"], "temperature");
    check(&["generate", "--top-p", "0", "hi"], "top_p");
    check(
        &["generate", "--model", "/nonexistent/model.gguf", "hi"],
        "/nonexistent/model.gguf",
    );
    check(
        &["generate", "--model", "no-such-model", "hi"],
        "no-such-model",
    );
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.gguf");
    std::fs::write(&bad, b"GGUF\x03\x00\x00\x00garbage").unwrap();
    check(
        &["generate", "--model", bad.to_str().unwrap(), "hi"],
        "truncated",
    );
    let notgguf = dir.path().join("text.gguf");
    std::fs::write(&notgguf, b"hello world, not a model").unwrap();
    check(
        &["tokenize", "--model", notgguf.to_str().unwrap(), "hi"],
        "not a GGUF file",
    );

    // A prompt longer than the context.
    ensure("smollm2-135m");
    let long = "word ".repeat(9000);
    check(&["generate", "--raw", &long], "context");
}

/// Every turn's prompt carries the whole conversation so far (the tiny default model is too
/// weak to test memory by its answers, so this checks the prompt sizes `--verbose` reports).
#[test]
fn chat_keeps_history_over_piped_turns() {
    use std::io::Write;
    use std::process::Stdio;
    ensure("smollm2-135m");
    let mut child = Command::new(env!("CARGO_BIN_EXE_autoglm"))
        .args([
            "chat",
            "--verbose",
            "--temperature",
            "0",
            "--max-tokens",
            "20",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"My name is Ada.\nWhat is my name?\n\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    // "[N prompt tokens at … tok/s, M generated at …"
    let turns: Vec<(usize, usize)> = stderr(&o)
        .lines()
        .filter_map(|l| {
            let l = &l[l.find('[')? + 1..];
            let (p, rest) = l.split_once(" prompt tokens")?;
            let g = rest.split_once(", ")?.1.split_once(' ')?.0;
            Some((p.parse().ok()?, g.parse().ok()?))
        })
        .collect();
    assert_eq!(turns.len(), 2, "{}", stderr(&o));
    let ((p1, g1), (p2, _)) = (turns[0], turns[1]);
    // The second prompt holds the first prompt, the first reply and the new question.
    assert!(
        p2 > p1 + g1,
        "second prompt {p2} tokens, first {p1} + reply {g1}"
    );
    assert_eq!(
        stdout(&o).lines().filter(|l| !l.trim().is_empty()).count(),
        2
    );
}

#[test]
fn a_model_without_a_chat_template_gets_a_builtin_one() {
    ensure("gemma3-270m");
    let o = autoglm(&[
        "generate",
        "--model",
        "gemma3-270m",
        "--temperature",
        "0",
        "--max-tokens",
        "8",
        "Hi",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_stderr_has(&o, "no chat template of its own");
}

/// `autoglm serve` on a free port, driven by the official `openai` Python package
/// (`scripts/openai_client_check.py`). CI installs the package; elsewhere the test says how to
/// get it and skips.
#[test]
fn serve_works_with_the_official_openai_client() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let has_openai = Command::new("python3")
        .args(["-c", "import openai"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_openai {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install the openai package (python3 -m pip install openai)"
        );
        eprintln!("skipping: python3 -m pip install openai to run this test");
        return;
    }
    ensure("smollm2-135m");
    let home = tempfile::tempdir().unwrap();
    let mut server = Command::new(env!("CARGO_BIN_EXE_autoglm"))
        .args(["serve", "--port", "0", "--threads", "2", "--no-auth"])
        .env("AUTOGLM_HOME", home.path())
        .stderr(Stdio::piped())
        .spawn()
        .expect("server starts");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let server_err = server.stderr.take().unwrap();
    let server = Kill(server);
    // "serving smollm2-135m on http://127.0.0.1:PORT/v1 (Ctrl-C to stop)"
    let url = BufReader::new(server_err)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with("http://"))
                .map(str::to_string)
        })
        .expect("server prints its address");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../scripts/openai_client_check.py"
    );
    let o = Command::new("python3")
        .args([script, &url])
        .output()
        .expect("python runs");
    drop(server);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("unknown model: ok"), "{}", stdout(&o));
}

/// `autoglm` with its state in `home` (a fresh $AUTOGLM_HOME).
fn autoglm_in(home: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_autoglm"))
        .args(args)
        .env("AUTOGLM_HOME", home)
        .output()
        .expect("binary runs")
}

/// The `run --json` contract, and a calculator call with a well-formed expression.
fn check_run_json(o: &Output) -> Value {
    let out = stdout(o);
    let v: Value = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}):\n{out}\n{}", stderr(o)));
    for k in ["task_id", "status", "answer", "steps", "usage"] {
        assert!(v.get(k).is_some(), "missing {k}: {v}");
    }
    let kinds = [
        "plan",
        "model_call",
        "tool_call",
        "tool_result",
        "reflection",
        "guard",
        "final",
    ];
    for s in v["steps"].as_array().unwrap() {
        assert!(kinds.contains(&s["kind"].as_str().unwrap()), "{s}");
        assert!(s["started_ms"].is_i64() && s["ended_ms"].is_i64(), "{s}");
    }
    let call = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == "tool_call")
        .unwrap_or_else(|| panic!("no tool call: {v}"));
    assert_eq!(call["tool"], "calculator", "{v}");
    let expr = call["arguments"]["expression"].as_str().unwrap();
    assert!(autoglm_tools::evaluate(expr).is_ok(), "{expr}");
    v
}

#[test]
fn run_on_the_embedded_model_calls_the_calculator_and_is_traced() {
    ensure("smollm2-135m");
    let home = tempfile::tempdir().unwrap();
    let o = autoglm_in(
        home.path(),
        &["run", "--json", "What is 17 * 23? Use the calculator."],
    );
    let v = check_run_json(&o);
    assert_eq!(
        o.status.code(),
        Some(if v["status"] == "succeeded" { 0 } else { 1 })
    );
    eprintln!("answer: {} ({})", v["answer"], v["status"]);
    let id = v["task_id"].as_str().unwrap();

    let tasks = autoglm_in(home.path(), &["tasks", "--json"]);
    let list: Value = serde_json::from_str(&stdout(&tasks)).unwrap();
    assert_eq!(list[0]["task_id"], id);

    let t = autoglm_in(home.path(), &["trace", id]);
    assert!(t.status.success(), "{}", stderr(&t));
    assert!(
        stdout(&t).contains("tool_call calculator"),
        "{}",
        stdout(&t)
    );
    let tj = autoglm_in(home.path(), &["trace", "--json", id]);
    let tv: Value = serde_json::from_str(&stdout(&tj)).unwrap();
    assert_eq!(tv["steps"], v["steps"]);
    assert_eq!(tv["tree"]["children"][0]["name"], "plan0");

    let bad = autoglm_in(home.path(), &["trace", "nope"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("no task nope"), "{}", stderr(&bad));
    let bad = autoglm_in(home.path(), &["run"]);
    assert_eq!(bad.status.code(), Some(2));
    let bad = autoglm_in(home.path(), &["run", "--backend", "openai", "hi"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("--base-url"), "{}", stderr(&bad));
    let bad = autoglm_in(home.path(), &["run", "--tools", "teleport", "hi"]);
    assert!(
        stderr(&bad).contains("available: calculator"),
        "{}",
        stderr(&bad)
    );
}

/// A running `autoglm serve` on a free port, stopped when dropped.
struct Server {
    child: std::process::Child,
    url: String,
    /// The server's own $AUTOGLM_HOME: it resumes unfinished tasks of its database at start,
    /// so it must never share the user's.
    _home: Option<tempfile::TempDir>,
}

/// The status code of a request to `url` (`http://host:port/...`), with `key` as a bearer token.
fn http_status(url: &str, method: &str, path: &str, key: Option<&str>, body: &str) -> u16 {
    let addr = url.trim_start_matches("http://").split('/').next().unwrap();
    http_as(addr, method, path, key, Some(body)).0
}

/// Keys end to end: `keys create` prints a key that works against `autoglm serve` (which,
/// without --no-auth, refuses requests without one), `keys revoke` makes it stop working
/// within seconds, and `audit` shows what happened.
#[test]
fn api_keys_from_the_command_line_guard_the_server() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    ensure("smollm2-135m");
    let home = tempfile::tempdir().unwrap();
    let o = autoglm_in(
        home.path(),
        &[
            "keys", "create", "--tenant", "acme", "--scopes", "models", "--name", "e2e",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let key = stdout(&o).trim().to_string();
    assert!(
        key.starts_with("agk_") && !key.contains(char::is_whitespace),
        "{key}"
    );
    assert_stderr_has(&o, "will not be shown again");
    let bad = autoglm_in(
        home.path(),
        &["keys", "create", "--tenant", "acme", "--scopes", "root"],
    );
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("unknown scope"), "{}", stderr(&bad));

    let list = autoglm_in(home.path(), &["keys", "list", "--json"]);
    let list: Value = serde_json::from_str(&stdout(&list)).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    let id = list[0]["id"].as_str().unwrap().to_string();
    assert_eq!(list[0]["tenant"], "acme");
    assert!(
        !list.to_string().contains(&key[key.len() - 64..]),
        "a secret in the list"
    );
    assert!(key.contains(&id));

    let mut child = Command::new(env!("CARGO_BIN_EXE_autoglm"))
        .args(["serve", "--port", "0", "--threads", "2"])
        .env("AUTOGLM_HOME", home.path())
        .stderr(Stdio::piped())
        .spawn()
        .expect("server starts");
    let err = child.stderr.take().unwrap();
    let url = BufReader::new(err)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with("http://"))
                .map(str::to_string)
        })
        .expect("server prints its address");
    let server = Server {
        child,
        url,
        _home: None,
    };
    let chat = r#"{"messages":[{"role":"user","content":"Hi"}],"max_tokens":2}"#;
    assert_eq!(http_status(&server.url, "GET", "/health", None, ""), 200);
    assert_eq!(http_status(&server.url, "GET", "/v1/models", None, ""), 401);
    assert_eq!(
        http_status(&server.url, "GET", "/v1/models", Some(&key), ""),
        200
    );
    assert_eq!(
        http_status(
            &server.url,
            "POST",
            "/v1/chat/completions",
            Some(&key),
            chat
        ),
        200
    );
    assert_eq!(
        http_status(&server.url, "GET", "/metrics", Some(&key), ""),
        403
    );

    let o = autoglm_in(home.path(), &["keys", "revoke", &id]);
    assert!(o.status.success(), "{}", stderr(&o));
    let t0 = std::time::Instant::now();
    while http_status(&server.url, "GET", "/v1/models", Some(&key), "") != 401 {
        assert!(t0.elapsed().as_secs() < 5, "the revoked key still works");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(
        http_status(
            &server.url,
            "POST",
            "/v1/chat/completions",
            Some(&key),
            chat
        ),
        401
    );
    drop(server);

    let o = autoglm_in(home.path(), &["audit", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let seen: Vec<(String, Option<u64>)> = rows
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|r| {
            (
                r["action"].as_str().unwrap().to_string(),
                r["status"].as_u64(),
            )
        })
        .filter(|(a, _)| !a.starts_with("GET /v1/models"))
        .collect();
    let want = [
        ("keys.create".to_string(), None),
        ("POST /v1/chat/completions".to_string(), Some(200)),
        ("GET /metrics".to_string(), Some(403)),
        ("keys.revoke".to_string(), None),
        ("POST /v1/chat/completions".to_string(), Some(401)),
    ];
    assert_eq!(seen, want, "{rows}");
    let ok_chat = &rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["status"] == 200)
        .unwrap();
    assert_eq!(
        (ok_chat["tenant"].as_str(), ok_chat["key_id"].as_str()),
        (Some("acme"), Some(id.as_str()))
    );
    assert!(
        ok_chat["detail"]["peer"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert!(
        !rows.to_string().contains(&key[key.len() - 64..]),
        "a secret in the audit log"
    );
    // The table form names the same things.
    let text = stdout(&autoglm_in(home.path(), &["audit", "--tenant", "acme"]));
    assert!(
        text.contains("keys.revoke") && text.contains("POST /v1/chat/completions"),
        "{text}"
    );
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server() -> Server {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    ensure("smollm2-135m");
    let home = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_autoglm"))
        .args(["serve", "--port", "0", "--threads", "2", "--no-auth"])
        .env("AUTOGLM_HOME", home.path())
        .stderr(Stdio::piped())
        .spawn()
        .expect("server starts");
    let err = child.stderr.take().unwrap();
    let url = BufReader::new(err)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with("http://"))
                .map(str::to_string)
        })
        .expect("server prints its address");
    Server {
        child,
        url,
        _home: Some(home),
    }
}

#[test]
fn run_through_our_own_server_over_http() {
    let server = start_server();
    let home = tempfile::tempdir().unwrap();
    let o = autoglm_in(
        home.path(),
        &[
            "run",
            "--json",
            "--backend",
            "openai",
            "--base-url",
            &server.url,
            "What is 17 * 23? Use the calculator.",
        ],
    );
    let v = check_run_json(&o);
    eprintln!("answer over HTTP: {} ({})", v["answer"], v["status"]);
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
}

#[test]
fn a_run_killed_mid_task_resumes_without_repeating_calls() {
    ensure("smollm2-135m");
    let home = tempfile::tempdir().unwrap();
    let db = home.path().join("autoglm.db");
    let mut child = Command::new(env!("CARGO_BIN_EXE_autoglm"))
        .args([
            "run",
            "--threads",
            "2",
            "What is 17 * 23? Use the calculator.",
        ])
        .env("AUTOGLM_HOME", home.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill -9 as soon as the plan's model call is journaled: the task is mid-way.
    let t0 = std::time::Instant::now();
    let id = loop {
        assert!(t0.elapsed().as_secs() < 120, "no journal appeared");
        if let Ok(store) = autoglm_store::Store::open(&db)
            && let Ok(tasks) = store.tasks(None, 1)
            && let Some(t) = tasks.first()
            && store.records(&t.id).is_ok_and(|r| !r.is_empty())
        {
            break t.id.clone();
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    let store = autoglm_store::Store::open(&db).unwrap();
    let before = store.records(&id).unwrap();
    let finished_first = before.iter().any(|r| r.kind == "final");
    eprintln!(
        "killed after {} records (finished: {finished_first})",
        before.len()
    );

    let o = autoglm_in(home.path(), &["resume", "--json", "--threads", "2"]);
    let after = store.records(&id).unwrap();
    assert!(
        after.iter().any(|r| r.kind == "final"),
        "resumed to the end: {}",
        stderr(&o)
    );
    // Every record written before the kill is still first, and no key was journaled twice.
    assert_eq!(after[..before.len()], before[..]);
    let mut keys: Vec<(String, String)> = after
        .iter()
        .filter(|r| r.kind != "guard")
        .map(|r| {
            (
                r.kind.clone(),
                r.payload["key"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let n = keys.len();
    keys.sort();
    keys.dedup();
    assert_eq!(
        keys.len(),
        n,
        "a model or tool call was repeated: {after:?}"
    );
    assert_ne!(store.task(&id).unwrap().status, "running");
}

#[test]
fn mcp_config_and_allowed_hosts_are_checked_before_any_model_loads() {
    let home = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let mut a = vec!["run"];
        a.extend_from_slice(args);
        a.push("hi");
        autoglm_in(home.path(), &a)
    };
    let o = run(&["--allow-host", "docs.invalid,https://example.org"]);
    assert_eq!(o.status.code(), Some(1));
    assert_stderr_has(&o, "allowed host \"https://example.org\": give a host name");
    // An explicit configuration that is missing is an error; the default one is optional.
    let o = run(&["--mcp-config", "/nonexistent/mcp.json", "--tools", "x"]);
    assert_stderr_has(&o, "cannot read /nonexistent/mcp.json");
    let o = run(&["--tools", "http_fetch,teleport"]);
    assert_stderr_has(
        &o,
        "warning: http_fetch refuses every URL until hosts are allowed",
    );

    // The default $AUTOGLM_HOME/mcp.json: checked, and a server that cannot start is a warning
    // (the run goes on to the tool selection, which names what exists).
    std::fs::write(
        home.path().join("mcp.json"),
        "{\"mcpServers\": {\"a\": {}}}",
    )
    .unwrap();
    let o = run(&["--tools", "teleport"]);
    assert_stderr_has(&o, "mcp.json: server \"a\": needs \"command\"");
    std::fs::write(
        home.path().join("mcp.json"),
        "{\"mcpServers\": {\"gone\": {\"command\": \"/nonexistent/server\"}}}",
    )
    .unwrap();
    let o = run(&["--tools", "teleport"]);
    let err = stderr(&o);
    assert!(
        err.contains("warning: MCP server gone")
            && err.contains("cannot start \"/nonexistent/server\""),
        "{err}"
    );
    assert!(err.contains("available: calculator"), "{err}");
}

/// A minimal HTTP/1.1 exchange over loopback (the tests have no HTTP client): status and body.
fn http(addr: &str, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    http_as(addr, method, path, None, body)
}

fn http_as(
    addr: &str,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("server reachable");
    s.set_read_timeout(Some(std::time::Duration::from_secs(600)))
        .unwrap();
    let body = body.unwrap_or("");
    let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    // Chunked bodies (the event stream): join the chunks.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut r = rest;
        while let Some((size, tail)) = r.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || tail.len() < n {
                break;
            }
            out.push_str(&tail[..n]);
            r = tail[n..].strip_prefix("\r\n").unwrap_or(&tail[n..]);
        }
        out
    } else {
        rest.to_string()
    };
    (status, body)
}

/// `autoglm serve --no-auth` with its state in `home`; returns the child and the `host:port`
/// it bound.
fn serve_in(home: &std::path::Path) -> (std::process::Child, String) {
    serve_with(home, &["--no-auth"])
}

/// `autoglm serve` with `extra` arguments.
fn serve_with(home: &std::path::Path, extra: &[&str]) -> (std::process::Child, String) {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_autoglm"))
        .args([
            "serve",
            "--port",
            "0",
            "--threads",
            "2",
            "--task-workers",
            "2",
        ])
        .args(extra)
        .env("AUTOGLM_HOME", home)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("server starts");
    let err = child.stderr.take().unwrap();
    let mut lines = BufReader::new(err).lines().map_while(Result::ok);
    let addr = lines
        .find_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("http://"))
                .and_then(|w| w.strip_suffix("/v1"))
                .map(str::to_string)
        })
        .expect("server prints its address");
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

/// The issue's restart test on the real binary and the embedded model: five tasks, the server
/// killed (-9) mid-way, started again: all five finish, no completed model or tool call is
/// journaled twice, and each task's events stream shows its whole history.
#[test]
fn serve_resumes_five_tasks_after_being_killed_mid_way() {
    ensure("smollm2-135m");
    let home = tempfile::tempdir().unwrap();
    let (mut child, addr) = serve_in(home.path());
    let mut ids = Vec::new();
    for i in 0..5 {
        let body = json!({"goal": format!("What is {} * 7? Use the calculator.", 11 + i),
                          "tools": ["calculator"], "max_steps": 8});
        let (status, resp) = http(&addr, "POST", "/v1/tasks", Some(&body.to_string()));
        assert_eq!(status, 202, "{resp}");
        let v: Value = serde_json::from_str(&resp).unwrap();
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    // Kill once some work is journaled, before everything is done.
    let db = home.path().join("autoglm.db");
    let store = autoglm_store::Store::open(&db).unwrap();
    let t0 = std::time::Instant::now();
    loop {
        assert!(t0.elapsed().as_secs() < 300, "no progress");
        let n: usize = ids.iter().map(|id| store.records(id).unwrap().len()).sum();
        if n >= 3 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before: Vec<_> = ids.iter().map(|id| store.records(id).unwrap()).collect();
    let unfinished = ids
        .iter()
        .filter(|id| store.task(id).unwrap().status != "succeeded")
        .count();
    eprintln!("killed with {unfinished} of 5 unfinished");
    assert!(unfinished > 0, "the kill came mid-way");

    let (child, addr) = serve_in(home.path());
    let server = Server {
        child,
        url: format!("http://{addr}/v1"),
        _home: None,
    };
    for id in &ids {
        let t0 = std::time::Instant::now();
        loop {
            let (status, resp) = http(&addr, "GET", &format!("/v1/tasks/{id}"), None);
            assert_eq!(status, 200, "{resp}");
            let v: Value = serde_json::from_str(&resp).unwrap();
            let s = v["status"].as_str().unwrap().to_string();
            if !["queued", "running", "waiting_approval"].contains(&s.as_str()) {
                eprintln!("{id}: {s} {}", v["answer"]);
                break;
            }
            assert!(t0.elapsed().as_secs() < 900, "{id} never finished: {v}");
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
    for (id, before) in ids.iter().zip(&before) {
        let after = store.records(id).unwrap();
        assert_eq!(after[..before.len()], before[..], "history kept");
        assert!(after.iter().any(|r| r.kind == "final"));
        let mut keys: Vec<(String, String)> = after
            .iter()
            .map(|r| {
                (
                    r.kind.clone(),
                    r.payload["key"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        let n = keys.len();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), n, "a record was journaled twice: {after:?}");
        // The events stream replays the whole history and ends.
        let (status, sse) = http(&addr, "GET", &format!("/v1/tasks/{id}/events"), None);
        assert_eq!(status, 200);
        let seqs: Vec<i64> = sse
            .lines()
            .filter_map(|l| l.strip_prefix("id:"))
            .map(|v| v.trim().parse().unwrap())
            .collect();
        assert_eq!(seqs, after.iter().map(|r| r.seq).collect::<Vec<_>>());
        assert!(sse.contains("event: end"), "{sse}");
    }
    let (_, metrics) = http(&addr, "GET", "/metrics", None);
    assert!(
        metrics.contains("autoglm_tasks_finished_total{status="),
        "{metrics}"
    );
    drop(server);
}

/// What the browser test needs and is missing: Node.js, Debian's Chromium, the npm packages.
fn browser_test_missing(ui: &std::path::Path, chromium: &str) -> Vec<String> {
    let mut missing = Vec::new();
    let node = Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) {
        missing.push("node (apt-get install nodejs npm)".to_string());
    }
    if !std::path::Path::new(chromium).exists() {
        missing.push(format!("{chromium} (apt-get install chromium)"));
    }
    if !ui
        .join("node_modules/playwright-core/package.json")
        .exists()
    {
        missing.push(format!("playwright-core (npm ci in {})", ui.display()));
    }
    missing
}

/// The web UI in a real browser: tests/ui/run.mjs drives Debian's headless Chromium with
/// Playwright against `autoglm serve --no-auth` — starts a task through the form, sees its
/// steps arrive live, grants its approval, checks the timeline, the answer and the engine
/// page, and takes screenshots (into the target directory, paths printed) — and against a
/// second server that asks for keys (the key bar, a task followed over the authenticated
/// stream, cancel). Under CI=true a missing browser, Node.js or npm package fails the test;
/// elsewhere it is skipped, saying why.
#[test]
fn the_web_ui_in_headless_chromium() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let ui = root.join("tests/ui");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let missing = browser_test_missing(&ui, &chromium);
    if !missing.is_empty() {
        let why = format!("the browser test needs {}", missing.join(", "));
        let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
        assert!(!ci, "{why} (.ci/run installs them)");
        eprintln!("skipped: {why}");
        return;
    }
    ensure("smollm2-135m");
    let home = tempfile::tempdir().unwrap();
    let (child, addr) = serve_in(home.path());
    let _server = Server {
        child,
        url: format!("http://{addr}/v1"),
        _home: Some(home),
    };
    let keyed_home = tempfile::tempdir().unwrap();
    let created = autoglm_in(
        keyed_home.path(),
        &[
            "keys",
            "create",
            "--tenant",
            "ui",
            "--scopes",
            "tasks,models",
        ],
    );
    assert!(created.status.success(), "{}", stderr(&created));
    let key = stdout(&created).trim().to_string();
    let (child, keyed_addr) = serve_with(keyed_home.path(), &[]);
    let _keyed = Server {
        child,
        url: format!("http://{keyed_addr}/v1"),
        _home: Some(keyed_home),
    };
    // Next to the binary under test: target/<profile>/ui-screenshots.
    let shots = std::path::Path::new(env!("CARGO_BIN_EXE_autoglm"))
        .parent()
        .unwrap()
        .join("ui-screenshots");
    let mut node = Command::new("node")
        .arg(ui.join("run.mjs"))
        .arg(format!("http://{addr}"))
        .arg(&shots)
        .env("CHROMIUM", &chromium)
        .env("AUTOGLM_UI_KEYED_URL", format!("http://{keyed_addr}"))
        .env("AUTOGLM_UI_KEY", &key)
        .current_dir(&ui)
        .spawn()
        .expect("node starts");
    let t0 = std::time::Instant::now();
    let status = loop {
        if let Some(s) = node.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > std::time::Duration::from_secs(240) {
            let _ = node.kill();
            panic!("the browser test took over 4 minutes");
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(
        status.success(),
        "tests/ui/run.mjs failed (its output is above)"
    );
    eprintln!("screenshots in {}", shots.display());
}
