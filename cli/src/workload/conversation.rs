//! A multi-turn conversation on one session, as `qwenrt chat` runs it: each turn the whole
//! conversation is rendered by the model's chat template and tokenized, the session keeps the
//! cached tokens that are a common prefix of the new prompt, and only the rest is fed. A
//! template that renders earlier turns the same way every time (Qwen2.5's) reuses everything
//! but the new user message; one that rewrites them (Qwen3's, which drops past reasoning)
//! reuses less, and stays correct.
//!
//! - [`Conversation`]: the messages so far and their prompt.
//! - [`feed_reusing`]: brings a session's cache to a prompt, reusing its common prefix.

use serde_json::{json, Value};

use super::complete::RequestError;
use qwenrt::engine::session::{Session, SessionError};
use qwenrt::text::template::ChatTemplate;
use qwenrt::text::tokenizer::Tokenizer;

/// The messages of a conversation, in order.
#[derive(Clone, Debug, Default)]
pub struct Conversation {
    messages: Vec<Value>,
}

impl Conversation {
    /// A conversation that opens with `system` (when given).
    pub fn new(system: Option<&str>) -> Conversation {
        let mut c = Conversation::default();
        if let Some(s) = system {
            c.push("system", s);
        }
        c
    }

    /// Appends a message.
    pub fn push(&mut self, role: &str, content: &str) {
        self.messages
            .push(json!({"role": role, "content": content}));
    }

    /// Removes the last message (a user turn that did not fit, say).
    pub fn pop(&mut self) -> Option<Value> {
        self.messages.pop()
    }

    /// The messages so far.
    pub fn messages(&self) -> &[Value] {
        &self.messages
    }

    /// The prompt of the next reply: the whole conversation rendered by `template` with the
    /// generation prompt, as token ids.
    pub fn prompt_ids(
        &self,
        template: &ChatTemplate,
        tok: &Tokenizer,
    ) -> Result<Vec<u32>, RequestError> {
        let text = template
            .render(
                &Value::Array(self.messages.clone()),
                None,
                true,
                &serde_json::Map::new(),
            )
            .map_err(RequestError::Template)?;
        tok.encode(&text)
            .map_err(|e| RequestError::Tokenizer(e.to_string()))
    }
}

/// The length of the longest common prefix of `a` and `b`.
pub fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Brings the session's cache to `ids` and computes the logits after them: keeps the longest
/// common prefix of what the cache holds and `ids` (leaving at least the last token to feed,
/// so the logits are fresh), rewinds the rest, and prefills the tokens past it. Returns how
/// many cached tokens were reused.
pub fn feed_reusing(session: &mut Session, ids: &[u32]) -> Result<usize, SessionError> {
    if ids.is_empty() {
        return Err(SessionError::EmptyInput);
    }
    let seq = session.sequence();
    let cached = common_prefix(session.engine().tokens(seq)?, ids);
    let keep = cached.min(ids.len() - 1);
    session.truncate(keep);
    session.prefill(&ids[keep..])?;
    Ok(keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_prefix_stops_at_the_first_difference() {
        assert_eq!(common_prefix(&[1, 2, 3], &[1, 2, 4, 5]), 2);
        assert_eq!(common_prefix(&[1, 2], &[1, 2, 3]), 2);
        assert_eq!(common_prefix(&[], &[1]), 0);
        assert_eq!(common_prefix(&[9], &[1]), 0);
    }

    #[test]
    fn messages_keep_their_order() {
        let mut c = Conversation::new(Some("s"));
        c.push("user", "u");
        c.push("assistant", "a");
        assert_eq!(c.messages().len(), 3);
        assert_eq!(c.messages()[0]["role"], "system");
        assert_eq!(c.pop().unwrap()["content"], "a");
        assert_eq!(Conversation::new(None).messages().len(), 0);
    }
}
