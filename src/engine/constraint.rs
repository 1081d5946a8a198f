//! Constrained decoding: a JSON schema, a regex or a Lark grammar turned into a mask over the
//! vocabulary before every sample, so that what a sequence generates always parses.
//!
//! - [`Grammars`]: the compiler, built once per tokenizer (its token trie and the token
//!   classes llguidance precomputes), `Send + Sync`, shared in an `Arc`. Each of
//!   [`Grammars::json_schema`], [`Grammars::json_object`], [`Grammars::regex`],
//!   [`Grammars::lark`] and [`Grammars::gbnf`] (llama.cpp's GBNF, through
//!   [`crate::engine::gbnf`]) compiles one grammar into a fresh [`Constraint`].
//! - [`Constraint`]: one sequence's matcher state (`Send`). [`crate::engine::Engine::set_constraint`]
//!   attaches it to a sequence; from then on every sample of that sequence first sets the
//!   logits of the tokens the grammar forbids to -inf (so greedy and every sampler mode respect
//!   it), then advances the matcher with the sampled token.
//! - [`ConstraintError`]: what is wrong with a grammar, or why a matcher stopped.
//!
//! Built on llguidance (the Earley parser and token-trie walk llama.cpp and mistral.rs use).
//! Its end-of-sequence tokens are the model's stop ids: when the grammar is complete the mask
//! allows them, and once it can go no further they are all it allows.
//!
//! Bounds on hostile input are set here, once: the source text is at most
//! [`MAX_GRAMMAR_BYTES`], a JSON schema nests at most [`MAX_SCHEMA_DEPTH`] levels, and
//! llguidance's [`ParserLimits`] cap the compiled grammar's size and the lexer's work per
//! compile and per token ([`limits`]), so a compile either finishes in bounded time or is
//! refused with an error naming the limit.
//!
//! What the constrained path allocates per sampled token: llguidance's mask computation
//! returns a fresh bit set of `vocab / 8` bytes (19 KiB for Qwen2's 151,936 tokens), and its
//! parser and lexer allocate as they go; `tests/constraint_alloc.rs` measured about 80
//! allocations and 47 KiB per token on a JSON schema. Nothing else allocates: the steps and the
//! samples of unconstrained sequences, in the same engine, still allocate nothing (that test
//! and the engine's own allocation proofs). A session verifying a prompt-lookup draft under a
//! constraint ([`crate::engine::session::Session::generate`]) computes one mask per step (at
//! the row where the draft stops agreeing) rather than one per token, checks the drafted tokens
//! with [`Constraint::valid_prefix`], and moves the constraint out of the engine and back for
//! the step (one small box per step).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use llguidance::api::{ParserLimits, TopLevelGrammar};
use llguidance::toktrie::{self, SimpleVob, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::Value;

use crate::text::tokenizer::Tokenizer;

/// The longest grammar source accepted: a serialized JSON schema, a regex or a Lark grammar.
pub const MAX_GRAMMAR_BYTES: usize = 256 * 1024;

/// The deepest a JSON schema may nest (objects and arrays inside each other, the schema's own
/// JSON counted, not the documents it describes).
pub const MAX_SCHEMA_DEPTH: usize = 64;

/// The blank space allowed between the tokens of constrained JSON (llguidance's
/// `whitespace_pattern`): one space, or a line break and an indent of at most 20 blanks (see
/// [`Grammars::json_schema`] for why not more).
pub const JSON_WHITESPACE: &str = r"(\x20|\x0A[\x20\x09]{0,20})";

/// Why a grammar was refused or a constraint stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConstraintError {
    /// The grammar source (`what`: "JSON schema", "regex", "Lark grammar") is too big, too
    /// deep, malformed, unsupported or unsatisfiable; `message` says which.
    Invalid {
        /// Which kind of grammar.
        what: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The tokenizer cannot back a constraint (no stop token within the model's vocabulary).
    Tokenizer(String),
    /// The matcher failed while masking or advancing (it stays failed).
    Matcher(String),
}

impl fmt::Display for ConstraintError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConstraintError::Invalid { what, message } => write!(f, "invalid {what}: {message}"),
            ConstraintError::Tokenizer(m) => write!(f, "cannot build constraints: {m}"),
            ConstraintError::Matcher(m) => write!(f, "constraint failed: {m}"),
        }
    }
}

