//! Reasoning output: the `<think>...</think>` part of an answer from a model whose template
//! has a thinking switch (Qwen3), split from the rest as it streams, so the server can return
//! it as `message.reasoning_content` (`delta.reasoning_content` when streaming), as vLLM and
//! llama-server do.
//!
//! The thinking part opens the answer: with `<think>` written by the model, or already in the
//! prompt (a template whose generation prompt ends with `<think>`). It ends at `</think>`;
//! the blank space after the tag is dropped. An answer that does not open with `<think>` is
//! all content. A `<think>` never closed (the answer was cut) leaves everything in reasoning.

use crate::call_parser::partial_suffix;

/// What the server does with the thinking part (`--reasoning-format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReasoningFormat {
    /// With a template that has a thinking switch, the thinking part goes to
    /// `reasoning_content` and the rest to `content`.
    #[default]
    Auto,
    /// Everything the model writes goes to `content`, tags included.
    None,
}

/// The tag that opens the thinking part.
pub const OPEN: &str = "<think>";
/// The tag that closes it.
pub const CLOSE: &str = "</think>";

/// One piece of the split answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    /// Text of the thinking part.
    Reasoning(String),
    /// Text of the answer after it.
    Content(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Nothing but blank space yet: the answer may still open with `<think>`.
    Start,
    /// Inside the thinking part; `true` until its first non-blank text (the line break after
    /// `<think>` is dropped).
    Thinking(bool),
    /// Right after `</think>`: blank space is dropped.
    AfterClose,
    /// The answer proper.
    Answer,
}

/// Splits an answer's text into reasoning and content as it streams.
#[derive(Clone, Debug)]
pub struct ThinkSplitter {
    state: State,
    held: String,
}

impl ThinkSplitter {
    /// A splitter for an answer whose prompt ended inside the thinking part
    /// (`prompt_opened`: the generation prompt ends with `<think>`) or not.
    pub fn new(prompt_opened: bool) -> ThinkSplitter {
        ThinkSplitter {
            state: if prompt_opened {
                State::Thinking(true)
            } else {
                State::Start
            },
            held: String::new(),
        }
    }

    /// Whether a rendered prompt leaves the model inside the thinking part.
    pub fn prompt_opens(prompt: &str) -> bool {
        prompt.trim_end().ends_with(OPEN)
    }

    /// Takes the next piece of text; appends what it completes to `out`.
    pub fn push(&mut self, text: &str, out: &mut Vec<Piece>) {
        self.held.push_str(text);
        loop {
            match self.state {
                State::Start => {
                    let t = self.held.trim_start();
                    if let Some(rest) = t.strip_prefix(OPEN) {
                        self.held = rest.to_string();
                        self.state = State::Thinking(true);
                    } else if OPEN.starts_with(t) {
                        return;
                    } else {
                        self.state = State::Answer;
                    }
                }
                State::Thinking(lead) => {
                    if lead {
                        let t = self.held.trim_start();
                        if t.is_empty() {
                            self.held.clear();
                            return;
                        }
                        self.held = t.to_string();
                        self.state = State::Thinking(false);
                    }
                    if let Some(p) = self.held.find(CLOSE) {
                        let rest = self.held[p + CLOSE.len()..].to_string();
                        let thought = self.held[..p].trim_end();
                        if !thought.is_empty() {
                            out.push(Piece::Reasoning(thought.to_string()));
                        }
                        self.held = rest;
                        self.state = State::AfterClose;
                        continue;
                    }
                    // hold back a possible start of the closing tag and the blank space
                    // before it (dropped if the tag follows)
                    let keep = partial_suffix(&self.held, CLOSE);
                    let n = self.held[..self.held.len() - keep].trim_end().len();
                    if n > 0 {
                        out.push(Piece::Reasoning(self.held.drain(..n).collect()));
                    }
                    return;
                }
                State::AfterClose => {
                    let t = self.held.trim_start();
                    if t.is_empty() {
                        self.held.clear();
                        return;
                    }
                    self.held = t.to_string();
                    self.state = State::Answer;
                }
                State::Answer => {
                    if !self.held.is_empty() {
                        out.push(Piece::Content(std::mem::take(&mut self.held)));
                    }
                    return;
                }
            }
        }
    }

    /// Ends the answer: flushes what was held back.
    pub fn finish(&mut self, out: &mut Vec<Piece>) {
        let t = std::mem::take(&mut self.held);
        if t.is_empty() {
            return;
        }
        match self.state {
            State::Thinking(_) => out.push(Piece::Reasoning(t.trim_end().to_string())),
            State::AfterClose => {}
            State::Start | State::Answer => out.push(Piece::Content(t)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(opened: bool, pieces: &[&str]) -> (String, String) {
        let mut s = ThinkSplitter::new(opened);
        let mut out = Vec::new();
        for p in pieces {
            s.push(p, &mut out);
        }
        s.finish(&mut out);
        let (mut r, mut c) = (String::new(), String::new());
        for p in out {
            match p {
                Piece::Reasoning(t) => r.push_str(&t),
                Piece::Content(t) => c.push_str(&t),
            }
        }
        (r, c)
    }

    #[test]
    fn the_thinking_part_splits_off_at_any_split_point() {
        let text = "<think>\nFirst, 2+2.\n</think>\n\nIt is 4.";
        let chars: Vec<String> = text.chars().map(String::from).collect();
        let bytewise: Vec<&str> = chars.iter().map(String::as_str).collect();
        for pieces in [vec![text], bytewise] {
            let (r, c) = split(false, &pieces);
            assert_eq!(r, "First, 2+2.");
            assert_eq!(c, "It is 4.");
        }
        // opened by the prompt
        assert_eq!(
            split(true, &["a thought</think>\n\nanswer"]),
            ("a thought".to_string(), "answer".to_string())
        );
        // no thinking part: all content, a `<` that is not the tag included
        assert_eq!(
            split(false, &["<", "b>bold"]),
            (String::new(), "<b>bold".to_string())
        );
        // cut inside the thinking part: all of it is reasoning
        assert_eq!(
            split(false, &["<think>\nstill thin", "king "]),
            ("still thinking".to_string(), String::new())
        );
        assert!(ThinkSplitter::prompt_opens(
            "<|im_start|>assistant\n<think>\n"
        ));
        assert!(!ThinkSplitter::prompt_opens("<|im_start|>assistant\n"));
    }
}
