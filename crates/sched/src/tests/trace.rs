//! Golden traces: scenarios in `testdata/*.txt`, each a list of events whose rendering is
//! compared with the expected text below it. Run with `BLESS=1` to rewrite the expectations after
//! an intended change (then read the diff).
//!
//! File format (like CockroachDB's datadriven tests): a case is comment lines (`#`), command
//! lines, a `----` line, then the expected output up to the next blank line.
//!
//! Commands (names stand for request ids; time starts at 0):
//!
//! - `config key=value ...` — first, optional: `block_size`, `num_blocks`, `max_running`,
//!   `max_step_tokens`, `max_queue`, `prefix_caching` (on/off), `aging_ms_per_class`, and
//!   `step_ms` (how far the clock moves after each step, default 10).
//! - `add NAME prompt=SPEC max_new=N [prio=interactive|batch|background] [deadline=MS]` — arrival
//!   is the current time; SPEC is comma-separated tokens or `a..b` ranges. Prints only refusals.
//! - `abort NAME`, `time +MS` / `time MS`.
//! - `budget decoding=N` — the step budget while some sequence decodes.
//! - `step [finish=a,b] [sample=a:7] [no-update]` — schedule, run the fake engine (which checks
//!   the batch against its own KV contents), update. `finish` reports requests ended by the
//!   engine; `no-update` drops the step on the floor (the engine never reports back).
//! - `steps N`, `run` (step until idle, at most 1000 steps).
//! - `repeat N: cmd; cmd` — `{i}` in the commands becomes the iteration number.
//! - `stats`, `blocks` (in use with their reference counts, cached-free in eviction order, free).
//!
//! A step renders as
//! `step 3 t=20: a decode@37 [0-2] | b prefill 16..32 (cached 16) [3,4] | preempted: - |
//! aborted: - | done: -`: decodes with their position, prefill chunks with their range and any
//! prefix-cache hit, each with its block table (runs of three or more as `x-y`).

use std::collections::HashMap;
use std::fmt::Write;

use super::engine::FakeEngine;
use crate::blocks::BlockState;
use crate::{AbortReason, Priority, Request, RequestId, Scheduler, SchedulerConfig, StepKind};

fn default_config() -> SchedulerConfig {
    SchedulerConfig {
        block_size: 4,
        num_blocks: 16,
        max_running: 4,
        max_step_tokens: 16,
        max_queue: 16,
        prefix_caching: true,
        aging_ms_per_class: 1000,
    }
}

struct Trace {
    sched: Scheduler,
    engine: FakeEngine,
    now: u64,
    step_ms: u64,
    ids: HashMap<String, RequestId>,
    names: HashMap<RequestId, String>,
    out: String,
}

fn kv(args: &[&str]) -> Result<HashMap<String, String>, String> {
    args.iter()
        .map(|a| {
            a.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| format!("expected key=value, got {a:?}"))
        })
        .collect()
}

fn num<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.parse().map_err(|_| format!("not a number: {s:?}"))
}

fn parse_tokens(spec: &str) -> Result<Vec<u32>, String> {
    let mut v = Vec::new();
    for part in spec.split(',') {
        match part.split_once("..") {
            Some((a, b)) => v.extend(num::<u32>(a)?..num::<u32>(b)?),
            None => v.push(num(part)?),
        }
    }
    Ok(v)
}

/// `0,1,2,3,7,9` as `0-3,7,9`.
fn ranges(blocks: impl IntoIterator<Item = u32>) -> String {
    let v: Vec<u32> = blocks.into_iter().collect();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        if j >= i + 2 {
            parts.push(format!("{}-{}", v[i], v[j]));
        } else {
            parts.extend(v[i..=j].iter().map(u32::to_string));
        }
        i = j + 1;
    }
    parts.join(",")
}

