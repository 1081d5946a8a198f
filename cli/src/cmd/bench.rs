//! `qwenrt bench`: prompt processing (pp) and token generation (tg) throughput on
//! llama-bench's terms, plus the weight bandwidth tg achieves beside the machine's read
//! bandwidth measured in the same run.
//!
//! - pp: a `p`-token prompt processed from an empty cache, as one batch.
//! - tg: `n` tokens generated one decode step at a time from an empty cache.
//! - `--verify B,...`: for each B, the same `n` tokens fed B at a time through decode-numerics
//!   passes from an empty cache (as verifying B drafted tokens per pass does): each weight
//!   matrix is streamed once per pass for its B rows, with the logits of a lone decode step.
//!   Reported as tokens/s over the `n` tokens (`vB` lines); v1 is tg through the same path.
//! - `--batch B,...`: for each B, B sequences decoded together from empty caches, `n` tokens
//!   each, one row per sequence per engine step (each weight matrix streamed once per step
//!   for all B rows). Reported as aggregate tokens/s over all B sequences (`bB tgN` lines).
//! - `--json-schema FILE` (or `--regex`, `--grammar`, `--gbnf`): for each B of `--batch`
//!   (default 1), B sequences generate `n` tokens each, sampling greedily, once free and once under the
//!   constraint (the repetitions alternate the two), from a chat prompt asking for JSON;
//!   reported as aggregate tokens/s of each (`bB tgN free`, `bB tgN <kind>`), their ratio and
//!   the mask time per token. A sequence whose grammar finishes starts it over, so both runs
//!   generate the same number of tokens.
//! - Otherwise tokenization and sampling are excluded: fixed token ids are fed.
//! - Each test runs once as a warm-up, then `r` timed repetitions: mean ± sd of tokens/s.

use std::time::Instant;

use clap::Args;
use qwenrt::engine::sampler::SamplerParams;
use qwenrt::engine::session::{Session, SessionOptions};
use qwenrt::engine::{Engine, EngineOptions, Feed, Numerics, Want};
use qwenrt::model::weights::Weights;
use qwenrt_kernels::{ops, Isa};

use super::constrain::ConstraintArgs;
use super::{load_tokenizer, threads_or_cores, CliError, KvDtypeArg, ModelArg};
use qwenrt::engine::constraint::Constraint;
use qwenrt::engine::SeqId;

/// `qwenrt bench`.
#[derive(Args, Debug)]
#[command(
    after_help = "Prints a llama-bench-style table (or one JSON object with --json): \
ppP and tgN in tokens/s (mean ± sd over the repetitions, after one warm-up), bB tgN in \
aggregate tokens/s, vB xN in tokens/s, and the weight bandwidth tg reaches beside the \
machine's read bandwidth."
)]
pub struct BenchArgs {
    /// Prompt tokens processed as one batch (pp); 0 skips pp
    #[arg(
        short = 'p',
        long,
        value_name = "N",
        default_value_t = 512,
        allow_negative_numbers = true
    )]
    n_prompt: usize,
    /// Tokens generated one decode step at a time (tg); 0 skips tg
    #[arg(
        short = 'n',
        long,
        value_name = "N",
        default_value_t = 128,
        allow_negative_numbers = true
    )]
    n_gen: usize,
    /// Timed repetitions of each test (after one warm-up)
    #[arg(
        short = 'r',
        long,
        value_name = "N",
        default_value_t = 5,
        allow_negative_numbers = true
    )]
    repetitions: usize,
    /// Worker threads [default: the number of physical cores]
    #[arg(short = 't', long, value_name = "N", allow_negative_numbers = true)]
    threads: Option<usize>,
    /// Print one JSON object instead of the table
    #[arg(long)]
    json: bool,
    /// A random-weight GGUF of a real shape (see `qwenrt synth`), QUANT q4_k_m by default,
    /// written once under $QWENRT_HOME/synthetic; alone: qwen2.5-0.5b:bf16
    #[arg(
        long,
        value_name = "SHAPE[:QUANT]",
        num_args = 0..=1,
        default_missing_value = "qwen2.5-0.5b:bf16"
    )]
    synthetic: Option<String>,
    /// With --synthetic: only the shape's first N layers
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    layers: Option<usize>,
    /// Keep every prefill projection in f32
    #[arg(long)]
    prefill_f32: bool,
    /// For each B, the -n tokens fed B rows per decode-numerics pass (as verifying B drafts)
    #[arg(long, value_name = "B,...")]
    verify: Option<String>,
    /// For each B, B sequences decoded together, -n tokens each (aggregate tokens/s)
    #[arg(long, value_name = "B,...")]
    batch: Option<String>,
    #[command(flatten)]
    kv: KvDtypeArg,
    #[command(flatten)]
    model: ModelArg,
    #[command(flatten)]
    constraint: ConstraintArgs,
}

