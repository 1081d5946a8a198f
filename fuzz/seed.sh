#!/usr/bin/env bash
# Writes the seed corpora into fuzz/corpus/<target>/ (gitignored): the committed seeds in
# fuzz/seeds/<target>/, the test fixtures, and earlier crashers from fuzz/regressions/<target>/.
set -euo pipefail
cd "$(dirname "$0")"
fixtures=../tests/fixtures
# the targets are fuzz_targets/*.rs (tests/fuzz_regressions.rs checks them against
# qwenrt::testkit::fuzzing::TARGETS and Cargo.toml's [[bin]]s)
targets=()
for f in fuzz_targets/*.rs; do targets+=("$(basename "$f" .rs)"); done
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    for d in "seeds/$t" "regressions/$t"; do
        if [ -d "$d" ]; then
            find "$d" -type f -exec cp {} "corpus/$t/" \;
        fi
    done
done
for m in tiny-qwen2-f32 tiny-qwen2-bf16-tied; do
    cp "$fixtures/$m/model.safetensors" "corpus/safetensors_load/$m.safetensors"
    cp "$fixtures/$m/config.json" "corpus/config_parse/$m.json"
done
# the tokenizer test strings, one per file
if command -v python3 >/dev/null; then
    python3 - "$fixtures/qwen2.5-coder-0.5b/tokenizer_cases.json" corpus/tokenizer_roundtrip <<'PY'
import json, sys, os
cases = json.load(open(sys.argv[1]))
items = cases if isinstance(cases, list) else cases.get("cases", [])
for i, c in enumerate(items):
    text = c.get("text") if isinstance(c, dict) else c
    if isinstance(text, str):
        open(os.path.join(sys.argv[2], f"case-{i}.txt"), "w", encoding="utf-8").write(text)
PY
fi
for t in "${targets[@]}"; do
    echo "corpus/$t: $(find "corpus/$t" -type f | wc -l) seeds"
done