impl Trace {
    fn new(config: Option<&[&str]>) -> Result<Trace, String> {
        let mut cfg = default_config();
        let mut step_ms = 10;
        for (k, v) in kv(config.unwrap_or(&[]))? {
            match k.as_str() {
                "block_size" => cfg.block_size = num(&v)?,
                "num_blocks" => cfg.num_blocks = num(&v)?,
                "max_running" => cfg.max_running = num(&v)?,
                "max_step_tokens" => cfg.max_step_tokens = num(&v)?,
                "max_queue" => cfg.max_queue = num(&v)?,
                "prefix_caching" => cfg.prefix_caching = v == "on",
                "aging_ms_per_class" => cfg.aging_ms_per_class = num(&v)?,
                "step_ms" => step_ms = num(&v)?,
                _ => return Err(format!("unknown config key {k}")),
            }
        }
        Ok(Trace {
            engine: FakeEngine::new(&cfg),
            sched: Scheduler::new(cfg),
            now: 0,
            step_ms,
            ids: HashMap::new(),
            names: HashMap::new(),
            out: String::new(),
        })
    }

    fn name(&self, id: RequestId) -> &str {
        &self.names[&id]
    }

    fn id(&self, name: &str) -> Result<RequestId, String> {
        self.ids
            .get(name)
            .copied()
            .ok_or_else(|| format!("unknown request {name}"))
    }

