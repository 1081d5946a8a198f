//! Prompt-lookup drafting: where the text so far repeats, guess that it goes on repeating.
//!
//! The last few tokens (the newest one included) are matched against everything before them,
//! the prompt and the text generated so far; the tokens that followed the most recent match
//! are the draft. Verifying a draft of `k` tokens is one engine step of `k + 1` rows with
//! decode numerics, which reads the weights once for all rows (on the shipped GGUF each extra
//! row costs about a third of a decode step), and greedy decoding keeps the longest prefix it
//! agrees with ([`Verifier`], shared by [`crate::engine::session::Session`] and the server's
//! scheduler); [`DraftBudget`] sizes the drafts by how the last ones fared. Nothing here
//! allocates.

use crate::engine::constraint::Constraint;
use crate::engine::EngineError;

/// The most tokens one draft may hold.
pub const MAX_DRAFT: usize = 16;
/// Drafts per step where the caller does not choose (`--lookup`).
pub const DEFAULT_LOOKUP: usize = 8;
/// The longest n-gram matched; shorter ones are tried when it does not match. Long matches
/// tell apart the many places a short one fits in repetitive text (grid rows of digits, code):
/// on the traces of `examples/lookup_policy.rs` 16 accepts 13% more drafted tokens than 4.
pub const MAX_NGRAM: usize = 16;
/// The shortest n-gram matched: a single token matches almost anywhere, and a wrong draft
/// costs rows in the verification step.
pub const MIN_NGRAM: usize = 2;

/// Writes into `out` up to `out.len()` (at most [`MAX_DRAFT`]) tokens that followed the most
/// recent earlier occurrence of the context's last n tokens, for the longest n in
/// [`MIN_NGRAM`]..=[`MAX_NGRAM`] that occurs, and returns how many. The context is `history`
/// followed by `last` (the newest token, not yet in `history`). Returns 0 when nothing matches.
/// One pass over the context, newest first: each earlier occurrence of `last` is extended
/// backwards while it keeps matching.
pub fn draft(history: &[u32], last: u32, out: &mut [u32]) -> usize {
    let k = out.len().min(MAX_DRAFT);
    if k == 0 {
        return 0;
    }
    // the context is history ++ [last]; at(i) reads it without building it
    let len = history.len() + 1;
    let at = |i: usize| if i < history.len() { history[i] } else { last };
    // (match length, position of its last token), the longest and then the newest
    let mut best = (0, 0);
    for e in (0..len - 1).rev() {
        if history[e] != last {
            continue;
        }
        let m = 1
            + (1..MAX_NGRAM.min(e + 1))
                .take_while(|&j| at(e - j) == at(len - 1 - j))
                .count();
        if m > best.0 {
            best = (m, e);
            if m == MAX_NGRAM {
                break;
            }
        }
    }
    let (m, e) = best;
    if m < MIN_NGRAM {
        return 0;
    }
    let from = e + 1;
    let n = (len - from).min(k);
    for (j, o) in out[..n].iter_mut().enumerate() {
        *o = at(from + j);
    }
    n
}

/// The longest pause in drafting after drafts of one token keep failing, in steps.
pub const MAX_BACKOFF: usize = 16;

/// How many tokens the next draft may hold, adapted to how the last drafts fared.
///
/// A verified row costs about a third of a decode step on the quantized kernels (less on
/// bf16), so a draft pays only where it is mostly accepted. The adaptive budget grows the limit
/// (doubling, up to `max`) while whole drafts are accepted, cuts it to one past the accepted
/// prefix when a draft is partly right and halves it when the first drafted token is wrong;
/// once single-token drafts keep failing it stops drafting for 1, 2, 4 .. [`MAX_BACKOFF`]
/// steps. How the rule and the default limit were chosen: `examples/lookup_policy.rs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DraftBudget {
    max: usize,
    cap: usize,
    adaptive: bool,
    skip: usize,
    backoff: usize,
}

