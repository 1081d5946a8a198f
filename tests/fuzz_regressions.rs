//! Replays every kept fuzz input (`fuzz/regressions/<target>/*`, crashers once fixed, and
//! the committed seeds in `fuzz/seeds/<target>/`) through the harness its target runs.

use std::path::{Path, PathBuf};

fn tokenizer_roundtrip(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    qwenrt::testkit::fuzzing::tokenizer_roundtrip(qwenrt::testkit::fuzzing::tokenizer(), &text);
}

fn constraint_compile(data: &[u8]) {
    qwenrt::testkit::fuzzing::constraint_compile(data);
}

/// A fuzz target's harness, called with the raw input.
type Harness = fn(&[u8]);

/// Each fuzz target's name and harness, exactly as `fuzz/fuzz_targets/*.rs` call them.
const TARGETS: [(&str, Harness); 6] = [
    ("kv_cache_ops", qwenrt::testkit::fuzzing::kv_cache_ops),
    (
        "safetensors_load",
        qwenrt::testkit::fuzzing::safetensors_load,
    ),
    ("config_parse", qwenrt::testkit::fuzzing::config_parse),
    ("gguf_read", qwenrt::testkit::fuzzing::gguf_read),
    ("tokenizer_roundtrip", tokenizer_roundtrip),
    ("constraint_compile", constraint_compile),
];

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| Some(e.ok()?.path())).collect())
        .unwrap_or_default();
    v.retain(|p| p.is_file());
    v.sort();
    v
}

#[test]
fn replay_regressions_and_seeds() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut replayed = 0;
    for kind in ["regressions", "seeds"] {
        let root = fuzz.join(kind);
        // every directory names a target, so an input cannot sit somewhere it is never replayed
        for entry in std::fs::read_dir(&root).unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        {
            let path = entry.unwrap().path();
            if path.is_dir() {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                assert!(
                    TARGETS.iter().any(|(t, _)| *t == name),
                    "{} is not a fuzz target's directory",
                    path.display()
                );
            }
        }
        for (target, harness) in TARGETS {
            for file in files(&root.join(target)) {
                let data = std::fs::read(&file).unwrap();
                eprintln!("replaying {}", file.display());
                harness(&data);
                replayed += 1;
            }
        }
    }
    // the committed seeds alone are 18 files
    assert!(replayed >= 18, "only {replayed} inputs replayed");
}