impl std::error::Error for ConstraintError {}

/// The parser limits every grammar is compiled and run under (see the module docs). Smaller
/// than llguidance's defaults where a request's grammar could make the server's engine thread
/// wait: the lexer's fuel per token bounds the mask time of one sample.
pub fn limits() -> ParserLimits {
    ParserLimits {
        // Earley items in one row / in one token's step: bound a token's parse work
        max_items_in_row: 2_000,
        step_max_items: 50_000,
        // lexer (derivative regex) work when compiling and per token
        initial_lexer_fuel: 1_000_000,
        step_lexer_fuel: 200_000,
        max_lexer_states: 250_000,
        // compiled grammar symbols: a JSON schema of a few thousand properties fits
        max_grammar_size: 300_000,
        precompute_large_lexemes: true,
        verbose_errors: true,
    }
}

/// Our tokenizer seen by llguidance: the token trie (every token's raw bytes; special tokens
/// prefixed with the 0xFF marker) and canonical tokenization of text.
struct TokenEnv {
    trie: TokTrie,
    tokenizer: tokenizers::Tokenizer,
}

impl TokenizerEnv for TokenEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<toktrie::TokenId> {
        // Text the grammar forces is tokenized as the model's tokenizer would; bytes that are
        // not UTF-8 (a grammar may force a partial character) fall back to the trie's greedy
        // tokenization.
        let trie = &self.trie;
        trie.tokenize_with_greedy_fallback(s, |text| {
            self.tokenizer
                .encode(text, false)
                .map(|e| e.get_ids().to_vec())
                .unwrap_or_else(|_| trie.greedy_tokenize(text.as_bytes()))
        })
    }
}

/// Compiles JSON schemas, regexes and Lark grammars into [`Constraint`]s for one tokenizer.
/// Build it once (it walks the whole vocabulary) and share it.
pub struct Grammars {
    factory: Arc<ParserFactory>,
}

impl fmt::Debug for Grammars {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let trie = self.factory.tok_env().tok_trie();
        f.debug_struct("Grammars")
            .field("vocab", &trie.vocab_size())
            .field("eos", &trie.eos_tokens())
            .finish()
    }
}

impl Grammars {
    /// The compiler for `tokenizer` over a model whose logits have `vocab` entries: ids past the
    /// tokenizer's (padding rows) are never allowed, nor are the tokenizer's ids past `vocab`
    /// (a model that cannot produce them). `stop_ids` are the
    /// tokens that end a turn (see [`crate::text::chat::stop_ids`]): a complete grammar allows
    /// them, and they are all a finished one allows. Special tokens (`<|im_end|>`) can only be
    /// named in a Lark grammar as `<|im_end|>`; added tokens that are not special
    /// (`<tool_call>`) are plain text, so the text `"<tool_call>"` allows that token.
    pub fn new(
        tokenizer: &Tokenizer,
        vocab: usize,
        stop_ids: &[u32],
    ) -> Result<Grammars, ConstraintError> {
        let eos: Vec<u32> = stop_ids
            .iter()
            .copied()
            .filter(|&t| (t as usize) < vocab)
            .collect();
        let Some(&first_eos) = eos.first() else {
            return Err(ConstraintError::Tokenizer(
                "the model has no stop token in its vocabulary to end a constrained answer".into(),
            ));
        };
        let added = tokenizer.inner().get_added_tokens_decoder();
        let words: Vec<Vec<u8>> = (0..vocab as u32)
            .map(|id| match added.get(&id) {
                Some(t) if t.special => {
                    let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    w.extend_from_slice(t.content.as_bytes());
                    w
                }
                _ => tokenizer.token_bytes(id).to_vec(),
            })
            .collect();
        let mut info = TokRxInfo::new(vocab as u32, first_eos);
        info.tok_end_of_turn = Some(first_eos);
        let trie = TokTrie::from(&info, &words).with_eos_tokens(&eos);
        let env = TokenEnv {
            trie,
            tokenizer: tokenizer.inner().clone(),
        };
        let env: toktrie::TokEnv = Arc::new(env);
        let mut factory = ParserFactory::new_simple(&env)
            .map_err(|e| ConstraintError::Tokenizer(e.to_string()))?;
        factory.quiet();
        *factory.limits_mut() = limits();
        Ok(Grammars {
            factory: Arc::new(factory),
        })
    }

