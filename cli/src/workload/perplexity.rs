//! Perplexity on llama-perplexity's convention, so the numbers compare one to one: the text's
//! tokens cut into non-overlapping chunks of `ctx` tokens (a partial last chunk is dropped),
//! each chunk evaluated from an empty cache, and only its second half scored: the logits at
//! positions `ctx/2 .. ctx-1` predicting the tokens after them (`ctx - 1 - ctx/2` per chunk).
//! The estimate is `exp(mean NLL)` with the uncertainty `PPL * sqrt(var(NLL) / (count - 1))`.
//!
//! Two paths (two models, or two builds of one) compare through the Kullback-Leibler
//! divergence: a run with [`KldMode::Save`] writes every scored position's log-probabilities
//! (f32, so the stored distribution is the one computed), a run with [`KldMode::Compare`] reads
//! them back and reports the mean KLD of its own distribution from the saved one and how often
//! both put the same token first.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use qwenrt_kernels::scalar::argmax;

use qwenrt::engine::session::{Session, SessionError};

/// Magic bytes opening a saved log-probability file.
const MAGIC: &[u8; 8] = b"QWRTKLD1";

/// Why a perplexity run failed.
#[derive(Debug)]
pub enum PerplexityError {
    /// The text has fewer than `2 * ctx` tokens (llama-perplexity's minimum).
    TooShort {
        /// Tokens in the text.
        tokens: usize,
        /// The context asked for.
        ctx: usize,
    },
    /// The model failed.
    Session(SessionError),
    /// The saved log-probabilities cannot be read or written.
    Io(PathBuf, std::io::Error),
    /// The saved log-probabilities were made for other tokens, another vocabulary or context.
    Mismatch(PathBuf, String),
}

impl std::fmt::Display for PerplexityError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PerplexityError::TooShort { tokens, ctx } => write!(
                f,
                "the text is {tokens} tokens; perplexity at --ctx {ctx} needs at least {} (two chunks)",
                2 * ctx
            ),
            PerplexityError::Session(e) => write!(f, "{e}"),
            PerplexityError::Io(p, e) => write!(f, "{}: {e}", p.display()),
            PerplexityError::Mismatch(p, why) => write!(f, "{}: {why}", p.display()),
        }
    }
}

impl std::error::Error for PerplexityError {}

impl From<SessionError> for PerplexityError {
    fn from(e: SessionError) -> Self {
        PerplexityError::Session(e)
    }
}

/// What to do with the scored positions' distributions.
pub enum KldMode {
    /// Nothing.
    None,
    /// Write them to this file (`--kl-divergence-base`).
    Save(PathBuf),
    /// Compare against those saved in this file (`--kl-divergence`).
    Compare(PathBuf),
}

/// The result of a run.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Chunks evaluated.
    pub chunks: usize,
    /// Positions scored.
    pub count: usize,
    /// Sum of the NLLs (nats).
    pub nll: f64,
    /// Sum of their squares.
    pub nll2: f64,
    /// With [`KldMode::Compare`]: sum of the per-position KL divergences, their squares, and
    /// the positions whose top token agrees with the saved one.
    pub kld: Option<(f64, f64, usize)>,
}

impl Report {
    /// `exp(mean NLL)`.
    pub fn ppl(&self) -> f64 {
        (self.nll / self.count.max(1) as f64).exp()
    }

    /// llama-perplexity's uncertainty: `PPL * sqrt((mean(NLL²) - mean(NLL)²) / (count - 1))`.
    pub fn ppl_uncertainty(&self) -> f64 {
        let n = self.count as f64;
        let mean = self.nll / n;
        let var = self.nll2 / n - mean * mean;
        if var > 0.0 && self.count > 1 {
            (var / (n - 1.0)).sqrt() * self.ppl()
        } else {
            0.0
        }
    }

    /// Mean KLD with its standard error, and the same-top-1 fraction, when compared.
    pub fn kld_summary(&self) -> Option<(f64, f64, f64)> {
        let (s, s2, same) = self.kld?;
        let n = self.count as f64;
        let mean = s / n;
        let var = (s2 / n - mean * mean).max(0.0);
        Some((mean, (var / (n - 1.0).max(1.0)).sqrt(), same as f64 / n))
    }
}

/// `log(sum(exp(logits)))`, in f64.
pub fn logsumexp(logits: &[f32]) -> f64 {
    let m = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    m + logits
        .iter()
        .map(|&l| (l as f64 - m).exp())
        .sum::<f64>()
        .ln()
}

