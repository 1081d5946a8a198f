//! Grammar sources (JSON schemas, regexes, Lark and GBNF grammars) through the constraint compiler and
//! a few masked steps.

use std::time::{Duration, Instant};

use super::*;
use crate::engine::constraint::{ConstraintError, Grammars};

/// The vocabulary the grammars are built for: Qwen2's logits (the tokenizer's 151,665 ids
/// padded to the embedding's rows).
pub const CONSTRAINT_VOCAB: usize = 151_936;

/// The compiler over the real tokenizer ([`tokenizer`]), built once, with `<|im_end|>` and
/// `<|endoftext|>` as the stop tokens.
pub fn grammars() -> &'static Grammars {
    static G: OnceLock<Grammars> = OnceLock::new();
    G.get_or_init(|| {
        let tok = tokenizer();
        let stop: Vec<u32> = ["<|im_end|>", "<|endoftext|>"]
            .iter()
            .filter_map(|t| tok.token_id(t))
            .collect();
        Grammars::new(tok, CONSTRAINT_VOCAB, &stop).unwrap_or_else(|e| panic!("{e}"))
    })
}

/// What [`constraint_compile`] did with an input (for tests that check both paths are
/// reached).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompileOutcome {
    /// Compiled; this many tokens were then sampled under it.
    Compiled(usize),
    /// Refused with an error naming what is wrong.
    Refused,
}

/// A bound no compile or mask comes near (they take milliseconds to about two seconds for the
/// worst inputs the tests hold): past it the compiler is taken to hang.
pub const CONSTRAINT_HANG: Duration = Duration::from_secs(20);

/// The first byte picks the kind (`r`: regex, `l`: Lark grammar, `g`: GBNF grammar, anything
/// else: JSON schema, which must then parse as JSON) and the rest, as lossy UTF-8, is the source. The contract:
/// no panic; compile and every mask end within [`CONSTRAINT_HANG`]; a refusal is
/// [`ConstraintError::Invalid`] with a message; a compiled grammar allows at least one token
/// first; then, for up to 8 steps, the token picked (by the input's bytes) among those the
/// mask allows is one [`Constraint::allows`](crate::engine::constraint::Constraint::allows)
/// agrees with and [`commit`](crate::engine::constraint::Constraint::commit) accepts, until
/// only stop tokens are left. Every failed mask after the first leaves an error to read, and
/// so does a check or commit refused for the lexer's budget, the only reason either may fail.
pub fn constraint_compile(data: &[u8]) -> CompileOutcome {
    let Some((&kind, rest)) = data.split_first() else {
        return CompileOutcome::Refused;
    };
    let g = grammars();
    let src = String::from_utf8_lossy(rest);
    let t0 = Instant::now();
    let compiled = match kind {
        b'r' => g.regex(&src),
        b'l' => g.lark(&src),
        b'g' => g.gbnf(&src),
        _ => match serde_json::from_str::<serde_json::Value>(&src) {
            Ok(v) => g.json_schema(&v),
            Err(_) => return CompileOutcome::Refused,
        },
    };
    let took = t0.elapsed();
    assert!(took < CONSTRAINT_HANG, "compile took {took:?}: {src:?}");
    let mut c = match compiled {
        Ok(c) => c,
        Err(ConstraintError::Invalid { message, .. }) => {
            assert!(!message.is_empty(), "empty error for {src:?}");
            return CompileOutcome::Refused;
        }
        Err(e) => panic!("a grammar error that is not Invalid: {e} for {src:?}"),
    };
    let stop = g.eos_tokens().to_vec();
    let mut steps = 0;
    for i in 0..8 {
        let t0 = Instant::now();
        let mask = match c.allowed() {
            Ok(m) => m,
            // a grammar can run out of room after some tokens (e.g. a lexer limit); it must
            // say so, and the first mask was checked when it compiled
            Err(e) => {
                assert!(
                    i > 0,
                    "the first mask failed after compiling: {e} for {src:?}"
                );
                assert!(c.error().is_some(), "a mask failed without an error");
                break;
            }
        };
        assert!(
            t0.elapsed() < CONSTRAINT_HANG,
            "mask took {:?}",
            t0.elapsed()
        );
        let allowed: Vec<u32> = (0..CONSTRAINT_VOCAB as u32)
            .filter(|&t| mask.is_allowed(t))
            .collect();
        assert!(!allowed.is_empty(), "a mask allows nothing for {src:?}");
        // only stop tokens: the grammar is complete, or it names a stop token itself
        // (`start: <|im_end|>`), which ends the answer either way
        if allowed.iter().all(|t| stop.contains(t)) {
            break;
        }
        let pick = rest.get(i).copied().unwrap_or(0) as usize * 7919 + i;
        let non_stop: Vec<u32> = allowed
            .iter()
            .copied()
            .filter(|t| !stop.contains(t))
            .collect();
        let t = non_stop[pick % non_stop.len()];
        // checking and advancing run the lexer again, under the per-token budget the mask
        // spent from ([`limits`](crate::engine::constraint::limits)): running out of it is a
        // refusal the sequence reports (the matcher keeps the error); anything else means the
        // mask and the parser disagree
        if !c.allows(t) {
            let e = c.error();
            assert!(
                e.as_deref().is_some_and(is_lexer_limit),
                "the mask allows {t} but allows() does not ({e:?}): {src:?}"
            );
            break;
        }
        if let Err(e) = c.commit(t) {
            let msg = e.to_string();
            assert!(
                is_lexer_limit(&msg),
                "commit of allowed token {t}: {msg} for {src:?}"
            );
            assert!(c.error().is_some(), "a commit failed without an error");
            break;
        }
        steps += 1;
    }
    CompileOutcome::Compiled(steps)
}

/// Whether a matcher error is llguidance's lexer running out of its budget: its per-token fuel
/// (`too many expressions constructed`) or its state cap (`too many states`).
fn is_lexer_limit(message: &str) -> bool {
    message.contains("lexer error: too many expressions constructed")
        || message.contains("lexer error: too many states")
}
