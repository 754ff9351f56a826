//! The order in which waiting tasks get a worker: by priority class with ageing, so that
//! interactive work goes first but background work is never starved.
//!
//! Each task's turn is the time it was queued plus its class's handicap — nothing for
//! interactive, one `step` for batch, two for background — and the earliest turn goes first
//! (first queued on a tie). Equivalently, a waiting task's effective priority rises by one
//! class for every `step` it waits: a background task queued more than two steps before an
//! interactive one goes before it, however many interactive tasks keep arriving. The turn is
//! fixed when the task is queued, so picking needs no clock.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::runner::TaskPriority;

pub(crate) struct TaskQueue {
    /// (turn in ms, arrival number) → task id.
    by_turn: BTreeMap<(i64, u64), String>,
    arrivals: u64,
    step_ms: i64,
}

impl TaskQueue {
    /// `step`: how much waiting is worth one priority class.
    pub(crate) fn new(step: Duration) -> TaskQueue {
        TaskQueue {
            by_turn: BTreeMap::new(),
            arrivals: 0,
            step_ms: i64::try_from(step.as_millis()).unwrap_or(i64::MAX),
        }
    }

    /// Queues `id`, which started waiting at `queued_ms` (Unix milliseconds: a task recovered
    /// at restart keeps its age).
    pub(crate) fn push(&mut self, id: String, priority: TaskPriority, queued_ms: i64) {
        let handicap = self.step_ms.saturating_mul(priority as i64);
        self.arrivals += 1;
        self.by_turn
            .insert((queued_ms.saturating_add(handicap), self.arrivals), id);
    }

    pub(crate) fn pop(&mut self) -> Option<String> {
        self.by_turn.pop_first().map(|(_, id)| id)
    }

    /// Takes `id` out of the queue; false when it was not waiting.
    pub(crate) fn remove(&mut self, id: &str) -> bool {
        let before = self.by_turn.len();
        self.by_turn.retain(|_, t| t != id);
        self.by_turn.len() != before
    }

    pub(crate) fn len(&self) -> usize {
        self.by_turn.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskPriority::{Background as G, Batch as B, Interactive as I};

    enum Op {
        /// At this time (seconds), a task of this class is queued.
        Submit(f64, &'static str, TaskPriority),
        /// A worker frees and takes this task (`None`: the queue is empty).
        Pick(Option<&'static str>),
        /// The task is cancelled; whether it was still waiting.
        Cancel(&'static str, bool),
    }
    use Op::{Cancel, Pick, Submit};

    /// Scripted submissions over time and the picks they must lead to, with a 10 s step.
    #[test]
    fn picks_by_class_with_ageing() {
        let cases: &[(&str, &[Op])] = &[
            (
                "classes first, then first come first served",
                &[
                    Submit(0.0, "g1", G),
                    Submit(0.1, "b1", B),
                    Submit(0.2, "i1", I),
                    Submit(0.3, "b2", B),
                    Submit(0.4, "i2", I),
                    Pick(Some("i1")),
                    Pick(Some("i2")),
                    Pick(Some("b1")),
                    Pick(Some("b2")),
                    Pick(Some("g1")),
                    Pick(None),
                ],
            ),
            (
                "a background task that waited two steps beats new interactive work",
                &[
                    Submit(0.0, "g", G),
                    Submit(19.0, "i1", I),
                    Submit(21.0, "i2", I),
                    Submit(22.0, "i3", I),
                    Pick(Some("i1")),
                    Pick(Some("g")),
                    Pick(Some("i2")),
                    Pick(Some("i3")),
                ],
            ),
            (
                "the same wait: batch before background, later interactive work between them",
                &[
                    Submit(0.0, "g", G),
                    Submit(0.0, "b", B),
                    Submit(15.0, "i", I),
                    Pick(Some("b")),
                    Pick(Some("i")),
                    Pick(Some("g")),
                ],
            ),
            (
                "a steady stream of interactive tasks cannot starve background work",
                &[
                    Submit(0.0, "g", G),
                    Submit(5.0, "i5", I),
                    Submit(10.0, "i10", I),
                    Submit(15.0, "i15", I),
                    Submit(20.0, "i20", I),
                    Submit(25.0, "i25", I),
                    Pick(Some("i5")),
                    Pick(Some("i10")),
                    Pick(Some("i15")),
                    Pick(Some("g")),
                    Pick(Some("i20")),
                ],
            ),
            (
                "ties go to the first queued; cancelled tasks are skipped",
                &[
                    Submit(10.0, "b", B),
                    Submit(20.0, "i", I),
                    Submit(20.0, "i2", I),
                    Cancel("i", true),
                    Pick(Some("b")),
                    Pick(Some("i2")),
                    Cancel("i2", false),
                    Pick(None),
                ],
            ),
        ];
        for (name, ops) in cases {
            let mut q = TaskQueue::new(Duration::from_secs(10));
            for (n, op) in ops.iter().enumerate() {
                match op {
                    Submit(t, id, p) => q.push(id.to_string(), *p, (t * 1000.0) as i64),
                    Pick(want) => {
                        assert_eq!(q.pop().as_deref(), *want, "{name}: op {n}");
                    }
                    Cancel(id, waiting) => {
                        assert_eq!(q.remove(id), *waiting, "{name}: op {n}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_huge_step_is_strict_priority_without_overflow() {
        let mut q = TaskQueue::new(Duration::MAX);
        q.push("g".into(), G, 0);
        q.push("i".into(), I, i64::MAX - 1);
        assert_eq!(q.pop().as_deref(), Some("i"));
        assert_eq!(q.pop().as_deref(), Some("g"));
    }
}
