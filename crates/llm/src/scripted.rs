//! Recorded replies played back in order. Tests script a model's behaviour exactly (a bad tool
//! call, a loop, a failure) and then check what the agent sent; a past run's replies replay it.

use std::sync::Mutex;

use crate::{BoxFuture, Capabilities, ChatRequest, ChatResponse, DeltaSink, LlmClient, LlmError};

/// Replies in order; every request is recorded.
#[derive(Debug, Default)]
pub struct ScriptedClient {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    replies: Vec<Result<ChatResponse, LlmError>>,
    next: usize,
    requests: Vec<ChatRequest>,
}

impl ScriptedClient {
    pub fn new(replies: Vec<ChatResponse>) -> ScriptedClient {
        ScriptedClient::with_results(replies.into_iter().map(Ok).collect())
    }

    /// Replies that may include errors (a backend failing mid-task).
    pub fn with_results(replies: Vec<Result<ChatResponse, LlmError>>) -> ScriptedClient {
        ScriptedClient {
            state: Mutex::new(State {
                replies,
                ..State::default()
            }),
        }
    }

    /// Replies stored as a JSON array of [`ChatResponse`] (as a recorded run writes them).
    pub fn from_json(text: &str) -> Result<ScriptedClient, LlmError> {
        let replies: Vec<ChatResponse> = serde_json::from_str(text)
            .map_err(|e| LlmError::InvalidReply(format!("bad script: {e}")))?;
        Ok(ScriptedClient::new(replies))
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<ChatRequest> {
        self.lock().requests.clone()
    }

    /// Replies not yet used.
    pub fn remaining(&self) -> usize {
        let s = self.lock();
        s.replies.len() - s.next
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-written.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl LlmClient for ScriptedClient {
    fn describe(&self) -> String {
        "scripted".into()
    }

    fn provider(&self) -> &'static str {
        "scripted"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { constrained: false }
    }

    fn chat<'a>(
        &'a self,
        req: &'a ChatRequest,
        deltas: Option<DeltaSink>,
    ) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        let reply = {
            let mut s = self.lock();
            s.requests.push(req.clone());
            let i = s.next;
            match s.replies.get(i).cloned() {
                Some(r) => {
                    s.next += 1;
                    r
                }
                None => Err(LlmError::ScriptExhausted(i + 1)),
            }
        };
        if let (Ok(r), Some(d)) = (&reply, deltas)
            && !r.content.is_empty()
        {
            let _ = d.send(r.content.clone());
        }
        Box::pin(async move { reply })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Message;
    use serde_json::json;

    fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn replays_in_order_records_requests_and_runs_out() {
        let c = ScriptedClient::with_results(vec![
            Ok(ChatResponse::call(
                "calculator",
                json!({"expression": "1+1"}),
            )),
            Err(LlmError::Transport {
                attempts: 1,
                message: "down".into(),
            }),
            Ok(ChatResponse::text("2")),
        ]);
        let req = ChatRequest::new(vec![Message::user("1+1?")]);
        block_on(async {
            let r = c.chat(&req, None).await.unwrap();
            assert_eq!(r.tool_calls[0].name, "calculator");
            assert!(c.chat(&req, None).await.unwrap_err().is_transient());
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            assert_eq!(c.chat(&req, Some(tx)).await.unwrap().content, "2");
            assert_eq!(rx.recv().await.as_deref(), Some("2"));
            assert_eq!(
                c.chat(&req, None).await.unwrap_err(),
                LlmError::ScriptExhausted(4)
            );
        });
        assert_eq!(c.requests().len(), 4);
        assert_eq!(c.remaining(), 0);
    }

    #[test]
    fn scripts_load_from_recorded_json() {
        let recorded = serde_json::to_string(&vec![
            ChatResponse::text("hello"),
            ChatResponse::call("f", json!({})),
        ])
        .unwrap();
        let c = ScriptedClient::from_json(&recorded).unwrap();
        assert_eq!(c.remaining(), 2);
        assert!(ScriptedClient::from_json("{not json").is_err());
    }
}
