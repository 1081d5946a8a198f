//! The server's counters, gauges and histograms, rendered as Prometheus text at `/metrics`.
//!
//! Everything is an atomic (or a short-held mutex for the per-status request counts), shared
//! by the HTTP handlers and the engine thread.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the time-to-first-token histogram's buckets.
const TTFT_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Upper bounds (seconds) of the inter-token latency histogram's buckets.
const ITL_BUCKETS: [f64; 11] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A cumulative histogram over fixed buckets (the `+Inf` bucket is `count`).
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (b, c) in self.bounds.iter().zip(&self.buckets) {
            if secs <= *b {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in self.bounds.iter().zip(&self.buckets) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{b}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        let n = self.count();
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {n}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {n}");
    }
}

/// All of the server's metrics.
pub struct Metrics {
    /// HTTP responses by status code.
    requests: Mutex<BTreeMap<u16, u64>>,
    /// Prompt tokens of admitted generation requests.
    pub prompt_tokens: AtomicU64,
    /// Prompt tokens that were found in an idle sequence's cache and not computed again.
    pub prompt_tokens_reused: AtomicU64,
    /// Tokens generated.
    pub completion_tokens: AtomicU64,
    /// Generation requests cancelled because their client went away.
    pub cancelled: AtomicU64,
    /// Requests refused because the queue was full.
    pub rejected: AtomicU64,
    /// Requests waiting for a sequence.
    pub queue_depth: AtomicU64,
    /// Sequences generating (prefilling or decoding) now.
    pub active: AtomicU64,
    /// KV cache positions held by live sequences (active and idle).
    pub kv_used: AtomicU64,
    /// KV cache positions of all sequence slots.
    pub kv_capacity: AtomicU64,
    /// Engine steps run.
    pub steps: AtomicU64,
    /// Tokens drafted by prompt lookup.
    pub drafted: AtomicU64,
    /// Drafted tokens accepted (greedy decoding agreed).
    pub accepted: AtomicU64,
    /// Time from a request's arrival to its first token.
    pub ttft: Histogram,
    /// Time between consecutive tokens of one request.
    pub itl: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Mutex::new(BTreeMap::new()),
            prompt_tokens: AtomicU64::new(0),
            prompt_tokens_reused: AtomicU64::new(0),
            completion_tokens: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            queue_depth: AtomicU64::new(0),
            active: AtomicU64::new(0),
            kv_used: AtomicU64::new(0),
            kv_capacity: AtomicU64::new(0),
            steps: AtomicU64::new(0),
            drafted: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            ttft: Histogram::new(&TTFT_BUCKETS),
            itl: Histogram::new(&ITL_BUCKETS),
        }
    }
}

impl Metrics {
    /// Counts one HTTP response of `status`.
    pub fn count_response(&self, status: u16) {
        // a poisoned lock only means another thread panicked mid-increment: keep counting
        let mut m = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry(status).or_insert(0) += 1;
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP qwenrt_requests_total HTTP responses by status code.\n");
        out.push_str("# TYPE qwenrt_requests_total counter\n");
        {
            let m = self.requests.lock().unwrap_or_else(|e| e.into_inner());
            for (status, n) in m.iter() {
                let _ = writeln!(out, "qwenrt_requests_total{{status=\"{status}\"}} {n}");
            }
        }
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let scalars: [(&str, &str, &str, u64); 12] = [
            (
                "qwenrt_prompt_tokens_total",
                "counter",
                "Prompt tokens of admitted requests.",
                load(&self.prompt_tokens),
            ),
            (
                "qwenrt_prompt_tokens_reused_total",
                "counter",
                "Prompt tokens served from an idle sequence's KV cache (prefix reuse).",
                load(&self.prompt_tokens_reused),
            ),
            (
                "qwenrt_completion_tokens_total",
                "counter",
                "Tokens generated.",
                load(&self.completion_tokens),
            ),
            (
                "qwenrt_requests_cancelled_total",
                "counter",
                "Generations cancelled because the client went away.",
                load(&self.cancelled),
            ),
            (
                "qwenrt_requests_rejected_total",
                "counter",
                "Requests refused with 503 because the queue was full.",
                load(&self.rejected),
            ),
            (
                "qwenrt_engine_steps_total",
                "counter",
                "Engine steps run.",
                load(&self.steps),
            ),
            (
                "qwenrt_lookup_drafted_tokens_total",
                "counter",
                "Tokens drafted by prompt lookup.",
                load(&self.drafted),
            ),
            (
                "qwenrt_lookup_accepted_tokens_total",
                "counter",
                "Drafted tokens accepted.",
                load(&self.accepted),
            ),
            (
                "qwenrt_queue_depth",
                "gauge",
                "Requests waiting for a sequence.",
                load(&self.queue_depth),
            ),
            (
                "qwenrt_active_sequences",
                "gauge",
                "Sequences prefilling or decoding.",
                load(&self.active),
            ),
            (
                "qwenrt_kv_cache_used_positions",
                "gauge",
                "KV cache positions held by live sequences.",
                load(&self.kv_used),
            ),
            (
                "qwenrt_kv_cache_capacity_positions",
                "gauge",
                "KV cache positions of all sequence slots.",
                load(&self.kv_capacity),
            ),
        ];
        for (name, kind, help, v) in scalars {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
        let cap = load(&self.kv_capacity).max(1) as f64;
        let _ = writeln!(
            out,
            "# HELP qwenrt_kv_cache_usage_ratio Fraction of the KV cache in use.\n# TYPE qwenrt_kv_cache_usage_ratio gauge\nqwenrt_kv_cache_usage_ratio {}",
            load(&self.kv_used) as f64 / cap
        );
        self.ttft.render(
            &mut out,
            "qwenrt_time_to_first_token_seconds",
            "Time from a request's arrival to its first token.",
        );
        self.itl.render(
            &mut out,
            "qwenrt_inter_token_latency_seconds",
            "Time between consecutive tokens of one request.",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let m = Metrics::default();
        m.count_response(200);
        m.count_response(200);
        m.count_response(400);
        m.ttft.observe(Duration::from_millis(20));
        m.ttft.observe(Duration::from_secs(100));
        let text = m.render();
        assert!(text.contains("qwenrt_requests_total{status=\"200\"} 2\n"));
        assert!(text.contains("qwenrt_requests_total{status=\"400\"} 1\n"));
        assert!(text.contains("qwenrt_time_to_first_token_seconds_bucket{le=\"0.01\"} 0\n"));
        assert!(text.contains("qwenrt_time_to_first_token_seconds_bucket{le=\"0.025\"} 1\n"));
        assert!(text.contains("qwenrt_time_to_first_token_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("qwenrt_time_to_first_token_seconds_count 2\n"));
    }
}