    /// The size of the masks (the model's vocabulary).
    pub fn vocab(&self) -> usize {
        self.factory.tok_env().tok_trie().vocab_size()
    }

    /// The tokens a complete grammar allows to end the answer.
    pub fn eos_tokens(&self) -> &[u32] {
        self.factory.tok_env().tok_trie().eos_tokens()
    }

    /// A constraint to JSON documents valid against `schema` (JSON Schema draft 2020-12 as
    /// llguidance supports it: types, properties/required/additionalProperties, items,
    /// prefixItems, min/maxItems, enum, const, anyOf/oneOf/allOf, `$ref`/`$defs` (recursive
    /// too), numeric bounds, string min/maxLength, pattern and common formats). Keywords it
    /// cannot enforce are refused rather than ignored. Whitespace between tokens is one space
    /// or a line break and an indent (see the rule in the body), so a model cannot loop on
    /// blank space.
    pub fn json_schema(&self, schema: &Value) -> Result<Constraint, ConstraintError> {
        let schema = checked_schema(schema)?;
        self.compile("JSON schema", TopLevelGrammar::from_json_schema(schema))
    }

    /// A constraint to any JSON object (OpenAI's `{"type": "json_object"}`).
    pub fn json_object(&self) -> Result<Constraint, ConstraintError> {
        self.json_schema(&serde_json::json!({"type": "object"}))
    }

    /// A constraint to text matching `regex` in full (Rust `regex` syntax, no look-around or
    /// back-references).
    pub fn regex(&self, regex: &str) -> Result<Constraint, ConstraintError> {
        const WHAT: &str = "regex";
        check_len(WHAT, regex)?;
        if regex.is_empty() {
            return Err(ConstraintError::Invalid {
                what: WHAT,
                message: "it is empty".into(),
            });
        }
        self.compile(WHAT, TopLevelGrammar::from_regex(regex))
    }

    /// A constraint to text the Lark grammar `grammar` derives from its `start` rule
    /// (llguidance's Lark dialect: `/regex/` terminals, `%json {...}` schemas, special
    /// tokens as `<|im_end|>`).
    pub fn lark(&self, grammar: &str) -> Result<Constraint, ConstraintError> {
        const WHAT: &str = "Lark grammar";
        check_len(WHAT, grammar)?;
        if grammar.trim().is_empty() {
            return Err(ConstraintError::Invalid {
                what: WHAT,
                message: "it is empty".into(),
            });
        }
        self.compile(WHAT, TopLevelGrammar::from_lark(grammar.to_string()))
    }

    /// A constraint to text llama.cpp's GBNF grammar `src` derives from its `root` rule,
    /// translated by [`crate::engine::gbnf::gbnf_to_lark`] (an error names the line and
    /// column at fault).
    pub fn gbnf(&self, src: &str) -> Result<Constraint, ConstraintError> {
        const WHAT: &str = "GBNF grammar";
        let lark =
            crate::engine::gbnf::gbnf_to_lark(src).map_err(|e| ConstraintError::Invalid {
                what: WHAT,
                message: e.to_string(),
            })?;
        self.compile(WHAT, TopLevelGrammar::from_lark(lark))
    }

