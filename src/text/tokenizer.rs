//! Text to token ids and back.
//!
//! Overview:
//! - [`Tokenizer`]: wraps a `tokenizers::Tokenizer` loaded from `tokenizer.json` (special
//!   tokens written in the text are matched as special tokens), plus a table of every token's
//!   raw bytes (byte-level BPE: each token character maps back to one byte).
//! - [`StreamDecoder`]: streaming detokenization. It buffers token bytes and emits only
//!   complete UTF-8, so a character split across tokens (emoji, CJK) comes out whole; the
//!   concatenation of its pieces plus [`StreamDecoder::finish`] equals [`Tokenizer::decode`]
//!   of all ids. After construction it does not allocate.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug)]
/// Why a tokenizer could not be loaded or used.
pub enum TokenizerError {
    /// tokenizer.json could not be read or parsed.
    Load {
        /// The file, when loaded from one.
        path: Option<PathBuf>,
        /// The tokenizers crate's message.
        message: String,
    },
    /// Text could not be encoded.
    Encode {
        /// The tokenizers crate's message.
        message: String,
    },
    /// Token ids could not be decoded.
    Decode {
        /// The tokenizers crate's message.
        message: String,
    },
}

impl fmt::Display for TokenizerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenizerError::Load {
                path: Some(p),
                message,
            } => {
                write!(f, "cannot load tokenizer {}: {message}", p.display())
            }
            TokenizerError::Load {
                path: None,
                message,
            } => write!(f, "cannot load tokenizer: {message}"),
            TokenizerError::Encode { message } => write!(f, "tokenizer encode failed: {message}"),
            TokenizerError::Decode { message } => write!(f, "tokenizer decode failed: {message}"),
        }
    }
}

impl std::error::Error for TokenizerError {}

/// The GPT-2 byte-level alphabet, inverted: code point -> byte. Printable bytes
/// (`!`..=`~`, `¡`..=`¬`, `®`..=`ÿ`) stand for themselves; the other 68 bytes, in increasing
/// order, are code points 256, 257, ...
fn byte_level_decode_table() -> [Option<u8>; 324] {
    let mut table = [None; 324];
    let mut next = 256usize;
    for b in 0u16..=255 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        if printable {
            table[b as usize] = Some(b as u8);
        } else {
            table[next] = Some(b as u8);
            next += 1;
        }
    }
    table
}

/// Raw bytes of every token id, concatenated.
#[derive(Debug)]
struct TokenBytes {
    bytes: Vec<u8>,
    /// `offsets[id]..offsets[id + 1]` is token `id`'s slice of `bytes`.
    offsets: Vec<usize>,
    max_len: usize,
}

impl TokenBytes {
    fn from_tokens<'a>(tokens: impl Iterator<Item = Option<&'a str>>) -> TokenBytes {
        let table = byte_level_decode_table();
        let mut bytes = Vec::new();
        let mut offsets = vec![0];
        let mut max_len = 0;
        for tok in tokens {
            let start = bytes.len();
            if let Some(t) = tok {
                // As the ByteLevel decoder: map every char to its byte; if any char is outside
                // the alphabet, the token's own UTF-8 bytes are used instead.
                let mapped: Option<Vec<u8>> = t
                    .chars()
                    .map(|c| table.get(c as usize).copied().flatten())
                    .collect();
                match mapped {
                    Some(m) => bytes.extend_from_slice(&m),
                    None => bytes.extend_from_slice(t.as_bytes()),
                }
            }
            max_len = max_len.max(bytes.len() - start);
            offsets.push(bytes.len());
        }
        TokenBytes {
            bytes,
            offsets,
            max_len,
        }
    }

    fn get(&self, id: u32) -> &[u8] {
        let i = id as usize;
        if i + 1 >= self.offsets.len() {
            return &[];
        }
        &self.bytes[self.offsets[i]..self.offsets[i + 1]]
    }
}

/// A byte-level BPE tokenizer loaded from `tokenizer.json`.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    token_bytes: Arc<TokenBytes>,
}

