//! Real-model test: the tokenizer rebuilt from the GGUF reproduces HF `tokenizers`' ids.

use qwenrt::text::tokenizer::Tokenizer;
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
}

#[derive(Deserialize)]
struct Cases {
    cases: Vec<Case>,
}

fn tokenizer() -> Tokenizer {
    let dir = qwenrt_cli::hub::ensure_default_model(true)
        .unwrap_or_else(|e| panic!("fetch + convert the default model: {e}"));
    Tokenizer::from_model_dir(&dir).unwrap()
}

fn cases() -> Vec<Case> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/qwen2.5-coder-0.5b/tokenizer_cases.json"
    );
    serde_json::from_str::<Cases>(&std::fs::read_to_string(path).unwrap())
        .unwrap()
        .cases
}

fn nfc(s: &str) -> String {
    let mut n = tokenizers::NormalizedString::from(s);
    n.nfc();
    n.get().to_string()
}

#[test]
fn every_case_encodes_to_reference_ids_and_round_trips() {
    let tok = tokenizer();
    let cases = cases();
    assert!(!cases.is_empty());
    let mut failures = Vec::new();
    for c in &cases {
        let ids = tok.encode(&c.text).unwrap();
        if ids != c.ids {
            failures.push(format!("{:?}: got {:?}, want {:?}", c.text, ids, c.ids));
        }
        let text = tok.decode(&c.ids).unwrap();
        if text != nfc(&c.text) {
            failures.push(format!(
                "decode {:?}: got {:?}, want {:?}",
                c.ids,
                text,
                nfc(&c.text)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn special_tokens_and_sizes() {
    let tok = tokenizer();
    assert_eq!(tok.token_id("<|endoftext|>"), Some(151643));
    assert_eq!(tok.token_id("<|im_start|>"), Some(151644));
    assert_eq!(tok.token_id("<|im_end|>"), Some(151645));
    assert_eq!(tok.token_id("<|file_sep|>"), Some(151664));
    assert_eq!(tok.vocab_size(), 151665);
    assert_eq!(tok.token_bytes(151645), b"<|im_end|>");
    assert_eq!(tok.token_bytes(220), b" ");
    assert_eq!(tok.token_bytes(198), b"\n");
}

#[test]
fn streaming_pieces_concatenate_to_decode() {
    let tok = tokenizer();
    let mut texts: Vec<String> = cases().into_iter().map(|c| c.text).collect();
    texts.push("emoji 🚀🔥 and ✓ 你好，世界！ 🇺🇳 👩‍👩‍👧 <|im_start|>assistant\nok<|im_end|>".into());
    for text in &texts {
        let ids = tok.encode(text).unwrap();
        let mut d = tok.stream_decoder();
        let mut all = String::new();
        for &id in &ids {
            let piece = d.push(id);
            assert!(
                !piece.contains('\u{FFFD}'),
                "{text:?}: half a character emitted at id {id}"
            );
            all.push_str(piece);
        }
        all.push_str(d.finish());
        assert_eq!(all, tok.decode(&ids).unwrap(), "{text:?}");
    }
}

#[test]
fn emoji_split_across_tokens_comes_out_whole() {
    let tok = tokenizer();
    // "emoji 🚀🔥 and ✓": 🚀 is split over ids 11162, 248, 222 in the reference.
    let ids = [37523u32, 11162, 248, 222, 144670, 323, 52375];
    let mut d = tok.stream_decoder();
    let pieces: Vec<String> = ids.iter().map(|&id| d.push(id).to_string()).collect();
    assert_eq!(pieces[0], "emoji");
    assert!(pieces.iter().any(|p| p.contains('🚀')));
    assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')));
    assert_eq!(pieces.concat() + d.finish(), "emoji 🚀🔥 and ✓");
}
