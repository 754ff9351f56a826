//! Random operation sequences: adds (with shared prefixes, so the prefix cache is exercised),
//! aborts, deadlines, engine-side finishes and steps under random small configurations. After
//! every call the invariants must hold and the fake engine must accept the batch; at the end,
//! with arrivals stopped, every request must finish or be aborted within a bounded number of
//! steps (no starvation, no livelock), leaving every block free or cached-free (no leak).

use std::collections::HashMap;

use proptest::prelude::*;

use super::engine::FakeEngine;
use crate::{Priority, Request, RequestId, SchedError, Scheduler, SchedulerConfig};

#[derive(Clone, Debug)]
enum Op {
    Add {
        family: u32,
        shared: usize,
        own: usize,
        max_new: usize,
        prio: usize,
        deadline: Option<u64>,
    },
    Abort(usize),
    Step {
        finish: Option<usize>,
        advance: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..3u32, 0..24usize, 0..8usize, 1..6usize, 0..3usize,
              prop::option::weighted(0.15, 0..400u64))
            .prop_map(|(family, shared, own, max_new, prio, deadline)| Op::Add {
                family, shared, own, max_new, prio, deadline,
            }),
        1 => (0..64usize).prop_map(Op::Abort),
        5 => (prop::option::weighted(0.2, 0..8usize), 0..30u64)
            .prop_map(|(finish, advance)| Op::Step { finish, advance }),
    ]
}

fn config() -> impl Strategy<Value = SchedulerConfig> {
    (
        1..6usize,
        2..24usize,
        1..6usize,
        1..40usize,
        0..16usize,
        any::<bool>(),
        0..60u64,
    )
        .prop_map(
            |(block_size, num_blocks, max_running, max_step_tokens, max_queue, pc, aging)| {
                SchedulerConfig {
                    block_size,
                    num_blocks,
                    max_running,
                    max_step_tokens,
                    max_queue,
                    prefix_caching: pc,
                    aging_ms_per_class: aging,
                }
            },
        )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Live,
    Finished,
    Aborted,
    Refused,
}

struct World {
    sched: Scheduler,
    engine: FakeEngine,
    cfg: SchedulerConfig,
    now: u64,
    outcomes: HashMap<RequestId, Outcome>,
    order: Vec<RequestId>,
    max_new: HashMap<RequestId, usize>,
    generated: HashMap<RequestId, usize>,
    /// `abort` calls since the last step: cancelled waiting requests no longer count against
    /// `max_queue`, though they wait in the queue until the step reports them.
    aborts_since_step: usize,
}

impl World {
    fn new(cfg: SchedulerConfig) -> Self {
        World {
            sched: Scheduler::new(cfg.clone()),
            engine: FakeEngine::new(&cfg),
            cfg,
            now: 0,
            outcomes: HashMap::new(),
            order: Vec::new(),
            max_new: HashMap::new(),
            generated: HashMap::new(),
            aborts_since_step: 0,
        }
    }

    fn add(&mut self, req: Request) -> Result<(), TestCaseError> {
        let id = req.id;
        let prompt = req.prompt.clone();
        let max_new = req.max_new_tokens;
        let waiting = self.sched.stats().waiting;
        let fits = (prompt.len() + max_new - 1).div_ceil(self.cfg.block_size.max(1))
            <= self.cfg.num_blocks;
        self.order.push(id);
        match self.sched.add(req) {
            Ok(()) => {
                prop_assert!(fits, "accepted a request that can never fit");
                prop_assert!(
                    waiting < self.cfg.max_queue + self.aborts_since_step,
                    "accepted past max_queue"
                );
                self.outcomes.insert(id, Outcome::Live);
                self.max_new.insert(id, max_new);
                self.engine.add(id, &prompt);
            }
            Err(SchedError::PromptTooLong { .. }) => {
                prop_assert!(!fits);
                self.outcomes.insert(id, Outcome::Refused);
            }
            Err(SchedError::Overloaded { retry_after_ms, .. }) => {
                prop_assert!(fits && waiting >= self.cfg.max_queue);
                prop_assert!(retry_after_ms > 0);
                self.outcomes.insert(id, Outcome::Refused);
            }
            Err(e) => prop_assert!(false, "unexpected refusal {e}"),
        }
        Ok(())
    }

