//! Read-only views as JSON, made for the web UI and open to any client: `GET /v1/engine` (the
//! serving engine's load now and over the last minutes; `models` scope) and `GET /v1/tools`
//! (the tools a task can be given; `tasks` scope).
//!
//! `/metrics` says the same things in Prometheus' terms, but a page would have to parse that
//! text and could only show what happened while it was open; here [`LoadHistory`] keeps a
//! sample of the engine's counters every [`SAMPLE_EVERY`] for [`KEPT`] samples, so the page
//! draws the last minutes at once. Rates come from counter differences between samples, so an
//! idle engine reads 0 tokens/s (the engine's own tokens/s gauge keeps its last busy value).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use autoglm_engine::EngineStats;
use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::AppState;
use crate::auth::{Principal, Scope};
use crate::error::ApiError;
#[allow(unused_imports)] // named by the `utoipa::path` attributes
use crate::schemas::{EngineLoad, ToolList};

/// How often the engine is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// Samples kept: five minutes.
pub const KEPT: usize = 150;

/// One reading of the engine's counters and gauges.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sample {
    at_ms: u64,
    generated: u64,
    prompt: u64,
    lookup: u64,
    hit: u64,
    running: usize,
    waiting: usize,
    blocks_used: usize,
}

impl Sample {
    fn of(at_ms: u64, s: &EngineStats) -> Sample {
        Sample {
            at_ms,
            generated: s.generated_tokens,
            prompt: s.prompt_tokens,
            lookup: s.prefix_lookup_tokens,
            hit: s.prefix_hit_tokens,
            running: s.running,
            waiting: s.waiting,
            blocks_used: s.blocks_used,
        }
    }
}

/// The engine's recent samples, oldest first.
#[derive(Default)]
pub(crate) struct LoadHistory {
    samples: Mutex<VecDeque<Sample>>,
    sampling: AtomicBool,
}

impl LoadHistory {
    fn push(&self, s: Sample) {
        let mut q = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        q.push_back(s);
        while q.len() > KEPT {
            q.pop_front();
        }
    }

    /// One point per interval between consecutive samples: rates over the interval, gauges
    /// at its end.
    fn series(&self) -> Vec<Value> {
        let q = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        q.iter()
            .zip(q.iter().skip(1))
            .filter(|(a, b)| b.at_ms > a.at_ms)
            .map(|(a, b)| {
                let secs = (b.at_ms - a.at_ms) as f64 / 1000.0;
                let rate = |x: u64, y: u64| round1(y.saturating_sub(x) as f64 / secs);
                let looked = b.lookup.saturating_sub(a.lookup);
                let hit_rate = (looked > 0)
                    .then(|| round3(b.hit.saturating_sub(a.hit) as f64 / looked as f64));
                json!({
                    "at": b.at_ms,
                    "tokens_per_second": rate(a.generated, b.generated),
                    "prompt_tokens_per_second": rate(a.prompt, b.prompt),
                    "prefix_cache_hit_rate": hit_rate,
                    "running_sequences": b.running,
                    "queue_depth": b.waiting,
                    "kv_blocks_used": b.blocks_used,
                })
            })
            .collect()
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Starts sampling the engine on the current runtime (once; later calls do nothing). The
/// sampler holds the state weakly and stops when it is dropped.
pub(crate) fn start_sampler(state: &Arc<AppState>) {
    if state.load.sampling.swap(true, Ordering::SeqCst) {
        return;
    }
    let weak: Weak<AppState> = Arc::downgrade(state);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(st) = weak.upgrade() else { return };
            st.load.push(Sample::of(now_ms(), &st.engine.stats()));
        }
    });
}

/// `GET /v1/engine`.
#[utoipa::path(get, path = "/v1/engine", tag = "service", operation_id = "getEngineLoad",
    responses((status = 200, description = "The engine's load now and over the last minutes",
        body = EngineLoad)))]