    fn command(&mut self, line: &str) -> Result<(), String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some((&cmd, args)) = words.split_first() else {
            return Ok(());
        };
        match cmd {
            "add" => self.add(args),
            "budget" => {
                let kv = kv(args)?;
                let n = kv.get("decoding").ok_or("budget needs decoding=N")?;
                self.sched.set_decoding_budget(num(n)?);
                Ok(())
            }
            "abort" => {
                for name in args {
                    let id = self.id(name)?;
                    self.sched.abort(id);
                }
                Ok(())
            }
            "time" => {
                let a = args.first().ok_or("time needs a value")?;
                match a.strip_prefix('+') {
                    Some(d) => self.now += num::<u64>(d)?,
                    None => self.now = num(a)?,
                }
                Ok(())
            }
            "step" => self.step(args).map(|_| ()),
            "steps" => {
                let n: usize = num(args.first().ok_or("steps needs a count")?)?;
                for _ in 0..n {
                    self.step(&[])?;
                }
                Ok(())
            }
            "run" => {
                for _ in 0..1000 {
                    if self.sched.is_idle() {
                        return Ok(());
                    }
                    self.step(&[])?;
                }
                Err("still busy after 1000 steps".into())
            }
            "repeat" => {
                let rest = line.trim_start().strip_prefix("repeat").unwrap_or("");
                let (n, body) = rest.split_once(':').ok_or("repeat N: cmd; cmd")?;
                let n: usize = num(n.trim())?;
                for i in 0..n {
                    for c in body.split(';') {
                        self.command(&c.replace("{i}", &i.to_string()))?;
                    }
                }
                Ok(())
            }
            "stats" => {
                let s = self.sched.stats();
                writeln!(
                    self.out,
                    "stats: waiting={} running={} blocks used={} cached={} free={} | prefix \
                     lookups={} tokens={} hits={} | evictions={} preemptions={} finished={} \
                     aborted={} refused={}",
                    s.waiting,
                    s.running,
                    s.blocks_used,
                    s.blocks_cached_free,
                    s.blocks_free,
                    s.prefix_lookups,
                    s.prefix_lookup_tokens,
                    s.prefix_hit_tokens,
                    s.evictions,
                    s.preemptions,
                    s.finished,
                    s.aborted,
                    s.refused
                )
                .unwrap();
                Ok(())
            }
            "blocks" => {
                let bm = self.sched.block_manager();
                let mut used = Vec::new();
                let mut free = Vec::new();
                for b in 0..bm.total() as u32 {
                    match bm.state(b) {
                        BlockState::InUse { refs: 1 } => used.push(b.to_string()),
                        BlockState::InUse { refs } => used.push(format!("{b}x{refs}")),
                        BlockState::Free => free.push(b),
                        BlockState::CachedFree => {}
                    }
                }
                let dash = |s: String| if s.is_empty() { "-".to_string() } else { s };
                writeln!(
                    self.out,
                    "blocks: in use {} | cached {} | free {}",
                    dash(used.join(",")),
                    dash(ranges(bm.lru_order())),
                    dash(ranges(free))
                )
                .unwrap();
                Ok(())
            }
            _ => Err(format!("unknown command {cmd}")),
        }
    }

    fn add(&mut self, args: &[&str]) -> Result<(), String> {
        let (&name, rest) = args.split_first().ok_or("add needs a name")?;
        let opts = kv(rest)?;
        let prompt = parse_tokens(opts.get("prompt").ok_or("add needs prompt=")?)?;
        let priority = match opts.get("prio").map(String::as_str) {
            None | Some("interactive") => Priority::Interactive,
            Some("batch") => Priority::Batch,
            Some("background") => Priority::Background,
            Some(p) => return Err(format!("unknown priority {p}")),
        };
        // Reusing a live name is a test of DuplicateId; a finished name may be reused.
        let id = match self.ids.get(name) {
            Some(&id) => id,
            None => self.ids.len() as RequestId + 1,
        };
        let req = Request {
            id,
            prompt: prompt.clone(),
            max_new_tokens: num(opts.get("max_new").map_or("1", String::as_str))?,
            priority,
            deadline_ms: opts.get("deadline").map(|d| num(d)).transpose()?,
            arrival_ms: self.now,
        };
        match self.sched.add(req) {
            Ok(()) => {
                self.ids.insert(name.to_string(), id);
                self.names.insert(id, name.to_string());
                self.engine.add(id, &prompt);
            }
            Err(e) => writeln!(self.out, "add {name}: refused: {e}").unwrap(),
        }
        Ok(())
    }

    fn step(&mut self, args: &[&str]) -> Result<(), String> {
        let mut finish = Vec::new();
        let mut overrides = HashMap::new();
        let mut update = true;
        for a in args {
            if *a == "no-update" {
                update = false;
            } else if let Some(list) = a.strip_prefix("finish=") {
                for n in list.split(',') {
                    finish.push(self.id(n)?);
                }
            } else if let Some(list) = a.strip_prefix("sample=") {
                for pair in list.split(',') {
                    let (n, t) = pair.split_once(':').ok_or("sample=name:token")?;
                    overrides.insert(self.id(n)?, num(t)?);
                }
            } else {
                return Err(format!("unknown step argument {a}"));
            }
        }

        let out = self.sched.schedule(self.now);
        let mut line = format!("step {} t={}:", out.step, self.now);
        for s in &out.scheduled {
            let end = s.start_pos + s.tokens.len();
            let what = match s.kind {
                StepKind::Decode => format!("decode@{}", s.start_pos),
                StepKind::Prefill if s.cached_prompt_tokens > 0 => {
                    format!(
                        "prefill {}..{end} (cached {})",
                        s.start_pos, s.cached_prompt_tokens
                    )
                }
                StepKind::Prefill => format!("prefill {}..{end}", s.start_pos),
            };
            let table = ranges(s.block_table.iter().copied());
            write!(line, " {} {what} [{table}] |", self.name(s.id)).unwrap();
        }
        if out.scheduled.is_empty() {
            line.push_str(" idle |");
        }
        let list = |v: Vec<String>| {
            if v.is_empty() {
                "-".to_string()
            } else {
                v.join(",")
            }
        };
        let preempted = out.preempted.iter().map(|&id| self.name(id).to_string());
        let aborted = out.aborted.iter().map(|&(id, why)| {
            let why = match why {
                AbortReason::Cancelled => "cancelled",
                AbortReason::DeadlineExceeded => "deadline",
            };
            format!("{} ({why})", self.name(id))
        });
        write!(
            line,
            " preempted: {} | aborted: {}",
            list(preempted.collect()),
            list(aborted.collect())
        )
        .unwrap();

        let sampled = self
            .engine
            .run(&out, self.sched.block_manager(), &overrides)
            .map_err(|e| format!("{line}\nfake engine: {e}"))?;
        for &(id, _) in &out.aborted {
            self.engine.forget(id);
        }
        if update {
            let done = self.sched.update(&out, &sampled, &finish);
            for &id in &done {
                self.engine.forget(id);
            }
            let done = done.iter().map(|&id| self.name(id).to_string()).collect();
            write!(line, " | done: {}", list(done)).unwrap();
        } else {
            // The engine's view must forget the step too: it never happened.
            for (id, _) in &sampled {
                self.engine.unsample(*id);
            }
            line.push_str(" | no update");
        }
        self.sched
            .check_invariants()
            .map_err(|e| format!("{line}\ninvariant: {e}"))?;
        self.out.push_str(&line);
        self.out.push('\n');
        self.now += self.step_ms;
        Ok(())
    }
}

