//! Records of an ARC run: one JSONL line per test input, and the summary.

use super::*;

// ---------------------------------------------------------------------------------------------
// Records
// ---------------------------------------------------------------------------------------------

/// One JSONL line: the outcome of one test input.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TaskRecord {
    /// The task.
    pub task_id: String,
    /// Which test input of the task (0-based).
    pub test_index: usize,
    /// Prompt length in tokens (chat template included).
    pub prompt_tokens: usize,
    /// Tokens generated (the stop token excluded).
    pub generated_tokens: usize,
    /// Milliseconds from the start of the prefill to the first sampled token.
    pub ttft_ms: f64,
    /// Prefill tokens per second.
    pub prefill_tps: f64,
    /// Decode tokens per second.
    pub decode_tps: f64,
    /// Bytes of KV cache the request used.
    pub kv_bytes_used: u64,
    /// Bytes of the session's arena.
    pub arena_bytes: u64,
    /// The first grid parsed from the generated text; `null` if there was none.
    pub grid: Option<Grid>,
    /// Whether the grid matches the expected output exactly.
    pub correct: bool,
    /// Why the input was not run (e.g. the prompt does not fit the context); `null` if it ran.
    pub skipped: Option<String>,
    /// Why generation ended: `grid` (the first complete grid was over), `stop_token`,
    /// `max_tokens`, `context_full` or `callback`; `null` if the input was not run.
    pub stop_reason: Option<String>,
    /// Tokens drafted by prompt lookup.
    pub drafted: usize,
    /// Drafted tokens greedy decoding agreed with.
    pub accepted: usize,
    /// Whether the answer was constrained to a grid by the grid grammar (`qwenrt arc` without
    /// `--no-grammar`; see [`grid_regex`](super::grid_regex)).
    pub grammar: bool,
}

impl TaskRecord {
    /// A record for an input that was not run: no timings, no grid, not correct.
    pub fn skipped(
        task_id: &str,
        test_index: usize,
        prompt_tokens: usize,
        reason: impl Into<String>,
    ) -> TaskRecord {
        TaskRecord {
            task_id: task_id.to_string(),
            test_index,
            prompt_tokens,
            generated_tokens: 0,
            ttft_ms: 0.0,
            prefill_tps: 0.0,
            decode_tps: 0.0,
            kv_bytes_used: 0,
            arena_bytes: 0,
            grid: None,
            correct: false,
            skipped: Some(reason.into()),
            stop_reason: None,
            drafted: 0,
            accepted: 0,
            grammar: false,
        }
    }

    /// This record as one JSON line (no trailing newline).
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).expect("TaskRecord has only plain fields")
    }
}

/// The whole run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    /// Distinct task ids among the records.
    pub tasks_run: usize,
    /// Test inputs, skipped ones included.
    pub test_inputs: usize,
    /// Test inputs answered exactly.
    pub correct: usize,
    /// `correct / test_inputs`; skipped inputs count as wrong. 0 when there are none.
    pub accuracy: f64,
    /// Test inputs skipped (their prompt did not fit).
    pub skipped: usize,
    /// Wall time of the whole run, in seconds.
    pub total_seconds: f64,
    /// Median over inputs that ran; `None` if none ran.
    pub median_prefill_tps: Option<f64>,
    /// Median decode tokens per second over the records that ran.
    pub median_decode_tps: Option<f64>,
    /// Peak resident set (VmHWM), where `/proc/self/status` has it.
    pub peak_rss_bytes: Option<u64>,
    /// Bytes of the session's arena.
    pub arena_bytes: u64,
    /// Tokens generated, over every input.
    pub generated_tokens: usize,
    /// Tokens drafted by prompt lookup, over every input.
    pub drafted: usize,
    /// Drafted tokens accepted, over every input.
    pub accepted: usize,
    /// Inputs whose answer ended after its first complete grid.
    pub stopped_at_grid: usize,
    /// Inputs whose answer holds a grid (see [`parse_grid`](super::parse_grid)).
    pub grids: usize,
    /// Inputs whose answer was constrained to a grid by the grid grammar.
    pub grammar: usize,
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

