//! Token sampling: logit bias, repetition penalty, frequency and presence penalties,
//! temperature, top-k, top-p, min-p, and a seeded RNG.
//!
//! The sampler owns only fixed-size state (parameters, RNG, a ring of recent tokens for the
//! repetition penalty, a ring of generated tokens for the frequency and presence penalties);
//! its scratch (`probs`, `candidates`) is carved from the session arena, so sampling
//! allocates nothing.

use std::fmt;

/// Most recent tokens the repetition penalty can look back over.
pub const MAX_PENALTY_WINDOW: usize = 256;

/// Most recent generated tokens the frequency and presence penalties count. A completion
/// longer than this is penalized for its last `MAX_COUNTED_TOKENS` tokens only (a fixed ring,
/// so that sampling allocates nothing); up to it, the counts are exact.
pub const MAX_COUNTED_TOKENS: usize = 4096;

/// The largest magnitude of `frequency_penalty` and `presence_penalty` (OpenAI's range).
pub const MAX_ADDITIVE_PENALTY: f32 = 2.0;

/// The most tokens one [`LogitBias`] may name.
pub const MAX_LOGIT_BIAS: usize = 300;

/// The largest magnitude of a logit bias (OpenAI's range); a bias of `-MAX_BIAS` bans the token.
pub const MAX_BIAS: f32 = 100.0;

/// OpenAI's `logit_bias`: per token, a value in `[-100, 100]` added to its logit before
/// anything else in sampling; `-100` bans the token (its logit becomes `-inf`, so no mode can
/// pick it). A fixed list of at most [`MAX_LOGIT_BIAS`] entries, so that it is `Copy` and
/// applying it allocates nothing.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LogitBias {
    entries: [(u32, f32); MAX_LOGIT_BIAS],
    len: usize,
}

impl Default for LogitBias {
    fn default() -> Self {
        LogitBias {
            entries: [(0, 0.0); MAX_LOGIT_BIAS],
            len: 0,
        }
    }
}

impl LogitBias {
    /// A bias of `(token, bias)` pairs (a token named twice gets both); an error names the
    /// limit or the value out of range. Token ids are not checked here (the sampler skips ids
    /// past the logits): the caller knows the vocabulary.
    pub fn new(entries: &[(u32, f32)]) -> Result<LogitBias, SamplerError> {
        if entries.len() > MAX_LOGIT_BIAS {
            return Err(SamplerError {
                name: "logit-bias",
                why: format!("names {} tokens; at most {MAX_LOGIT_BIAS}", entries.len()),
            });
        }
        let mut b = LogitBias::default();
        for (i, &(t, x)) in entries.iter().enumerate() {
            if !(x.is_finite() && x.abs() <= MAX_BIAS) {
                return Err(SamplerError {
                    name: "logit-bias",
                    why: format!(
                        "of token {t} is {x}; it must be between -{MAX_BIAS} and {MAX_BIAS}"
                    ),
                });
            }
            b.entries[i] = (t, x);
        }
        b.len = entries.len();
        Ok(b)
    }

    /// The `(token, bias)` pairs.
    pub fn entries(&self) -> &[(u32, f32)] {
        &self.entries[..self.len]
    }

    /// Whether no token is biased.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds each bias to its token's logit (`-100` sets it to `-inf`); ids past `logits` are
    /// skipped.
    pub fn apply(&self, logits: &mut [f32]) {
        for &(t, x) in self.entries() {
            if let Some(l) = logits.get_mut(t as usize) {
                *l = if x <= -MAX_BIAS {
                    f32::NEG_INFINITY
                } else {
                    *l + x
                };
            }
        }
    }
}

/// Sampling parameters. `temperature == 0` is greedy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplerParams {
    /// Softmax temperature; 0 is greedy (argmax).
    pub temperature: f32,
    /// Keep the k most likely tokens; 0 disables.
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches p; 1 disables.
    pub top_p: f32,
    /// Drop tokens whose probability is below `min_p` times the most likely one's; 0 disables.
    pub min_p: f32,
    /// Divide positive (multiply negative) logits of recent tokens by this; 1 disables.
    pub repeat_penalty: f32,
    /// How many recent tokens the penalty sees (at most [`MAX_PENALTY_WINDOW`]).
    pub repeat_last_n: usize,
    /// OpenAI's `frequency_penalty`: subtracted from a token's logit once per time the
    /// sampler has generated it (see [`Sampler::sample`]); in [-2, 2], 0 disables.
    pub frequency_penalty: f32,
    /// OpenAI's `presence_penalty`: subtracted from the logit of every token the sampler has
    /// generated at least once; in [-2, 2], 0 disables.
    pub presence_penalty: f32,
    /// Seed of the RNG that draws the sample.
    pub seed: u64,
    /// Added to the logits before anything else (OpenAI's `logit_bias`).
    pub logit_bias: LogitBias,
}