    fn compile(
        &self,
        what: &'static str,
        grammar: TopLevelGrammar,
    ) -> Result<Constraint, ConstraintError> {
        let invalid = |message: String| ConstraintError::Invalid { what, message };
        // llguidance reports bad grammars as errors and turns its own panics into errors too;
        // the catch here is a second net so that no input can unwind through the caller.
        let factory = &self.factory;
        let parser = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            factory.create_parser(grammar)
        }))
        .map_err(|_| invalid("the grammar compiler failed on it".into()))?
        .map_err(|e| invalid(first_line(&e.to_string())))?;
        let mut matcher = Matcher::new(Ok(parser));
        // The first mask: a grammar that allows nothing at all (`{"$ref": "#"}` alone) is
        // refused here rather than at the first sample.
        if let Err(e) = matcher.compute_mask() {
            return Err(invalid(format!(
                "it allows no text to start with ({})",
                first_line(&e.to_string())
            )));
        }
        Ok(Constraint {
            matcher,
            kind: what,
            masks: 0,
            mask_time: Duration::ZERO,
        })
    }
}

/// `schema` as [`Grammars::json_schema`] compiles it: checked against [`MAX_GRAMMAR_BYTES`] and
/// [`MAX_SCHEMA_DEPTH`], `true` made `{}`, and our whitespace rule set (runs of at most 16
/// blanks between tokens, replacing any `x-guidance` the schema had). Use it for a schema
/// embedded in a Lark grammar (`%json <the returned value>`), so that it gets the same bounds.
pub fn checked_schema(schema: &Value) -> Result<Value, ConstraintError> {
    let invalid = |message: String| ConstraintError::Invalid {
        what: "JSON schema",
        message,
    };
    let size = serde_json::to_vec(schema)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_GRAMMAR_BYTES {
        return Err(invalid(format!(
            "it is {size} bytes; the limit is {MAX_GRAMMAR_BYTES}"
        )));
    }
    let depth = json_depth(schema);
    if depth > MAX_SCHEMA_DEPTH {
        return Err(invalid(format!(
            "it nests {depth} levels deep; the limit is {MAX_SCHEMA_DEPTH}"
        )));
    }
    let mut schema = match schema {
        Value::Object(_) => schema.clone(),
        Value::Bool(true) => Value::Object(Default::default()),
        Value::Bool(false) => return Err(invalid("`false` accepts no document".into())),
        _ => return Err(invalid("a schema must be a JSON object (or `true`)".into())),
    };
    // Our whitespace rule replaces any the request set: between tokens, nothing, one space, or
    // a line break and an indent of at most 20 blanks (a pretty-printer's layout; the same rule
    // as llama.cpp's schema grammars). Runs of blanks on one line are not allowed: a model
    // pushed off its own words by the mask (it wanted to write prose or a code fence first)
    // otherwise escapes into blank space at every separator; measured on the default model
    // with a schema and no "answer in JSON" in the prompt, runs of up to 16 blanks gave
    // `{                "steps":                [ ] ...` where this rule gives the answer the
    // model writes when asked for JSON.
    if let Value::Object(m) = &mut schema {
        m.insert(
            "x-guidance".into(),
            serde_json::json!({ "whitespace_pattern": JSON_WHITESPACE }),
        );
    }
    Ok(schema)
}

/// The first line of an llguidance message (later lines repeat the grammar's text), cut to
/// 300 characters (it may quote the whole grammar).
fn first_line(s: &str) -> String {
    let mut line = s.lines().next().unwrap_or(s).trim().to_string();
    // a regex parse error says what is wrong on a later `error:` line
    if let Some(why) = s
        .lines()
        .skip(1)
        .find(|l| l.trim_start().starts_with("error:"))
    {
        line = format!("{line} {}", why.trim());
    }
    match line.char_indices().nth(300) {
        Some((i, _)) => format!("{}...", &line[..i]),
        None => line,
    }
}

fn check_len(what: &'static str, src: &str) -> Result<(), ConstraintError> {
    if src.len() > MAX_GRAMMAR_BYTES {
        return Err(ConstraintError::Invalid {
            what,
            message: format!(
                "it is {} bytes; the limit is {MAX_GRAMMAR_BYTES}",
                src.len()
            ),
        });
    }
    Ok(())
}