/// Runs perplexity over `tokens` at `ctx` tokens per chunk (at most `max_chunks` of them, if
/// given) on `session` (whose context must hold `ctx`), calling `on_chunk(i, report so far)`
/// after each chunk.
pub fn perplexity(
    session: &mut Session,
    tokens: &[u32],
    ctx: usize,
    max_chunks: Option<usize>,
    kld: &KldMode,
    on_chunk: &mut dyn FnMut(usize, &Report),
) -> Result<Report, PerplexityError> {
    if ctx < 2 || tokens.len() < 2 * ctx {
        return Err(PerplexityError::TooShort {
            tokens: tokens.len(),
            ctx,
        });
    }
    let chunks = (tokens.len() / ctx).min(max_chunks.unwrap_or(usize::MAX));
    let vocab = session.weights().config.vocab_size;
    let first = ctx / 2;
    let header = |w: &mut dyn Write| -> std::io::Result<()> {
        w.write_all(MAGIC)?;
        for v in [vocab, ctx, chunks] {
            w.write_all(&(v as u64).to_le_bytes())?;
        }
        for &t in &tokens[..chunks * ctx] {
            w.write_all(&t.to_le_bytes())?;
        }
        Ok(())
    };
    let mut writer = None;
    let mut reader = None;
    match kld {
        KldMode::None => {}
        KldMode::Save(p) => {
            let io = |e| PerplexityError::Io(p.clone(), e);
            let mut w = BufWriter::new(File::create(p).map_err(io)?);
            header(&mut w).map_err(io)?;
            writer = Some((p, w));
        }
        KldMode::Compare(p) => {
            reader = Some((
                p,
                open_base(p, vocab, ctx, chunks, &tokens[..chunks * ctx])?,
            ))
        }
    }
    let mut report = Report {
        kld: reader.as_ref().map(|_| (0.0, 0.0, 0)),
        ..Report::default()
    };
    let mut base = vec![0f32; if reader.is_some() { vocab } else { 0 }];
    let mut failure: Option<PerplexityError> = None;
    for c in 0..chunks {
        let chunk = &tokens[c * ctx..(c + 1) * ctx];
        session.reset();
        session.prefill_each(chunk, &mut |pos, logits| {
            if pos < first || pos + 1 >= ctx || failure.is_some() {
                return;
            }
            let lse = logsumexp(logits);
            let nll = lse - logits[chunk[pos + 1] as usize] as f64;
            report.nll += nll;
            report.nll2 += nll * nll;
            report.count += 1;
            if let Some((p, w)) = writer.as_mut() {
                for &l in logits {
                    if let Err(e) = w.write_all(&((l as f64 - lse) as f32).to_le_bytes()) {
                        failure = Some(PerplexityError::Io(p.to_path_buf(), e));
                        return;
                    }
                }
            }
            if let Some((p, r)) = reader.as_mut() {
                let mut buf = [0u8; 4];
                for b in base.iter_mut() {
                    if let Err(e) = r.read_exact(&mut buf) {
                        failure = Some(PerplexityError::Io(p.to_path_buf(), e));
                        return;
                    }
                    *b = f32::from_le_bytes(buf);
                }
                let mut kl = 0f64;
                for (&lp, &l) in base.iter().zip(logits) {
                    let lp = lp as f64;
                    kl += lp.exp() * (lp - (l as f64 - lse));
                }
                let same = argmax(&base) == argmax(logits);
                if let Some((s, s2, n)) = report.kld.as_mut() {
                    *s += kl;
                    *s2 += kl * kl;
                    *n += usize::from(same);
                }
            }
        })?;
        if let Some(e) = failure.take() {
            return Err(e);
        }
        report.chunks = c + 1;
        on_chunk(c, &report);
    }
    if let Some((p, mut w)) = writer {
        w.flush().map_err(|e| PerplexityError::Io(p.clone(), e))?;
    }
    Ok(report)
}

/// Opens a saved log-probability file and checks it was made for these tokens and sizes.
fn open_base(
    p: &Path,
    vocab: usize,
    ctx: usize,
    chunks: usize,
    tokens: &[u32],
) -> Result<BufReader<File>, PerplexityError> {
    let io = |e| PerplexityError::Io(p.to_path_buf(), e);
    let mismatch = |why: String| PerplexityError::Mismatch(p.to_path_buf(), why);
    let mut r = BufReader::new(File::open(p).map_err(io)?);
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic).map_err(io)?;
    if &magic != MAGIC {
        return Err(mismatch("not a qwenrt --kl-divergence-base file".into()));
    }
    let mut word = [0u8; 8];
    for (what, want) in [
        ("vocabulary", vocab),
        ("context", ctx),
        ("chunk count", chunks),
    ] {
        r.read_exact(&mut word).map_err(io)?;
        let got = u64::from_le_bytes(word);
        if got != want as u64 {
            return Err(mismatch(format!(
                "saved with a {what} of {got}; this run has {want}"
            )));
        }
    }
    let mut t = [0u8; 4];
    for (i, &want) in tokens.iter().enumerate() {
        r.read_exact(&mut t).map_err(io)?;
        if u32::from_le_bytes(t) != want {
            return Err(mismatch(format!(
                "saved for other tokens (they differ at token {i})"
            )));
        }
    }
    Ok(r)
}
