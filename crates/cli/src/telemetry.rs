//! OTLP export of the agent's `tracing` spans (`--otlp-endpoint`, or
//! `$OTEL_EXPORTER_OTLP_ENDPOINT`): the library crates only emit spans; this module owns the
//! OpenTelemetry pipeline — a batch span processor on its own thread, the OTLP/HTTP protobuf
//! exporter, and the bridge from `tracing` — and its flush at shutdown.
//!
//! A collector that cannot be reached never breaks a command: the first failed export prints
//! one warning, exports time out after [`EXPORT_TIMEOUT`], and shutdown waits at most
//! [`SHUTDOWN_TIMEOUT`] for the last batch.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{Array, KeyValue, StringValue, Value};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt;

/// One export's limit: a collector that accepts connections and never answers must not hold
/// the last batch, and so the exit, for long.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long shutdown waits for the spans still queued to be sent.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Attributes that OpenTelemetry wants as string arrays; `tracing` fields cannot hold arrays,
/// so the agent records them comma-separated and they are split here.
const ARRAY_ATTRIBUTES: &[&str] = &["gen_ai.response.finish_reasons"];

/// The collector named by the flag, else by the environment; `None` when neither names one.
fn endpoint(flag: Option<&str>) -> Option<String> {
    flag.map(str::to_string)
        .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok())
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
}

/// The traces URL for an endpoint given like `$OTEL_EXPORTER_OTLP_ENDPOINT` (the collector's
/// base URL; `/v1/traces` is appended unless it is already there).
fn traces_url(endpoint: &str) -> Result<String> {
    let e = endpoint.trim().trim_end_matches('/');
    if !(e.starts_with("http://") || e.starts_with("https://")) {
        anyhow::bail!("the OTLP endpoint must be an http:// or https:// URL, got {endpoint:?}");
    }
    Ok(if e.ends_with("/v1/traces") {
        e.to_string()
    } else {
        format!("{e}/v1/traces")
    })
}

/// The pipeline while it runs; [`Telemetry::shutdown`] (or drop) flushes it.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

/// Wraps the OTLP exporter: warns once when exports fail, and reshapes array attributes.
#[derive(Debug)]
struct Exporter<E> {
    inner: E,
    url: String,
    warned: Arc<AtomicBool>,
}

impl<E: SpanExporter> SpanExporter for Exporter<E> {
    async fn export(&self, mut batch: Vec<SpanData>) -> OTelSdkResult {
        for span in &mut batch {
            for kv in &mut span.attributes {
                if ARRAY_ATTRIBUTES.contains(&kv.key.as_str()) {
                    *kv = split_array(kv);
                }
            }
        }
        let r = self.inner.export(batch).await;
        if let Err(e) = &r
            && !self.warned.swap(true, Ordering::Relaxed)
        {
            eprintln!(
                "warning: cannot export traces to {} ({e}); spans are dropped, the command goes on",
                self.url
            );
        }
        r
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

fn split_array(kv: &KeyValue) -> KeyValue {
    let Value::String(s) = &kv.value else {
        return kv.clone();
    };
    let items: Vec<StringValue> = s
        .as_str()
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| StringValue::from(p.to_string()))
        .collect();
    KeyValue::new(kv.key.clone(), Value::Array(Array::String(items)))
}

/// A tracer provider exporting to `url` (the full traces URL) in batches.
fn provider(url: &str, warned: Arc<AtomicBool>) -> Result<SdkTracerProvider> {
    // reqwest is built without a bundled crypto provider (see the llm crate); an https
    // collector needs one installed before the client is built.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let inner = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url)
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .with_context(|| format!("setting up the OTLP exporter for {url}"))?;
    let exporter = Exporter {
        inner,
        url: url.to_string(),
        warned,
    };
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("autoglm")
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// The subscriber: Open-AutoGLM's own spans (targets `autoglm*`) only, so dependencies'
/// spans (MCP clients, HTTP stacks) stay out of the traces and the exporter cannot trace itself.
fn subscriber(provider: &SdkTracerProvider) -> impl tracing::Subscriber + Send + Sync {
    let tracer = provider.tracer("autoglm");
    let only_ours =
        tracing_subscriber::filter::Targets::new().with_target("autoglm", tracing::Level::TRACE);
    tracing_subscriber::registry().with(
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            // Span timings are the spans' own; thread ids and idle/busy counters are noise
            // next to the GenAI attributes.
            .with_threads(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_filter(only_ours),
    )
}

impl Telemetry {
    /// Installs the global pipeline when `--otlp-endpoint` (`flag`) or
    /// `$OTEL_EXPORTER_OTLP_ENDPOINT` names a collector; otherwise does nothing (spans are then
    /// discarded at no cost: no subscriber is installed).
    pub fn init(flag: Option<&str>) -> Result<Telemetry> {
        let Some(endpoint) = endpoint(flag) else {
            return Ok(Telemetry { provider: None });
        };
        let url = traces_url(&endpoint)?;
        let provider = provider(&url, Arc::default())?;
        tracing::subscriber::set_global_default(subscriber(&provider))
            .context("installing the trace exporter")?;
        Ok(Telemetry {
            provider: Some(provider),
        })
    }

    /// Sends what is still queued (waiting at most [`SHUTDOWN_TIMEOUT`]) and stops exporting.
    pub fn shutdown(&mut self) {
        if let Some(p) = self.provider.take() {
            // A failure was already reported by the exporter's warning.
            let _ = p.shutdown_with_timeout(SHUTDOWN_TIMEOUT);
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn endpoints_become_traces_urls() {
        for (given, want) in [
            (
                "http://127.0.0.1:4318",
                Some("http://127.0.0.1:4318/v1/traces"),
            ),
            ("http://c:4318/", Some("http://c:4318/v1/traces")),
            ("https://c/otlp", Some("https://c/otlp/v1/traces")),
            ("http://c:4318/v1/traces", Some("http://c:4318/v1/traces")),
            ("c:4318", None),
            ("ftp://c", None),
        ] {
            assert_eq!(traces_url(given).ok().as_deref(), want, "{given}");
        }
    }

    #[test]
    fn finish_reasons_become_a_string_array() {
        let kv = split_array(&KeyValue::new(
            "gen_ai.response.finish_reasons",
            "tool_calls, stop",
        ));
        assert_eq!(
            kv.value,
            Value::Array(Array::String(vec!["tool_calls".into(), "stop".into()]))
        );
        let n = split_array(&KeyValue::new("x", 3));
        assert_eq!(n.value, Value::I64(3));
    }

    /// A collector that takes connections and never answers: the command's spans are
    /// dropped with one warning, and shutdown returns within its bound.
    #[test]
    fn a_silent_collector_costs_one_warning_and_a_bounded_shutdown() {
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1/traces", silent.local_addr().unwrap());
        let warned = Arc::new(AtomicBool::new(false));
        let p = provider(&url, warned.clone()).unwrap();
        tracing::subscriber::with_default(subscriber(&p), || {
            for i in 0..3 {
                let _s = tracing::info_span!(target: "autoglm_test", "step", n = i).entered();
            }
        });
        let t0 = Instant::now();
        let _ = p.force_flush();
        let _ = p.shutdown_with_timeout(SHUTDOWN_TIMEOUT);
        let took = t0.elapsed();
        assert!(
            took < EXPORT_TIMEOUT + SHUTDOWN_TIMEOUT + Duration::from_secs(2),
            "shutdown took {took:?}"
        );
        assert!(warned.load(Ordering::Relaxed), "no warning recorded");
        drop(silent);
    }
}
