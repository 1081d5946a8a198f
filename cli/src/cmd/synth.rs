//! `qwenrt synth`: a random-weight GGUF of a real Qwen shape in llama.cpp's naming and tensor
//! types ([`qwenrt::model::synth`]), for running qwenrt and llama.cpp on the very same file.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use qwenrt::model::gguf::GgufFile;
use qwenrt::model::synth::{write_synth_gguf, SynthQuant, SynthSpec};

use super::{progress, CliError};

/// `qwenrt synth`.
#[derive(Args, Debug)]
#[command(
    after_help = "SHAPE is one of qwen2.5-0.5b, qwen2.5-1.5b, qwen2.5-3b, qwen2.5-7b, \
qwen2.5-14b, qwen3-0.6b, qwen3-4b, qwen3-8b, qwen3-14b, qwen3-30b-a3b (their configs' values). \
The tokenizer is the default model's (its GGUF is fetched on first use). The file is written \
streaming under a temporary name and renamed into place; the same SHAPE, --quant, --layers and \
--seed give the same bytes."
)]
pub struct SynthArgs {
    /// The model shape
    #[arg(value_name = "SHAPE", required = true)]
    shape: Option<String>,
    /// The tensor-type mix, as llama-quantize (q4_k_m, q8_0) or the converter (bf16) makes it
    #[arg(long, value_name = "QUANT", default_value = "q4_k_m")]
    quant: String,
    /// Write only the first N layers (1 to the shape's layers) [default: all]
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    layers: Option<usize>,
    /// The seed of the random weights
    #[arg(long, value_name = "S", default_value_t = 1)]
    seed: u64,
    /// The GGUF file to write
    #[arg(long, value_name = "FILE.gguf", required = true)]
    out: Option<PathBuf>,
}

/// Runs `qwenrt synth`: prints the file written.
pub fn run(a: SynthArgs) -> Result<(), CliError> {
    let (Some(shape), Some(out)) = (a.shape, a.out) else {
        return Err(CliError::usage("synth needs SHAPE and --out FILE.gguf"));
    };
    let quant = SynthQuant::by_name(&a.quant).map_err(|e| CliError::usage(e.to_string()))?;
    let spec = SynthSpec::new(&shape, quant, a.layers, a.seed)
        .map_err(|e| CliError::usage(e.to_string()))?;
    write(&spec, &out)?;
    println!("{}", out.display());
    Ok(())
}

/// Parses `SHAPE[:QUANT]` (QUANT default q4_k_m), as `flag` takes it.
pub fn parse_shape_quant(
    value: &str,
    flag: &str,
    layers: Option<usize>,
) -> Result<SynthSpec, CliError> {
    let (shape, quant) = value.split_once(':').unwrap_or((value, "q4_k_m"));
    let usage = |e: qwenrt::model::synth::SynthError| CliError::usage(format!("{flag}: {e}"));
    let quant = SynthQuant::by_name(quant).map_err(usage)?;
    SynthSpec::new(shape, quant, layers, 1).map_err(usage)
}

/// Writes `spec` to `path` with the default model's tokenizer (fetched on first use),
/// reporting on stderr.
pub fn write(spec: &SynthSpec, path: &Path) -> Result<(), CliError> {
    let tokenizer_gguf = qwenrt_cli::hub::ensure_default_gguf_with(&mut progress::FetchBars::new())
        .map_err(CliError::fail)?;
    let tokenizer = GgufFile::open(&tokenizer_gguf)
        .map_err(|e| CliError::fail(format!("{}: {e}", tokenizer_gguf.display())))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| CliError::fail(format!("{}: {e}", dir.display())))?;
    }
    eprintln!(
        "writing {} ({} layers, {}, seed {}): {:.2} GB to {}",
        spec.shape.name,
        spec.shape.layers,
        spec.quant.name(),
        spec.seed,
        spec.data_bytes() as f64 / 1e9,
        path.display()
    );
    let t0 = Instant::now();
    write_synth_gguf(path, spec, &tokenizer.header).map_err(CliError::fail)?;
    eprintln!("written in {:.1} s", t0.elapsed().as_secs_f64());
    Ok(())
}