/// Runs one case's commands and returns its rendering.
fn run_case(commands: &[&str]) -> String {
    let mut lines = commands
        .iter()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .peekable();
    let config: Option<Vec<&str>> = lines
        .next_if(|l| l.starts_with("config"))
        .map(|l| l.split_whitespace().skip(1).collect());
    let mut t = match Trace::new(config.as_deref()) {
        Ok(t) => t,
        Err(e) => return format!("error: {e}\n"),
    };
    for line in lines {
        if let Err(e) = t.command(line) {
            writeln!(t.out, "error in `{line}`: {e}").unwrap();
            break;
        }
    }
    t.out
}

/// Runs every case of `testdata/<file>` and compares (or with `BLESS=1` rewrites) the output.
fn check_file(file: &str) {
    let path = format!("{}/testdata/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let bless = std::env::var_os("BLESS").is_some();
    let lines: Vec<&str> = text.lines().collect();
    let mut rewritten = String::new();
    let mut failures = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let start = i;
        while i < lines.len() && lines[i] != "----" {
            i += 1;
        }
        let commands = &lines[start..i];
        if i == lines.len() {
            // Trailing comments or blank lines without a case.
            assert!(
                commands
                    .iter()
                    .all(|l| l.trim().is_empty() || l.starts_with('#')),
                "{path}: commands at line {} have no ---- section",
                start + 1
            );
            for l in commands {
                writeln!(rewritten, "{l}").unwrap();
            }
            break;
        }
        i += 1;
        let exp_start = i;
        while i < lines.len() && !lines[i].is_empty() {
            i += 1;
        }
        let expected = lines[exp_start..i].join("\n");
        let actual = run_case(commands);
        let actual = actual.trim_end();
        if actual != expected {
            failures.push(format!(
                "{path}:{}\n--- expected\n{expected}\n--- actual\n{actual}\n",
                start + 1
            ));
        }
        for l in commands {
            writeln!(rewritten, "{l}").unwrap();
        }
        writeln!(rewritten, "----\n{actual}").unwrap();
        // Keep the blank separator lines as they were.
        while i < lines.len() && lines[i].is_empty() {
            rewritten.push('\n');
            i += 1;
        }
    }
    if bless {
        if rewritten != text {
            std::fs::write(&path, rewritten).unwrap();
        }
    } else if !failures.is_empty() {
        panic!(
            "{} case(s) differ (BLESS=1 rewrites the file):\n\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
}

#[test]
fn batching() {
    check_file("batching.txt");
}

#[test]
fn prefix_cache() {
    check_file("prefix_cache.txt");
}

#[test]
fn preemption() {
    check_file("preemption.txt");
}

#[test]
fn priorities() {
    check_file("priorities.txt");
}

#[test]
fn admission() {
    check_file("admission.txt");
}

#[test]
fn cancellation() {
    check_file("cancellation.txt");
}

/// The rendering itself, pinned outside any golden file (the goldens were checked to fail when
/// the scheduler is broken on purpose: hits not capped, victims already scheduled, leaked blocks).
#[test]
fn one_step_renders_exactly() {
    let out = run_case(&["add a prompt=0..3 max_new=1", "step"]);
    assert_eq!(
        out,
        "step 1 t=0: a prefill 0..3 [0] | preempted: - | aborted: - | done: a\n"
    );
    assert!(!out.contains("prefill 0..4"));
}
