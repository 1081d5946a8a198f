//! The server's counters, gauges and histograms, rendered as Prometheus text at `/metrics`.
//!
//! Everything is an atomic (or a short-held mutex for the per-status request counts), shared
//! by the HTTP handlers and the engine thread.
//!
//! The contract a load balancer, a gateway's endpoint picker and an autoscaler read (stable
//! names; docs/deployment.md lists them):
//! - `qwenrt_queue_depth` (gauge): requests admitted and waiting for a sequence;
//! - `qwenrt_active_sequences` (gauge): requests running (prefilling or decoding);
//! - `qwenrt_kv_cache_usage_ratio` (gauge, 0 to 1): KV rows held by running requests over the
//!   rows planned for all sequences (`parallel x ctx`). The cached prefix a finished request
//!   leaves in its idle sequence counts as free: the next request may take the sequence over
//!   (vLLM counts its evictable prefix-cache blocks as free too);
//! - `qwenrt_prefix_cache_queries_total` / `qwenrt_prefix_cache_hits_total` (counters): prompt
//!   tokens of admitted requests / those of them found already cached (today: the prefix an
//!   idle sequence still holds) and not computed again; hits over queries is the hit rate.
//!
//! The same values are also exported under the names the Gateway API Inference Extension's
//! model-server protocol reads by default (vLLM's: `vllm:num_requests_waiting`,
//! `vllm:num_requests_running`, `vllm:kv_cache_usage_perc`, `vllm:prefix_cache_queries_total`,
//! `vllm:prefix_cache_hits_total`), so its endpoint picker works without flags.

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
    /// Prompt tokens that were found in an idle sequence's cache or the prompt cache and not
    /// computed again.
    pub prompt_tokens_reused: AtomicU64,
    /// Prompt tokens copied in from the prompt cache (`--cache-ram`), in whole blocks.
    pub prompt_cache_hit_tokens: AtomicU64,
    /// Prompt tokens of whole blocks the prompt cache could have served but did not hold (nor
    /// an idle sequence), so they were computed.
    pub prompt_cache_miss_tokens: AtomicU64,
    /// Bytes of the prompt cache holding blocks.
    pub prompt_cache_used_bytes: AtomicU64,
    /// Bytes of the prompt cache (planned at startup; 0 when it is off).
    pub prompt_cache_capacity_bytes: AtomicU64,
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
    /// KV cache positions held by the running requests' sequences.
    pub kv_active: AtomicU64,
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
            prompt_cache_hit_tokens: AtomicU64::new(0),
            prompt_cache_miss_tokens: AtomicU64::new(0),
            prompt_cache_used_bytes: AtomicU64::new(0),
            prompt_cache_capacity_bytes: AtomicU64::new(0),
            completion_tokens: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            queue_depth: AtomicU64::new(0),
            active: AtomicU64::new(0),
            kv_used: AtomicU64::new(0),
            kv_active: AtomicU64::new(0),
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
    /// KV rows held by running requests over the rows planned for all sequences, 0 to 1 (0
    /// before the engine has published its capacity).
    pub fn kv_cache_usage(&self) -> f64 {
        let cap = self.kv_capacity.load(Ordering::Relaxed);
        if cap == 0 {
            return 0.0;
        }
        (self.kv_active.load(Ordering::Relaxed) as f64 / cap as f64).min(1.0)
    }

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
        let scalars: [(&str, &str, &str, u64); 16] = [
            (
                "qwenrt_prompt_tokens_total",
                "counter",
                "Prompt tokens of admitted requests.",
                load(&self.prompt_tokens),
            ),
            (
                "qwenrt_prompt_tokens_reused_total",
                "counter",
                "Prompt tokens served from an idle sequence's KV cache or the prompt cache (prefix reuse).",
                load(&self.prompt_tokens_reused),
            ),
            (
                "qwenrt_prompt_cache_hit_tokens_total",
                "counter",
                "Prompt tokens copied in from the prompt cache (--cache-ram), in whole blocks.",
                load(&self.prompt_cache_hit_tokens),
            ),
            (
                "qwenrt_prompt_cache_miss_tokens_total",
                "counter",
                "Prompt tokens of whole blocks computed because neither the prompt cache nor an idle sequence held them.",
                load(&self.prompt_cache_miss_tokens),
            ),
            (
                "qwenrt_prompt_cache_used_bytes",
                "gauge",
                "Bytes of the prompt cache holding blocks.",
                load(&self.prompt_cache_used_bytes),
            ),
            (
                "qwenrt_prompt_cache_capacity_bytes",
                "gauge",
                "Bytes of the prompt cache, planned at startup (0: off).",
                load(&self.prompt_cache_capacity_bytes),
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
                "KV cache positions held by live sequences (running ones and idle ones keeping a prefix).",
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
        let usage = self.kv_cache_usage();
        let waiting = load(&self.queue_depth);
        let running = load(&self.active);
        let (queries, hits) = (load(&self.prompt_tokens), load(&self.prompt_tokens_reused));
        let gauges: [(&str, &str, &str, String); 9] = [
            (
                "qwenrt_kv_cache_usage_ratio",
                "gauge",
                "KV rows held by running requests over the rows planned for all sequences (0 to 1).",
                usage.to_string(),
            ),
            (
                "qwenrt_prefix_cache_queries_total",
                "counter",
                "Prompt tokens looked up in the prefix cache (every admitted prompt token).",
                queries.to_string(),
            ),
            (
                "qwenrt_prefix_cache_hits_total",
                "counter",
                "Prompt tokens found in the prefix cache and not computed again.",
                hits.to_string(),
            ),
            // the Gateway API Inference Extension's default names (vLLM's), same values
            (
                "vllm:num_requests_waiting",
                "gauge",
                "Alias of qwenrt_queue_depth.",
                waiting.to_string(),
            ),
            (
                "vllm:num_requests_running",
                "gauge",
                "Alias of qwenrt_active_sequences.",
                running.to_string(),
            ),
            (
                "vllm:kv_cache_usage_perc",
                "gauge",
                "Alias of qwenrt_kv_cache_usage_ratio (0 to 1).",
                usage.to_string(),
            ),
            (
                "vllm:prefix_cache_queries_total",
                "counter",
                "Alias of qwenrt_prefix_cache_queries_total.",
                queries.to_string(),
            ),
            (
                "vllm:prefix_cache_hits_total",
                "counter",
                "Alias of qwenrt_prefix_cache_hits_total.",
                hits.to_string(),
            ),
            (
                "qwenrt_kv_cache_active_positions",
                "gauge",
                "KV cache positions held by running requests.",
                load(&self.kv_active).to_string(),
            ),
        ];
        for (name, kind, help, v) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
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

    /// The value of the sample line `name` in `text`.
    fn sample(text: &str, name: &str) -> f64 {
        let prefix = format!("{name} ");
        let line = text
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no sample {name} in\n{text}"));
        line[prefix.len()..].parse().unwrap()
    }

    #[test]
    fn the_gateway_names_carry_the_same_values_as_the_stable_ones() {
        let m = Metrics::default();
        m.queue_depth.store(3, Ordering::Relaxed);
        m.active.store(2, Ordering::Relaxed);
        m.kv_capacity.store(4 * 1024, Ordering::Relaxed);
        m.kv_active.store(1024, Ordering::Relaxed);
        m.kv_used.store(3000, Ordering::Relaxed);
        m.prompt_tokens.store(500, Ordering::Relaxed);
        m.prompt_tokens_reused.store(120, Ordering::Relaxed);
        let text = m.render();
        for (stable, alias, want) in [
            ("qwenrt_queue_depth", "vllm:num_requests_waiting", 3.0),
            ("qwenrt_active_sequences", "vllm:num_requests_running", 2.0),
            (
                "qwenrt_kv_cache_usage_ratio",
                "vllm:kv_cache_usage_perc",
                0.25,
            ),
            (
                "qwenrt_prefix_cache_queries_total",
                "vllm:prefix_cache_queries_total",
                500.0,
            ),
            (
                "qwenrt_prefix_cache_hits_total",
                "vllm:prefix_cache_hits_total",
                120.0,
            ),
        ] {
            assert_eq!(sample(&text, stable), want, "{stable}");
            assert_eq!(sample(&text, alias), want, "{alias}");
            assert!(
                text.contains(&format!("# TYPE {alias} ")),
                "{alias} has no TYPE"
            );
        }
        // idle sequences' cached prefixes are not counted as used
        assert_eq!(sample(&text, "qwenrt_kv_cache_used_positions"), 3000.0);
    }

    #[test]
    fn kv_usage_is_zero_before_the_capacity_is_known_and_never_above_one() {
        let m = Metrics::default();
        m.kv_active.store(10, Ordering::Relaxed);
        assert_eq!(m.kv_cache_usage(), 0.0);
        m.kv_capacity.store(5, Ordering::Relaxed);
        assert_eq!(m.kv_cache_usage(), 1.0);
    }
}
