//! Task webhooks: a task submitted with `webhook` gets one signed `POST` of its result when it
//! reaches a terminal state (succeeded, failed, budget_exhausted, cancelled).
//!
//! - Guard against SSRF: only `http`/`https` URLs without userinfo, to hosts on the server's
//!   allowlist (`--webhook-allow-host`, empty by default, so webhooks are off until an operator
//!   allows a host); checked at submission (a 400 naming the problem) and again at delivery.
//!   Redirects are not followed and no proxy is used.
//! - The body is signed with HMAC-SHA256 under the server's secret (`--webhook-secret`):
//!   `X-AutoGLM-Signature: sha256=<hex>`; without a secret, webhooks are refused at submission.
//! - Each attempt has a timeout; transport errors, 408, 429 and 5xx are retried with doubling
//!   backoff, other answers are final. Deliveries run on their own tasks (a few at once), never
//!   on a task worker.
//! - The outcome is journaled as a `webhook` record after the task's final record (so it shows
//!   in the task's trace and events) and counted in `/metrics`. A task whose delivery is
//!   journaled is not delivered again; a server stopped mid-delivery does not retry it later.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use autoglm_agent::{Agent, StepKind, UNFINISHED};
use autoglm_store::{Store, now_ms};
use hmac::{Hmac, Mac};
use reqwest::Url;
use serde_json::{Value, json};
use sha2::Sha256;

/// The header carrying `sha256=<hex of HMAC-SHA256(secret, body)>`.
pub const SIGNATURE_HEADER: &str = "x-autoglm-signature";
/// Longest webhook URL accepted.
const MAX_URL: usize = 2048;
/// Deliveries in flight at once; more wait their turn.
const MAX_SENDING: usize = 16;

/// How webhooks are delivered. `Default`: no secret and no allowed host (webhooks refused),
/// 10 s per attempt, 3 retries from 1 s backoff.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Key of every delivery's signature.
    pub secret: Option<String>,
    /// Hosts webhooks may go to: `example.org`, `*.example.org`, `host:port`, `[::1]:8080`.
    pub allow_hosts: Vec<String>,
    /// Limit of one attempt, connecting included.
    pub timeout: Duration,
    /// Attempts after the first.
    pub retries: usize,
    /// Wait before the first retry; doubled before each next one.
    pub backoff: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            secret: None,
            allow_hosts: Vec::new(),
            timeout: Duration::from_secs(10),
            retries: 3,
            backoff: Duration::from_secs(1),
        }
    }
}

/// Deliveries by outcome, rendered in `/metrics`.
#[derive(Default)]
pub(crate) struct WebhookMetrics {
    delivered: AtomicU64,
    failed: AtomicU64,
    attempts: AtomicU64,
}

impl WebhookMetrics {
    pub(crate) fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let _ = writeln!(
            out,
            "# HELP autoglm_task_webhooks_total Task webhook deliveries, by outcome.\n\
             # TYPE autoglm_task_webhooks_total counter\n\
             autoglm_task_webhooks_total{{outcome=\"delivered\"}} {}\n\
             autoglm_task_webhooks_total{{outcome=\"failed\"}} {}\n\
             # HELP autoglm_task_webhook_attempts_total Task webhook HTTP attempts, retries included.\n\
             # TYPE autoglm_task_webhook_attempts_total counter\n\
             autoglm_task_webhook_attempts_total {}",
            self.delivered.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.attempts.load(Ordering::Relaxed),
        );
    }
}

pub(crate) struct Webhooks {
    cfg: WebhookConfig,
    client: OnceLock<Result<reqwest::Client, String>>,
    /// Tasks whose delivery is under way (a task can be reported ended twice: by its worker
    /// and by a cancel).
    sending: Mutex<HashSet<String>>,
    permits: Arc<tokio::sync::Semaphore>,
    metrics: Arc<WebhookMetrics>,
}

/// HMAC-SHA256 of `body` under `secret`, as the signature header's value.
pub fn signature(secret: &str, body: &[u8]) -> String {
    use std::fmt::Write;
    // HMAC takes keys of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
    mac.update(body);
    let mut hex = String::from("sha256=");
    for b in mac.finalize().into_bytes() {
        let _ = write!(hex, "{b:02x}");
    }
    hex
}

/// Where one delivery got to.
struct Delivery {
    ok: bool,
    attempts: usize,
    status: Option<u16>,
    error: Option<String>,
}

