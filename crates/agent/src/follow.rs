//! Following one task's journal: the records already written, then the ones still to come,
//! each exactly once and in order, until the final record.
//!
//! The live part comes from the agent's broadcast of appended records, subscribed to *before*
//! the journal is read, so nothing written in between is lost; a record at or below the last
//! one sent is a duplicate and skipped. Whenever the broadcast cannot be trusted to be
//! complete — a gap in sequence numbers, a lagging receiver, or records written by another
//! process sharing the database — the journal is read again after the last record sent, so
//! the store stays the single source of truth.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use autoglm_store::Store;
use futures_util::Stream;
use tokio::sync::broadcast::{self, error::RecvError};

use crate::{AgentError, Event, StepKind, UNFINISHED};

/// How often the journal is read again without news on the broadcast (records appended by
/// another process never reach it).
const POLL: Duration = Duration::from_secs(1);

struct Follow {
    store: Arc<Store>,
    rx: broadcast::Receiver<Event>,
    /// The broadcast closed (the agent is gone): only polling is left.
    closed: bool,
    task_id: String,
    last: i64,
    pending: VecDeque<Event>,
    /// The journal must be read before waiting on the broadcast.
    reread: bool,
    /// The final record is sent (or was before `after`): end once `pending` is empty.
    ended: bool,
}

impl Follow {
    /// Queues every record after `last`; notes whether the task has ended.
    fn read_journal(&mut self) -> Result<(), AgentError> {
        let records = self.store.records(&self.task_id)?;
        let mut has_final = false;
        for r in records {
            has_final |= r.kind == StepKind::Final.as_str();
            if r.seq <= self.last {
                continue;
            }
            // Kinds this build does not know are skipped rather than invented.
            let Some(kind) = StepKind::parse(&r.kind) else {
                continue;
            };
            self.pending.push_back(Event {
                task_id: self.task_id.clone(),
                seq: r.seq,
                kind,
                payload: r.payload,
            });
        }
        if !has_final {
            // A task that ended without a final record (an old database) must not be
            // followed forever.
            let t = self.store.task(&self.task_id)?;
            has_final = !UNFINISHED.contains(&t.status.as_str());
        }
        self.ended |= has_final;
        Ok(())
    }
}

pub(crate) fn follow(
    store: Arc<Store>,
    rx: broadcast::Receiver<Event>,
    task_id: String,
    after: i64,
) -> impl Stream<Item = Result<Event, AgentError>> + Send + 'static {
    let st = Follow {
        store,
        rx,
        closed: false,
        task_id,
        last: after,
        pending: VecDeque::new(),
        reread: true,
        ended: false,
    };
    futures_util::stream::unfold(Some(st), |st| async move {
        let mut st = st?;
        loop {
            if let Some(e) = st.pending.pop_front() {
                if e.seq <= st.last {
                    continue;
                }
                st.last = e.seq;
                return Some((Ok(e), Some(st)));
            }
            if st.ended {
                return None;
            }
            if st.reread {
                st.reread = false;
                if let Err(e) = st.read_journal() {
                    return Some((Err(e), None));
                }
                continue;
            }
            if st.closed {
                tokio::time::sleep(POLL).await;
                st.reread = true;
                continue;
            }
            tokio::select! {
                r = st.rx.recv() => match r {
                    Ok(e) if e.task_id != st.task_id || e.seq <= st.last => {}
                    Ok(e) if e.seq == st.last + 1 => {
                        st.ended |= e.kind == StepKind::Final;
                        st.pending.push_back(e);
                    }
                    // A gap: something was appended that the broadcast did not bring.
                    Ok(_) | Err(RecvError::Lagged(_)) => st.reread = true,
                    Err(RecvError::Closed) => {
                        st.closed = true;
                        st.reread = true;
                    }
                },
                _ = tokio::time::sleep(POLL) => st.reread = true,
            }
        }
    })
}