    fn step(&mut self, finish: Option<usize>) -> Result<(), TestCaseError> {
        let out = self.sched.schedule(self.now);
        self.aborts_since_step = 0;
        let sampled = self
            .engine
            .run(&out, self.sched.block_manager(), &HashMap::new())
            .map_err(TestCaseError::fail)?;
        for &(id, _) in &out.aborted {
            prop_assert_eq!(
                self.outcomes.insert(id, Outcome::Aborted),
                Some(Outcome::Live)
            );
            self.engine.forget(id);
        }
        for &(id, _) in &sampled {
            *self.generated.entry(id).or_default() += 1;
        }
        // The engine may end any scheduled sequence (end-of-generation, stop string).
        let finished: Vec<RequestId> = finish
            .and_then(|i| out.scheduled.get(i))
            .map(|s| s.id)
            .into_iter()
            .collect();
        let done = self.sched.update(&out, &sampled, &finished);
        for &id in &done {
            prop_assert_eq!(
                self.outcomes.insert(id, Outcome::Finished),
                Some(Outcome::Live)
            );
            self.engine.forget(id);
            let made = self.generated.get(&id).copied().unwrap_or(0);
            prop_assert!(made <= self.max_new[&id], "{id} made {made} tokens");
            if !finished.contains(&id) {
                prop_assert_eq!(made, self.max_new[&id], "{} ended early", id);
            }
        }
        for &id in &finished {
            prop_assert!(done.contains(&id), "engine-finished {id} not reported done");
        }
        self.sched.check_invariants().map_err(TestCaseError::fail)?;
        let live = self
            .outcomes
            .iter()
            .filter(|(_, o)| **o == Outcome::Live)
            .count();
        let s = self.sched.stats();
        prop_assert_eq!(s.waiting + s.running, live);
        prop_assert_eq!(
            s.blocks_used + s.blocks_cached_free + s.blocks_free,
            self.cfg.num_blocks
        );
        Ok(())
    }
}

fn run(cfg: SchedulerConfig, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut w = World::new(cfg);
    let mut next_id: RequestId = 1;
    for op in ops {
        match op {
            Op::Add {
                family,
                shared,
                own,
                max_new,
                prio,
                deadline,
            } => {
                // Prompts of one family share their first `shared` tokens.
                let mut prompt: Vec<u32> = (0..shared as u32).map(|t| family * 1000 + t).collect();
                prompt.extend((0..own as u32).map(|t| 50_000 + next_id as u32 * 100 + t));
                if prompt.is_empty() {
                    prompt.push(family);
                }
                let req = Request {
                    id: next_id,
                    prompt,
                    max_new_tokens: max_new,
                    priority: Priority::ALL[prio],
                    deadline_ms: deadline.map(|d| w.now + d),
                    arrival_ms: w.now,
                };
                next_id += 1;
                w.add(req)?;
            }
            Op::Abort(i) => {
                if !w.order.is_empty() {
                    let id = w.order[i % w.order.len()];
                    w.sched.abort(id);
                    w.aborts_since_step += 1;
                }
            }
            Op::Step { finish, advance } => {
                w.step(finish)?;
                w.now += advance;
            }
        }
    }

    // Drain: with no arrivals every request must end, within a bound that only a livelock (or
    // starvation) could exceed.
    let total_work: usize = w
        .order
        .iter()
        .map(|id| w.max_new.get(id).copied().unwrap_or(0) + 40)
        .sum();
    let limit = 50 * total_work + 100;
    let mut steps = 0;
    while !w.sched.is_idle() {
        prop_assert!(steps < limit, "not idle after {steps} steps");
        w.step(None)?;
        w.now += 7;
        steps += 1;
    }
    for (id, o) in &w.outcomes {
        prop_assert!(*o != Outcome::Live, "request {id} never ended");
    }
    let s = w.sched.stats();
    prop_assert_eq!(s.blocks_used, 0, "blocks leaked");
    prop_assert_eq!(s.blocks_cached_free + s.blocks_free, w.cfg.num_blocks);
    if !w.cfg.prefix_caching {
        prop_assert_eq!(s.blocks_cached_free, 0);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn random_operations_keep_invariants_and_end(
        cfg in config(),
        ops in prop::collection::vec(op(), 0..120),
    ) {
        run(cfg, ops)?;
    }
}

/// Sustained interactive load on a one-sequence server: a background request submitted first
/// must still run, after about two ageing periods, while interactive arrivals never stop.
#[test]
fn background_is_not_starved_by_sustained_interactive_load() {
    let cfg = SchedulerConfig {
        block_size: 4,
        num_blocks: 64,
        max_running: 1,
        max_step_tokens: 8,
        max_queue: 1000,
        prefix_caching: false,
        aging_ms_per_class: 200,
    };
    let mut w = World::new(cfg);
    let req = |id, priority, now| Request {
        id,
        prompt: vec![1, 2, 3],
        max_new_tokens: 2,
        priority,
        deadline_ms: None,
        arrival_ms: now,
    };
    w.add(req(1, Priority::Background, 0)).unwrap();
    let mut background_done_at = None;
    for step in 0..500u64 {
        // Two interactive arrivals per step: more than the server can serve, so the queue of
        // interactive work never empties.
        w.add(req(1000 + 2 * step, Priority::Interactive, w.now))
            .unwrap();
        w.add(req(1001 + 2 * step, Priority::Interactive, w.now))
            .unwrap();
        w.step(None).unwrap();
        if background_done_at.is_none() && w.outcomes[&1] == Outcome::Finished {
            background_done_at = Some(w.now);
        }
        w.now += 10;
    }
    let at = background_done_at.expect("background request starved");
    assert!((400..=450).contains(&at), "background finished at {at} ms");
    assert!(
        w.sched.stats().waiting > 100,
        "interactive load was sustained"
    );
}
