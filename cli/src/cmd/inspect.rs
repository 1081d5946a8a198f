//! `qwenrt tokenize`, `qwenrt logits` and `qwenrt info`: looking into a model.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use qwenrt::engine::session::Session;
use qwenrt::model::config::Config;
use qwenrt::text::template::ToolCallFormat;

use super::{load_tokenizer, load_weights, ChatTemplateArg, CliError, ModelArg, RunArgs};

/// `qwenrt tokenize`.
#[derive(Args, Debug)]
pub struct TokenizeArgs {
    /// The text to encode (special tokens such as <|im_start|> are recognised)
    #[arg(value_name = "TEXT", required = true, allow_negative_numbers = true)]
    text: Option<String>,
    #[command(flatten)]
    model: ModelArg,
}

/// `qwenrt logits`.
#[derive(Args, Debug)]
#[command(
    after_help = "Each line: {\"pos\":i,\"top\":[[id,logit],...],\"logsumexp\":x}, \
the top K logits after the prompt's first i+1 tokens, highest first."
)]
pub struct LogitsArgs {
    /// The prompt as comma-separated token ids, e.g. 1,2,3
    #[arg(long, value_name = "1,2,3", required = true)]
    ids: Option<String>,
    /// How many of the highest logits to print per position
    #[arg(
        long,
        value_name = "K",
        default_value_t = 20,
        allow_negative_numbers = true
    )]
    top: usize,
    /// Keep every prefill projection in f32
    #[arg(long)]
    prefill_f32: bool,
    #[command(flatten)]
    model: ModelArg,
    #[command(flatten)]
    run: RunArgs,
}

/// `qwenrt info`.
#[derive(Args, Debug)]
pub struct InfoArgs {
    #[command(flatten)]
    model: ModelArg,
    #[command(flatten)]
    chat_template: ChatTemplateArg,
    #[command(flatten)]
    run: RunArgs,
}

/// Runs `qwenrt tokenize`.
pub fn tokenize(a: TokenizeArgs) -> Result<(), CliError> {
    let text = a
        .text
        .as_deref()
        .ok_or_else(|| CliError::usage("tokenize needs TEXT"))?;
    let dir = a.model.dir()?;
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

/// Runs `qwenrt logits`.
pub fn logits(a: LogitsArgs) -> Result<(), CliError> {
    let ids = parse_ids(
        a.ids
            .as_deref()
            .ok_or_else(|| CliError::usage("logits needs --ids"))?,
    )?;
    let top = a.top;
    let dir = a.model.dir()?;
    let weights = load_weights(&dir)?;
    let mut opts = a.run.session_options(&weights, ids.len(), a.prefill_f32);
    if a.run.ctx.is_none() {
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

/// Runs `qwenrt info`.
pub fn info(a: InfoArgs) -> Result<(), CliError> {
    let dir: PathBuf = a.model.dir()?;
    let weights = load_weights(&dir)?;
    let c = &weights.config;
    let opts = a.run.session_options(&weights, 4096, false);
    // the session first, so that a model or --ctx it cannot serve prints no partial report
    let session = Session::new(weights.clone(), &opts).map_err(CliError::fail)?;
    let template = a.chat_template.load(&dir)?;
    println!("model: {}", dir.display());
    println!("{}", architecture_line(c));
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
    let biases = match &weights.layers[0].q_bias {
        Some(b) => b.format.to_string(),
        None => "none".into(),
    };
    println!("norms: {} | biases: {biases}", weights.norm.format);
    println!(
        "isa: {} | threads: {} | ctx: {} | kv cache: {}",
        session.cpu().describe(),
        session.threads(),
        session.ctx(),
        session.kv_dtype().to_string().to_lowercase()
    );
    println!(
        "chat template: {} | tool calls: {} | thinking switch: {}",
        template.origin(),
        match template.tool_format() {
            ToolCallFormat::HermesJson => "<tool_call> JSON",
            ToolCallFormat::Qwen3CoderXml => "<tool_call> XML (Qwen3-Coder)",
            ToolCallFormat::Llama3Json => "bare JSON with \"parameters\" (Llama 3.x)",
            ToolCallFormat::None => "none",
        },
        if template.thinking() { "yes" } else { "no" }
    );
    println!("arena plan:\n{}", session.memory_plan());
    if weights.repacked_bytes() > 0 {
        println!(
            "weights repacked for the AVX-512 decode matvec (Q4_0/Q5_0/Q8_0, QWENRT_REPACK=0 turns it off): {} bytes ({:.1} MiB), besides the mapped file",
            weights.repacked_bytes(),
            weights.repacked_bytes() as f64 / (1 << 20) as f64
        );
    }
    Ok(())
}

/// `architecture: qwen3moe (Qwen3MoeForCausalLM) | experts 128, top-8 ... | pooling: last`:
/// what kind of model it is (the experts of a MoE model; the pooling of an embedder, when the
/// file names one).
fn architecture_line(c: &Config) -> String {
    let mut line = format!("architecture: {} ({})", c.arch, c.arch.class());
    if let Some(m) = &c.moe {
        let dense: Vec<String> = m
            .sparse_layers
            .iter()
            .enumerate()
            .filter(|(_, &sparse)| !sparse)
            .map(|(l, _)| l.to_string())
            .collect();
        line.push_str(&format!(
            " | experts {}, top-{} per token{} | expert ffn {} | dense-MLP layers: {}",
            m.num_experts,
            m.experts_per_tok,
            if m.norm_topk_prob {
                " (renormalized)"
            } else {
                ""
            },
            m.moe_intermediate_size,
            if dense.is_empty() {
                "none".to_string()
            } else {
                dense.join(",")
            }
        ));
    }
    if let Some(p) = c.pooling {
        line.push_str(&format!(" | pooling: {} (an embedding model)", p.name()));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn architecture_line_names_the_experts_and_the_pooling() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
        let moe = Config::from_file(&dir.join("tiny-qwen3-moe-bf16/config.json")).unwrap();
        assert_eq!(
            architecture_line(&moe),
            "architecture: qwen3_moe (Qwen3MoeForCausalLM) | experts 8, top-2 per token (renormalized) | expert ffn 48 | dense-MLP layers: 1"
        );
        let mut dense = Config::from_file(&dir.join("tiny-qwen3-f32-tied/config.json")).unwrap();
        assert_eq!(
            architecture_line(&dense),
            "architecture: qwen3 (Qwen3ForCausalLM)"
        );
        dense.pooling = Some(qwenrt::model::config::Pooling::Last);
        assert!(architecture_line(&dense).ends_with(" | pooling: last (an embedding model)"));
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
