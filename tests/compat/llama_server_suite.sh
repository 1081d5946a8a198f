#!/usr/bin/env bash
# llama.cpp's own server test suite, run against `qwenrt serve` and, as the control, against
# llama-server, both on the same GGUF (see docs/compatibility.md).
#
#   tests/compat/llama_server_suite.sh [qwenrt|llama-server|both]
#
# Environment:
#   QWENRT_BIN        qwenrt binary (default: target/release/qwenrt, built if missing)
#   LLAMA_SERVER_BIN  llama-server binary (needed for llama-server and both)
#   COMPAT_MODEL      the GGUF (default: the default model, fetched by `qwenrt fetch`)
#   COMPAT_DIR        work directory (default: target/compat)
#   COMPAT_FILES      the suite's files to run (default: the nine below)
#
# It downloads the llama-cpp-python 0.3.36 sdist from PyPI (the llama.cpp commit we measure
# against), takes vendor/llama.cpp/tools/server/tests, installs the suite's Python
# requirements into a virtualenv, points the suite at tests/compat/shim.py as its
# llama-server, and writes per-file totals to $COMPAT_DIR/<target>.txt; with `both`, also
# the tests that pass on llama-server and fail on qwenrt ($COMPAT_DIR/regressions.txt).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
which=${1:-qwenrt}
work=${COMPAT_DIR:-$root/target/compat}
# COMPAT_FILES (space-separated) runs a subset; the others' results are kept
default_files="test_basic test_chat_completion test_completion test_tokenize test_security
    test_metrics test_tool_call test_template test_ctx_shift"
# shellcheck disable=SC2206 # split on blanks on purpose
files=(${COMPAT_FILES:-$default_files})
mkdir -p "$work"

qwenrt=${QWENRT_BIN:-$root/target/release/qwenrt}
if [ ! -x "$qwenrt" ]; then
    (cd "$root" && cargo build --release --bin qwenrt)
fi
model=${COMPAT_MODEL:-$("$qwenrt" fetch | tail -n 1)}

src="$work/llama_cpp_python-0.3.36"
if [ ! -d "$src/vendor/llama.cpp/tools/server/tests" ]; then
    python3 -m pip download --quiet --no-deps --no-binary :all: --no-build-isolation \
        llama-cpp-python==0.3.36 -d "$work"
    tar -xzf "$work/llama_cpp_python-0.3.36.tar.gz" -C "$work" \
        llama_cpp_python-0.3.36/vendor/llama.cpp/tools/server/tests \
        llama_cpp_python-0.3.36/vendor/llama.cpp/models/templates
fi
suite="$src/vendor/llama.cpp/tools/server/tests"

venv="$work/venv"
if [ ! -x "$venv/bin/pytest" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet -r "$suite/requirements.txt"
fi

run() {
    local target=$1
    local out="$work/$target"
    local port
    port=$([ "$target" = qwenrt ] && echo 8280 || echo 8180)
    mkdir -p "$out"
    for f in "${files[@]}"; do
        echo "== $target: $f"
        rm -f "$out/$f.xml" "$out/$f.log"
        (cd "$suite" && COMPAT_TARGET=$target COMPAT_MODEL=$model COMPAT_QWENRT=$qwenrt \
            COMPAT_LLAMA_SERVER=${LLAMA_SERVER_BIN:-} \
            PORT=$port LLAMA_SERVER_BIN_PATH="$root/tests/compat/shim.py" \
            "$venv/bin/pytest" -q -m "not slow" -p no:cacheprovider \
            --junitxml="$out/$f.xml" "unit/$f.py" >"$out/$f.log" 2>&1) || true
        tail -n 1 "$out/$f.log"
    done
    python3 "$root/tests/compat/summarize.py" totals "$out" | tee "$work/$target.txt"
}

case $which in
    qwenrt) run qwenrt ;;
    llama-server) run llama-server ;;
    both)
        run llama-server
        run qwenrt
        python3 "$root/tests/compat/summarize.py" compare "$work/llama-server" "$work/qwenrt" \
            | tee "$work/regressions.txt"
        ;;
    *) echo "usage: $0 [qwenrt|llama-server|both]" >&2; exit 2 ;;
esac
