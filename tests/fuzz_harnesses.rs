//! The fuzz harnesses of `qwenrt::testkit::fuzzing` (the same functions the cargo-fuzz targets in
//! `fuzz/` call) over a few thousand seeded random inputs each, so `cargo test` checks them
//! without a fuzzer. The harnesses assert their contracts themselves; these tests also check
//! that the inputs reach both the accepting and the refusing paths.

use qwenrt::model::weights::Weights;
use qwenrt::testkit::fuzzing;

/// xorshift64*, seeded per test so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn bytes(&mut self, max_len: usize) -> Vec<u8> {
        let len = self.below(max_len + 1);
        (0..len).map(|_| self.next() as u8).collect()
    }
}

#[test]
fn kv_cache_ops_random_programs() {
    let mut rng = Rng(0x6b76_5f63_6163_6865);
    let mut long_programs = 0;
    let mut dtypes = [0; 3];
    for _ in 0..4000 {
        let data = rng.bytes(600);
        fuzzing::kv_cache_ops(&data);
        let p = fuzzing::KvProgram::from_bytes(&data);
        if p.ops.len() >= 8 {
            long_programs += 1;
        }
        dtypes[usize::from(p.dtype % 3)] += 1;
    }
    assert!(
        long_programs > 1000,
        "only {long_programs} programs had 8+ ops"
    );
    assert!(
        dtypes.iter().all(|&n| n > 1000),
        "programs per element type (f32, bf16, f16): {dtypes:?}"
    );
}

#[test]
fn kv_cache_ops_cover_every_operation() {
    use fuzzing::{KvOp, KvProgram, Pos};
    // A well-formed session: prefill, steps, views, rollback and truncate, then every refusal.
    let mut ops = vec![
        KvOp::Prefill {
            layer: 0,
            pos: Pos::Used,
            n: 5,
            k_extra: 0,
            v_extra: 0,
        },
        KvOp::Prefill {
            layer: 1,
            pos: Pos::Used,
            n: 5,
            k_extra: 0,
            v_extra: 0,
        },
        KvOp::View {
            layer: 1,
            len: Pos::Frontier,
        },
        KvOp::Commit,
    ];
    for _ in 0..3 {
        ops.extend([
            KvOp::Step {
                layer: 0,
                pos: Pos::Used,
            },
            KvOp::Step {
                layer: 1,
                pos: Pos::Used,
            },
            KvOp::Commit,
        ]);
    }
    ops.extend([
        KvOp::Step {
            layer: 0,
            pos: Pos::Used,
        },
        KvOp::Rollback,
        KvOp::Truncate(4),
        KvOp::Step {
            layer: 0,
            pos: Pos::At(9),
        },
        KvOp::Step {
            layer: 0,
            pos: Pos::Huge(0),
        },
        KvOp::Step {
            layer: 3,
            pos: Pos::Used,
        },
        KvOp::Prefill {
            layer: 0,
            pos: Pos::Used,
            n: 19,
            k_extra: 0,
            v_extra: 0,
        },
        KvOp::Prefill {
            layer: 0,
            pos: Pos::Used,
            n: 1,
            k_extra: 1,
            v_extra: 0,
        },
        KvOp::WrongStorage {
            layer: 0,
            pos: Pos::Used,
            delta: -1,
        },
        KvOp::WrongType {
            layer: 0,
            pos: Pos::Used,
        },
        KvOp::View {
            layer: 0,
            len: Pos::At(200),
        },
        KvOp::Reset,
        KvOp::View {
            layer: 0,
            len: Pos::Used,
        },
    ]);
    // every element type: f32, bf16, f16
    for dtype in 0..3 {
        fuzzing::run_kv_program(&KvProgram {
            layers: 2,
            kv_heads: 2,
            capacity: 10,
            head_dim: 3,
            dtype,
            ops: ops.clone(),
        });
    }
}

#[test]
fn config_parse_random_and_overflowing_sizes() {
    let mut rng = Rng(0x636f_6e66_6967);
    for _ in 0..4000 {
        fuzzing::config_parse(&rng.bytes(200));
    }
    // structured sizes, biased to values that pass the per-field caps, so the products are hit
    let mut accepted = 0;
    for _ in 0..4000 {
        let pick = |rng: &mut Rng| match rng.below(3) {
            0 => fuzzing::Size::Small(rng.next() as u8),
            1 => fuzzing::Size::Pow2((rng.next() % 25) as u8),
            _ => fuzzing::Size::Any(rng.next() >> rng.below(64)),
        };
        let sizes = fuzzing::ConfigSizes {
            vocab: pick(&mut rng),
            hidden: fuzzing::Size::Pow2((rng.next() % 25) as u8),
            ffn: pick(&mut rng),
            layers: pick(&mut rng),
            heads: fuzzing::Size::Pow2((rng.next() % 12) as u8),
            kv_heads: Some(fuzzing::Size::Pow2((rng.next() % 12) as u8)),
            head_dim: None,
            max_positions: pick(&mut rng),
            eps: 1e-6,
            theta: Some(1e6),
            tied: rng.next().is_multiple_of(2),
            eos: vec![rng.next() % 1000],
        };
        let json = sizes.json();
        fuzzing::config_parse(json.as_bytes());
        accepted += usize::from(qwenrt::model::config::Config::from_json(json.as_bytes()).is_ok());
    }
    assert!(
        (100..3900).contains(&accepted),
        "{accepted} of 4000 structured configs accepted"
    );
}

