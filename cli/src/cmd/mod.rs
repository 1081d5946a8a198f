//! The `qwenrt` command line: the flags of every command declared once with clap's derive
//! (which also writes each command's `--help`), clap's errors turned into one `error:` line
//! that names the flag, and the commands, one module each (or a small group).
//!
//! Exit status: 0 on success, 2 for usage errors (bad flags, out-of-range values), 1 for
//! runtime errors (a model that does not load, a file that cannot be read).

mod arc;
mod batch;
mod bench;
mod chat;
mod constrain;
mod errors;
mod generate;
mod inspect;
mod loadgen;
mod models;
mod perplexity;
mod progress;
mod serve;
mod synth;

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Parser, Subcommand, ValueEnum};

use qwenrt::engine::sampler::SamplerParams;
use qwenrt::engine::session::SessionOptions;
use qwenrt::engine::EngineOptions;
use qwenrt::model::weights::{LoadError, Weights};
use qwenrt::text::template::ChatTemplate;
use qwenrt::text::tokenizer::Tokenizer;
use qwenrt_kernels::Dtype;

/// A command-line failure: printed as one line, exit status 1 (2 for usage errors).
#[derive(Debug)]
pub struct CliError {
    /// The message, printed after `error: `.
    pub message: String,
    /// A usage error (exit status 2) rather than a runtime one (1).
    pub usage: bool,
}

impl CliError {
    /// A usage error: bad flags or values.
    pub fn usage(message: impl Into<String>) -> CliError {
        CliError {
            message: message.into(),
            usage: true,
        }
    }

    /// A runtime error.
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

const AFTER_HELP: &str = "\
Without --model, the default model (Qwen2.5-Coder-0.5B-Instruct, its Q4_K_M GGUF) is used,
fetched into $QWENRT_HOME (~/.cache/qwenrt) on first use.
QWENRT_ISA=avx512|avx2|scalar (x86-64) or neon|neon-dotprod|neon-i8mm|scalar (aarch64)
forces the kernels' instruction set.";

/// qwenrt: run Qwen2-family models on the CPU
#[derive(Parser, Debug)]
#[command(name = "qwenrt", version, after_help = AFTER_HELP)]
#[command(propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate a completion for one prompt (streamed to stdout; stats on stderr)
    Generate(generate::GenerateArgs),
    /// Chat turn by turn, one user message per line of stdin
    Chat(chat::ChatArgs),
    /// Print the token ids of TEXT as a JSON array
    Tokenize(inspect::TokenizeArgs),
    /// Print the top logits at each position of a prompt given as token ids (JSONL)
    Logits(inspect::LogitsArgs),
    /// Print the model's config, formats and the arena plan
    Info(inspect::InfoArgs),
    /// Measure prompt processing (pp) and token generation (tg) throughput
    Bench(bench::BenchArgs),
    /// Fetch and convert the default model (Qwen2.5-Coder-0.5B-Instruct); prints its directory
    Fetch(models::FetchArgs),
    /// Convert a GGUF file into a Hugging Face-layout model directory
    Convert(models::ConvertArgs),
    /// Run ARC-AGI tasks and score the answers (one JSONL record per test input)
    Arc(arc::ArcArgs),
    /// Run the prompts of a JSONL file, one output record per line, in input order
    Batch(batch::BatchArgs),
    /// Serve the model over HTTP (OpenAI-compatible, continuous batching)
    Serve(serve::ServeArgs),
    /// Closed-loop streaming load against an OpenAI-compatible server (qwenrt serve, llama-server)
    Loadgen(loadgen::LoadgenArgs),
    /// Perplexity of a text file (llama-perplexity's convention), and KL divergence between two paths
    Perplexity(perplexity::PerplexityArgs),
    /// Write a random-weight GGUF of a real Qwen shape in llama.cpp's tensor types
    Synth(synth::SynthArgs),
}

/// Runs the command line `args` (the program name first).
pub fn run(args: &[String]) -> Result<(), CliError> {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => return errors::from_clap(e, args),
    };
    match cli.command {
        Command::Generate(a) => generate::run(a),
        Command::Chat(a) => chat::run(a),
        Command::Tokenize(a) => inspect::tokenize(a),
        Command::Logits(a) => inspect::logits(a),
        Command::Info(a) => inspect::info(a),
        Command::Bench(a) => bench::run(a),
        Command::Fetch(a) => models::fetch(a),
        Command::Convert(a) => models::convert(a),
        Command::Arc(a) => arc::run(a),
        Command::Batch(a) => batch::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Loadgen(a) => loadgen::run(a),
        Command::Perplexity(a) => perplexity::run(a),
        Command::Synth(a) => synth::run(a),
    }
}

