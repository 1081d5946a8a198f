//! The tiny GGUF, mutated, through the reader, the dequantizers and the converter.

use super::*;

/// A small valid GGUF: qwen2 metadata, a tiny vocabulary, and one tensor of every type the
/// reader can dequantize.
pub fn tiny_gguf_builder() -> GgufBuilder {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut blocks = |ty: GgmlType, n: u64| -> Vec<u8> {
        let mut data: Vec<u8> = (0..ty.bytes_for(n).expect("whole blocks"))
            .map(|_| next() as u8)
            .collect();
        // keep the f16 scales finite and small (the first two bytes of every block)
        if ty.block_size() > 1 {
            for b in data.chunks_exact_mut(ty.type_size() as usize) {
                b[..2].copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
            }
        }
        data
    };
    let tokens = ["a", "b", "Ġ", "Ġa", "<|endoftext|>", "<|im_end|>"];
    let mut b = GgufBuilder::new()
        .kv("general.architecture", Value::String("qwen2".into()))
        .kv("qwen2.embedding_length", Value::U32(32))
        .kv("qwen2.feed_forward_length", Value::U32(64))
        .kv("qwen2.block_count", Value::U32(1))
        .kv("qwen2.attention.head_count", Value::U32(2))
        .kv("qwen2.attention.head_count_kv", Value::U32(1))
        .kv("qwen2.context_length", Value::U32(64))
        .kv("qwen2.attention.layer_norm_rms_epsilon", Value::F32(1e-6))
        .kv("qwen2.rope.freq_base", Value::F32(1e6))
        .kv("tokenizer.ggml.model", Value::String("gpt2".into()))
        .kv("tokenizer.ggml.pre", Value::String("qwen2".into()))
        .kv_strings("tokenizer.ggml.tokens", &tokens)
        .kv(
            "tokenizer.ggml.token_type",
            array_of(ValueType::I32, [1, 1, 1, 1, 3, 3].map(Value::I32).to_vec()),
        )
        .kv_strings("tokenizer.ggml.merges", &["Ġ a"])
        .kv("tokenizer.ggml.eos_token_id", Value::U32(5))
        .kv("tokenizer.chat_template", Value::String("{{ x }}".into()))
        .tensor(
            "token_embd.weight",
            &[32, 6],
            GgmlType::Q8_0,
            blocks(GgmlType::Q8_0, 32 * 6),
        );
    for (name, ty, n) in [
        ("blk.0.attn_norm.weight", GgmlType::F32, 32),
        ("blk.0.ffn_norm.weight", GgmlType::F16, 32),
        ("output_norm.weight", GgmlType::BF16, 32),
        ("blk.0.attn_q.weight", GgmlType::Q4_0, 64),
        ("blk.0.attn_k.weight", GgmlType::Q5_0, 64),
        ("blk.0.ffn_up.weight", GgmlType::Q4K, 256),
        ("blk.0.ffn_gate.weight", GgmlType::Q5K, 256),
        ("blk.0.ffn_down.weight", GgmlType::Q6K, 256),
    ] {
        let data = if ty.block_size() == 1 {
            (0..n)
                .flat_map(|i| match ty {
                    GgmlType::F32 => (i as f32 / 7.0).to_le_bytes().to_vec(),
                    GgmlType::F16 => half::f16::from_f32(i as f32).to_le_bytes().to_vec(),
                    _ => half::bf16::from_f32(i as f32).to_le_bytes().to_vec(),
                })
                .collect()
        } else {
            blocks(ty, n)
        };
        b = b.tensor(name, &[n], ty, data);
    }
    b
}

/// The bytes of [`tiny_gguf_builder`].
pub fn tiny_gguf() -> Vec<u8> {
    tiny_gguf_builder().build()
}

/// One change to [`tiny_gguf`], at the builder level (counts, types, offsets, dims,
/// alignment) or on the bytes.
#[derive(Arbitrary, Clone, Debug)]
pub enum GgufMutation {
    TensorCount(u64),
    KvCount(u64),
    TensorType { tensor: u8, type_id: u32 },
    TensorOffset { tensor: u8, offset: u64 },
    Dims { tensor: u8, dims: Vec<u64> },
    Alignment(u32),
    Version(u32),
    DropData { tensor: u8, keep: u16 },
    FlipByte { at: u32, xor: u8 },
    Truncate { keep: u32 },
}

/// Builds [`tiny_gguf_builder`] with `ms` applied.
pub fn mutate_gguf(ms: &[GgufMutation]) -> Vec<u8> {
    mutate_gguf_from(tiny_gguf_builder(), ms)
}