impl Default for SamplerParams {
    fn default() -> Self {
        SamplerParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            seed: 42,
            logit_bias: LogitBias::default(),
        }
    }
}

impl SamplerParams {
    /// Greedy decoding.
    pub fn greedy() -> Self {
        SamplerParams {
            temperature: 0.0,
            ..Default::default()
        }
    }

    /// Greedy with no penalty or bias: every token is the argmax of the model's logits,
    /// whatever came before (what prompt-lookup decoding needs to leave the output unchanged).
    pub fn is_plain_greedy(&self) -> bool {
        self.temperature == 0.0
            && self.logit_bias.is_empty()
            && self.repeat_penalty == 1.0
            && self.frequency_penalty == 0.0
            && self.presence_penalty == 0.0
    }

    /// Checks every parameter's range; the error names the parameter.
    pub fn validate(&self) -> Result<(), SamplerError> {
        let bad = |name: &'static str, why: String| Err(SamplerError { name, why });
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad(
                "temperature",
                format!("is {}; it must be >= 0", self.temperature),
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top-p", format!("is {}; it must be in (0, 1]", self.top_p));
        }
        if !(self.min_p >= 0.0 && self.min_p <= 1.0) {
            return bad("min-p", format!("is {}; it must be in [0, 1]", self.min_p));
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return bad(
                "repeat-penalty",
                format!("is {}; it must be > 0", self.repeat_penalty),
            );
        }
        if self.repeat_last_n > MAX_PENALTY_WINDOW {
            return bad(
                "repeat-last-n",
                format!("is {}; at most {MAX_PENALTY_WINDOW}", self.repeat_last_n),
            );
        }
        for (name, x) in [
            ("frequency-penalty", self.frequency_penalty),
            ("presence-penalty", self.presence_penalty),
        ] {
            if x.is_nan() || x.abs() > MAX_ADDITIVE_PENALTY {
                return bad(
                    name,
                    format!("is {x}; it must be between -{MAX_ADDITIVE_PENALTY} and {MAX_ADDITIVE_PENALTY}"),
                );
            }
        }
        Ok(())
    }
}

/// A sampling parameter out of range.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerError {
    /// The parameter that is out of range.
    pub name: &'static str,
    /// Why.
    pub why: String,
}

impl fmt::Display for SamplerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "--{} {}", self.name, self.why)
    }
}

impl std::error::Error for SamplerError {}

