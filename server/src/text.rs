//! A job's output as text: streaming detokenization with stop strings, and log-probabilities.

use qwenrt::text::tokenizer::{StreamDecoder, Tokenizer};

/// One alternative of a token's log-probabilities.
#[derive(Debug, Clone)]
pub struct Alt {
    pub token: String,
    pub bytes: Vec<u8>,
    pub logprob: f32,
}

/// A generated token's log-probability and its most likely alternatives.
#[derive(Debug, Clone)]
pub struct TokenLogprob {
    pub chosen: Alt,
    pub top: Vec<Alt>,
}

/// Detokenizes one job's tokens and applies its stop strings.
pub struct TextOut {
    pub decoder: StreamDecoder,
    pub held: String,
    pub stops: Vec<String>,
}

impl TextOut {
    /// Adds `piece`; returns the text that can be released and whether a stop string matched
    /// (the text before it is released, the stop string and all after it dropped).
    fn add(&mut self, piece: &str) -> (String, bool) {
        self.held.push_str(piece);
        let hit = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(at) = hit {
            let out = self.held[..at].to_string();
            self.held.clear();
            return (out, true);
        }
        // keep the longest suffix that may still become a stop string
        let keep_from = self
            .held
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| self.stops.iter().any(|s| s.starts_with(&self.held[i..])))
            .unwrap_or(self.held.len());
        let out = self.held[..keep_from].to_string();
        self.held.drain(..keep_from);
        (out, false)
    }

    pub fn push(&mut self, id: u32) -> (String, bool) {
        let piece = self.decoder.push(id).to_string();
        self.add(&piece)
    }

    /// The rest, at the end of generation.
    pub fn finish(&mut self) -> String {
        let piece = self.decoder.finish().to_string();
        let (mut out, stopped) = self.add(&piece);
        if !stopped {
            out.push_str(&self.held);
        }
        self.held.clear();
        out
    }
}

fn alt(tok: &Tokenizer, id: u32, logprob: f32) -> Alt {
    let bytes = tok.token_bytes(id).to_vec();
    Alt {
        token: String::from_utf8_lossy(&bytes).into_owned(),
        bytes,
        logprob,
    }
}

/// Log-softmax of `logits` at `chosen`, and the `k` most likely tokens (the log-sum-exp in
/// f64, so each value is the f32 rounding of the exact one).
pub fn logprobs(logits: &[f32], chosen: u32, k: usize, tok: &Tokenizer) -> TokenLogprob {
    // the sum over the vocabulary in f64: in f32 its rounding reaches 1e-4 over 150k logits
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max
        + logits
            .iter()
            .map(|&x| (x as f64 - max).exp())
            .sum::<f64>()
            .ln();
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    if k > 0 {
        for (id, &x) in logits.iter().enumerate() {
            if best.len() < k || x > best[best.len() - 1].1 {
                let at = best.partition_point(|&(_, y)| y >= x);
                best.insert(at, (id as u32, x));
                best.truncate(k);
            }
        }
    }
    let lp = |x: f32| (x as f64 - lse) as f32;
    TokenLogprob {
        chosen: alt(
            tok,
            chosen,
            lp(logits.get(chosen as usize).copied().unwrap_or(f32::MIN)),
        ),
        top: best
            .into_iter()
            .map(|(id, x)| alt(tok, id, lp(x)))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let tok = Tokenizer::from_file(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/qwen2.5-coder-0.5b/tokenizer.json"
        )))
        .unwrap();
        let mut t = TextOut {
            decoder: tok.stream_decoder(),
            held: String::new(),
            stops: stops.iter().map(|s| s.to_string()).collect(),
        };
        let mut all = String::new();
        for p in pieces {
            let (s, stop) = t.add(p);
            all.push_str(&s);
            if stop {
                return (all, true);
            }
        }
        all.push_str(&t.finish());
        (all, false)
    }

    #[test]
    fn stop_strings_end_the_text_across_pieces() {
        assert_eq!(
            out(&["END"], &["ab", "cE", "N", "Dxyz"]),
            ("abc".into(), true)
        );
        assert_eq!(out(&["END"], &["ab", "cE", "N"]), ("abcEN".into(), false));
        assert_eq!(out(&["xx", "b"], &["aab"]), ("aa".into(), true));
        assert_eq!(out(&[], &["a", "b"]), ("ab".into(), false));
        assert_eq!(out(&["é!"], &["caé", "é!"]), ("caé".into(), true));
    }
}
