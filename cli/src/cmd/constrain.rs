//! The constraint flags of `generate` and `bench`: `--json-schema FILE`, `--regex RE`,
//! `--grammar FILE` (a Lark grammar), `--gbnf FILE` (llama.cpp's GBNF), one at most, compiled
//! against the model's tokenizer.

use std::path::{Path, PathBuf};

use clap::Args;
use qwenrt::engine::constraint::{Constraint, Grammars};
use qwenrt::text::tokenizer::Tokenizer;
use qwenrt::Weights;

use super::CliError;

/// `--json-schema FILE | --regex RE | --grammar FILE | --gbnf FILE`.
#[derive(Args, Debug, Clone, Default)]
#[group(multiple = false)]
pub struct ConstraintArgs {
    /// Constrain the answer to JSON valid against the JSON schema in FILE
    #[arg(long, value_name = "FILE")]
    json_schema: Option<PathBuf>,
    /// Constrain the answer to text matching the regex RE in full
    #[arg(long, value_name = "RE")]
    regex: Option<String>,
    /// Constrain the answer to the Lark grammar in FILE (llguidance's dialect; rule `start`)
    #[arg(long, value_name = "FILE")]
    grammar: Option<PathBuf>,
    /// Constrain the answer to the GBNF grammar in FILE (llama.cpp's format; rule `root`)
    #[arg(long, value_name = "FILE")]
    gbnf: Option<PathBuf>,
}

/// What a constraint flag said, read and parsed; compiled by [`Source::compile`].
enum Source {
    Schema(PathBuf, serde_json::Value),
    Regex(String),
    Lark(PathBuf, String),
    Gbnf(PathBuf, String),
}

fn read(flag: &str, path: &Path) -> Result<String, CliError> {
    std::fs::read_to_string(path)
        .map_err(|e| CliError::fail(format!("{flag} {}: cannot read it: {e}", path.display())))
}

impl ConstraintArgs {
    /// Whether a constraint flag was given.
    pub fn is_set(&self) -> bool {
        self.json_schema.is_some()
            || self.regex.is_some()
            || self.grammar.is_some()
            || self.gbnf.is_some()
    }

    /// Reads the flag's file (if any) and checks it is what the flag takes, before the model
    /// is loaded; `None` without a flag.
    fn source(&self) -> Result<Option<Source>, CliError> {
        if let Some(p) = &self.json_schema {
            let text = read("--json-schema", p)?;
            let v = serde_json::from_str(&text).map_err(|e| {
                CliError::usage(format!("--json-schema {}: not JSON: {e}", p.display()))
            })?;
            return Ok(Some(Source::Schema(p.clone(), v)));
        }
        if let Some(r) = &self.regex {
            return Ok(Some(Source::Regex(r.clone())));
        }
        if let Some(p) = &self.grammar {
            return Ok(Some(Source::Lark(p.clone(), read("--grammar", p)?)));
        }
        if let Some(p) = &self.gbnf {
            let text = read("--gbnf", p)?;
            // its syntax is checked here, before any model loads
            qwenrt::engine::gbnf::gbnf_to_lark(&text)
                .map_err(|e| CliError::usage(format!("--gbnf {}: {e}", p.display())))?;
            return Ok(Some(Source::Gbnf(p.clone(), text)));
        }
        Ok(None)
    }

    /// The constraint the flags name, compiled for `tok` and `weights` (with the compiler, to
    /// make more of it); `None` without a flag. Errors name the flag and the file.
    pub fn build(
        &self,
        tok: &Tokenizer,
        weights: &Weights,
    ) -> Result<Option<(Grammars, Constraint)>, CliError> {
        let Some(source) = self.source()? else {
            return Ok(None);
        };
        let stop = qwenrt::text::chat::stop_ids(tok, &weights.config);
        let grammars =
            Grammars::new(tok, weights.config.vocab_size, &stop).map_err(CliError::fail)?;
        let c = match &source {
            Source::Schema(p, v) => grammars
                .json_schema(v)
                .map_err(|e| CliError::usage(format!("--json-schema {}: {e}", p.display())))?,
            Source::Regex(r) => grammars
                .regex(r)
                .map_err(|e| CliError::usage(format!("--regex: {e}")))?,
            Source::Lark(p, g) => grammars
                .lark(g)
                .map_err(|e| CliError::usage(format!("--grammar {}: {e}", p.display())))?,
            Source::Gbnf(p, g) => grammars
                .gbnf(g)
                .map_err(|e| CliError::usage(format!("--gbnf {}: {e}", p.display())))?,
        };
        Ok(Some((grammars, c)))
    }

    /// Checks the flags' files before any model loads (so a bad file fails fast).
    pub fn precheck(&self) -> Result<(), CliError> {
        self.source().map(|_| ())
    }
}