/// Mean and sample standard deviation.
pub fn mean_sd(xs: &[f64]) -> (f64, f64) {
    if xs.is_empty() {
        return (0.0, 0.0);
    }
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = if xs.len() > 1 {
        xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// Deterministic, varied token ids below `vocab`.
fn bench_tokens(n: usize, vocab: usize) -> Vec<u32> {
    let mut s = 0x2545_f491_4f6c_dd1du64;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % vocab.min(100_000) as u64) as u32
        })
        .collect()
}

/// Reads every weight byte a decode step reads, split over `threads`, and returns GB/s (the
/// best of three passes). The reads are `ops::stream_sum` on `isa`: wide loads with the decode
/// matvecs' prefetch, so this is the bandwidth a decode step could reach (a plain u64 loop
/// undercounts it: docs/performance.md).
/// Run after a warm-up so the pages are resident.
pub fn read_bandwidth(weights: &Weights, isa: Isa, threads: usize) -> f64 {
    let mut slices: Vec<&[u8]> = Vec::new();
    for l in &weights.layers {
        for t in l.matrices() {
            slices.push(weights.bytes(t));
        }
    }
    slices.push(weights.bytes(&weights.lm_head));
    let total: usize = slices.iter().map(|s| s.len()).sum();
    let threads = threads.max(1);
    let mut best = 0.0f64;
    for _ in 0..3 {
        let t0 = Instant::now();
        let sums: Vec<u64> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|tid| {
                    let slices = &slices;
                    scope.spawn(move || {
                        let mut acc = 0u64;
                        for s in slices.iter() {
                            let part = s.len().div_ceil(threads).next_multiple_of(64);
                            let start = (tid * part).min(s.len());
                            let end = ((tid + 1) * part).min(s.len());
                            acc = acc.wrapping_add(ops::stream_sum(isa, &s[start..end]));
                        }
                        acc
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).collect()
        });
        std::hint::black_box(sums);
        let gbs = total as f64 / t0.elapsed().as_secs_f64() / 1e9;
        best = best.max(gbs);
    }
    best
}

/// The synthetic model `--synthetic SHAPE[:QUANT]` (`--layers N`) names, written on first use
/// to `$QWENRT_HOME/synthetic/` (under a temporary name, renamed into place) and reused after.
fn synthetic_model(value: &str, layers: Option<usize>) -> Result<std::path::PathBuf, CliError> {
    let spec = super::synth::parse_shape_quant(value, "--synthetic", layers)?;
    let path = qwenrt_cli::hub::qwenrt_home()
        .join("synthetic")
        .join(spec.file_name());
    if !path.is_file() {
        super::synth::write(&spec, &path)?;
    }
    Ok(path)
}

/// A comma-separated list of counts from 1 to 512 given to `flag`, or an empty list.
fn count_list(list: Option<&str>, flag: &str, what: &str) -> Result<Vec<usize>, CliError> {
    let mut out = Vec::new();
    if let Some(list) = list {
        for part in list.split(',') {
            match part.trim().parse::<usize>() {
                Ok(b) if (1..=512).contains(&b) => out.push(b),
                _ => {
                    return Err(CliError::usage(format!(
                        "{flag} takes {what} from 1 to 512 separated by commas (e.g. 1,4,8), not {list:?}"
                    )))
                }
            }
        }
    }
    Ok(out)
}

