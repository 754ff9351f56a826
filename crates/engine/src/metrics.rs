//! Lock-free latency histograms and a sliding tokens-per-second window, written by the engine
//! thread and read by anyone holding a handle (the server renders them for Prometheus).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Upper bounds in seconds, shared by the time-to-first-token and inter-token histograms: from
/// one millisecond (a decode step of a small model) to a minute (a long queue).
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.2, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Counts per bucket (not cumulative) plus the overflow bucket, and the sum in microseconds.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = Vec::with_capacity(self.counts.len());
        let mut acc = 0;
        for c in &self.counts {
            acc += c.load(Ordering::Relaxed);
            cumulative.push(acc);
        }
        HistogramSnapshot {
            bounds: LATENCY_BUCKETS.to_vec(),
            cumulative,
            sum_seconds: self.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

/// Prometheus-shaped: `cumulative[i]` observations were `<= bounds[i]`; the last entry (one more
/// than `bounds`) is the total count (`+Inf`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistogramSnapshot {
    pub bounds: Vec<f64>,
    pub cumulative: Vec<u64>,
    pub sum_seconds: f64,
}

impl HistogramSnapshot {
    pub fn count(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }
}

/// Events counted over a trailing window.
#[derive(Debug)]
pub struct RateWindow {
    window: Duration,
    events: VecDeque<(Instant, u64)>,
    total: u64,
}

impl RateWindow {
    pub fn new(window: Duration) -> RateWindow {
        RateWindow {
            window,
            events: VecDeque::new(),
            total: 0,
        }
    }

    pub fn record(&mut self, at: Instant, n: u64) {
        if n > 0 {
            self.events.push_back((at, n));
            self.total += n;
        }
        self.expire(at);
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(t, n)) = self.events.front() {
            if now.duration_since(t) <= self.window {
                break;
            }
            self.events.pop_front();
            self.total -= n;
        }
    }

    /// Events per second over the window ending at `now`.
    pub fn per_second(&mut self, now: Instant) -> f64 {
        self.expire(now);
        self.total as f64 / self.window.as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_with_an_overflow() {
        let h = Histogram::default();
        for ms in [0.5, 3.0, 3.0, 70.0, 120_000.0] {
            h.observe(Duration::from_secs_f64(ms / 1000.0));
        }
        let s = h.snapshot();
        assert_eq!(s.cumulative.len(), LATENCY_BUCKETS.len() + 1);
        assert_eq!(s.cumulative[0], 1); // <= 1 ms
        assert_eq!(s.cumulative[2], 3); // <= 5 ms
        assert_eq!(s.cumulative[6], 4); // <= 80 ms
        assert_eq!(s.cumulative[LATENCY_BUCKETS.len() - 1], 4); // <= 60 s
        assert_eq!(s.count(), 5);
        assert!((s.sum_seconds - 120.0765).abs() < 1e-3, "{}", s.sum_seconds);
    }

    #[test]
    fn rate_window_forgets_old_events() {
        let t0 = Instant::now();
        let mut w = RateWindow::new(Duration::from_secs(2));
        w.record(t0, 10);
        w.record(t0 + Duration::from_secs(1), 10);
        assert_eq!(w.per_second(t0 + Duration::from_secs(1)), 10.0);
        assert_eq!(w.per_second(t0 + Duration::from_millis(2500)), 5.0);
        assert_eq!(w.per_second(t0 + Duration::from_secs(10)), 0.0);
    }
}