impl Tokenizer {
    /// Loads `path` (a `tokenizer.json`).
    pub fn from_file(path: &Path) -> Result<Tokenizer, TokenizerError> {
        let bytes = std::fs::read(path).map_err(|e| TokenizerError::Load {
            path: Some(path.to_path_buf()),
            message: e.to_string(),
        })?;
        Self::from_json_bytes(&bytes).map_err(|e| match e {
            TokenizerError::Load { message, .. } => TokenizerError::Load {
                path: Some(path.to_path_buf()),
                message,
            },
            e => e,
        })
    }

    /// Builds the tokenizer a GGUF file's metadata describes (the `tokenizer.json` that
    /// `qwenrt convert` would write for it).
    pub fn from_gguf(path: &Path) -> Result<Tokenizer, TokenizerError> {
        let load = |message: String| TokenizerError::Load {
            path: Some(path.to_path_buf()),
            message,
        };
        // the header (with its vocabulary and merges) and the JSON tree are dropped before
        // the tokenizer is built, so their memory is not held at the same time as its own
        let text = {
            let file = crate::model::gguf::GgufFile::open(path).map_err(|e| load(e.to_string()))?;
            crate::model::convert::tokenizer_json(&file.header)
                .map_err(|e| load(e.to_string()))?
                .to_string()
        };
        Self::from_json_bytes(text.as_bytes()).map_err(|e| match e {
            TokenizerError::Load { message, .. } => load(message),
            e => e,
        })
    }

    /// Loads `dir/tokenizer.json`.
    pub fn from_model_dir(dir: &Path) -> Result<Tokenizer, TokenizerError> {
        Self::from_file(&dir.join("tokenizer.json"))
    }

    /// Loads a `tokenizer.json` held in memory.
    pub fn from_json_bytes(json: &[u8]) -> Result<Tokenizer, TokenizerError> {
        let inner = tokenizers::Tokenizer::from_bytes(json).map_err(|e| TokenizerError::Load {
            path: None,
            message: e.to_string(),
        })?;
        Ok(Self::from_inner(inner))
    }

    /// Wraps an already built `tokenizers::Tokenizer`.
    pub fn from_inner(inner: tokenizers::Tokenizer) -> Tokenizer {
        let n = inner
            .get_vocab(true)
            .values()
            .map(|&id| id as usize + 1)
            .max()
            .unwrap_or(0);
        // `id_to_token` looks in the added vocabulary first, as `decode` does.
        let tokens: Vec<Option<String>> = (0..n as u32).map(|id| inner.id_to_token(id)).collect();
        let token_bytes = Arc::new(TokenBytes::from_tokens(tokens.iter().map(|t| t.as_deref())));
        Tokenizer { inner, token_bytes }
    }