impl Webhooks {
    pub(crate) fn new(cfg: WebhookConfig, metrics: Arc<WebhookMetrics>) -> Webhooks {
        Webhooks {
            cfg,
            client: OnceLock::new(),
            sending: Mutex::default(),
            permits: Arc::new(tokio::sync::Semaphore::new(MAX_SENDING)),
            metrics,
        }
    }

    /// The URL if this server may deliver to it; the reason (for a 400) otherwise.
    pub(crate) fn check(&self, raw: &str) -> Result<Url, String> {
        if raw.len() > MAX_URL {
            return Err(format!("webhook must be at most {MAX_URL} characters"));
        }
        let url = Url::parse(raw.trim())
            .map_err(|e| format!("webhook must be an absolute http or https URL ({e})"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "webhook must be an http or https URL, not {}:",
                url.scheme()
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("webhook URLs must not carry a user name or password".into());
        }
        if self.cfg.allow_hosts.is_empty() {
            return Err("webhooks are off on this server: no host is allowed \
                        (the operator allows hosts with autoglm serve --webhook-allow-host HOST)"
                .into());
        }
        if !autoglm_tools::host_allowed(&self.cfg.allow_hosts, &url) {
            return Err(format!(
                "webhook host {} is not on this server's allowlist (autoglm serve --webhook-allow-host)",
                url.host_str().unwrap_or("")
            ));
        }
        if self.cfg.secret.is_none() {
            return Err("webhooks are off on this server: it has no signing secret \
                        (autoglm serve --webhook-secret, or AUTOGLM_WEBHOOK_SECRET)"
                .into());
        }
        Ok(url)
    }

    fn client(&self) -> Result<&reqwest::Client, String> {
        self.client
            .get_or_init(|| {
                // reqwest is built without a bundled crypto provider (see the llm crate).
                let _ = rustls::crypto::ring::default_provider().install_default();
                reqwest::Client::builder()
                    .redirect(reqwest::redirect::Policy::none())
                    .no_proxy()
                    .timeout(self.cfg.timeout)
                    .user_agent(concat!("autoglm/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .map_err(|e| format!("cannot start the HTTP client: {e}"))
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Called when a task may have ended: when it has, has a webhook and no delivery yet, the
    /// delivery starts in the background. Must run inside the server's runtime.
    pub(crate) fn task_ended(self: &Arc<Self>, store: &Arc<Store>, id: &str) {
        let Ok(task) = store.task(id) else { return };
        let Some(url) = task.settings["meta"]["webhook"]
            .as_str()
            .map(str::to_string)
        else {
            return;
        };
        if UNFINISHED.contains(&task.status.as_str()) {
            return;
        }
        if !self.lock().insert(id.to_string()) {
            return;
        }
        let done = store.records(id).map_or(true, |r| {
            r.iter().any(|r| r.kind == StepKind::Webhook.as_str())
        });
        if done {
            self.lock().remove(id);
            return;
        }
        let (me, store, id) = (self.clone(), store.clone(), id.to_string());
        tokio::spawn(async move {
            let started = now_ms();
            let d = match me.permits.clone().acquire_owned().await {
                Ok(_permit) => me.deliver(&store, &id, &url).await,
                Err(_) => Delivery {
                    ok: false,
                    attempts: 0,
                    status: None,
                    error: Some("the server is stopping".into()),
                },
            };
            let counter = if d.ok {
                &me.metrics.delivered
            } else {
                &me.metrics.failed
            };
            counter.fetch_add(1, Ordering::Relaxed);
            let record = json!({"key": "webhook", "url": url, "ok": d.ok, "attempts": d.attempts,
                                "status": d.status, "error": d.error,
                                "started_ms": started, "ended_ms": now_ms()});
            if let Err(e) = store.append(&id, StepKind::Webhook.as_str(), &record) {
                eprintln!("task {id}: cannot journal its webhook delivery: {e}");
            }
            me.lock().remove(&id);
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.sending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The body of a task's webhook, from its row and journal.
    fn body(store: &Store, id: &str) -> Result<Vec<u8>, String> {
        let task = store.task(id).map_err(|e| e.to_string())?;
        let o = Agent::outcome(store, id).map_err(|e| e.to_string())?;
        let finished_ms = o
            .steps
            .iter()
            .rev()
            .find(|s| s["kind"] == StepKind::Final.as_str())
            .and_then(|s| s["ended_ms"].as_i64())
            .unwrap_or(task.updated_ms);
        let u = o.usage;
        let body: Value = json!({
            "object": "task.webhook",
            "task_id": task.id,
            "tenant": task.tenant,
            "status": task.status,
            "answer": task.answer,
            "error": o.status.reason(),
            "usage": {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
                      "cached_tokens": u.cached_tokens,
                      "total_tokens": u.prompt_tokens + u.completion_tokens},
            "finished_at": finished_ms / 1000,
            "finished_at_ms": finished_ms,
        });
        Ok(body.to_string().into_bytes())
    }

    async fn deliver(&self, store: &Store, id: &str, url: &str) -> Delivery {
        let fail = |attempts, status, error: String| Delivery {
            ok: false,
            attempts,
            status,
            error: Some(error),
        };
        // The allowlist may have changed since the task was submitted (a restart).
        let url = match self.check(url) {
            Ok(u) => u,
            Err(e) => return fail(0, None, e),
        };
        let (client, secret) = match (self.client(), &self.cfg.secret) {
            (Ok(c), Some(s)) => (c, s),
            (Err(e), _) => return fail(0, None, e),
            (_, None) => return fail(0, None, "no signing secret".into()),
        };
        let body = match Self::body(store, id) {
            Ok(b) => b,
            Err(e) => return fail(0, None, e),
        };
        let sig = signature(secret, &body);
        let mut wait = self.cfg.backoff;
        let mut last = fail(0, None, String::new());
        for attempt in 1..=self.cfg.retries + 1 {
            if attempt > 1 {
                tokio::time::sleep(wait).await;
                wait = wait.saturating_mul(2);
            }
            self.metrics.attempts.fetch_add(1, Ordering::Relaxed);
            let sent = client
                .post(url.clone())
                .header("content-type", "application/json")
                .header(SIGNATURE_HEADER, &sig)
                .header("x-autoglm-task", id)
                .header("x-autoglm-delivery-attempt", attempt.to_string())
                .body(body.clone())
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => {
                    return Delivery {
                        ok: true,
                        attempts: attempt,
                        status: Some(r.status().as_u16()),
                        error: None,
                    };
                }
                Ok(r) => {
                    let code = r.status().as_u16();
                    last = fail(attempt, Some(code), format!("HTTP {code}"));
                    if !(code == 408 || code == 429 || code >= 500) {
                        return last;
                    }
                }
                Err(e) => last = fail(attempt, None, e.to_string()),
            }
        }
        last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231 test case 2 (a short key).
    #[test]
    fn signature_is_hmac_sha256_hex() {
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn urls_are_checked_against_scheme_userinfo_allowlist_and_secret() {
        let hooks = |allow: &[&str], secret: Option<&str>| {
            Webhooks::new(
                WebhookConfig {
                    secret: secret.map(str::to_string),
                    allow_hosts: allow.iter().map(|s| s.to_string()).collect(),
                    ..WebhookConfig::default()
                },
                Arc::default(),
            )
        };
        let on = hooks(&["hooks.example.org", "127.0.0.1:9000"], Some("s"));
        let cases: &[(&Webhooks, &str, Option<&str>)] = &[
            (&on, "https://hooks.example.org/x?y=1", None),
            (&on, "http://127.0.0.1:9000/hook", None),
            (
                &on,
                "http://127.0.0.1:9001/hook",
                Some("not on this server's allowlist"),
            ),
            (
                &on,
                "http://169.254.169.254/latest",
                Some("not on this server's allowlist"),
            ),
            (
                &on,
                "http://a.hooks.example.org/",
                Some("not on this server's allowlist"),
            ),
            (&on, "file:///etc/passwd", Some("http or https")),
            (&on, "gopher://hooks.example.org/", Some("http or https")),
            (
                &on,
                "https://u:p@hooks.example.org/",
                Some("user name or password"),
            ),
            (
                &on,
                "hooks.example.org/x",
                Some("absolute http or https URL"),
            ),
            (
                &on,
                &format!("https://hooks.example.org/{}", "a".repeat(3000)),
                Some("at most"),
            ),
            (
                &hooks(&[], Some("s")),
                "https://hooks.example.org/",
                Some("no host is allowed"),
            ),
            (
                &hooks(&["hooks.example.org"], None),
                "https://hooks.example.org/",
                Some("no signing secret"),
            ),
        ];
        for (h, url, want) in cases {
            match (h.check(url), want) {
                (Ok(_), None) => {}
                (Err(e), Some(w)) => assert!(e.contains(w), "{url}: {e}"),
                (got, _) => panic!("{url}: {got:?}, expected {want:?}"),
            }
        }
    }
}
