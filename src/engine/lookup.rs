//! Prompt-lookup drafting: where the text so far repeats, guess that it goes on repeating.
//!
//! The last few tokens (the newest one included) are matched against everything before them,
//! the prompt and the text generated so far; the tokens that followed the most recent match
//! are the draft. Verifying a draft of `k` tokens is one engine step of `k + 1` rows with
//! decode numerics, which costs little more than one decode step because decode is bound by
//! reading the weights, and greedy decoding keeps the longest prefix it agrees with. Nothing
//! here allocates.

/// The most tokens one draft may hold.
pub const MAX_DRAFT: usize = 16;
/// Drafts per step where the caller does not choose (`--lookup`).
pub const DEFAULT_LOOKUP: usize = 8;
/// The longest n-gram matched; shorter ones are tried when it does not match.
pub const MAX_NGRAM: usize = 4;
/// The shortest n-gram matched: a single token matches almost anywhere, and a wrong draft
/// costs rows in the verification step.
pub const MIN_NGRAM: usize = 2;

/// Writes into `out` up to `out.len()` (at most [`MAX_DRAFT`]) tokens that followed the most
/// recent earlier occurrence of the context's last n tokens, for the longest n in
/// [`MIN_NGRAM`]..=[`MAX_NGRAM`] that occurs, and returns how many. The context is `history`
/// followed by `last` (the newest token, not yet in `history`). Returns 0 when nothing matches.
pub fn draft(history: &[u32], last: u32, out: &mut [u32]) -> usize {
    let k = out.len().min(MAX_DRAFT);
    if k == 0 {
        return 0;
    }
    // the context is history ++ [last]; at(i) reads it without building it
    let len = history.len() + 1;
    let at = |i: usize| if i < history.len() { history[i] } else { last };
    for n in (MIN_NGRAM..=MAX_NGRAM.min(len - 1)).rev() {
        let tail = len - n;
        // candidate starts s < tail, newest first, so the match is followed by at least one
        // token of the context
        for s in (0..tail).rev() {
            if (0..n).all(|j| at(s + j) == at(tail + j)) {
                let from = s + n;
                let m = (len - from).min(k);
                for (j, o) in out[..m].iter_mut().enumerate() {
                    *o = at(from + j);
                }
                return m;
            }
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(history: &[u32], last: u32, k: usize) -> Vec<u32> {
        let mut out = [0u32; MAX_DRAFT];
        let n = draft(history, last, &mut out[..k]);
        out[..n].to_vec()
    }

    #[test]
    fn follows_the_most_recent_longest_match() {
        // "1 2 3" occurs twice; the newest occurrence (followed by 7 8) wins
        assert_eq!(
            d(&[1, 2, 3, 4, 5, 1, 2, 3, 7, 8, 9, 1, 2], 3, 4),
            [7, 8, 9, 1]
        );
        // a 3-gram match beats a newer 2-gram one
        assert_eq!(d(&[5, 6, 7, 1, 9, 6, 7, 2, 5, 6], 7, 3), [1, 9, 6]);
        // the draft is cut at k and at the end of the context
        assert_eq!(d(&[1, 2, 3, 4, 1, 2], 3, 2), [4, 1]);
        assert_eq!(d(&[1, 2, 9, 1], 2, 8), [9, 1, 2]);
    }

    #[test]
    fn nothing_to_draft() {
        assert_eq!(d(&[], 5, 4), Vec::<u32>::new());
        assert_eq!(d(&[5], 5, 4), Vec::<u32>::new()); // a 1-gram is below MIN_NGRAM
        assert_eq!(d(&[1, 2, 3, 4], 5, 4), Vec::<u32>::new());
        assert_eq!(d(&[1, 2, 1], 2, 0), Vec::<u32>::new());
        // a run of one token drafts more of it
        assert_eq!(d(&[7, 7, 7], 7, 5), [7]);
    }
}