impl DraftBudget {
    /// An adaptive budget of at most `max` tokens per draft (capped at [`MAX_DRAFT`]).
    pub fn new(max: usize) -> DraftBudget {
        let max = max.min(MAX_DRAFT);
        DraftBudget {
            max,
            cap: max,
            adaptive: true,
            skip: 0,
            backoff: 1,
        }
    }

    /// Always `max` tokens (capped at [`MAX_DRAFT`]), whatever the drafts' fate.
    pub fn fixed(max: usize) -> DraftBudget {
        DraftBudget {
            adaptive: false,
            ..DraftBudget::new(max)
        }
    }

    /// This step's limit: the most tokens to draft now; 0 while drafting pauses (each call
    /// is one step of the pause).
    pub fn take(&mut self) -> usize {
        if self.skip > 0 {
            self.skip -= 1;
            return 0;
        }
        self.cap
    }

    /// Records that `agreed` of `drafted` (> 0) drafted tokens were accepted.
    pub fn verified(&mut self, drafted: usize, agreed: usize) {
        if !self.adaptive || drafted == 0 {
            return;
        }
        if agreed == drafted {
            self.cap = (self.cap * 2).clamp(1, self.max);
            self.backoff = 1;
        } else if agreed > 0 {
            self.cap = (agreed + 1).min(self.max);
            self.backoff = 1;
        } else if self.cap > 1 {
            self.cap /= 2;
        } else {
            self.skip = self.backoff;
            self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// Verifies one draft: the step that fed `row` (the newest token, sampled and not yet in the
/// cache, then the drafted tokens) from position `pos0`, with decode numerics and the logits of
/// every row, hands each row's logits to [`Verifier::check`]; [`Verifier::verdict`] then says
/// which tokens greedy decoding one token a step would have produced.
///
/// Row `i`'s logits give the greedy token after `row[..=i]`, the first on ties as the greedy
/// sampler picks. The drafted tokens are accepted while each is the greedy token after the row
/// before it; the greedy token at the first row that disagrees (or after the last drafted
/// token) follows them. With a constraint, the greedy token is the plain argmax where the
/// grammar allows it (a drafted token that is the argmax is allowed, as drafts are cut to what
/// the grammar allows) and otherwise the argmax over the allowed tokens; the constraint is
/// advanced over the accepted tokens and the one after them, as sampling them would have
/// advanced it. The caller truncates the cache to `pos0 + 1 + accepted` (the rows past the
/// accepted drafts are not part of the text).
#[derive(Debug)]
pub struct Verifier {
    row: [u32; MAX_DRAFT + 1],
    len: usize,
    pos0: usize,
    accepted: usize,
    next: Option<u32>,
    failed: Option<EngineError>,
}

/// What greedy decoding made of a draft ([`Verifier::verdict`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    tokens: [u32; MAX_DRAFT + 1],
    accepted: usize,
    drafted: usize,
}

impl Verdict {
    /// The tokens the step produced, in order: the accepted drafted tokens, then the greedy
    /// token after them (`accepted + 1` tokens; all but the last are in the cache).
    pub fn tokens(&self) -> &[u32] {
        &self.tokens[..self.accepted + 1]
    }

    /// How many drafted tokens were accepted.
    pub fn accepted(&self) -> usize {
        self.accepted
    }

    /// How many tokens were drafted.
    pub fn drafted(&self) -> usize {
        self.drafted
    }
}

impl Verifier {
    /// A verifier of `row` (the newest token then the draft; tokens past [`MAX_DRAFT`] drafted
    /// ones are not verified, so a caller feeds [`Verifier::row`]) fed from position `pos0`.
    pub fn new(row: &[u32], pos0: usize) -> Verifier {
        let len = row.len().min(MAX_DRAFT + 1);
        let mut r = [0; MAX_DRAFT + 1];
        r[..len].copy_from_slice(&row[..len]);
        Verifier {
            row: r,
            len,
            pos0,
            accepted: 0,
            next: None,
            failed: None,
        }
    }

    /// The tokens to feed: the newest token, then the draft.
    pub fn row(&self) -> &[u32] {
        &self.row[..self.len]
    }

    /// The position the row starts at.
    pub fn pos0(&self) -> usize {
        self.pos0
    }

    /// Takes the logits after position `pos` (rows arrive in order, as a step hands them out);
    /// rows past the first that decides are ignored, as are positions outside the row.
    /// `constraint` is the sequence's, if it has one (the same one at every row).
    pub fn check(&mut self, pos: usize, logits: &[f32], constraint: Option<&mut Constraint>) {
        let drafted = self.len.saturating_sub(1);
        if self.next.is_some() || self.failed.is_some() || pos != self.pos0 + self.accepted {
            return;
        }
        let greedy = qwenrt_kernels::scalar::argmax(logits) as u32;
        if self.accepted < drafted && greedy == self.row[1 + self.accepted] {
            match constraint.map_or(Ok(()), |c| c.commit(greedy)) {
                Ok(()) => self.accepted += 1,
                Err(e) => self.failed = Some(e.into()),
            }
            return;
        }
        let picked = match constraint {
            None => Ok(greedy),
            Some(c) => c.greedy(logits).and_then(|t| c.commit(t).map(|()| t)),
        };
        match picked {
            Ok(t) => self.next = Some(t),
            Err(e) => self.failed = Some(e.into()),
        }
    }

    /// The verdict, once the rows up to the deciding one were checked: an error if the
    /// constraint failed, or [`EngineError::NoLogits`] if the deciding row never came.
    pub fn verdict(&mut self) -> Result<Verdict, EngineError> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        let next = self.next.ok_or(EngineError::NoLogits)?;
        let mut tokens = [0; MAX_DRAFT + 1];
        tokens[..self.accepted].copy_from_slice(&self.row[1..1 + self.accepted]);
        tokens[self.accepted] = next;
        Ok(Verdict {
            tokens,
            accepted: self.accepted,
            drafted: self.len.saturating_sub(1),
        })
    }
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
        // a 6-gram match far back beats newer 5-gram ones
        let mut h = vec![1, 2, 3, 4, 5, 6, 40, 41];
        h.extend([9, 2, 3, 4, 5, 6, 50, 9, 2, 3, 4, 5, 6, 60, 1, 2, 3, 4, 5]);
        assert_eq!(d(&h, 6, 2), [40, 41]);
        // matches stop growing at MAX_NGRAM: then the newest wins
        let run: Vec<u32> = (0..MAX_NGRAM as u32 + 2).collect();
        let mut h = run.clone();
        h.push(70);
        h.extend(&run);
        h.push(80);
        h.extend(&run[..run.len() - 1]);
        assert_eq!(d(&h, *run.last().unwrap(), 1), [80]);
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

    #[test]
    fn the_adaptive_budget_follows_the_drafts_fate() {
        let mut b = DraftBudget::new(8);
        assert_eq!(b.take(), 8);
        b.verified(8, 3); // partly right: one past the accepted prefix
        assert_eq!(b.take(), 4);
        b.verified(4, 4); // all accepted: doubles, up to the max
        assert_eq!(b.take(), 8);
        b.verified(8, 8);
        assert_eq!(b.take(), 8);
        b.verified(8, 0); // the first drafted token wrong: halves
        assert_eq!(b.take(), 4);
        b.verified(4, 0);
        b.verified(2, 0);
        assert_eq!(b.take(), 1);
        // single-token drafts failing: pauses of 1, then 2 steps
        b.verified(1, 0);
        assert_eq!((b.take(), b.take()), (0, 1));
        b.verified(1, 0);
        assert_eq!((b.take(), b.take(), b.take()), (0, 0, 1));
        b.verified(1, 1); // a success ends the pauses and grows again
        assert_eq!(b.take(), 2);
        b.verified(2, 0);
        b.verified(1, 0);
        assert_eq!((b.take(), b.take()), (0, 1));
        // the pause stops growing at MAX_BACKOFF
        for _ in 0..10 {
            b.verified(1, 0);
            while b.take() == 0 {}
        }
        b.verified(1, 0);
        assert_eq!(
            (0..MAX_BACKOFF + 1).filter(|_| b.take() == 0).count(),
            MAX_BACKOFF
        );
    }

    /// Logits over `v` tokens whose greedy token is `t`.
    fn peak(v: usize, t: u32) -> Vec<f32> {
        let mut l = vec![0.0; v];
        l[t as usize] = 1.0;
        l
    }

    #[test]
    fn the_verifier_keeps_the_agreeing_prefix_and_the_token_after_it() {
        // every drafted token agrees: all of them, then the greedy token after the last
        let mut v = Verifier::new(&[5, 1, 2], 10);
        for (pos, t) in [(10, 1), (11, 2), (12, 7)] {
            v.check(pos, &peak(8, t), None);
        }
        let d = v.verdict().unwrap();
        assert_eq!(
            (d.tokens(), d.accepted(), d.drafted()),
            (&[1, 2, 7][..], 2, 2)
        );

        // the second drafted token disagrees: the first, then the greedy token there; the
        // rows after it are ignored even where they would agree
        let mut v = Verifier::new(&[5, 1, 2, 3], 0);
        for (pos, t) in [(0, 1), (1, 6), (2, 3), (3, 4)] {
            v.check(pos, &peak(8, t), None);
        }
        let d = v.verdict().unwrap();
        assert_eq!((d.tokens(), d.accepted(), d.drafted()), (&[1, 6][..], 1, 3));

        // the first drafted token wrong: only the greedy token after the newest one
        let mut v = Verifier::new(&[5, 1], 3);
        v.check(3, &peak(8, 0), None);
        v.check(4, &peak(8, 0), None);
        assert_eq!(v.verdict().unwrap().tokens(), [0]);

        // no draft: the greedy token
        let mut v = Verifier::new(&[5], 3);
        v.check(3, &peak(8, 4), None);
        assert_eq!(v.verdict().unwrap().tokens(), [4]);
    }

    #[test]
    fn the_verifier_picks_the_first_on_ties_as_the_greedy_sampler() {
        // a drafted token tied with a lower id is not the greedy token
        let mut v = Verifier::new(&[9, 3], 0);
        v.check(0, &[0.0, 2.0, 0.0, 2.0], None);
        let d = v.verdict().unwrap();
        assert_eq!((d.tokens(), d.accepted()), (&[1][..], 0));
        // tied with a higher id, it is
        let mut v = Verifier::new(&[9, 1], 0);
        v.check(0, &[0.0, 2.0, 0.0, 2.0], None);
        v.check(1, &[5.0, 2.0, 0.0, 2.0], None);
        assert_eq!(v.verdict().unwrap().tokens(), [1, 0]);
    }

    #[test]
    fn the_verifier_wants_the_deciding_row_in_order() {
        // rows of other positions (another sequence's, or out of order) are not taken
        let mut v = Verifier::new(&[5, 1, 2], 10);
        v.check(9, &peak(8, 1), None);
        v.check(11, &peak(8, 2), None);
        assert!(matches!(v.verdict(), Err(EngineError::NoLogits)));
        v.check(10, &peak(8, 1), None);
        assert!(matches!(v.verdict(), Err(EngineError::NoLogits)));
        v.check(11, &peak(8, 3), None);
        assert_eq!(v.verdict().unwrap().tokens(), [1, 3]);
        // a row longer than a draft may be is cut to MAX_DRAFT drafted tokens
        let long = [1u32; MAX_DRAFT + 5];
        let v = Verifier::new(&long, 0);
        assert_eq!(v.row().len(), MAX_DRAFT + 1);
    }

    #[test]
    fn the_fixed_budget_never_changes() {
        let mut b = DraftBudget::fixed(40);
        assert_eq!(b.take(), MAX_DRAFT);
        b.verified(MAX_DRAFT, 0);
        b.verified(1, 0);
        assert_eq!(b.take(), MAX_DRAFT);
        assert_eq!(DraftBudget::new(0).take(), 0);
    }
}