#[test]
fn safetensors_load_random_and_mutated() {
    let (config, st) = fuzzing::tiny_model();
    // the fixture itself loads and runs through the harness's forward pass
    assert!(Weights::from_bytes(config, st.clone()).is_ok());
    fuzzing::safetensors_load(st);
    let mut rng = Rng(0x7361_6665_7465_6e73);
    for cut in [0, 7, 8, 100, st.len() / 2, st.len() - 1] {
        fuzzing::safetensors_load(&st[..cut]);
    }
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..1500 {
        let data = rng.bytes(160);
        fuzzing::safetensors_load(&data);
        // the same mutations, counted, to show both outcomes are reached
        let (mut c, mut s) = (config.clone(), st.clone());
        for m in fuzzing::st_mutations(&data) {
            fuzzing::mutate_model(&mut c, &mut s, &m);
        }
        match Weights::from_bytes(&c, s) {
            Ok(_) => ok += 1,
            Err(_) => refused += 1,
        }
    }
    assert!(ok > 20 && refused > 200, "{ok} loaded, {refused} refused");
}

#[test]
fn gguf_read_random_and_mutated() {
    let valid = fuzzing::tiny_gguf();
    let file = qwenrt::model::gguf::GgufFile::from_bytes(valid.clone()).expect("the seed is valid");
    assert_eq!(file.header.tensors.len(), 9);
    assert!(qwenrt::model::convert::config_json(&file.header).is_ok());
    fuzzing::gguf_read(&valid);
    for cut in (0..valid.len()).step_by(97) {
        fuzzing::gguf_read(&valid[..cut]);
    }
    let mut rng = Rng(0x6767_7566);
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..3000 {
        let data = rng.bytes(120);
        fuzzing::gguf_read(&data);
        match qwenrt::model::gguf::GgufFile::from_bytes(fuzzing::mutate_gguf(
            &fuzzing::gguf_mutations(&data),
        )) {
            Ok(_) => ok += 1,
            Err(_) => refused += 1,
        }
    }
    assert!(ok > 100 && refused > 500, "{ok} parsed, {refused} refused");
}

#[test]
fn gguf_model_random_and_mutated() {
    use qwenrt::model::weights::Weights;
    let valid = fuzzing::tiny_model_gguf_builder().build();
    assert!(
        Weights::from_gguf_bytes(valid.clone()).is_ok(),
        "the base model loads"
    );
    fuzzing::gguf_model(&valid);
    for cut in (0..valid.len()).step_by(4099) {
        fuzzing::gguf_model(&valid[..cut]);
    }
    let mut rng = Rng(0x006d_6f64_656c);
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..400 {
        let data = rng.bytes(120);
        fuzzing::gguf_model(&data);
        let bytes = fuzzing::mutate_gguf_from(
            fuzzing::tiny_model_gguf_builder(),
            &fuzzing::gguf_mutations(&data),
        );
        match Weights::from_gguf_bytes(bytes) {
            Ok(_) => ok += 1,
            Err(_) => refused += 1,
        }
    }
    // both outcomes are exercised: loads that then run a forward pass, and refusals
    assert!(ok >= 5 && refused > 50, "{ok} loaded, {refused} refused");
}

/// Characters that stress the normalizer and the byte-level BPE: combining marks, Hangul
/// jamo, decomposed and precomposed Latin, CJK, emoji with ZWJ, controls, special tokens.
const PIECES: &[&str] = &[
    "a",
    "Z",
    " ",
    "  ",
    "\n",
    "\r\n",
    "\t",
    "e\u{301}",
    "\u{301}",
    "\u{1100}\u{1161}",
    "\u{AC00}",
    "Å",
    "A\u{30A}",
    "\u{212B}",
    "ﬁ",
    "中文",
    "日本語",
    "🚀",
    "👨\u{200D}👩",
    "\u{0}",
    "\u{7F}",
    "\u{FEFF}",
    "\u{FFFD}",
    "<|im_end|>",
    "<|im_start|>",
    "<|endoftext|>",
    "<|im_",
    "fn main() {}",
    "'s",
    "123456",
    "ـ",
    "\u{10FFFF}",
    "ǅ",
    "ẛ\u{323}",
    "\u{2126}",
];