impl Summary {
    /// Summarizes `records`, reading the peak RSS of this process now.
    pub fn from_records(records: &[TaskRecord], total_seconds: f64, arena_bytes: u64) -> Summary {
        let ran: Vec<&TaskRecord> = records.iter().filter(|r| r.skipped.is_none()).collect();
        let tasks: BTreeSet<&str> = records.iter().map(|r| r.task_id.as_str()).collect();
        let correct = records.iter().filter(|r| r.correct).count();
        Summary {
            tasks_run: tasks.len(),
            test_inputs: records.len(),
            correct,
            accuracy: if records.is_empty() {
                0.0
            } else {
                correct as f64 / records.len() as f64
            },
            skipped: records.len() - ran.len(),
            total_seconds,
            median_prefill_tps: median(ran.iter().map(|r| r.prefill_tps).collect()),
            median_decode_tps: median(ran.iter().map(|r| r.decode_tps).collect()),
            peak_rss_bytes: peak_rss_bytes(),
            arena_bytes,
            generated_tokens: records.iter().map(|r| r.generated_tokens).sum(),
            drafted: records.iter().map(|r| r.drafted).sum(),
            accepted: records.iter().map(|r| r.accepted).sum(),
            stopped_at_grid: records
                .iter()
                .filter(|r| r.stop_reason.as_deref() == Some("grid"))
                .count(),
            grids: records.iter().filter(|r| r.grid.is_some()).count(),
            grammar: records.iter().filter(|r| r.grammar).count(),
        }
    }
}

fn fmt_tps(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.1} t/s"))
}

fn fmt_mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "ARC: {} tasks, {} test inputs, {} correct ({:.1}%), {} skipped",
            self.tasks_run,
            self.test_inputs,
            self.correct,
            self.accuracy * 100.0,
            self.skipped
        )?;
        writeln!(
            f,
            "time {:.1} s; median prefill {}, median decode {}",
            self.total_seconds,
            fmt_tps(self.median_prefill_tps),
            fmt_tps(self.median_decode_tps)
        )?;
        let ran = self.test_inputs - self.skipped;
        let grammar = if self.grammar == 0 {
            "grid grammar off".to_string()
        } else if self.grammar == ran {
            "grid grammar on".to_string()
        } else {
            format!("grid grammar on for {} of {ran}", self.grammar)
        };
        writeln!(
            f,
            "{} of {ran} answers parse as a grid ({grammar}); {} stopped after their grid",
            self.grids, self.stopped_at_grid
        )?;
        writeln!(
            f,
            "{} tokens generated; lookup drafted {}, accepted {}",
            self.generated_tokens, self.drafted, self.accepted
        )?;
        write!(
            f,
            "peak RSS {}; arena {}",
            self.peak_rss_bytes
                .map_or_else(|| "n/a".to_string(), fmt_mib),
            fmt_mib(self.arena_bytes)
        )
    }
}

/// The `VmHWM` line of a `/proc/<pid>/status` text, in bytes.
pub fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let mut parts = line["VmHWM:".len()..].split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") | None => value.checked_mul(1024),
        Some(_) => None,
    }
}