/// `--model PATH`.
#[derive(Args, Debug, Clone)]
struct ModelArg {
    /// A GGUF file or a Hugging Face-layout Qwen2 model directory [default: the default
    /// model's GGUF, fetched on first use]
    #[arg(long, value_name = "PATH")]
    model: Option<PathBuf>,
}

impl ModelArg {
    /// The model: `--model`, or the default model's GGUF (fetched on first use).
    fn dir(&self) -> Result<PathBuf, CliError> {
        match &self.model {
            Some(d) => Ok(d.clone()),
            None => qwenrt_cli::hub::ensure_default_gguf_with(&mut progress::FetchBars::new())
                .map_err(CliError::fail),
        }
    }
}

/// `--chat-template-file FILE`, for every command that renders chat.
#[derive(Args, Debug, Clone)]
struct ChatTemplateArg {
    /// Render chat with this Jinja template (or a tokenizer_config.json holding one) instead
    /// of the model's own [default: the GGUF's tokenizer.chat_template, or a model
    /// directory's chat_template.jinja or tokenizer_config.json; ChatML if it has none]
    #[arg(long, value_name = "FILE")]
    chat_template_file: Option<PathBuf>,
    /// Render with `enable_thinking` false (true without it): a template with a thinking
    /// switch (Qwen3's) closes the thinking part in the prompt, so the model answers directly
    #[arg(long)]
    no_think: bool,
}

impl ChatTemplateArg {
    /// The chat template of the model at `model` (a GGUF file or a directory), or the file.
    fn load(&self, model: &Path) -> Result<ChatTemplate, CliError> {
        let t = ChatTemplate::for_model(model, self.chat_template_file.as_deref())
            .map_err(CliError::fail)?;
        // set either way, as llama-server does: templates that test `not enable_thinking`
        // (llama.cpp's DeepSeek-R1 and Command-R7B ones) read an unset switch as off
        t.with_variable("enable_thinking", serde_json::Value::Bool(!self.no_think))
            .map_err(CliError::fail)
    }
}

/// `--kv-dtype TYPE`: the KV cache's element type, for every command that builds an engine.
#[derive(Args, Debug, Clone)]
struct KvDtypeArg {
    /// The KV cache's element type: bf16 and f16 store it in 16 bits, half the memory per
    /// sequence (rounded to nearest as written; attention reads the 16 bits directly)
    #[arg(long, value_name = "TYPE", value_enum, default_value_t = KvDtype::of(EngineOptions::default().kv_dtype))]
    kv_dtype: KvDtype,
}

/// The values of `--kv-dtype`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum KvDtype {
    F32,
    Bf16,
    F16,
}

impl KvDtype {
    /// The value naming `dtype`, one of the three a KV cache is stored in (f32 for any other).
    fn of(dtype: Dtype) -> KvDtype {
        match dtype {
            Dtype::BF16 => KvDtype::Bf16,
            Dtype::F16 => KvDtype::F16,
            _ => KvDtype::F32,
        }
    }
}

impl KvDtypeArg {
    /// The element type chosen.
    fn dtype(&self) -> Dtype {
        match self.kv_dtype {
            KvDtype::F32 => Dtype::F32,
            KvDtype::Bf16 => Dtype::BF16,
            KvDtype::F16 => Dtype::F16,
        }
    }
}

/// `--threads N`, `--ctx N` and `--kv-dtype TYPE`.
#[derive(Args, Debug, Clone)]
struct RunArgs {
    /// Worker threads [default: the number of physical cores]
    #[arg(short = 't', long, value_name = "N", allow_negative_numbers = true)]
    threads: Option<usize>,
    /// Context length in tokens: the KV cache holds this many positions
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    ctx: Option<usize>,
    #[command(flatten)]
    kv: KvDtypeArg,
}

impl RunArgs {
    /// Session options: `--threads` or the physical cores, `--ctx` or `default_ctx` (capped
    /// at the model's max_position_embeddings), `--kv-dtype`.
    fn session_options(
        &self,
        weights: &Weights,
        default_ctx: usize,
        prefill_f32: bool,
    ) -> SessionOptions {
        SessionOptions {
            ctx: self
                .ctx
                .unwrap_or(default_ctx.min(weights.config.max_position_embeddings)),
            threads: threads_or_cores(self.threads),
            prefill_bf16: !prefill_f32,
            kv_dtype: self.kv.dtype(),
            ..Default::default()
        }
    }
}

/// `--lookup N`: prompt-lookup decoding for greedy sampling.
#[derive(Args, Debug, Clone)]
struct LookupArg {
    /// Draft up to N tokens per step from the prompt and the text so far (greedy decoding
    /// only, whose output it leaves unchanged); 0 turns it off [default: 8]
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    lookup: Option<usize>,
}