#[test]
fn tokenizer_roundtrip_random_text() {
    let tok = fuzzing::tokenizer();
    let check = |text: &str| {
        fuzzing::tokenizer_roundtrip(tok, text);
    };
    let mut rng = Rng(0x746f_6b65_6e73);
    for _ in 0..2500 {
        let mut text = String::new();
        for _ in 0..rng.below(12) {
            if rng.below(4) == 0 {
                // any scalar value
                let c = loop {
                    if let Some(c) = char::from_u32((rng.next() % 0x11_0000) as u32) {
                        break c;
                    }
                };
                text.push(c);
            } else {
                text.push_str(PIECES[rng.below(PIECES.len())]);
            }
        }
        check(&text);
    }
    for p in PIECES {
        check(p);
    }
    // lossy decoding of raw bytes, as the fuzz target does
    for _ in 0..500 {
        check(&String::from_utf8_lossy(&rng.bytes(40)));
    }
}

/// The committed GGUF seed is the builder's current output (regenerate with
/// `QWENRT_BLESS=1 cargo test --release --test fuzz_harnesses`).
#[test]
fn committed_gguf_seed_is_current() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/gguf_read/tiny.gguf");
    let want = fuzzing::tiny_gguf();
    if std::env::var_os("QWENRT_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read(&path).unwrap_or_default();
    assert!(have == want, "{} is stale", path.display());
}

/// Special tokens are cut out before normalization, as the encoder does: a combining mark after
/// `<|im_end|>` is not composed with its `>` (found by fuzzing `tokenizer_roundtrip`).
#[test]
fn tokenizer_normalizes_around_special_tokens() {
    let tok = fuzzing::tokenizer();
    assert_eq!(tok.normalize(">\u{338}").unwrap(), "\u{226f}");
    for text in ["<|im_end|>\u{338}", "a>\u{338}<|im_start|>\u{338}x"] {
        let want = text.replacen("a>\u{338}", "a\u{226f}", 1);
        assert_eq!(tok.normalize(text).unwrap(), want, "{text:?}");
        let ids = tok.encode(text).unwrap();
        assert_eq!(tok.decode(&ids).unwrap(), want, "{text:?} via {ids:?}");
    }
}

/// The tokenizer's normalizer is NFC: checked against an independent NFC implementation on
/// strings built from [`PIECES`] (characters both implementations' Unicode tables know; the
/// two disagree only on combining marks newer than the `tokenizers` crate's tables).
#[test]
fn tokenizer_normalizer_is_nfc() {
    use unicode_normalization::UnicodeNormalization;
    let tok = fuzzing::tokenizer();
    let mut changed = 0;
    for a in PIECES {
        for b in PIECES {
            let text = format!("{a}{b}");
            let nfc: String = text.nfc().collect();
            assert_eq!(tok.normalize(&text).unwrap(), nfc, "{text:?}");
            changed += usize::from(nfc != text);
        }
    }
    assert!(
        changed > 50,
        "only {changed} strings changed under NFC: the check has no teeth"
    );
}