/// Peak resident set size of this process, from `/proc/self/status` (Linux); `None` elsewhere.
pub fn peak_rss_bytes() -> Option<u64> {
    parse_vm_hwm(&fs::read_to_string("/proc/self/status").ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[allow(unused_imports)]
    use crate::workload::arc::testdata::*;

    // --- records ---

    fn record(task: &str, idx: usize, correct: bool, prefill: f64, decode: f64) -> TaskRecord {
        TaskRecord {
            task_id: task.into(),
            test_index: idx,
            prompt_tokens: 100,
            generated_tokens: 20,
            ttft_ms: 12.5,
            prefill_tps: prefill,
            decode_tps: decode,
            kv_bytes_used: 4096,
            arena_bytes: 1 << 20,
            grid: if correct {
                Some(vec![vec![1, 2]])
            } else {
                None
            },
            correct,
            skipped: None,
            stop_reason: Some("max_tokens".into()),
            drafted: 4,
            accepted: 2,
            grammar: correct,
        }
    }

    #[test]
    fn record_json_line() {
        let line = record("t1", 0, true, 100.0, 10.0).to_json_line();
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["task_id"], "t1");
        assert_eq!(v["grid"], serde_json::json!([[1, 2]]));
        assert_eq!(v["skipped"], Value::Null);
        assert_eq!(v["grammar"], true);
        let skipped = TaskRecord::skipped(
            "t2",
            1,
            40000,
            "prompt too long: 40000 tokens > context 32768",
        );
        let v: Value = serde_json::from_str(&skipped.to_json_line()).unwrap();
        assert_eq!(v["grid"], Value::Null);
        assert_eq!(v["correct"], false);
        assert!(v["skipped"].as_str().unwrap().contains("40000"));
        assert!(!line.contains('\n'));
    }

    #[test]
    fn summary_counts_and_medians() {
        let records = vec![
            record("t1", 0, true, 100.0, 10.0),
            record("t1", 1, false, 300.0, 30.0),
            record("t2", 0, true, 200.0, 40.0),
            TaskRecord::skipped("t3", 0, 99999, "prompt too long"),
        ];
        let s = Summary::from_records(&records, 5.0, 1 << 20);
        assert_eq!(
            (s.tasks_run, s.test_inputs, s.correct, s.skipped),
            (3, 4, 2, 1)
        );
        assert_eq!(s.accuracy, 0.5);
        assert_eq!(s.median_prefill_tps, Some(200.0));
        assert_eq!(s.median_decode_tps, Some(30.0));
        if cfg!(target_os = "linux") {
            assert!(s.peak_rss_bytes.unwrap() > 0);
        }
        let text = s.to_string();
        assert!(
            text.contains("3 tasks, 4 test inputs, 2 correct (50.0%), 1 skipped"),
            "{text}"
        );
        assert!(
            text.contains("median prefill 200.0 t/s") && text.contains("arena 1.0 MiB"),
            "{text}"
        );
        // two of the three that ran hold a grid, both constrained to one
        assert_eq!((s.grids, s.grammar), (2, 2));
        assert!(
            text.contains("2 of 3 answers parse as a grid (grid grammar on for 2 of 3)"),
            "{text}"
        );
        let v: Value = serde_json::to_value(&s).unwrap();
        assert_eq!(v["accuracy"], 0.5);

        let all: Vec<TaskRecord> = records[..3]
            .iter()
            .map(|r| TaskRecord {
                grammar: true,
                ..r.clone()
            })
            .collect();
        let text = Summary::from_records(&all, 1.0, 0).to_string();
        assert!(text.contains("(grid grammar on)"), "{text}");
        let none: Vec<TaskRecord> = records[..3]
            .iter()
            .map(|r| TaskRecord {
                grammar: false,
                ..r.clone()
            })
            .collect();
        let text = Summary::from_records(&none, 1.0, 0).to_string();
        assert!(text.contains("(grid grammar off)"), "{text}");

        let empty = Summary::from_records(&[], 0.0, 0);
        assert_eq!((empty.accuracy, empty.median_decode_tps), (0.0, None));
        assert!(empty.to_string().contains("median decode n/a"));
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn parses_vm_hwm() {
        let status = "Name:\tqwenrt\nVmPeak:\t  999 kB\nVmHWM:\t    2048 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(2048 * 1024));
        assert_eq!(parse_vm_hwm("Name: x\n"), None);
        assert_eq!(parse_vm_hwm("VmHWM: lots kB\n"), None);
    }
}
