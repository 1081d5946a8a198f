//! config.json bytes and structured sizes through the config parser and the arena plan.

use super::*;

/// A size: small, a power of two (products of a few of them overflow), or any u64.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum Size {
    Small(u8),
    Pow2(u8),
    Any(u64),
}

impl Size {
    fn get(self) -> u64 {
        match self {
            Size::Small(x) => u64::from(x),
            Size::Pow2(x) => 1u64 << (x % 64),
            Size::Any(x) => x,
        }
    }
}

/// The fields of a config.json, to reach the size checks past the JSON syntax.
#[derive(Arbitrary, Clone, Debug)]
pub struct ConfigSizes {
    pub vocab: Size,
    pub hidden: Size,
    pub ffn: Size,
    pub layers: Size,
    pub heads: Size,
    pub kv_heads: Option<Size>,
    pub head_dim: Option<Size>,
    pub max_positions: Size,
    pub eps: f64,
    pub theta: Option<f64>,
    pub tied: bool,
    pub eos: Vec<u64>,
}

impl ConfigSizes {
    pub fn json(&self) -> String {
        let mut v = serde_json::json!({
            "model_type": "qwen2",
            "vocab_size": self.vocab.get(),
            "hidden_size": self.hidden.get(),
            "intermediate_size": self.ffn.get(),
            "num_hidden_layers": self.layers.get(),
            "num_attention_heads": self.heads.get(),
            "max_position_embeddings": self.max_positions.get(),
            "rms_norm_eps": self.eps,
            "tie_word_embeddings": self.tied,
            "eos_token_id": self.eos,
        });
        let o = v.as_object_mut().expect("an object");
        if let Some(k) = self.kv_heads {
            o.insert("num_key_value_heads".into(), k.get().into());
        }
        if let Some(h) = self.head_dim {
            o.insert("head_dim".into(), h.get().into());
        }
        if let Some(t) = self.theta {
            o.insert("rope_theta".into(), t.into());
        }
        v.to_string()
    }
}

/// Raw bytes, then [`ConfigSizes`] decoded from the same bytes, through [`Config::from_json`].
pub fn config_parse(data: &[u8]) {
    check_config(Config::from_json(data).ok());
    if let Ok(sizes) = ConfigSizes::arbitrary_take_rest(Unstructured::new(data)) {
        check_config(Config::from_json(sizes.json().as_bytes()).ok());
    }
}

/// An accepted config keeps its invariants, and every session it allows can be planned
/// without overflow.
fn check_config(c: Option<Config>) {
    let Some(c) = c else { return };
    for x in [
        c.vocab_size,
        c.hidden_size,
        c.intermediate_size,
        c.num_hidden_layers,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.max_position_embeddings,
    ] {
        assert!((1..=1 << 24).contains(&x), "size {x} accepted in {c:?}");
    }
    if c.arch == crate::model::config::Arch::Qwen2 {
        assert_eq!(c.head_dim * c.num_attention_heads, c.hidden_size);
    }
    assert_eq!(c.num_attention_heads % c.num_key_value_heads, 0);
    assert!(c.head_dim > 0 && c.head_dim % 2 == 0);
    if let Some(m) = &c.moe {
        assert!((1..=m.num_experts).contains(&m.experts_per_tok));
        assert_eq!(m.sparse_layers.len(), c.num_hidden_layers);
    }
    assert!(c.rms_norm_eps > 0.0 && c.rms_norm_eps.is_finite());
    assert!(c.rope_theta > 1.0 && c.rope_theta.is_finite());
    assert!(c.parameter_count().is_some());
    let kv_bytes = c
        .max_kv_cache_bytes()
        .expect("accepted configs bound the KV cache");
    for ctx in [1, 7, c.max_position_embeddings] {
        for threads in [1, 1024] {
            let opts = SessionOptions {
                ctx,
                threads,
                ..Default::default()
            };
            // Too large for memory is fine (that is Session::new's check); overflow is not
            // possible once the full-context KV cache fits in usize, short of the other
            // regions pushing the total over.
            if let Ok(plan) = Session::plan_for(&c, &opts) {
                if ctx == c.max_position_embeddings {
                    assert!(plan.total_bytes() >= kv_bytes);
                }
            }
        }
    }
}