/// A random JSON schema from the keywords the constraint compiler meets in requests: nested
/// objects and arrays, enums, consts, bounds, patterns, anyOf/oneOf/allOf, `$ref`s (dangling
/// and recursive ones included), with values that are sometimes the wrong type.
fn random_schema(rng: &mut Rng, depth: usize) -> serde_json::Value {
    use serde_json::{json, Value};
    // one leaf in eight is bad (an unknown type or format, a dangling $ref, a broken
    // pattern, contradictory bounds), so most trees compile and some are refused
    let leaf = |rng: &mut Rng| -> Value {
        if rng.below(8) == 0 {
            return match rng.below(5) {
                0 => json!({"type": "frob"}),
                1 => json!({"$ref": "#/$defs/missing"}),
                2 => json!({"type": "string", "pattern": "("}),
                3 => json!({"type": "string", "format": "nope"}),
                _ => json!({"type": "integer", "minimum": 5, "maximum": 1}),
            };
        }
        match rng.below(10) {
            0 => {
                json!({"type": "string", "maxLength": 5 + rng.below(40), "minLength": rng.below(5)})
            }
            1 => {
                json!({"type": "integer", "minimum": rng.below(100) as i64 - 50, "maximum": 50 + rng.below(100)})
            }
            2 => json!({"type": "number", "exclusiveMinimum": 0}),
            3 => json!({"type": "boolean"}),
            4 => json!({"enum": ["a", 1, null, true, "b c"]}),
            5 => json!({"const": rng.below(10)}),
            6 => {
                json!({"type": "string", "pattern": (["^[a-z]+$", "\\d+-\\w*", "^(a|b)*$"][rng.below(3)])})
            }
            7 => json!({"type": ["string", "null"]}),
            8 => {
                json!({"type": "string", "format": (["date-time", "email", "uuid"][rng.below(3)])})
            }
            _ => json!(true),
        }
    };
    if depth == 0 {
        return leaf(rng);
    }
    match rng.below(7) {
        0 => {
            let n = rng.below(4);
            let props: serde_json::Map<String, Value> = (0..n)
                .map(|i| (format!("p{i}"), random_schema(rng, depth - 1)))
                .collect();
            let required: Vec<String> = (0..n)
                .filter(|_| rng.below(2) == 0)
                .map(|i| format!("p{i}"))
                .collect();
            json!({"type": "object", "properties": props, "required": required,
                   "additionalProperties": rng.below(2) == 0})
        }
        1 => {
            let min = rng.below(3);
            json!({"type": "array", "items": random_schema(rng, depth - 1),
                   "minItems": min, "maxItems": min + rng.below(4)})
        }
        2 => json!({"anyOf": [random_schema(rng, depth - 1), random_schema(rng, depth - 1)]}),
        3 => json!({"oneOf": [random_schema(rng, depth - 1), random_schema(rng, depth - 1)]}),
        4 => json!({"allOf": [random_schema(rng, depth - 1), random_schema(rng, depth - 1)]}),
        5 => json!({"type": "object", "properties": {"self": {"$ref": "#"}}}),
        _ => leaf(rng),
    }
}

#[test]
fn constraint_compile_random_schemas_regexes_and_grammars() {
    use fuzzing::CompileOutcome;
    let mut rng = Rng(0x636f_6e73_7472_6169);
    let (mut compiled, mut refused, mut stepped) = (0, 0, 0);
    let mut count = |o: CompileOutcome| match o {
        CompileOutcome::Compiled(n) => {
            compiled += 1;
            if n > 0 {
                stepped += 1;
            }
        }
        CompileOutcome::Refused => refused += 1,
    };
    for i in 0..150 {
        let schema = random_schema(&mut rng, 1 + i % 4);
        let mut data = vec![b'j'];
        data.extend_from_slice(schema.to_string().as_bytes());
        count(fuzzing::constraint_compile(&data));
    }
    let pieces = [
        "a",
        "b",
        "[0-9]",
        "[a-z]{2,4}",
        "(",
        ")",
        "|",
        "*",
        "+",
        "?",
        "{3}",
        "\\d",
        ".",
        "^",
        "$",
        "\\",
        "[",
        "]",
    ];
    for _ in 0..150 {
        let mut data = vec![b'r'];
        for _ in 0..1 + rng.below(10) {
            data.extend_from_slice(pieces[rng.below(pieces.len())].as_bytes());
        }
        count(fuzzing::constraint_compile(&data));
    }
    let rules = [
        "start: a",
        "start: a b",
        "a: \"x\"",
        "b: /[0-9]+/",
        "a: a \"y\" | \"z\"",
        "start: %json {\"type\": \"integer\"}",
        "start: \"<|im_end|>\"",
        "b: <|im_end|>",
        "start: ",
        "a: (",
        "c: \"q\"*",
    ];
    for _ in 0..100 {
        let mut data = vec![b'l'];
        for _ in 0..1 + rng.below(4) {
            data.extend_from_slice(rules[rng.below(rules.len())].as_bytes());
            data.push(b'\n');
        }
        count(fuzzing::constraint_compile(&data));
    }
    // GBNF: well-formed rules and broken pieces
    let gbnf = [
        "root ::= a",
        "root ::= a b | \"c\"",
        "a ::= [a-z]+",
        "b ::= (\"x\" | .){1,3}",
        "a ::= \"\\u00e9\"* b?",
        "b ::= [^\\n] root",
        "root ::= <|im_end|>",
        "a ::= (",
        "b ::= \"q",
        "root ::= [z-a]",
    ];
    for _ in 0..100 {
        let mut data = vec![b'g'];
        for _ in 0..1 + rng.below(4) {
            data.extend_from_slice(gbnf[rng.below(gbnf.len())].as_bytes());
            data.push(b'\n');
        }
        count(fuzzing::constraint_compile(&data));
    }
    for _ in 0..100 {
        count(fuzzing::constraint_compile(&rng.bytes(64)));
    }
    println!("compiled {compiled} ({stepped} took a step), refused {refused}");
    assert!(
        compiled > 100 && refused > 100 && stepped > 50,
        "compiled {compiled}, refused {refused}, stepped {stepped}"
    );
}