/// Builds `b` with `ms` applied.
pub fn mutate_gguf_from(mut b: GgufBuilder, ms: &[GgufMutation]) -> Vec<u8> {
    let n = b.tensors.len();
    let mut byte_ops = Vec::new();
    for m in ms {
        match m {
            GgufMutation::TensorCount(c) => b.tensor_count_override = Some(*c),
            GgufMutation::KvCount(c) => b.kv_count_override = Some(*c),
            GgufMutation::TensorType { tensor, type_id } => {
                b.tensors[usize::from(*tensor) % n].type_id = *type_id % 64
            }
            GgufMutation::TensorOffset { tensor, offset } => {
                b.tensors[usize::from(*tensor) % n].offset_override = Some(*offset)
            }
            GgufMutation::Dims { tensor, dims } => {
                b.tensors[usize::from(*tensor) % n].dims = dims.iter().take(6).copied().collect()
            }
            GgufMutation::Alignment(a) => {
                b.kvs.retain(|(k, _)| k != "general.alignment");
                b.kvs.push(("general.alignment".into(), Value::U32(*a)));
                b.alignment = u64::from(*a).clamp(1, 4096);
            }
            GgufMutation::Version(v) => b.version = *v,
            GgufMutation::DropData { tensor, keep } => b.tensors[usize::from(*tensor) % n]
                .data
                .truncate(usize::from(*keep)),
            GgufMutation::FlipByte { .. } | GgufMutation::Truncate { .. } => byte_ops.push(m),
        }
    }
    let mut bytes = b.build();
    for m in byte_ops {
        match m {
            GgufMutation::FlipByte { at, xor } if !bytes.is_empty() => {
                let i = *at as usize % bytes.len();
                bytes[i] ^= xor;
            }
            GgufMutation::Truncate { keep } => bytes.truncate(*keep as usize),
            _ => {}
        }
    }
    bytes
}

/// The [`GgufMutation`]s `data` decodes to (at most 16).
pub fn gguf_mutations(data: &[u8]) -> Vec<GgufMutation> {
    let mut ms = dense(&mut Unstructured::new(data));
    ms.truncate(16);
    ms
}

/// Raw bytes, then [`GgufMutation`]s decoded from the same bytes, through the reader, the
/// dequantizers and the converter's metadata readers.
pub fn gguf_read(data: &[u8]) {
    check_gguf(data.to_vec());
    check_gguf(mutate_gguf(&gguf_mutations(data)));
}

fn check_gguf(bytes: Vec<u8>) {
    let len = bytes.len() as u64;
    let file = match GgufFile::from_bytes(bytes) {
        Ok(f) => f,
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.is_empty() && !msg.contains('\n'), "{msg:?}");
            return;
        }
    };
    let h = &file.header;
    assert!(h.alignment.is_power_of_two());
    assert_eq!(h.data_offset % h.alignment, 0);
    for t in &h.tensors {
        assert_eq!(file.tensor_bytes(t).len() as u64, t.n_bytes);
        assert!(h.data_offset + t.offset + t.n_bytes <= len);
        let _ = crate::model::convert::hf_tensor_name(&t.name);
        // the header vouches for the sizes, so dequantizing a supported type cannot fail
        if t.ty.can_dequantize() && t.n_elements <= 1 << 16 {
            let values = file
                .dequantize_tensor(&t.name)
                .unwrap_or_else(|e| panic!("{}: {e}", t.name));
            assert_eq!(values.len() as u64, t.n_elements);
        }
    }
    let _ = crate::model::convert::config_json(h);
    let _ = crate::model::convert::tokenizer_json(h);
    let _ = crate::model::convert::tokenizer_config_json(h);
    let _ = crate::model::convert::generation_config_json(h);
}

/// The tiny random Qwen2 fixture (`tests/fixtures/tiny-qwen2-f32`) as a GGUF whose matrices
/// are Q8_0 where their rows are whole blocks: a complete model for [`gguf_model`].
pub fn tiny_model_gguf_builder() -> GgufBuilder {
    static BASE: std::sync::OnceLock<GgufBuilder> = std::sync::OnceLock::new();
    BASE.get_or_init(|| {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-qwen2-f32");
        let config = std::fs::read(dir.join("config.json")).expect("tiny fixture config");
        let st = std::fs::read(dir.join("model.safetensors")).expect("tiny fixture weights");
        crate::testkit::gguf::quantized_gguf_builder_from_hf(&config, &st, GgmlType::Q8_0)
    })
    .clone()
}

/// Raw bytes, then [`GgufMutation`]s of [`tiny_model_gguf_builder`], through the GGUF model
/// loader ([`Weights::from_gguf_bytes`]) and, when it accepts them, a prefill and a decode step
/// on the best ISA: a clear one-line error or a forward pass, never a panic.
pub fn gguf_model(data: &[u8]) {
    check_gguf_model(data.to_vec());
    check_gguf_model(mutate_gguf_from(
        tiny_model_gguf_builder(),
        &gguf_mutations(data),
    ));
}

fn check_gguf_model(bytes: Vec<u8>) {
    let w = match Weights::from_gguf_bytes(bytes) {
        Ok(w) => std::sync::Arc::new(w),
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.is_empty() && !msg.contains('\n'), "{msg:?}");
            return;
        }
    };
    let opts = SessionOptions {
        ctx: 8,
        threads: 1,
        ..Default::default()
    };
    let Ok(mut s) = Session::new(w.clone(), &opts) else {
        return;
    };
    let vocab = w.config.vocab_size as u32;
    let prompt = [0, 1 % vocab, 2 % vocab];
    let logits = s.prefill(&prompt).expect("a loaded model runs");
    assert_eq!(logits.len(), w.config.vocab_size);
    s.decode_step(3 % vocab).expect("a loaded model decodes");
}
