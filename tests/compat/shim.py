#!/usr/bin/env python3
"""Stands in for `llama-server` under llama.cpp's server test suite.

The suite starts `$LLAMA_SERVER_BIN_PATH` with llama-server's flags and a model from the
Hugging Face hub. This shim swaps the model for the one GGUF both servers are compared on
(`$COMPAT_MODEL`), then runs either the real llama-server (`COMPAT_TARGET=llama-server`, the
control) or `qwenrt serve` (`COMPAT_TARGET=qwenrt`) with the flags mapped. Flags with no
counterpart are dropped and listed on stderr, so a failing test can be traced to one.
"""
import os
import re
import sys

# llama-server flags that take a value, and those that do not (the ones the suite passes).
VALUED = {
    "--port", "--host", "--temp", "--seed", "--model", "-m", "--model-url", "--model-draft",
    "--hf-repo", "--hf-file", "--models-dir", "--models-max", "--models-preset",
    "--cors-origins", "--batch-size", "--ubatch-size", "--threads", "--n-gpu-layers",
    "--pooling", "--alias", "--tags", "--ctx-size", "--parallel", "-ctk", "-ctv", "-fa",
    "--n-predict", "--slot-save-path", "--grp-attn-n", "--grp-attn-w", "--lora",
    "--spec-type", "--api-key", "--spec-draft-n-max", "--spec-draft-n-min",
    "--spec-synth-len", "--spec-synth-rates", "--reasoning-format", "--reasoning",
    "--chat-template", "--chat-template-file", "--mmproj-url", "--media-path",
    "--sleep-idle-seconds", "--cache-ram", "--tools", "--tools-runtime",
    "--mcp-servers-config", "--mcp-servers-json",
}
HUB = {"--model", "-m", "--model-url", "--hf-repo", "--hf-file", "--offline"}


def parse(argv):
    """Flag -> list of values (None for a switch), in order."""
    flags = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in VALUED and i + 1 < len(argv):
            flags.append((a, argv[i + 1]))
            i += 2
        else:
            flags.append((a, None))
            i += 1
    return flags


def llama_server(flags, model):
    args = [os.environ["COMPAT_LLAMA_SERVER"], "--model", model]
    for f, v in flags:
        if f in HUB:
            continue
        args.append(f)
        if v is not None:
            args.append(v)
    return args


def supported(binary):
    """The long flags `qwenrt serve --help` lists."""
    import subprocess
    text = subprocess.run([binary, "serve", "--help"], capture_output=True, text=True).stdout
    return set(re.findall(r"(--[a-z0-9-]+)", text))


def qwenrt(flags, model):
    binary = os.environ["COMPAT_QWENRT"]
    known = supported(binary)
    args = [binary, "serve", "--model", model]
    dropped = []
    given = dict(flags)
    parallel = int(given.get("--parallel", "1") or 1)
    for f, v in flags:
        if f in HUB:
            continue
        if f in ("--port", "--host", "--seed", "--temp", "--api-key", "--alias",
                 "--n-predict", "--chat-template-file", "--parallel", "--threads", "--tags",
                 "--cache-ram"):
            if f in known:
                args += [f, v]
            else:
                dropped.append(f"{f} {v}")
        elif f == "--ctx-size":
            # llama-server's context is shared by its slots; qwenrt's is per sequence
            args += ["--ctx", str(max(1, int(v) // parallel))]
        elif f == "--cors-origins":
            for origin in v.split(","):
                args += ["--cors-origin", origin.strip()]
        elif f == "--embedding":
            if "--embeddings" in known:
                args.append("--embeddings")
            else:
                dropped.append(f)
        elif f == "--reasoning-format":
            # llama-server's deepseek puts thinking in reasoning_content, as qwenrt's auto does
            args += [f, "none" if v == "none" else "auto"]
        elif f == "--reasoning":
            # llama-server's thinking switch: off renders with enable_thinking false
            if v == "off":
                args.append("--no-think")
        elif f == "-ctk":
            if v in ("f32", "bf16", "f16"):
                args += ["--kv-dtype", v]
            else:
                dropped.append(f"{f} {v}")
        elif f in ("-ctv", "--jinja", "--metrics", "--cont-batching", "--no-ui",
                   "--batch-size", "--ubatch-size", "--n-gpu-layers", "-fa", "--kv-unified"):
            # ctv follows ctk; templates are always Jinja; metrics always on; batching is
            # always continuous; no web UI; batch sizes and GPU layers have no meaning here
            pass
        else:
            dropped.append(f if v is None else f"{f} {v}")
    if dropped:
        print(f"shim: qwenrt has no counterpart for: {', '.join(dropped)}", file=sys.stderr)
    return args


def main():
    flags = parse(sys.argv[1:])
    model = os.environ["COMPAT_MODEL"]
    target = os.environ.get("COMPAT_TARGET", "qwenrt")
    args = llama_server(flags, model) if target == "llama-server" else qwenrt(flags, model)
    print("shim: " + " ".join(args), file=sys.stderr)
    os.execv(args[0], args)


if __name__ == "__main__":
    main()
