//! The converter on a tiny synthetic Qwen2 GGUF built in memory (no network): names, shapes,
//! bf16 values (including a tensor spanning several conversion windows), configs and
//! tokenizer.

use qwenrt::model::convert::{convert, f32_to_bf16_bits, ConvertError, WINDOW_ELEMS};
use qwenrt::model::gguf::{dequantize, GgmlType, GgufFile, Value, ValueType};
use qwenrt::testkit::gguf::{array_of, GgufBuilder};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Random blocks of `ty` with sane f16 scales at the given byte offsets of each block.
fn blocks(rng: &mut Rng, ty: GgmlType, n_elements: u64, f16_at: &[usize]) -> Vec<u8> {
    let ts = ty.type_size() as usize;
    let mut data = rng.bytes(ty.bytes_for(n_elements).unwrap() as usize);
    for b in data.chunks_exact_mut(ts) {
        for &at in f16_at {
            let v = (rng.next() % 1000) as f32 / 7919.0 - 0.06;
            b[at..at + 2].copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
        }
    }
    data
}

fn tiny_gguf() -> GgufBuilder {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    // byte-level alphabet, then one merge, two control tokens and an unused pad
    let mut tokens: Vec<String> = Vec::new();
    let mut n = 0u32;
    for b in 0u32..=255 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        let c = if printable {
            char::from_u32(b).unwrap()
        } else {
            n += 1;
            char::from_u32(255 + n).unwrap()
        };
        tokens.push(c.to_string());
    }
    tokens.extend(["Ġt", "<|endoftext|>", "<|im_end|>", "[PAD259]"].map(String::from));
    let mut types = vec![1i32; 257];
    types.extend([3, 3, 5]);

    let vocab = tokens.len() as u64; // 260
    let hidden = 32u64;
    let f32s = |rng: &mut Rng, n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| (rng.next() % 2000) as f32 / 1000.0 - 1.0)
            .collect()
    };
    let f16_bytes = |v: &[f32]| -> Vec<u8> {
        v.iter()
            .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
            .collect()
    };
    let bf16_bytes = |v: &[f32]| -> Vec<u8> {
        v.iter()
            .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
            .collect()
    };

    let norm = f32s(&mut rng, 32);
    let qb = f32s(&mut rng, 32);
    let kb = f32s(&mut rng, 32);
    GgufBuilder::new()
        .kv("general.architecture", Value::String("qwen2".into()))
        .kv("qwen2.embedding_length", Value::U32(hidden as u32))
        .kv("qwen2.feed_forward_length", Value::U32(256))
        .kv("qwen2.block_count", Value::U32(1))
        .kv("qwen2.attention.head_count", Value::U32(2))
        .kv("qwen2.attention.head_count_kv", Value::U32(1))
        .kv("qwen2.context_length", Value::U32(128))
        .kv("qwen2.attention.layer_norm_rms_epsilon", Value::F32(1e-6))
        .kv("qwen2.rope.freq_base", Value::F32(1_000_000.0))
        .kv("tokenizer.ggml.model", Value::String("gpt2".into()))
        .kv("tokenizer.ggml.pre", Value::String("qwen2".into()))
        .kv(
            "tokenizer.ggml.tokens",
            array_of(
                ValueType::String,
                tokens.iter().map(|t| Value::String(t.clone())).collect(),
            ),
        )
        .kv(
            "tokenizer.ggml.token_type",
            array_of(
                ValueType::I32,
                types.iter().map(|&t| Value::I32(t)).collect(),
            ),
        )
        .kv_strings("tokenizer.ggml.merges", &["Ġ t"])
        .kv("tokenizer.ggml.bos_token_id", Value::U32(257))
        .kv("tokenizer.ggml.eos_token_id", Value::U32(258))
        .kv("tokenizer.ggml.padding_token_id", Value::U32(257))
        .kv(
            "tokenizer.chat_template",
            Value::String("{{ messages }}".into()),
        )
        .tensor(
            "token_embd.weight",
            &[hidden, vocab],
            GgmlType::Q8_0,
            blocks(&mut rng, GgmlType::Q8_0, hidden * vocab, &[0]),
        )
        // > 1 window of elements, with a partial last window
        .tensor(
            "output.weight",
            &[1024, 1030],
            GgmlType::Q8_0,
            blocks(&mut rng, GgmlType::Q8_0, 1024 * 1030, &[0]),
        )
        .tensor_f32("output_norm.weight", &[hidden], &norm)
        .tensor(
            "blk.0.attn_norm.weight",
            &[hidden],
            GgmlType::F16,
            f16_bytes(&norm),
        )
        .tensor(
            "blk.0.ffn_norm.weight",
            &[hidden],
            GgmlType::BF16,
            bf16_bytes(&norm),
        )
        .tensor(
            "blk.0.attn_q.weight",
            &[hidden, hidden],
            GgmlType::Q4_0,
            blocks(&mut rng, GgmlType::Q4_0, 1024, &[0]),
        )
        .tensor_f32("blk.0.attn_q.bias", &[hidden], &qb)
        .tensor(
            "blk.0.attn_k.weight",
            &[hidden, 16],
            GgmlType::Q5_0,
            blocks(&mut rng, GgmlType::Q5_0, 512, &[0]),
        )
        .tensor_f32("blk.0.attn_k.bias", &[16], &kb[..16])
        .tensor(
            "blk.0.attn_v.weight",
            &[hidden, 16],
            GgmlType::Q8_0,
            blocks(&mut rng, GgmlType::Q8_0, 512, &[0]),
        )
        .tensor(
            "blk.0.attn_output.weight",
            &[hidden, hidden],
            GgmlType::F16,
            f16_bytes(&f32s(&mut rng, 1024)),
        )
        .tensor(
            "blk.0.ffn_gate.weight",
            &[256, 3],
            GgmlType::Q4K,
            blocks(&mut rng, GgmlType::Q4K, 768, &[0, 2]),
        )
        .tensor(
            "blk.0.ffn_up.weight",
            &[256, 3],
            GgmlType::Q5K,
            blocks(&mut rng, GgmlType::Q5K, 768, &[0, 2]),
        )
        .tensor(
            "blk.0.ffn_down.weight",
            &[256, 3],
            GgmlType::Q6K,
            blocks(&mut rng, GgmlType::Q6K, 768, &[208]),
        )
}

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("qwenrt-convert-tiny-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[allow(unsafe_code)]
fn map(path: &std::path::Path) -> memmap2::Mmap {
    let f = std::fs::File::open(path).unwrap();
    // SAFETY: read-only map of a file this test wrote and no one modifies.
    unsafe { memmap2::Mmap::map(&f) }.unwrap()
}

#[test]
fn tiny_model_converts_exactly() {
    const { assert!(1024 * 1030 > WINDOW_ELEMS) };
    let dir = tmp("ok");
    let gguf_path = dir.join("tiny.gguf");
    std::fs::write(&gguf_path, tiny_gguf().build()).unwrap();
    let out = dir.join("out");
    let mut calls = Vec::new();
    convert(&gguf_path, &out, &mut |d, t| calls.push((d, t))).unwrap();
    let (done, total) = *calls.last().unwrap();
    assert_eq!(done, total);
    assert!(calls.windows(2).all(|w| w[0].0 <= w[1].0));

    let gguf = GgufFile::open(&gguf_path).unwrap();
    let mmap = map(&out.join("model.safetensors"));
    let st = safetensors::SafeTensors::deserialize(&mmap).unwrap();
    assert_eq!(st.len(), gguf.header.tensors.len());
    for t in &gguf.header.tensors {
        let hf = qwenrt::model::convert::hf_tensor_name(&t.name).unwrap();
        let v = st.tensor(&hf).unwrap_or_else(|e| panic!("{hf}: {e}"));
        assert_eq!(v.dtype(), safetensors::Dtype::BF16, "{hf}");
        let shape: Vec<usize> = t.dims.iter().rev().map(|&d| d as usize).collect();
        assert_eq!(v.shape(), shape.as_slice(), "{hf}");
        let mut f = vec![0f32; t.n_elements as usize];
        dequantize(t.ty, gguf.tensor_bytes(t), &mut f).unwrap();
        let want: Vec<u8> = f
            .iter()
            .flat_map(|&x| f32_to_bf16_bits(x).to_le_bytes())
            .collect();
        assert!(v.data() == want.as_slice(), "{hf}: bf16 bytes differ");
    }

    let c: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(c["hidden_size"], 32);
    assert_eq!(c["intermediate_size"], 256);
    assert_eq!(c["num_key_value_heads"], 1);
    assert_eq!(c["vocab_size"], 260);
    assert_eq!(c["rms_norm_eps"].as_f64(), Some(1e-6));
    assert_eq!(c["tie_word_embeddings"], false);
    let g: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("generation_config.json")).unwrap())
            .unwrap();
    assert_eq!(g["eos_token_id"], serde_json::json!([258, 257]));
    let tc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("tokenizer_config.json")).unwrap()).unwrap();
    assert_eq!(tc["chat_template"], "{{ messages }}");
    assert_eq!(tc["eos_token"], "<|im_end|>");

    let tok = qwenrt::text::tokenizer::Tokenizer::from_model_dir(&out).unwrap();
    assert_eq!(
        tok.encode("a t<|im_end|>").unwrap(),
        vec![b'a' as u32, 256, 258]
    );
    assert_eq!(
        tok.token_id("[PAD259]"),
        None,
        "unused tokens stay out of the vocab"
    );
    assert_eq!(
        tok.decode(&[b'a' as u32, 256, 258]).unwrap(),
        "a t<|im_end|>"
    );

    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unknown_tensor_fails_before_writing() {
    let dir = tmp("unknown");
    let path = dir.join("bad.gguf");
    std::fs::write(
        &path,
        tiny_gguf()
            .tensor_f32("blk.0.mystery.weight", &[2], &[1.0, 2.0])
            .build(),
    )
    .unwrap();
    let out = dir.join("out");
    let e = convert(&path, &out, &mut |_, _| {}).unwrap_err();
    assert!(matches!(e, ConvertError::UnknownTensor { .. }));
    assert!(e.to_string().contains("blk.0.mystery.weight"), "{e}");
    assert!(!out.join("model.safetensors").exists());
    assert_eq!(
        std::fs::read_dir(&out).map(|d| d.count()).unwrap_or(0),
        0,
        "nothing written"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn not_qwen2_is_refused() {
    let dir = tmp("arch");
    let path = dir.join("llama.gguf");
    let mut b = tiny_gguf();
    b.kvs[0].1 = Value::String("llama".into());
    std::fs::write(&path, b.build()).unwrap();
    let e = convert(&path, &dir.join("out"), &mut |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"llama\"") && e.contains("qwen2"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
