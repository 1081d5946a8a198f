//! Text through the real tokenizer and back.

use super::*;

/// The real model's tokenizer.json, committed at `tests/fixtures/qwen2.5-coder-0.5b/`.
pub fn tokenizer_path() -> PathBuf {
    fixtures_dir().join("qwen2.5-coder-0.5b/tokenizer.json")
}

/// The tokenizer at [`tokenizer_path`], loaded once.
pub fn tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| Tokenizer::from_file(&tokenizer_path()).unwrap_or_else(|e| panic!("{e}")))
}

/// The `tokenizer_roundtrip` fuzz target's input: the bytes as lossy UTF-8 through
/// [`tokenizer_roundtrip`] with the real [`tokenizer`].
pub fn tokenizer_roundtrip_bytes(data: &[u8]) {
    tokenizer_roundtrip(tokenizer(), &String::from_utf8_lossy(data));
}

/// Encodes `text` and decodes the ids: no error, the text comes back exactly as the
/// tokenizer's own normalizer gives it (NFC with the `tokenizers` crate's Unicode tables, as
/// in Hugging Face's tokenizer; an independent, newer NFC can order combining marks that older
/// tables do not know differently, which is what fuzz/regressions/tokenizer_roundtrip holds),
/// ASCII comes back unchanged, and streaming decode agrees with [`Tokenizer::decode`].
pub fn tokenizer_roundtrip(tok: &Tokenizer, text: &str) {
    let ids = tok
        .encode(text)
        .unwrap_or_else(|e| panic!("encode {text:?}: {e}"));
    let decoded = tok
        .decode(&ids)
        .unwrap_or_else(|e| panic!("decode {ids:?}: {e}"));
    let normalized = tok
        .normalize(text)
        .unwrap_or_else(|e| panic!("normalize {text:?}: {e}"));
    assert_eq!(decoded, normalized, "round trip of {text:?} via {ids:?}");
    if text.is_ascii() {
        assert_eq!(decoded, text, "ASCII round trip of {text:?} via {ids:?}");
    }
    let mut stream = tok.stream_decoder();
    let mut streamed = String::new();
    for &id in &ids {
        streamed.push_str(stream.push(id));
    }
    streamed.push_str(stream.finish());
    assert_eq!(streamed, decoded, "streaming decode of {ids:?}");
}