/// How deeply `v` nests (a scalar is 0), without recursion.
fn json_depth(v: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(v, 0usize)];
    while let Some((v, d)) = stack.pop() {
        deepest = deepest.max(d);
        match v {
            Value::Array(a) => stack.extend(a.iter().map(|x| (x, d + 1))),
            Value::Object(o) => stack.extend(o.values().map(|x| (x, d + 1))),
            _ => {}
        }
    }
    deepest
}

/// One sequence's grammar state: which tokens may come next, advanced by every sampled token.
pub struct Constraint {
    matcher: Matcher,
    kind: &'static str,
    masks: u64,
    mask_time: Duration,
}

impl fmt::Debug for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Constraint")
            .field("kind", &self.kind)
            .field("finished", &self.is_finished())
            .field("error", &self.error())
            .finish()
    }
}

impl Clone for Constraint {
    /// An independent copy of the state (a fork of the parse so far).
    fn clone(&self) -> Self {
        Constraint {
            matcher: self.matcher.deep_clone(),
            kind: self.kind,
            masks: self.masks,
            mask_time: self.mask_time,
        }
    }
}

impl Constraint {
    /// What it constrains to: "JSON schema", "regex" or "Lark grammar".
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// The tokens allowed next (all the stop tokens once the grammar is finished).
    pub fn allowed(&mut self) -> Result<SimpleVob, ConstraintError> {
        let t0 = Instant::now();
        let mask = self
            .matcher
            .compute_mask_or_eos()
            .map_err(|e| ConstraintError::Matcher(first_line(&e.to_string())));
        self.masks += 1;
        self.mask_time += t0.elapsed();
        mask
    }

    /// Sets the logits of every token the grammar forbids next to -inf. An error (the matcher
    /// failed, or nothing is allowed) leaves `logits` as they were.
    pub fn mask_logits(&mut self, logits: &mut [f32]) -> Result<(), ConstraintError> {
        let mask = self.allowed()?;
        let t0 = Instant::now();
        apply_mask(&mask, logits);
        self.mask_time += t0.elapsed();
        Ok(())
    }

    /// Whether the grammar allows `token` next (does not advance).
    pub fn allows(&mut self, token: u32) -> bool {
        if self.is_finished() {
            return self
                .matcher
                .tok_env()
                .is_ok_and(|env| env.tok_trie().eos_tokens().contains(&token));
        }
        self.matcher.validate_tokens(&[token]).is_ok_and(|n| n == 1)
    }

    /// How many of `tokens`, in order, the grammar allows from here (does not advance): a
    /// drafted continuation is cut to this prefix before it is verified.
    pub fn valid_prefix(&mut self, tokens: &[u32]) -> usize {
        if tokens.is_empty() {
            return 0;
        }
        if self.is_finished() {
            return usize::from(self.allows(tokens[0]));
        }
        self.matcher.validate_tokens(tokens).unwrap_or(0)
    }

    /// The token greedy sampling picks from `logits` masked by the grammar, without modifying
    /// them: the first allowed token of the highest logit, exactly what [`Constraint::mask_logits`]
    /// followed by an argmax picks (as the sampler's greedy mode does). Does not advance.
    pub fn greedy(&mut self, logits: &[f32]) -> Result<u32, ConstraintError> {
        let mask = self.allowed()?;
        let t0 = Instant::now();
        let token = masked_argmax(&mask, logits);
        self.mask_time += t0.elapsed();
        Ok(token)
    }

    /// Advances the state past `token` (a stop token is accepted once the grammar is complete,
    /// and finishes it).
    pub fn commit(&mut self, token: u32) -> Result<(), ConstraintError> {
        if self.is_finished() && self.error().is_none() {
            // only stop tokens were allowed; the parse is over and stays so
            return Ok(());
        }
        self.matcher
            .consume_token(token)
            .map_err(|e| ConstraintError::Matcher(first_line(&e.to_string())))
    }

    /// Whether the text so far is a complete match (a stop token is allowed now).
    pub fn is_accepting(&mut self) -> bool {
        self.is_finished() && self.error().is_none() || self.matcher.is_accepting().unwrap_or(false)
    }

    /// Whether the grammar can go no further: complete and allowing only the stop tokens, or
    /// failed (see [`Constraint::error`]).
    pub fn is_finished(&self) -> bool {
        self.matcher.is_stopped()
    }