/// Aggregate decode tokens/s of `b` sequences stepped together for `n` tokens each (one row
/// per sequence per step, every row's logits computed, as `tg` does for one): `r` timed
/// repetitions after one warm-up, each from empty caches.
fn decode_batch(
    weights: &std::sync::Arc<Weights>,
    threads: usize,
    kv_dtype: qwenrt_kernels::Dtype,
    b: usize,
    n: usize,
    r: usize,
    tokens: &[u32],
) -> Result<Vec<f64>, CliError> {
    let opts = EngineOptions {
        ctx: n,
        max_sequences: b,
        max_batch_tokens: b,
        threads,
        isa: None,
        prefill_bf16: true,
        kv_dtype,
    };
    let mut engine = Engine::new(weights.clone(), &opts).map_err(CliError::fail)?;
    let seqs = (0..b)
        .map(|_| engine.create_sequence(SamplerParams::greedy()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(CliError::fail)?;
    let mut feeds: Vec<Feed> = Vec::with_capacity(b);
    let mut samples = Vec::new();
    for rep in 0..=r {
        for &s in &seqs {
            engine.reset(s).map_err(CliError::fail)?;
        }
        let t0 = Instant::now();
        for t in 0..n {
            feeds.clear();
            // each sequence its own token stream, so no two rows of a step are alike
            feeds.extend(seqs.iter().enumerate().map(|(i, &seq)| Feed {
                seq,
                tokens: std::slice::from_ref(&tokens[(t + 7 * i) % tokens.len()]),
                numerics: Numerics::Decode,
                logits: Want::Last,
            }));
            engine
                .step(&feeds, &mut |_, _, _| {})
                .map_err(CliError::fail)?;
        }
        let tps = (b * n) as f64 / t0.elapsed().as_secs_f64();
        if rep > 0 {
            samples.push(tps);
        }
    }
    Ok(samples)
}

/// One constrained-decoding comparison: aggregate tokens/s free and constrained (every
/// repetition), and the constrained runs' masks and seconds spent masking.
struct ConstrainedRun {
    sequences: usize,
    free: Vec<f64>,
    constrained: Vec<f64>,
    masks: u64,
    mask_seconds: f64,
}

impl ConstrainedRun {
    /// Milliseconds of mask computation (and applying it) per constrained token.
    fn mask_ms_per_token(&self) -> f64 {
        1e3 * self.mask_seconds / self.masks.max(1) as f64
    }

    /// The share of the constrained runs' decode time (steps and samples, `n` tokens per
    /// sequence) spent on masks: the slowdown the constraint itself causes, less sensitive to a
    /// busy machine than the ratio of two timed runs.
    fn mask_share(&self, n: usize) -> f64 {
        let total: f64 = self
            .constrained
            .iter()
            .map(|tps| (self.sequences * n) as f64 / tps)
            .sum();
        self.mask_seconds / total.max(1e-12)
    }
}

/// The median (of the repetitions).
fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// `b` sequences generating `n` tokens each by greedy sampling, free and under `proto`
/// (alternating, `r` timed repetitions of each after one warm-up of each). Prompts are
/// prefilled before the clock starts; the clock covers the decode steps and the samples
/// (with their masks).
#[allow(clippy::too_many_arguments)]
fn constrained_batch(
    weights: &std::sync::Arc<Weights>,
    prompts: &[Vec<u32>],
    proto: &Constraint,
    stop: &[u32],
    threads: usize,
    kv_dtype: qwenrt_kernels::Dtype,
    b: usize,
    n: usize,
    r: usize,
) -> Result<ConstrainedRun, CliError> {
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(1);
    let opts = EngineOptions {
        ctx: longest + n + 1,
        max_sequences: b,
        max_batch_tokens: longest.max(b),
        threads,
        isa: None,
        prefill_bf16: true,
        kv_dtype,
    };
    let mut engine = Engine::new(weights.clone(), &opts).map_err(CliError::fail)?;
    let seqs: Vec<SeqId> = (0..b)
        .map(|_| engine.create_sequence(SamplerParams::greedy()))
        .collect::<Result<_, _>>()
        .map_err(CliError::fail)?;
    let mut run = ConstrainedRun {
        sequences: b,
        free: Vec::new(),
        constrained: Vec::new(),
        masks: 0,
        mask_seconds: 0.0,
    };
    let mut next = vec![0u32; b];
    for rep in 0..=r {
        for constrained in [false, true] {
            for (i, &seq) in seqs.iter().enumerate() {
                engine.reset(seq).map_err(CliError::fail)?;
                let p = &prompts[i % prompts.len()];
                engine
                    .step(
                        &[Feed {
                            seq,
                            tokens: p,
                            numerics: Numerics::Prefill,
                            logits: Want::Last,
                        }],
                        &mut |_, _, _| {},
                    )
                    .map_err(CliError::fail)?;
                if constrained {
                    engine
                        .set_constraint(seq, Some(proto.clone()))
                        .map_err(CliError::fail)?;
                }
            }
            let t0 = Instant::now();
            for _ in 0..n {
                for (i, &seq) in seqs.iter().enumerate() {
                    next[i] = engine.sample(seq).map_err(CliError::fail)?;
                    if constrained && stop.contains(&next[i]) {
                        // the grammar is done: start it over, so every run makes n tokens
                        let done = engine
                            .set_constraint(seq, Some(proto.clone()))
                            .map_err(CliError::fail)?;
                        if let (Some(c), true) = (done, rep > 0) {
                            let (m, t) = c.mask_stats();
                            run.masks += m;
                            run.mask_seconds += t.as_secs_f64();
                        }
                    }
                }
                // (the same small Vec per step in both modes)
                let feeds: Vec<Feed> = seqs
                    .iter()
                    .zip(&next)
                    .map(|(&seq, t)| Feed {
                        seq,
                        tokens: std::slice::from_ref(t),
                        numerics: Numerics::Decode,
                        logits: Want::Last,
                    })
                    .collect();
                engine
                    .step(&feeds, &mut |_, _, _| {})
                    .map_err(CliError::fail)?;
            }
            let tps = (b * n) as f64 / t0.elapsed().as_secs_f64();
            for &seq in &seqs {
                let c = engine.set_constraint(seq, None).map_err(CliError::fail)?;
                if let (Some(c), true) = (c, rep > 0) {
                    let (m, t) = c.mask_stats();
                    run.masks += m;
                    run.mask_seconds += t.as_secs_f64();
                }
            }
            if rep > 0 {
                if constrained {
                    run.constrained.push(tps);
                } else {
                    run.free.push(tps);
                }
            }
        }
    }
    Ok(run)
}

/// Runs `qwenrt bench`.
pub fn run(a: BenchArgs) -> Result<(), CliError> {
    let (p, n, r) = (a.n_prompt, a.n_gen, a.repetitions);
    let threads = threads_or_cores(a.threads);
    if r == 0 {
        return Err(CliError::usage("-r must be at least 1"));
    }
    if p == 0 && n == 0 {
        return Err(CliError::usage("nothing to run: both -p and -n are 0"));
    }
    let verify = count_list(a.verify.as_deref(), "--verify", "row counts")?;
    let mut batch = count_list(a.batch.as_deref(), "--batch", "sequence counts")?;
    a.constraint.precheck()?;
    if n == 0 && !(verify.is_empty() && batch.is_empty()) {
        return Err(CliError::usage(
            "--verify and --batch need -n above 0 (the tokens they feed)",
        ));
    }
    if a.layers.is_some() && a.synthetic.is_none() {
        return Err(CliError::usage(
            "--layers cuts a --synthetic model: give --synthetic SHAPE[:QUANT] too",
        ));
    }
    if a.synthetic.is_some() && a.constraint.is_set() {
        return Err(CliError::usage(
            "a constraint is benched on a real model (a --synthetic one has random weights): drop --synthetic or the constraint flag",
        ));
    }
    let dir = if let Some(synthetic) = &a.synthetic {
        if a.model.model.is_some() {
            return Err(CliError::usage(
                "--synthetic and --model exclude each other",
            ));
        }
        synthetic_model(synthetic, a.layers)?
    } else {
        a.model.dir()?
    };
    let weights = std::sync::Arc::new(
        Weights::load(&dir).map_err(|e| CliError::fail(format!("{}: {e}", dir.display())))?,
    );
    // With a constraint flag, --batch lists the constrained-vs-free comparisons (default 1).
    let constraint = if a.constraint.is_set() {
        let tok = load_tokenizer(&dir)?;
        a.constraint.build(&tok, &weights)?.map(|(_, c)| (tok, c))
    } else {
        None
    };
    let constrained_sizes = match (&constraint, batch.is_empty()) {
        (None, _) => Vec::new(),
        (Some(_), true) => vec![1],
        (Some(_), false) => std::mem::take(&mut batch),
    };
    let c = &weights.config;
    let ctx = p.max(n).max(1);
    if ctx > c.max_position_embeddings {
        return Err(CliError::usage(format!(
            "-p/-n of {ctx} exceed the model's max_position_embeddings ({})",
            c.max_position_embeddings
        )));
    }
    let opts = SessionOptions {
        ctx,
        max_chunk: p.max(verify.iter().copied().max().unwrap_or(1)).max(1),
        threads,
        isa: None,
        prefill_bf16: !a.prefill_f32,
        kv_dtype: a.kv.dtype(),
    };
    let mut session = Session::new(weights.clone(), &opts).map_err(CliError::fail)?;
    let tokens = bench_tokens(ctx, c.vocab_size);

    let mut pp = Vec::new();
    if p > 0 {
        for rep in 0..=r {
            session.reset();
            let t0 = Instant::now();
            session.prefill(&tokens[..p]).map_err(CliError::fail)?;
            let tps = p as f64 / t0.elapsed().as_secs_f64();
            if rep > 0 {
                pp.push(tps);
            }
        }
    }
    let mut tg = Vec::new();
    if n > 0 {
        for rep in 0..=r {
            session.reset();
            let t0 = Instant::now();
            for &t in &tokens[..n] {
                session.decode_step(t).map_err(CliError::fail)?;
            }
            let tps = n as f64 / t0.elapsed().as_secs_f64();
            if rep > 0 {
                tg.push(tps);
            }
        }
    }
    let mut vb: Vec<(usize, f64, f64)> = Vec::new();
    for &b in &verify {
        let mut samples = Vec::new();
        for rep in 0..=r {
            session.reset();
            let t0 = Instant::now();
            for rows in tokens[..n].chunks(b) {
                session
                    .decode_each(rows, &mut |_, _| {})
                    .map_err(CliError::fail)?;
            }
            let tps = n as f64 / t0.elapsed().as_secs_f64();
            if rep > 0 {
                samples.push(tps);
            }
        }
        let (m, sd) = mean_sd(&samples);
        vb.push((b, m, sd));
    }
    let mut bb: Vec<(usize, f64, f64)> = Vec::new();
    for &b in &batch {
        let samples = decode_batch(&weights, threads, a.kv.dtype(), b, n, r, &tokens)?;
        let (m, sd) = mean_sd(&samples);
        bb.push((b, m, sd));
    }
    let mut cr: Vec<ConstrainedRun> = Vec::new();
    let mut kind = "";
    if let Some((tok, proto)) = &constraint {
        kind = proto.kind();
        let stop = qwenrt::text::chat::stop_ids(tok, &weights.config);
        let largest = constrained_sizes.iter().copied().max().unwrap_or(1);
        let prompts = (0..largest)
            .map(|i| {
                let text = qwenrt::text::chat::first_turn(
                    qwenrt::text::chat::DEFAULT_SYSTEM_PROMPT,
                    &format!(
                        "Describe person number {} of a software team as JSON.",
                        i + 1
                    ),
                );
                tok.encode(&text).map_err(CliError::fail)
            })
            .collect::<Result<Vec<_>, _>>()?;
        for &b in &constrained_sizes {
            cr.push(constrained_batch(
                &weights,
                &prompts[..b],
                proto,
                &stop,
                threads,
                a.kv.dtype(),
                b,
                n,
                r,
            )?);
        }
    }
    let bw = read_bandwidth(&weights, session.isa(), threads);
    let per_token = weights.bytes_per_token() as f64;
    let (pp_m, pp_sd) = mean_sd(&pp);
    let (tg_m, tg_sd) = mean_sd(&tg);
    let tg_bw = per_token * tg_m / 1e9;
    let params = c.parameter_count().unwrap_or(0);
    let model = format!(
        "{} {:.1}B {}",
        c.arch.gguf_name(),
        params as f64 / 1e9,
        weights.matrix_formats()
    );
    let backend = session.cpu().describe();
    if a.json {
        let v = serde_json::json!({
            "model": model, "model_dir": dir, "params": params,
            "weights_bytes": weights.mapped_bytes(), "isa": session.isa().to_string(), "isa_extensions": session.cpu().extensions(), "threads": threads,
            "kv_dtype": session.kv_dtype().to_string().to_lowercase(),
            "pp": if p > 0 { serde_json::json!({"n_prompt": p, "tokens_per_second_mean": pp_m, "tokens_per_second_sd": pp_sd, "samples": pp}) } else { serde_json::Value::Null },
            "tg": if n > 0 { serde_json::json!({"n_gen": n, "tokens_per_second_mean": tg_m, "tokens_per_second_sd": tg_sd, "samples": tg}) } else { serde_json::Value::Null },
            "weight_bytes_per_token": per_token, "tg_weight_bandwidth_gb_s": tg_bw,
            "machine_read_bandwidth_gb_s": bw, "repetitions": r,
            "batch": bb.iter().map(|&(b, m, sd)| serde_json::json!({"sequences": b, "n_gen": n, "aggregate_tokens_per_second_mean": m, "aggregate_tokens_per_second_sd": sd})).collect::<Vec<_>>(),
            "constrained": cr.iter().map(|c| {
                let (fm, fsd) = mean_sd(&c.free);
                let (cm, csd) = mean_sd(&c.constrained);
                serde_json::json!({"sequences": c.sequences, "n_gen": n, "kind": kind,
                    "free_tokens_per_second_mean": fm, "free_tokens_per_second_sd": fsd,
                    "free_tokens_per_second_median": median(&c.free), "free_samples": c.free,
                    "constrained_tokens_per_second_mean": cm, "constrained_tokens_per_second_sd": csd,
                    "constrained_tokens_per_second_median": median(&c.constrained), "constrained_samples": c.constrained,
                    "constrained_over_free_median": median(&c.constrained) / median(&c.free).max(1e-12),
                    "mask_ms_per_token": c.mask_ms_per_token(), "mask_share_of_decode_time": c.mask_share(n)})
            }).collect::<Vec<_>>(),
            "verify": vb.iter().map(|&(b, m, sd)| serde_json::json!({"rows_per_pass": b, "n_gen": n, "tokens_per_second_mean": m, "tokens_per_second_sd": sd})).collect::<Vec<_>>(),
        });
        println!("{v}");
    } else {
        println!("| model | size | params | backend | threads | test | t/s |");
        println!("| --- | ---: | ---: | --- | ---: | ---: | ---: |");
        let size = format!(
            "{:.2} GiB",
            weights.mapped_bytes() as f64 / (1u64 << 30) as f64
        );
        let params_s = format!("{:.2} B", params as f64 / 1e9);
        if p > 0 {
            println!("| {model} | {size} | {params_s} | CPU {} | {threads} | pp{p} | {pp_m:.2} ± {pp_sd:.2} |", backend);
        }
        if n > 0 {
            println!("| {model} | {size} | {params_s} | CPU {} | {threads} | tg{n} | {tg_m:.2} ± {tg_sd:.2} |", backend);
        }
        for &(b, m, sd) in &bb {
            println!("| {model} | {size} | {params_s} | CPU {} | {threads} | b{b} tg{n} | {m:.2} ± {sd:.2} |", backend);
        }
        for c in &cr {
            let b = c.sequences;
            let (fm, fsd) = mean_sd(&c.free);
            let (cm, csd) = mean_sd(&c.constrained);
            println!("| {model} | {size} | {params_s} | CPU {} | {threads} | b{b} tg{n} free | {fm:.2} ± {fsd:.2} |", backend);
            println!("| {model} | {size} | {params_s} | CPU {} | {threads} | b{b} tg{n} {kind} | {cm:.2} ± {csd:.2} |", backend);
        }
        for &(b, m, sd) in &vb {
            println!("| {model} | {size} | {params_s} | CPU {} | {threads} | v{b} x{n} | {m:.2} ± {sd:.2} |", backend);
        }
        println!();
        println!(
            "tg weight bandwidth: {tg_bw:.2} GB/s ({:.3} GB per token x {tg_m:.2} t/s); machine read bandwidth ({threads} threads): {bw:.2} GB/s ({:.0}%)",
            per_token / 1e9,
            if bw > 0.0 { 100.0 * tg_bw / bw } else { 0.0 }
        );
        for c in &cr {
            println!(
                "b{} {kind}: median {:.2} t/s constrained vs {:.2} free ({:.1}%); mask {:.3} ms per token, {:.1}% of the constrained decode time",
                c.sequences,
                median(&c.constrained),
                median(&c.free),
                100.0 * median(&c.constrained) / median(&c.free).max(1e-12),
                c.mask_ms_per_token(),
                100.0 * c.mask_share(n)
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn mean_sd_matches_hand_computation() {
        let (m, sd) = super::mean_sd(&[1.0, 2.0, 3.0, 4.0]);
        assert!((m - 2.5).abs() < 1e-12);
        assert!((sd - (5.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(super::mean_sd(&[7.0]), (7.0, 0.0));
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(super::median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(super::median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(super::median(&[]), 0.0);
    }
}