    /// Token ids of `text`. Special tokens written in the text (e.g. `<|im_end|>`) are
    /// matched as those tokens; nothing is added around the text.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| TokenizerError::Encode {
                message: e.to_string(),
            })?;
        Ok(enc.get_ids().to_vec())
    }
    /// Token ids of `text` with the tokens the tokenizer adds around a text (its post-processor,
    /// as `add_special_tokens=True` in transformers): Qwen3-Embedding's appends
    /// `<|endoftext|>`, a GGUF's those of `tokenizer.ggml.add_bos_token` / `add_eos_token`; a
    /// generative Qwen's adds nothing. For embedding a text as the model was trained to see it.
    pub fn encode_with_special(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| TokenizerError::Encode {
                message: e.to_string(),
            })?;
        Ok(enc.get_ids().to_vec())
    }

    /// `text` as the encoder sees it, which is what a decode of its encoding gives back: the
    /// added tokens that skip normalization (Qwen2's special tokens) are cut out first, leftmost
    /// and then longest match as `tokenizers` does, and only the text between them goes through
    /// the normalizer (NFC for Qwen2, with the Unicode tables of the `tokenizers` crate, as in
    /// Hugging Face's own tokenizer). So `"<|im_end|>\u{338}"` stays as it is, where NFC of
    /// the whole string would compose `">\u{338}"` into `"≯"`.
    pub fn normalize(&self, text: &str) -> Result<String, TokenizerError> {
        let added = self.inner.get_added_tokens_decoder();
        let specials: Vec<&str> = added
            .values()
            .filter(|t| !t.normalized && !t.content.is_empty())
            .map(|t| t.content.as_str())
            .collect();
        let mut out = String::with_capacity(text.len());
        let mut plain = 0; // start of the text not yet normalized
        let mut i = 0;
        while i < text.len() {
            let longest = specials
                .iter()
                .filter(|t| text[i..].starts_with(**t))
                .map(|t| t.len())
                .max();
            match longest {
                Some(len) => {
                    out.push_str(&self.normalize_piece(&text[plain..i])?);
                    out.push_str(&text[i..i + len]);
                    i += len;
                    plain = i;
                }
                None => i += text[i..].chars().next().map_or(1, char::len_utf8),
            }
        }
        out.push_str(&self.normalize_piece(&text[plain..])?);
        Ok(out)
    }

    /// `text` through the tokenizer's normalizer alone.
    fn normalize_piece(&self, text: &str) -> Result<String, TokenizerError> {
        use tokenizers::{NormalizedString, Normalizer};
        let mut n = NormalizedString::from(text);
        if let Some(norm) = self.inner.get_normalizer() {
            norm.normalize(&mut n).map_err(|e| TokenizerError::Encode {
                message: e.to_string(),
            })?;
        }
        Ok(n.get().to_string())
    }

    /// Text of `ids`, special tokens included; invalid UTF-8 becomes U+FFFD; unknown ids are
    /// skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, false)
            .map_err(|e| TokenizerError::Decode {
                message: e.to_string(),
            })
    }

    /// The id of the token whose text is `token` (model or added token).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Number of distinct tokens, added tokens included (may be less than the model's
    /// embedding rows, which can be padded).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The raw bytes token `id` stands for (empty for unknown ids).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.token_bytes.get(id)
    }

    /// A fresh streaming decoder sharing this tokenizer's byte table.
    pub fn stream_decoder(&self) -> StreamDecoder {
        StreamDecoder::new(self.token_bytes.clone())
    }

    /// The wrapped `tokenizers::Tokenizer`.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// Streaming detokenizer: feed ids one at a time, get back the text they complete.
///
/// Invalid byte sequences become U+FFFD exactly as `String::from_utf8_lossy` (and hence
/// `Tokenizer::decode`) would replace them; an incomplete sequence at the end is held back
/// until the next token completes it (or [`StreamDecoder::finish`] flushes it).
pub struct StreamDecoder {
    table: Arc<TokenBytes>,
    /// Bytes of an incomplete UTF-8 sequence (at most 3) followed by the newest token's bytes.
    pending: Vec<u8>,
    /// Text returned by the last call.
    out: String,
}

impl StreamDecoder {
    fn new(table: Arc<TokenBytes>) -> StreamDecoder {
        let cap = table.max_len + 4;
        StreamDecoder {
            pending: Vec::with_capacity(cap),
            // Worst case every byte is invalid and becomes a 3-byte U+FFFD.
            out: String::with_capacity(3 * cap),
            table,
        }
    }

    /// Appends token `id`; returns the newly completed text (possibly empty).
    pub fn push(&mut self, id: u32) -> &str {
        self.pending.extend_from_slice(self.table.get(id));
        self.drain(false)
    }

    /// Flushes an incomplete trailing sequence (as one U+FFFD, like `from_utf8_lossy`) and
    /// returns it; the decoder is then empty and can be reused.
    pub fn finish(&mut self) -> &str {
        self.drain(true)
    }

    /// Forgets any pending bytes.
    pub fn reset(&mut self) {
        self.pending.clear();
        self.out.clear();
    }

