//! The ChatML template Qwen2 instruct models are trained on.

/// The system prompt Qwen2.5 uses when none is given.
pub const DEFAULT_SYSTEM_PROMPT: &str =
    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";

/// The end-of-turn token.
pub const IM_END: &str = "<|im_end|>";
/// The end-of-text token.
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// The ids that end a turn, for every decode loop and grammar of a model: `<|im_end|>` and
/// `<|endoftext|>` when the tokenizer has them, then the config's eos ids not already listed.
/// The first is the end of turn a constrained answer closes with.
pub fn stop_ids(tok: &crate::Tokenizer, config: &crate::Config) -> Vec<u32> {
    let mut ids: Vec<u32> = [IM_END, END_OF_TEXT]
        .iter()
        .filter_map(|t| tok.token_id(t))
        .collect();
    for &e in &config.eos_token_ids {
        if !ids.contains(&e) {
            ids.push(e);
        }
    }
    ids
}

/// A whole first turn: the system message, the user message, and the assistant header.
pub fn first_turn(system: &str, user: &str) -> String {
    format!(
        "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    )
}

/// A follow-up turn, to be processed after the previous assistant reply's `<|im_end|>`: the
/// newline that ends that message, the user message and the assistant header.
pub fn next_turn(user: &str) -> String {
    format!("\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_qwen2_template() {
        assert_eq!(
            first_turn(DEFAULT_SYSTEM_PROMPT, "hi"),
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
        // a second turn continues the transcript exactly as the template renders two turns
        let two = format!("{}reply{IM_END}{}", first_turn("s", "a"), next_turn("b"));
        assert!(two
            .ends_with("reply<|im_end|>\n<|im_start|>user\nb<|im_end|>\n<|im_start|>assistant\n"));
    }
}
