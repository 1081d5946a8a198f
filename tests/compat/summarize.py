#!/usr/bin/env python3
"""Totals of a compat run's JUnit files, and the tests llama-server passes that qwenrt fails.

    summarize.py totals DIR
    summarize.py compare LLAMA_DIR QWENRT_DIR
"""
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def outcomes(directory):
    """{file: {test id: 'passed'|'failed'|'skipped'}}"""
    result = {}
    for xml in sorted(Path(directory).glob("*.xml")):
        tests = {}
        for case in ET.parse(xml).getroot().iter("testcase"):
            name = f"{case.get('classname')}::{case.get('name')}"
            if case.find("skipped") is not None:
                tests[name] = "skipped"
            elif case.find("failure") is not None or case.find("error") is not None:
                tests[name] = "failed"
            else:
                tests[name] = "passed"
        result[xml.stem] = tests
    return result


def totals(directory):
    print(f"{'file':<24} {'passed':>6} {'failed':>6} {'skipped':>7}")
    sums = [0, 0, 0]
    for f, tests in outcomes(directory).items():
        row = [sum(1 for o in tests.values() if o == k) for k in ("passed", "failed", "skipped")]
        sums = [a + b for a, b in zip(sums, row)]
        print(f"{f:<24} {row[0]:>6} {row[1]:>6} {row[2]:>7}")
    print(f"{'total':<24} {sums[0]:>6} {sums[1]:>6} {sums[2]:>7}")