    /// Whether bytes of an incomplete character are held back.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    fn drain(&mut self, at_end: bool) -> &str {
        self.out.clear();
        let mut start = 0;
        while start < self.pending.len() {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    self.out.push_str(s);
                    start = self.pending.len();
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    let prefix = &self.pending[start..start + valid];
                    self.out
                        .push_str(std::str::from_utf8(prefix).unwrap_or_default());
                    match e.error_len() {
                        Some(bad) => {
                            self.out.push('\u{FFFD}');
                            start += valid + bad;
                        }
                        None if at_end => {
                            self.out.push('\u{FFFD}');
                            start = self.pending.len();
                        }
                        None => {
                            start += valid;
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
        &self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A decoder whose token `i` is the single byte `i`, plus the given multi-byte tokens
    /// from id 256 on.
    fn byte_decoder(extra: &[&[u8]]) -> StreamDecoder {
        let mut bytes: Vec<u8> = (0..=255u8).collect();
        let mut offsets: Vec<usize> = (0..=256).collect();
        for e in extra {
            bytes.extend_from_slice(e);
            offsets.push(bytes.len());
        }
        let max_len = extra.iter().map(|e| e.len()).max().unwrap_or(1).max(1);
        StreamDecoder::new(Arc::new(TokenBytes {
            bytes,
            offsets,
            max_len,
        }))
    }

    fn stream_all(d: &mut StreamDecoder, ids: &[u32]) -> (Vec<String>, String) {
        let mut pieces: Vec<String> = ids.iter().map(|&id| d.push(id).to_string()).collect();
        pieces.push(d.finish().to_string());
        let all = pieces.concat();
        (pieces, all)
    }

    #[test]
    fn alphabet_is_a_bijection() {
        let t = byte_level_decode_table();
        let mut seen = [false; 256];
        for b in t.iter().flatten() {
            assert!(!seen[*b as usize]);
            seen[*b as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(t['Ġ' as usize], Some(b' '));
        assert_eq!(t['Ċ' as usize], Some(b'\n'));
        assert_eq!(t['a' as usize], Some(b'a'));
    }

    #[test]
    fn emoji_split_over_byte_tokens_comes_out_whole() {
        let mut d = byte_decoder(&[]);
        let text = "a🚀好b";
        let ids: Vec<u32> = text.bytes().map(u32::from).collect();
        let (pieces, all) = stream_all(&mut d, &ids);
        assert_eq!(all, text);
        assert_eq!(pieces[0], "a");
        assert_eq!(pieces[1..4], ["", "", ""]);
        assert_eq!(pieces[4], "🚀");
        assert_eq!(pieces[7], "好");
        for p in &pieces {
            // every piece is a whole string by construction; none holds a replacement char
            assert!(!p.contains('\u{FFFD}'));
        }
    }

    #[test]
    fn invalid_bytes_match_from_utf8_lossy() {
        let cases: &[&[u8]] = &[
            &[0xE4, 0xB8, b'a'],
            &[0xFF, b'x', 0xF0, 0x9F],
            &[0xC0, 0x80, 0xED, 0xA0, 0x80],
            &[0xF0, 0x9F, 0x9A],
            &[b'o', b'k', 0xE2, 0x82, 0xAC],
        ];
        for bytes in cases {
            let mut d = byte_decoder(&[]);
            let ids: Vec<u32> = bytes.iter().map(|&b| u32::from(b)).collect();
            let (_, all) = stream_all(&mut d, &ids);
            assert_eq!(all, String::from_utf8_lossy(bytes), "{bytes:02x?}");
        }
    }

    #[test]
    fn multi_byte_tokens_straddling_characters() {
        // "é🚀" = C3 A9 F0 9F 9A 80, cut as [C3] [A9 F0 9F] [9A 80 'z']
        let mut d = byte_decoder(&[&[0xA9, 0xF0, 0x9F], &[0x9A, 0x80, b'z']]);
        assert_eq!(d.push(0xC3), "");
        assert_eq!(d.push(256), "é");
        assert!(d.has_pending());
        assert_eq!(d.push(257), "🚀z");
        assert_eq!(d.finish(), "");
    }

    #[test]
    fn push_does_not_grow_buffers() {
        let mut d = byte_decoder(&[&[0xF0, 0x9F, 0x9A, 0x80, 0xFF, 0xFE, 0xFD]]);
        let (pc, oc) = (d.pending.capacity(), d.out.capacity());
        for _ in 0..100 {
            d.push(0xF0);
            d.push(0x9F);
            d.push(256);
            d.push(0xE4);
        }
        d.finish();
        assert_eq!((d.pending.capacity(), d.out.capacity()), (pc, oc));
    }
}
