//! The task's journal: every step record is appended to the store *before* the agent acts on
//! it, and read back on resume so that completed model calls and tool calls are replayed from
//! their records instead of being made again.
//!
//! Records are keyed by where they happen in the task ("s2/a0/r1/model": subtask 2, attempt 0,
//! round 1), not by arrival order, so subtasks running concurrently replay correctly whatever
//! order their records were written in.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use autoglm_store::Store;
use serde_json::Value;
use tokio::sync::broadcast;

use crate::{AgentError, Event, StepKind};

pub(crate) struct Journal {
    store: Arc<Store>,
    pub(crate) task_id: String,
    /// Completed records by key and kind.
    done: Mutex<HashMap<(String, StepKind), Value>>,
    events: broadcast::Sender<Event>,
}

impl Journal {
    pub(crate) fn load(
        store: Arc<Store>,
        task_id: &str,
        events: broadcast::Sender<Event>,
    ) -> Result<Journal, AgentError> {
        let mut done = HashMap::new();
        for r in store.records(task_id)? {
            let (Some(kind), Some(key)) = (
                StepKind::parse(&r.kind),
                r.payload.get("key").and_then(Value::as_str),
            ) else {
                continue;
            };
            done.insert((key.to_string(), kind), r.payload);
        }
        Ok(Journal {
            store,
            task_id: task_id.to_string(),
            done: Mutex::new(done),
            events,
        })
    }

    /// The payload of a completed record, if this run (or an earlier one) wrote it.
    pub(crate) fn recorded(&self, key: &str, kind: StepKind) -> Option<Value> {
        self.lock().get(&(key.to_string(), kind)).cloned()
    }

    /// Appends `payload` (which carries its "key") under `kind`, committed before returning,
    /// and announces it on the event stream.
    pub(crate) fn append(&self, kind: StepKind, payload: Value) -> Result<(), AgentError> {
        let seq = self.store.append(&self.task_id, kind.as_str(), &payload)?;
        if let Some(key) = payload.get("key").and_then(Value::as_str) {
            self.lock().insert((key.to_string(), kind), payload.clone());
        }
        // Nobody listening is fine.
        let _ = self.events.send(Event {
            task_id: self.task_id.clone(),
            seq,
            kind,
            payload,
        });
        Ok(())
    }

    /// Like [`Journal::recorded`], but reads the store first: records appended by someone
    /// else (an approval decided through the server) are picked up.
    pub(crate) fn reload(&self, key: &str, kind: StepKind) -> Result<Option<Value>, AgentError> {
        if let Some(v) = self.recorded(key, kind) {
            return Ok(Some(v));
        }
        let found = self
            .store
            .records(&self.task_id)?
            .into_iter()
            .find(|r| r.kind == kind.as_str() && r.payload["key"].as_str() == Some(key));
        Ok(found.map(|r| {
            self.lock()
                .insert((key.to_string(), kind), r.payload.clone());
            r.payload
        }))
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, StepKind), Value>> {
        self.done.lock().unwrap_or_else(|p| p.into_inner())
    }
}
