//! Real-model test: the converted default model's tensors match the reference bf16 sha256s.
//! Fetches and converts the model on first use (see `qwenrt_cli::hub`).

use std::collections::BTreeMap;

use safetensors::SafeTensors;
use serde::Deserialize;
use sha2::{Digest, Sha256};

#[derive(Deserialize)]
struct Expected {
    dtype: String,
    shape: Vec<usize>,
    sha256: String,
}

#[derive(Deserialize)]
struct Fixture {
    tensors: BTreeMap<String, Expected>,
}

#[allow(unsafe_code)]
fn map(path: &std::path::Path) -> memmap2::Mmap {
    let f = std::fs::File::open(path).unwrap();
    // SAFETY: read-only map of a converted model file nobody rewrites while the test runs.
    unsafe { memmap2::Mmap::map(&f) }.unwrap()
}

#[test]
fn every_tensor_matches_reference_sha256() {
    let dir = qwenrt_cli::hub::ensure_default_model(true)
        .unwrap_or_else(|e| panic!("fetch + convert the default model: {e}"));
    let fixture: Fixture = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/qwen2.5-coder-0.5b/tensor_sha256.json"
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(fixture.tensors.len(), 291);

    let mmap = map(&dir.join("model.safetensors"));
    let st = SafeTensors::deserialize(&mmap).expect("valid safetensors");
    let names: std::collections::BTreeSet<String> =
        st.names().into_iter().map(|s| s.to_string()).collect();
    let expected_names: std::collections::BTreeSet<String> =
        fixture.tensors.keys().cloned().collect();
    assert_eq!(names, expected_names, "tensor name sets differ");

    let mut failures = Vec::new();
    for (name, want) in &fixture.tensors {
        let t = st.tensor(name).unwrap();
        let dtype = format!("{:?}", t.dtype());
        let sha = qwenrt_cli::hub::hex(&Sha256::digest(t.data()));
        if dtype != want.dtype || t.shape() != want.shape.as_slice() || sha != want.sha256 {
            failures.push(format!(
                "{name}: got {dtype} {:?} {sha}, want {} {:?} {}",
                t.shape(),
                want.dtype,
                want.shape,
                want.sha256
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 291 tensors differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn config_and_generation_config() {
    let dir = qwenrt_cli::hub::ensure_default_model(true)
        .unwrap_or_else(|e| panic!("fetch + convert the default model: {e}"));
    let c: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(c["architectures"][0], "Qwen2ForCausalLM");
    assert_eq!(c["model_type"], "qwen2");
    assert_eq!(c["hidden_size"], 896);
    assert_eq!(c["intermediate_size"], 4864);
    assert_eq!(c["num_hidden_layers"], 24);
    assert_eq!(c["num_attention_heads"], 14);
    assert_eq!(c["num_key_value_heads"], 2);
    assert_eq!(c["vocab_size"], 151936);
    assert_eq!(c["max_position_embeddings"], 32768);
    assert_eq!(c["rms_norm_eps"].as_f64(), Some(1e-6));
    assert_eq!(c["rope_theta"].as_f64(), Some(1_000_000.0));
    assert_eq!(c["torch_dtype"], "bfloat16");
    assert_eq!(c["tie_word_embeddings"], false);
    assert_eq!(c["bos_token_id"], 151643);
    assert_eq!(c["eos_token_id"], 151645);

    let g: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("generation_config.json")).unwrap())
            .unwrap();
    assert_eq!(g["eos_token_id"], serde_json::json!([151645, 151643]));

    let t: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("tokenizer_config.json")).unwrap()).unwrap();
    assert_eq!(t["eos_token"], "<|im_end|>");
    assert_eq!(t["pad_token"], "<|endoftext|>");
    assert!(t["chat_template"]
        .as_str()
        .unwrap()
        .contains("<|im_start|>"));
}

#[test]
fn second_call_only_verifies() {
    let dir = qwenrt_cli::hub::ensure_default_model(false).unwrap_or_else(|e| panic!("{e}"));
    let t = std::time::Instant::now();
    let again = qwenrt_cli::hub::ensure_default_model(false).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(dir, again);
    assert!(qwenrt_cli::hub::verify_model_dir(&dir));
    assert!(
        t.elapsed() < std::time::Duration::from_secs(1),
        "took {:?}",
        t.elapsed()
    );
}