/// xoshiro256** seeded through splitmix64.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// A generator seeded with `seed` (splitmix64 over the seed, so 0 works too).
    pub fn new(seed: u64) -> Rng {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Sampling state for one generation stream. Its parameters are always valid: they are
/// checked by [`Sampler::new`] and [`Sampler::set_params`], and read with [`Sampler::params`].
#[derive(Clone, Debug)]
pub struct Sampler {
    params: SamplerParams,
    rng: Rng,
    recent: [u32; MAX_PENALTY_WINDOW],
    recent_len: usize,
    recent_head: usize,
    /// The last generated tokens (a ring of `generated_len` entries, the next write at
    /// `generated_head`), counted by the frequency and presence penalties.
    generated: [u32; MAX_COUNTED_TOKENS],
    generated_len: usize,
    generated_head: usize,
}

impl Sampler {
    /// A sampler for `params`; an error names the first out-of-range parameter.
    pub fn new(params: SamplerParams) -> Result<Sampler, SamplerError> {
        params.validate()?;
        Ok(Sampler {
            params,
            rng: Rng::new(params.seed),
            recent: [0; MAX_PENALTY_WINDOW],
            recent_len: 0,
            recent_head: 0,
            generated: [0; MAX_COUNTED_TOKENS],
            generated_len: 0,
            generated_head: 0,
        })
    }

    /// The parameters (valid).
    pub fn params(&self) -> &SamplerParams {
        &self.params
    }

    /// Changes the parameters; an error names the first out-of-range one, and then nothing
    /// changed. The recorded tokens stay (the repetition penalty keeps the newest
    /// `repeat_last_n` of those it holds); the RNG is reseeded only if the seed changed.
    pub fn set_params(&mut self, params: SamplerParams) -> Result<(), SamplerError> {
        params.validate()?;
        if params.repeat_last_n != self.params.repeat_last_n {
            self.rewindow(params.repeat_last_n);
        }
        if params.seed != self.params.seed {
            self.rng = Rng::new(params.seed);
        }
        self.params = params;
        Ok(())
    }

    /// Lays the recent-token ring out for a window of `n` (at most [`MAX_PENALTY_WINDOW`]):
    /// the newest `min(n, recent_len)` tokens, oldest first from index 0.
    fn rewindow(&mut self, n: usize) {
        let old = self.params.repeat_last_n;
        let keep = self.recent_len.min(n);
        let mut kept = [0u32; MAX_PENALTY_WINDOW];
        if old > 0 {
            // the oldest of the `recent_len` tokens sits `recent_len` before the head
            let first = (self.recent_head + old - self.recent_len) % old;
            let skip = self.recent_len - keep;
            for (j, k) in kept[..keep].iter_mut().enumerate() {
                *k = self.recent[(first + skip + j) % old];
            }
        }
        self.recent[..keep].copy_from_slice(&kept[..keep]);
        self.recent_len = keep;
        self.recent_head = if n == 0 { 0 } else { keep % n };
    }

    /// Records a token this sampler generated: for the repetition penalty (as [`observe`])
    /// and for the frequency and presence penalties, which count generated tokens only.
    ///
    /// [`observe`]: Sampler::observe
    pub fn observe_generated(&mut self, token: u32) {
        self.observe(token);
        self.generated[self.generated_head] = token;
        self.generated_head = (self.generated_head + 1) % MAX_COUNTED_TOKENS;
        self.generated_len = (self.generated_len + 1).min(MAX_COUNTED_TOKENS);
    }

    /// Forgets the generated tokens the frequency and presence penalties count (a new
    /// completion, such as the next turn of a chat, starts from zero counts); the repetition
    /// penalty's recent tokens and the RNG stay.
    pub fn clear_generated(&mut self) {
        self.generated_len = 0;
        self.generated_head = 0;
    }

    /// Records a prompt token (or any token not generated by this sampler) for the repetition
    /// penalty. Generated tokens go through [`Sampler::observe_generated`].
    pub fn observe(&mut self, token: u32) {
        let n = self.params.repeat_last_n;
        if n == 0 {
            return;
        }
        self.recent[self.recent_head] = token;
        self.recent_head = (self.recent_head + 1) % n;
        self.recent_len = (self.recent_len + 1).min(n);
    }

    /// Forgets the recent and generated tokens and reseeds.
    pub fn reset(&mut self) {
        self.recent_len = 0;
        self.recent_head = 0;
        self.clear_generated();
        self.rng = Rng::new(self.params.seed);
    }

    /// Picks the next token from `logits` (modified in place). `probs` and `candidates` are
    /// scratch of at least `logits.len()` entries. Allocates nothing.
    ///
    /// The logit bias comes first, then the penalties, in this order: the repetition penalty over the recent tokens
    /// (prompt and generated), then OpenAI's additive ones over the generated tokens,
    /// `logit[t] -= count(t) * frequency_penalty + (count(t) > 0) * presence_penalty`, where
    /// `count(t)` is how often `t` is among the last [`MAX_COUNTED_TOKENS`] tokens recorded
    /// with [`Sampler::observe_generated`]. Then greedy takes the argmax, or temperature,
    /// top-k, top-p and min-p shape the distribution drawn from.
    pub fn sample(&mut self, logits: &mut [f32], probs: &mut [f32], candidates: &mut [u32]) -> u32 {
        let p = self.params;
        p.logit_bias.apply(logits);
        if p.repeat_penalty != 1.0 {
            let recent = &self.recent[..self.recent_len];
            for (i, &tok) in recent.iter().enumerate() {
                // apply once per distinct token
                if recent[..i].contains(&tok) {
                    continue;
                }
                if let Some(l) = logits.get_mut(tok as usize) {
                    *l = if *l > 0.0 {
                        *l / p.repeat_penalty
                    } else {
                        *l * p.repeat_penalty
                    };
                }
            }
        }
        if p.frequency_penalty != 0.0 || p.presence_penalty != 0.0 {
            self.additive_penalties(logits, candidates);
        }
        if p.temperature == 0.0 || logits.len() <= 1 {
            return qwenrt_kernels::scalar::argmax(logits) as u32;
        }
        let v = logits.len();
        let cand = &mut candidates[..v];
        for (i, c) in cand.iter_mut().enumerate() {
            *c = i as u32;
        }
        let by_logit_desc = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]);
        // top-k: partition the k best to the front, then sort just those
        let k = if p.top_k == 0 || p.top_k > v {
            v
        } else {
            p.top_k
        };
        if k < v {
            cand.select_nth_unstable_by(k - 1, by_logit_desc);
        }
        let cand = &mut cand[..k];
        cand.sort_unstable_by(by_logit_desc);
        // softmax over the candidates at this temperature
        let max = logits[cand[0] as usize];
        let inv_t = 1.0 / p.temperature;
        let probs = &mut probs[..k];
        let mut sum = 0.0f32;
        for (pr, &c) in probs.iter_mut().zip(cand.iter()) {
            *pr = ((logits[c as usize] - max) * inv_t).exp();
            sum += *pr;
        }
        // top-p: smallest prefix reaching p of the mass
        let mut keep = k;
        if p.top_p < 1.0 {
            let mut acc = 0.0f32;
            for (i, pr) in probs.iter().enumerate() {
                acc += pr / sum;
                if acc >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        // min-p: relative to the best (probs[0] is the largest, exp(0) = 1)
        if p.min_p > 0.0 {
            let floor = p.min_p * probs[0];
            keep = probs[..keep]
                .iter()
                .take_while(|&&pr| pr >= floor)
                .count()
                .max(1);
        }
        let total: f32 = probs[..keep].iter().sum();
        let mut r = self.rng.next_f32() * total;
        for i in 0..keep {
            r -= probs[i];
            if r < 0.0 {
                return cand[i];
            }
        }
        cand[keep - 1]
    }

    /// `logit[t] -= count(t) * frequency_penalty + (count(t) > 0) * presence_penalty` over
    /// the generated tokens. `counts` (the `candidates` scratch, at least `logits.len()`
    /// entries, its contents arbitrary) holds each token's count while it is applied: linear in
    /// the generated tokens, no allocation, and the shift is computed once per token (not
    /// subtracted `count` times), so it is exact up to one rounding.
    fn additive_penalties(&self, logits: &mut [f32], counts: &mut [u32]) {
        let p = self.params;
        let v = logits.len().min(counts.len());
        let generated = &self.generated[..self.generated_len];
        for &t in generated {
            if (t as usize) < v {
                counts[t as usize] = 0;
            }
        }
        for &t in generated {
            if (t as usize) < v {
                counts[t as usize] += 1;
            }
        }
        for &t in generated {
            let t = t as usize;
            if t < v && counts[t] > 0 {
                logits[t] -= counts[t] as f32 * p.frequency_penalty + p.presence_penalty;
                counts[t] = 0; // once per distinct token
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(params: SamplerParams, logits: &[f32], n: usize) -> Vec<u32> {
        let mut s = Sampler::new(params).unwrap();
        let mut probs = vec![0.0; logits.len()];
        let mut cand = vec![0; logits.len()];
        (0..n)
            .map(|_| {
                let mut l = logits.to_vec();
                s.sample(&mut l, &mut probs, &mut cand)
            })
            .collect()
    }

    #[test]
    fn greedy_picks_argmax() {
        assert_eq!(
            run(SamplerParams::greedy(), &[0.1, 3.0, 2.0, 3.0], 3),
            vec![1, 1, 1]
        );
    }

    #[test]
    fn top_k_one_is_greedy() {
        let p = SamplerParams {
            top_k: 1,
            temperature: 5.0,
            ..Default::default()
        };
        assert!(run(p, &[0.0, 1.0, 0.5], 50).iter().all(|&t| t == 1));
    }

    #[test]
    fn top_k_limits_choices() {
        let p = SamplerParams {
            top_k: 2,
            temperature: 10.0,
            top_p: 1.0,
            min_p: 0.0,
            ..Default::default()
        };
        let out = run(p, &[0.0, 1.0, 0.9, 0.8], 500);
        assert!(out.iter().all(|&t| t == 1 || t == 2));
        assert!(out.contains(&1) && out.contains(&2));
    }

    #[test]
    fn top_p_cuts_the_tail() {
        // probs ~ [0.64, 0.24, 0.09, 0.03]: p = 0.7 keeps two
        let l = [3.0f32, 2.0, 1.0, 0.0];
        let p = SamplerParams {
            top_k: 0,
            top_p: 0.7,
            min_p: 0.0,
            temperature: 1.0,
            ..Default::default()
        };
        let out = run(p, &l, 1000);
        assert!(out.iter().all(|&t| t <= 1), "{out:?}");
        assert!(out.contains(&1));
    }

    #[test]
    fn min_p_drops_unlikely() {
        let l = [3.0f32, 2.9, 0.0, -1.0];
        let p = SamplerParams {
            top_k: 0,
            top_p: 1.0,
            min_p: 0.5,
            temperature: 1.0,
            ..Default::default()
        };
        let out = run(p, &l, 1000);
        assert!(out.iter().all(|&t| t <= 1));
    }

    #[test]
    fn seeded_is_reproducible_and_seeds_differ() {
        let l: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin()).collect();
        let p = SamplerParams {
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            temperature: 1.0,
            seed: 7,
            ..Default::default()
        };
        assert_eq!(run(p, &l, 64), run(p, &l, 64));
        assert_ne!(run(p, &l, 64), run(SamplerParams { seed: 8, ..p }, &l, 64));
    }

    #[test]
    fn repetition_penalty_applies_once_per_token() {
        let mut s = Sampler::new(SamplerParams {
            repeat_penalty: 2.0,
            ..SamplerParams::greedy()
        })
        .unwrap();
        s.observe(0);
        s.observe(0);
        s.observe(2);
        let mut l = [4.0f32, 3.0, -1.0];
        let (mut pr, mut c) = ([0.0; 3], [0; 3]);
        assert_eq!(s.sample(&mut l, &mut pr, &mut c), 1);
        assert_eq!(l, [2.0, 3.0, -2.0]);
    }

    #[test]
    fn frequency_and_presence_penalties_shift_logits_by_openai_formula() {
        let mut s = Sampler::new(SamplerParams {
            frequency_penalty: 0.5,
            presence_penalty: 0.25,
            ..SamplerParams::greedy()
        })
        .unwrap();
        s.observe(0); // a prompt token: not counted
        for t in [1, 2, 1, 1] {
            s.observe_generated(t);
        }
        s.observe_generated(99); // outside the vocabulary: ignored
        let mut l = [1.0f32, 2.0, 3.0, 0.5];
        // the count scratch starts with garbage
        let (mut pr, mut c) = ([0.0; 4], [7u32, u32::MAX, 3, 1]);
        // token 1: 3 times, 2.0 - 3 * 0.5 - 0.25; token 2: once, 3.0 - 0.5 - 0.25
        assert_eq!(s.sample(&mut l, &mut pr, &mut c), 2);
        assert_eq!(l, [1.0, 0.25, 2.25, 0.5]);

        // negative values favour the generated tokens
        let mut s = Sampler::new(SamplerParams {
            frequency_penalty: -1.0,
            presence_penalty: -2.0,
            ..SamplerParams::greedy()
        })
        .unwrap();
        s.observe_generated(3);
        s.observe_generated(3);
        let mut l = [1.0f32, 2.0, 3.0, 0.5];
        assert_eq!(s.sample(&mut l, &mut pr, &mut c), 3);
        assert_eq!(l, [1.0, 2.0, 3.0, 4.5]);

        // a new completion starts from zero counts
        s.clear_generated();
        let mut l = [1.0f32, 2.0, 3.0, 0.5];
        assert_eq!(s.sample(&mut l, &mut pr, &mut c), 2);
        assert_eq!(l, [1.0, 2.0, 3.0, 0.5]);
    }

    #[test]
    fn additive_penalties_count_the_last_generated_tokens_only() {
        let mut s = Sampler::new(SamplerParams {
            frequency_penalty: 1.0,
            ..SamplerParams::greedy()
        })
        .unwrap();
        // token 0 once, then token 1 fills the whole window: token 0 has left it
        s.observe_generated(0);
        for _ in 0..MAX_COUNTED_TOKENS {
            s.observe_generated(1);
        }
        let mut l = [0.0f32; 3];
        let (mut pr, mut c) = ([0.0; 3], [0; 3]);
        s.sample(&mut l, &mut pr, &mut c);
        assert_eq!(l, [0.0, -(MAX_COUNTED_TOKENS as f32), 0.0]);
    }

    #[test]
    fn presence_penalty_changes_the_sampled_distribution() {
        // equal logits; token 0 generated once with presence 2: p(0) = 1 / (1 + e^2) ~ 0.119
        let p = SamplerParams {
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            temperature: 1.0,
            presence_penalty: 2.0,
            seed: 3,
            ..Default::default()
        };
        let mut s = Sampler::new(p).unwrap();
        s.observe_generated(0);
        let (mut pr, mut c) = ([0.0; 2], [0; 2]);
        let zeros = (0..4000)
            .filter(|_| s.sample(&mut [0.0, 0.0], &mut pr, &mut c) == 0)
            .count() as f32
            / 4000.0;
        let expected = 1.0 / (1.0 + 2.0f32.exp());
        assert!((zeros - expected).abs() < 0.02, "{zeros} vs {expected}");
        // without the penalty it is a fair coin
        let mut s = Sampler::new(SamplerParams {
            presence_penalty: 0.0,
            ..p
        })
        .unwrap();
        s.observe_generated(0);
        let zeros = (0..4000)
            .filter(|_| s.sample(&mut [0.0, 0.0], &mut pr, &mut c) == 0)
            .count() as f32
            / 4000.0;
        assert!((zeros - 0.5).abs() < 0.03, "{zeros}");
    }

    #[test]
    fn distribution_follows_probabilities() {
        let l = [0.0f32, (3.0f32).ln()]; // p = [0.25, 0.75]
        let p = SamplerParams {
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            temperature: 1.0,
            seed: 1,
            ..Default::default()
        };
        let out = run(p, &l, 4000);
        let ones = out.iter().filter(|&&t| t == 1).count() as f32 / 4000.0;
        assert!((ones - 0.75).abs() < 0.03, "{ones}");
    }

    #[test]
    fn a_window_past_the_ring_is_refused_by_the_setter() {
        // `repeat_last_n` above the ring used to be settable on a made sampler, and `observe`
        // then indexed past the ring; the setter refuses it and leaves the sampler as it was
        let mut s = Sampler::new(SamplerParams::greedy()).unwrap();
        let bad = SamplerParams {
            repeat_last_n: MAX_PENALTY_WINDOW + 1,
            ..SamplerParams::greedy()
        };
        let err = s.set_params(bad).unwrap_err();
        assert_eq!(err.name, "repeat-last-n");
        assert!(
            err.to_string().contains(&MAX_PENALTY_WINDOW.to_string()),
            "{err}"
        );
        assert_eq!(
            s.params().repeat_last_n,
            SamplerParams::greedy().repeat_last_n
        );
        for t in 0..10 * MAX_PENALTY_WINDOW as u32 {
            s.observe(t);
        }
        // the largest window is fine
        s.set_params(SamplerParams {
            repeat_last_n: MAX_PENALTY_WINDOW,
            ..SamplerParams::greedy()
        })
        .unwrap();
        for t in 0..10 * MAX_PENALTY_WINDOW as u32 {
            s.observe_generated(t);
        }
        assert_eq!(s.params().repeat_last_n, MAX_PENALTY_WINDOW);
    }

    #[test]
    fn every_field_the_setter_checks_is_named() {
        let mut s = Sampler::new(SamplerParams::default()).unwrap();
        for (p, name) in [
            (
                SamplerParams {
                    temperature: f32::INFINITY,
                    ..Default::default()
                },
                "temperature",
            ),
            (
                SamplerParams {
                    top_p: f32::NAN,
                    ..Default::default()
                },
                "top-p",
            ),
            (
                SamplerParams {
                    min_p: 1.5,
                    ..Default::default()
                },
                "min-p",
            ),
            (
                SamplerParams {
                    repeat_penalty: f32::NAN,
                    ..Default::default()
                },
                "repeat-penalty",
            ),
            (
                SamplerParams {
                    repeat_last_n: usize::MAX,
                    ..Default::default()
                },
                "repeat-last-n",
            ),
            (
                SamplerParams {
                    frequency_penalty: -3.0,
                    ..Default::default()
                },
                "frequency-penalty",
            ),
            (
                SamplerParams {
                    presence_penalty: 2.5,
                    ..Default::default()
                },
                "presence-penalty",
            ),
        ] {
            assert_eq!(s.set_params(p).unwrap_err().name, name);
            assert_eq!(
                *s.params(),
                SamplerParams::default(),
                "a refused change left a trace"
            );
        }
    }

    #[test]
    fn changing_the_window_keeps_the_newest_tokens() {
        // greedy with a strong penalty: the penalized tokens are the ones the window holds
        let params = |n| SamplerParams {
            repeat_penalty: 100.0,
            repeat_last_n: n,
            ..SamplerParams::greedy()
        };
        let penalized = |s: &mut Sampler| -> Vec<usize> {
            let mut l = [1.0f32; 8];
            let (mut pr, mut c) = ([0.0; 8], [0; 8]);
            s.sample(&mut l, &mut pr, &mut c);
            (0..8).filter(|&t| l[t] < 1.0).collect()
        };
        let mut s = Sampler::new(params(4)).unwrap();
        for t in 0..7 {
            s.observe(t); // the ring wraps: it holds 3, 4, 5, 6
        }
        assert_eq!(penalized(&mut s), vec![3, 4, 5, 6]);
        s.set_params(params(2)).unwrap();
        assert_eq!(penalized(&mut s), vec![5, 6]);
        s.observe(0);
        assert_eq!(penalized(&mut s), vec![0, 6]);
        s.set_params(params(6)).unwrap();
        assert_eq!(penalized(&mut s), vec![0, 6]);
        for t in [1, 2, 3, 4, 7] {
            s.observe(t);
        }
        // 6, 0, 1, 2, 3, 4, 7 were seen: the window of six has let 6 go
        assert_eq!(penalized(&mut s), vec![0, 1, 2, 3, 4, 7]);
        s.set_params(params(0)).unwrap();
        assert_eq!(penalized(&mut s), Vec::<usize>::new());
        s.observe(5);
        s.set_params(params(3)).unwrap();
        s.observe(1);
        assert_eq!(penalized(&mut s), vec![1]);
    }

    #[test]
    fn the_rng_is_reseeded_only_when_the_seed_changes() {
        let p = SamplerParams {
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            temperature: 1.0,
            seed: 5,
            ..Default::default()
        };
        let l: Vec<f32> = (0..50).map(|i| (i as f32 * 0.7).cos()).collect();
        let draw = |s: &mut Sampler| {
            let (mut pr, mut c) = (vec![0.0; 50], vec![0; 50]);
            (0..20)
                .map(|_| s.sample(&mut l.clone(), &mut pr, &mut c))
                .collect::<Vec<_>>()
        };
        let mut a = Sampler::new(p).unwrap();
        let first = draw(&mut a);
        let second = draw(&mut a);
        let mut b = Sampler::new(p).unwrap();
        draw(&mut b);
        b.set_params(SamplerParams { top_k: 50, ..p }).unwrap();
        assert_eq!(draw(&mut b), second, "same seed: the stream goes on");
        b.set_params(SamplerParams { seed: 6, ..p }).unwrap();
        b.set_params(SamplerParams { seed: 5, ..p }).unwrap();
        assert_eq!(draw(&mut b), first, "a new seed restarts the stream");
    }

    #[test]
    fn bad_parameters_are_named() {
        for (p, name) in [
            (
                SamplerParams {
                    temperature: -1.0,
                    ..Default::default()
                },
                "temperature",
            ),
            (
                SamplerParams {
                    top_p: 1.5,
                    ..Default::default()
                },
                "top-p",
            ),
            (
                SamplerParams {
                    top_p: 0.0,
                    ..Default::default()
                },
                "top-p",
            ),
            (
                SamplerParams {
                    min_p: -0.1,
                    ..Default::default()
                },
                "min-p",
            ),
            (
                SamplerParams {
                    repeat_penalty: 0.0,
                    ..Default::default()
                },
                "repeat-penalty",
            ),
            (
                SamplerParams {
                    temperature: f32::NAN,
                    ..Default::default()
                },
                "temperature",
            ),
            (
                SamplerParams {
                    frequency_penalty: 2.5,
                    ..Default::default()
                },
                "frequency-penalty",
            ),
            (
                SamplerParams {
                    presence_penalty: f32::NAN,
                    ..Default::default()
                },
                "presence-penalty",
            ),
        ] {
            assert_eq!(Sampler::new(p).unwrap_err().name, name);
        }
    }
}