    /// Why the matcher failed, if it did.
    pub fn error(&self) -> Option<String> {
        if self.matcher.is_error() {
            return self.matcher.get_error().map(|e| first_line(&e));
        }
        let reason = self.matcher.stop_reason();
        if reason.is_ok() {
            None
        } else {
            Some(format!("the grammar stopped: {reason}"))
        }
    }

    /// Masks computed so far and the time they took (mask computation plus applying it to the
    /// logits), for reporting the cost per token.
    pub fn mask_stats(&self) -> (u64, Duration) {
        (self.masks, self.mask_time)
    }
}

/// The argmax of `logits` with every token the mask forbids read as -inf (ties to the first
/// index, and index 0 when nothing beats -inf), as `apply_mask` and then an argmax would pick.
fn masked_argmax(mask: &SimpleVob, logits: &[f32]) -> u32 {
    let words = mask.as_slice();
    let at = |t: usize| {
        let allowed = words.get(t / 32).is_some_and(|w| w & (1 << (t % 32)) != 0);
        if allowed {
            logits[t]
        } else {
            f32::NEG_INFINITY
        }
    };
    let mut best = 0usize;
    let mut best_value = if logits.is_empty() {
        f32::NEG_INFINITY
    } else {
        at(0)
    };
    for (w, &bits) in words.iter().enumerate() {
        let mut bits = bits;
        while bits != 0 {
            let t = w * 32 + bits.trailing_zeros() as usize;
            bits &= bits - 1;
            if t >= logits.len() {
                return best as u32;
            }
            if logits[t] > best_value {
                best = t;
                best_value = logits[t];
            }
        }
    }
    best as u32
}

/// `logits[t] = -inf` for every `t` the mask does not allow (and every `t` past it).
fn apply_mask(mask: &SimpleVob, logits: &mut [f32]) {
    let words = mask.as_slice();
    for (w, chunk) in logits.chunks_mut(32).enumerate() {
        let bits = words.get(w).copied().unwrap_or(0);
        if bits == u32::MAX {
            continue;
        }
        if bits == 0 {
            chunk.fill(f32::NEG_INFINITY);
            continue;
        }
        for (b, l) in chunk.iter_mut().enumerate() {
            if bits & (1 << b) == 0 {
                *l = f32::NEG_INFINITY;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_nesting() {
        assert_eq!(json_depth(&serde_json::json!(1)), 0);
        assert_eq!(json_depth(&serde_json::json!({"a": [1, {"b": 2}]})), 3);
    }

    #[test]
    fn masked_argmax_is_mask_then_argmax() {
        // a small deterministic generator: logits with ties, NaNs and infinities
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for case in 0..400 {
            let n = 1 + (next() % 100) as usize;
            let mut mask = SimpleVob::alloc(n);
            let mut logits = vec![0.0f32; n];
            for (t, l) in logits.iter_mut().enumerate() {
                if next() % 3 != 0 {
                    mask.allow_token(t as u32);
                }
                *l = match next() % 12 {
                    0 => f32::NAN,
                    1 => f32::NEG_INFINITY,
                    2 => f32::INFINITY,
                    r => (r % 4) as f32, // few values: many ties
                };
            }
            let mut masked = logits.clone();
            apply_mask(&mask, &mut masked);
            let want = qwenrt_kernels::scalar::argmax(&masked) as u32;
            assert_eq!(
                masked_argmax(&mask, &logits),
                want,
                "case {case}: {logits:?}"
            );
        }
    }

    #[test]
    fn mask_sets_forbidden_logits_to_minus_infinity() {
        let mut mask = SimpleVob::alloc(70);
        for t in [0u32, 31, 32, 69] {
            mask.allow_token(t);
        }
        let mut logits = vec![1.0f32; 70];
        apply_mask(&mask, &mut logits);
        for (t, &l) in logits.iter().enumerate() {
            let allowed = [0, 31, 32, 69].contains(&t);
            assert_eq!(l.is_finite(), allowed, "token {t}");
        }
    }
}