# Tests of llama-server's own API, which OpenAI clients never use: passing them is not the
# goal (docs/compatibility.md lists them with these reasons). Keyed by the test
# function's name (every parameter case of it).
EXCEPTIONS = {
    # test_basic
    "test_basic::test_server_props": "GET /props is llama-server's own",
    "test_basic::test_server_slots": "GET /slots is llama-server's own",
    "test_basic::test_load_split_model": "native /completion, and split GGUF files",
    "test_basic::test_no_ui": "llama-server's web UI",
    # test_chat_completion
    "test_chat_completion::test_chat_template_assistant_prefill": "reads the native `__verbose` debug object",
    "test_chat_completion::test_chat_template_continue_final_message_vllm_compat": "reads the native `__verbose` debug object (continue_final_message itself is done)",
    "test_chat_completion::test_apply_chat_template": "llama-server's built-in C++ templates by name (`--chat-template command-r`); qwenrt renders Jinja templates (`--chat-template-file`)",
    "test_chat_completion::test_chat_completion_with_timings_per_token": "native `timings` fields",
    "test_chat_completion::test_return_progress": "native `return_progress`",
    "test_chat_completion::test_chat_completions_token_count": "native POST /chat/completions/input_tokens",
    "test_chat_completion::test_verbose_debug": "native `verbose` / `__verbose`",
    "test_chat_completion::test_context_size_exceeded": "llama-server's error type `exceed_context_size_error`; qwenrt answers the same 400 in OpenAI's shape (`invalid_request_error`, code `context_length_exceeded`)",
    "test_chat_completion::test_context_size_exceeded_stream": "as test_context_size_exceeded",
    "test_chat_completion::test_invalid_chat_completion_req[messages7]": "llama-server prefills a final assistant message and refuses two; qwenrt continues one only when asked (`continue_final_message`), so consecutive assistant messages are a conversation, as OpenAI and vLLM take it",
    # test_security
    "test_security::test_access_static_assets_without_api_key": "llama-server's web UI assets",
    "test_security::test_correct_api_key": "`/completions` without /v1 is llama-server's native completion (it asserts the native `content` field); qwenrt answers it as /v1/completions",
    "test_security::test_correct_api_key_anthropic_header": "as test_correct_api_key (X-Api-Key itself is taken)",
    "test_security::test_cors_options": "llama-server answers every origin's preflight when no --cors-origins is given; qwenrt's CORS is off until --cors-origin allows an origin (a page on any site could otherwise drive a local server); with it, the same headers",
    "test_security::test_cors_origins_localhost_reflects": "passes but for the letter case of a header's name: the test looks up `Access-Control-Allow-Origin` in a case-sensitive copy of the headers, and qwenrt's HTTP stack writes names in lower case (HTTP header names are case-insensitive, RFC 9110); the header and its value are there (`--cors-origin localhost`, server/tests/server_errors.rs)",
    "test_security::test_cors_origins_defaults_to_localhost_with_tools_enabled": "llama-server's `--tools` (built-in server-side tools)",
    "test_security::test_cors_proxy_only_forwards_explicit_proxy_headers": "llama-server's web UI's `/cors-proxy`",
    "test_security::test_local_media_file": "multimodal media files",
    # test_metrics: llama-server's `llamacpp:` metric names over native /completion
    "test_metrics::test_metrics_disabled": "qwenrt's /metrics is always on (the gauges a gateway and an autoscaler read); llama-server's needs --metrics",
    "test_metrics::test_metrics_prometheus_format": "`llamacpp:` metric names, native /completion",
    "test_metrics::test_metrics_prompt_processed_and_cached": "`llamacpp:` metric names, native /completion",
    "test_metrics::test_metrics_predicted_total_matches_requests": "`llamacpp:` metric names, native /completion",
    "test_metrics::test_metrics_generation_rate_excludes_first_token": "`llamacpp:` metric names, native /completion",
    "test_metrics::test_metrics_timings_are_finite": "native `timings`, native /completion",
    "test_metrics::test_metrics_timings_on_prompt_progress": "native `timings`, native /completion",
    "test_metrics::test_metrics_slots_idle_after_completion": "`llamacpp:` metric names, /slots",
    "test_metrics::test_metrics_embedding_prompt_is_counted": "`llamacpp:` metric names",
    # test_ctx_shift: llama-server's context shift over native /completion
    "test_ctx_shift::test_ctx_shift_enabled": "native /completion, --context-shift",
    "test_ctx_shift::test_ctx_shift_disabled_short_prompt": "native /completion (its `n_predict` past the context)",
    "test_ctx_shift::test_ctx_shift_disabled_long_prompt": "native /completion",
    # test_completion: the native /completion route and its fields (n_probs, cache_prompt, ...)
    "test_completion::test_completion_stream_vs_non_stream": "native /completion",
    "test_completion::test_consistent_result_same_seed": "native /completion",
    "test_completion::test_different_result_different_seed": "native /completion",
    "test_completion::test_consistent_result_different_batch_size": "native /completion",
    "test_completion::test_cache_vs_nocache_prompt": "native /completion",
    "test_completion::test_nocache_long_input_prompt": "native /completion",
    "test_completion::test_json_prompt_no_mtmd": "native /completion",
    "test_completion::test_json_prompt_mtm_error_when_not_supported": "native /completion",
    "test_completion::test_completion_with_tokens_input": "native /completion",
    "test_completion::test_completion_parallel_slots": "native /completion and /slots",
    "test_completion::test_completion_unified": "native /completion",
    "test_completion::test_completion_response_fields": "native /completion",
    "test_completion::test_n_probs": "native /completion, `n_probs`",
    "test_completion::test_n_probs_stream": "native /completion, `n_probs`",
    "test_completion::test_n_probs_post_sampling": "native /completion, `n_probs`",
    "test_completion::test_n_probs_post_backend_sampling": "native /completion, `n_probs`",
    "test_completion::test_logit_bias": "native /completion (logit_bias itself is done: test_chat_completion::test_logit_bias)",
    "test_completion::test_cancel_request": "native /completion and /slots",
    "test_completion::test_completion_prompt_cache": "native /completion, `cache_prompt`",
}


def excepted(name):
    """The reason `name` (unit.FILE::TEST[CASE]) is out of scope, or None."""
    file, test = name.removeprefix("unit.").split("::", 1)
    return EXCEPTIONS.get(f"{file}::{test}") or EXCEPTIONS.get(f"{file}::{test.split('[', 1)[0]}")


def compare(llama, qwen):
    a, b = outcomes(llama), outcomes(qwen)
    lost, out_of_scope = [], []
    for f, tests in a.items():
        for name, outcome in tests.items():
            if outcome == "passed" and b.get(f, {}).get(name) != "passed":
                why = excepted(name)
                (out_of_scope if why else lost).append((name, why))
    print(f"passed on llama-server, not on qwenrt, in scope: {len(lost)}")
    for name, _ in lost:
        print(f"  {name}")
    print(f"passed on llama-server, not on qwenrt, llama-server's own API: {len(out_of_scope)}")
    for name, why in out_of_scope:
        print(f"  {name}: {why}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["totals"]:
        totals(sys.argv[2])
    elif sys.argv[1:2] == ["compare"]:
        compare(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