impl LookupArg {
    /// `--lookup`, or the default.
    fn value(&self) -> usize {
        self.lookup
            .unwrap_or(qwenrt::engine::lookup::DEFAULT_LOOKUP)
    }

    /// Applies `--lookup` (or the default) to `session`.
    fn apply(&self, session: &mut qwenrt::Session) {
        session.set_lookup(self.value());
    }
}

/// The sampling flags of generate and chat.
#[derive(Args, Debug, Clone)]
struct SamplingArgs {
    /// Sampling temperature; 0 is greedy [default: 0.8]
    #[arg(long, value_name = "T", allow_negative_numbers = true)]
    temperature: Option<f32>,
    /// Keep only the K most likely tokens; 0 keeps all [default: 40]
    #[arg(long, value_name = "K", allow_negative_numbers = true)]
    top_k: Option<usize>,
    /// Keep the most likely tokens up to probability mass P, in (0, 1] [default: 0.95]
    #[arg(long, value_name = "P", allow_negative_numbers = true)]
    top_p: Option<f32>,
    /// Drop tokens below P times the most likely one's probability, in [0, 1] [default: 0.05]
    #[arg(long, value_name = "P", allow_negative_numbers = true)]
    min_p: Option<f32>,
    /// Penalty on recently seen tokens, > 0; 1 is none [default: 1.0]
    #[arg(long, value_name = "R", allow_negative_numbers = true)]
    repeat_penalty: Option<f32>,
    /// Subtract F times a token's count in the reply so far from its logit, in [-2, 2]
    /// [default: 0]
    #[arg(long, value_name = "F", allow_negative_numbers = true)]
    frequency_penalty: Option<f32>,
    /// Subtract P from the logit of every token already in the reply, in [-2, 2] [default: 0]
    #[arg(long, value_name = "P", allow_negative_numbers = true)]
    presence_penalty: Option<f32>,
    /// Seed of the sampler's random numbers [default: 42]
    #[arg(long, value_name = "S", allow_negative_numbers = true)]
    seed: Option<u64>,
}

impl SamplingArgs {
    /// The sampler parameters, validated (an out-of-range value is a usage error naming it).
    fn params(&self) -> Result<SamplerParams, CliError> {
        let d = SamplerParams::default();
        let p = SamplerParams {
            temperature: self.temperature.unwrap_or(d.temperature),
            top_k: self.top_k.unwrap_or(d.top_k),
            top_p: self.top_p.unwrap_or(d.top_p),
            min_p: self.min_p.unwrap_or(d.min_p),
            repeat_penalty: self.repeat_penalty.unwrap_or(d.repeat_penalty),
            repeat_last_n: d.repeat_last_n,
            frequency_penalty: self.frequency_penalty.unwrap_or(d.frequency_penalty),
            presence_penalty: self.presence_penalty.unwrap_or(d.presence_penalty),
            seed: self.seed.unwrap_or(d.seed),
            ..d
        };
        p.validate().map_err(|e| CliError::usage(e.to_string()))?;
        Ok(p)
    }
}

/// `--threads`, or the physical cores without it. More threads than physical cores is allowed
/// (a user may know better) but warned about: two threads on one core's hyperthreads share its
/// execution units and split its cache, and the pool's spin barrier waits on the slowest.
pub fn threads_or_cores(flag: Option<usize>) -> usize {
    let cores = physical_cores();
    match flag {
        Some(t) if t > cores => {
            eprintln!(
                "warning: --threads {t} is more than the {cores} physical cores; decode and \
                 prefill are usually fastest at one thread per physical core"
            );
            t
        }
        Some(t) => t,
        None => cores,
    }
}

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

fn load_weights(dir: &Path) -> Result<Arc<Weights>, CliError> {
    Weights::load(dir).map(Arc::new).map_err(|e| match e {
        // these name their file already
        LoadError::Io { .. } | LoadError::Format { .. } => CliError::fail(e),
        e => CliError::fail(format!("{}: {e}", dir.display())),
    })
}

/// The tokenizer of a model directory (`tokenizer.json`) or a GGUF file (its metadata).
fn load_tokenizer(dir: &Path) -> Result<Tokenizer, CliError> {
    if dir.is_file() {
        return Tokenizer::from_gguf(dir).map_err(CliError::fail);
    }
    Tokenizer::from_file(&dir.join("tokenizer.json")).map_err(CliError::fail)
}

/// Opens `out` (or stdout) for JSONL records.
fn record_sink(out: Option<&Path>) -> Result<Box<dyn Write>, CliError> {
    Ok(match out {
        Some(p) => Box::new(std::io::BufWriter::new(std::fs::File::create(p).map_err(
            |e| CliError::fail(format!("cannot create {}: {e}", p.display())),
        )?)),
        None => Box::new(std::io::stdout()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
