//! `qwenrt perplexity`: perplexity and KL divergence on llama-perplexity's convention.

use std::path::PathBuf;

use clap::Args;
use qwenrt::engine::session::Session;
use qwenrt_cli::workload::perplexity::{perplexity, KldMode, Report};

use super::{load_tokenizer, load_weights, CliError, ModelArg, RunArgs};

/// `qwenrt perplexity`.
#[derive(Args, Debug)]
#[command(
    after_help = "As llama-perplexity: the text's tokens in non-overlapping chunks of \
--ctx tokens, each from an empty cache, scored on its second half; a running value after each \
chunk, then `Final estimate: PPL = X +/- Y`."
)]
pub struct PerplexityArgs {
    /// The text file to score
    #[arg(value_name = "FILE", required = true)]
    file: Option<PathBuf>,
    /// Score at most this many chunks
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    chunks: Option<usize>,
    /// Save every scored position's log-probabilities to OUT (for --kl-divergence)
    #[arg(long, value_name = "OUT", conflicts_with = "kl_divergence")]
    kl_divergence_base: Option<PathBuf>,
    /// Compare against log-probabilities saved by --kl-divergence-base: mean KLD, same top-1
    #[arg(long, value_name = "BASE")]
    kl_divergence: Option<PathBuf>,
    /// Keep every prefill projection in f32
    #[arg(long)]
    prefill_f32: bool,
    #[command(flatten)]
    model: ModelArg,
    #[command(flatten)]
    run: RunArgs,
}

/// Runs `qwenrt perplexity`.
pub fn run(a: PerplexityArgs) -> Result<(), CliError> {
    let Some(file) = a.file else {
        return Err(CliError::usage("perplexity needs FILE"));
    };
    let text = std::fs::read_to_string(&file)
        .map_err(|e| CliError::fail(format!("cannot read {}: {e}", file.display())))?;
    let dir = a.model.dir()?;
    let weights = load_weights(&dir)?;
    let tok = load_tokenizer(&dir)?;
    let opts = a.run.session_options(&weights, 512, a.prefill_f32);
    let ctx = opts.ctx;
    let mut session = Session::new(weights, &opts).map_err(CliError::fail)?;
    let tokens = tok.encode(&text).map_err(CliError::fail)?;
    let mode = match (a.kl_divergence_base, a.kl_divergence) {
        (Some(p), _) => KldMode::Save(p),
        (None, Some(p)) => KldMode::Compare(p),
        (None, None) => KldMode::None,
    };
    eprintln!(
        "perplexity: {} tokens, {} chunks of {ctx} | threads: {} | isa: {}",
        tokens.len(),
        (tokens.len() / ctx).min(a.chunks.unwrap_or(usize::MAX)),
        session.threads(),
        session.isa()
    );
    let t0 = std::time::Instant::now();
    let report = perplexity(
        &mut session,
        &tokens,
        ctx,
        a.chunks,
        &mode,
        &mut |i, r: &Report| {
            print!("[{}]{:.4},", i + 1, r.ppl());
            use std::io::Write;
            let _ = std::io::stdout().flush();
        },
    )
    .map_err(CliError::fail)?;
    println!();
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "{} positions scored in {secs:.1} s ({:.1} tokens/s evaluated)",
        report.count,
        (report.chunks * ctx) as f64 / secs
    );
    if let Some((kld, kld_err, same)) = report.kld_summary() {
        println!("Mean    KLD: {kld:10.6} +/- {kld_err:10.6}");
        println!("Same top p: {:6.3} %", 100.0 * same);
    }
    println!(
        "Final estimate: PPL = {:.4} +/- {:.5}",
        report.ppl(),
        report.ppl_uncertainty()
    );
    Ok(())
}