pub(crate) async fn engine(
    State(st): State<Arc<AppState>>,
    p: Principal,
) -> Result<Json<Value>, ApiError> {
    p.require(Scope::Models)?;
    let s = st.engine.stats();
    let share = |part: u64, whole: u64| {
        if whole == 0 {
            0.0
        } else {
            round3(part as f64 / whole as f64)
        }
    };
    Ok(Json(json!({
        "object": "engine",
        "model": st.model_name,
        "context_length": st.context_length,
        "requests_in_flight": s.in_flight,
        "queue_depth": s.waiting,
        "running_sequences": s.running,
        "batch_size": s.last_batch,
        "kv_blocks": {"total": s.blocks_total, "used": s.blocks_used, "cached": s.blocks_cached},
        "kv_cache_use": share(s.blocks_used as u64, s.blocks_total as u64),
        "prefix_cache": {"lookup_tokens": s.prefix_lookup_tokens,
                         "hit_tokens": s.prefix_hit_tokens,
                         "hit_rate": share(s.prefix_hit_tokens, s.prefix_lookup_tokens)},
        "tokens_per_second": round1(s.tokens_per_second),
        "generated_tokens": s.generated_tokens,
        "prompt_tokens": s.prompt_tokens,
        "engine_steps": s.steps,
        "preemptions": s.preemptions,
        "requests_refused": s.refused,
        "tasks": {"queued": st.tasks.queued(),
                  "running": st.tasks.metrics.running.load(Ordering::Relaxed)},
        "history": {"interval_s": SAMPLE_EVERY.as_secs(), "points": st.load.series()},
    })))
}

/// `GET /v1/tools`: names, in the order tasks are offered them.
#[utoipa::path(get, path = "/v1/tools", tag = "tasks", operation_id = "listTools",
    responses((status = 200, description = "The tools a task can be given", body = ToolList)))]
pub(crate) async fn tools(
    State(st): State<Arc<AppState>>,
    p: Principal,
) -> Result<Json<Value>, ApiError> {
    p.require(Scope::Tasks)?;
    let data: Vec<Value> = st
        .tasks
        .agent
        .tool_names()
        .into_iter()
        .map(|name| json!({"object": "tool", "name": name}))
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(at_ms: u64, generated: u64, lookup: u64, hit: u64) -> Sample {
        Sample {
            at_ms,
            generated,
            prompt: generated * 2,
            lookup,
            hit,
            running: (generated % 7) as usize,
            waiting: 0,
            blocks_used: 3,
        }
    }

    #[test]
    fn rates_come_from_counter_differences() {
        let h = LoadHistory::default();
        assert!(h.series().is_empty());
        h.push(at(10_000, 100, 0, 0));
        // One sample is no interval yet.
        assert!(h.series().is_empty());
        h.push(at(12_000, 150, 40, 10));
        h.push(at(14_000, 150, 40, 10));
        // A sample at the same instant (a clock that did not move) is no interval.
        h.push(at(14_000, 150, 40, 10));
        h.push(at(16_000, 180, 140, 100));
        let s = h.series();
        let got: Vec<(u64, f64, f64, Option<f64>)> = s
            .iter()
            .map(|p| {
                (
                    p["at"].as_u64().unwrap(),
                    p["tokens_per_second"].as_f64().unwrap(),
                    p["prompt_tokens_per_second"].as_f64().unwrap(),
                    p["prefix_cache_hit_rate"].as_f64(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (12_000, 25.0, 50.0, Some(0.25)),
                // Idle: zero, and no hit rate without lookups.
                (14_000, 0.0, 0.0, None),
                (16_000, 15.0, 30.0, Some(0.9)),
            ]
        );
        assert_eq!(s[2]["running_sequences"], 180 % 7);
    }

    #[test]
    fn only_the_last_samples_are_kept() {
        let h = LoadHistory::default();
        for i in 0..(KEPT as u64 + 40) {
            h.push(at(i * 2000, i * 10, 0, 0));
        }
        let s = h.series();
        assert_eq!(s.len(), KEPT - 1);
        assert_eq!(s[0]["at"], (40 + 1) * 2000);
        assert_eq!(s.last().unwrap()["at"], (KEPT as u64 + 39) * 2000);
        assert!(s.iter().all(|p| p["tokens_per_second"] == 5.0));
    }
}
