"""The official OpenAI Python client against `qwenrt serve` on the default model.

Run by tests/openai_client.rs with the server's base URL; exits non-zero on the first failed
check. Checks:
- `chat.completions.parse` with pydantic models (the client sends a strict json_schema
  response_format and parses the answer into the model);
- a tool round trip: the model calls the offered function, gets its result in a `tool`
  message, and answers in text;
- a streamed tool call reassembled from its deltas equals the non-streamed one;
- every schema of tests/fixtures/schemas.json: the answer parses and validates (with the
  `jsonschema` package, an implementation independent of the server's).
"""

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import List, Literal

import jsonschema
import openai
from pydantic import BaseModel

base, schemas_path = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=300)
MODEL = "qwen"


def check(cond, what):
    if not cond:
        print("FAILED:", what)
        sys.exit(1)


# --- parse with pydantic -------------------------------------------------------------------
class Weather(BaseModel):
    city: str
    temperature_c: int
    conditions: Literal["sunny", "cloudy", "rain", "snow"]


class Step(BaseModel):
    explanation: str
    output: str


class MathAnswer(BaseModel):
    steps: List[Step]
    final_answer: int


r = client.chat.completions.parse(
    model=MODEL,
    messages=[{"role": "user", "content": "Report the weather in Paris as JSON."}],
    response_format=Weather,
    temperature=0,
    max_tokens=120,
)
w = r.choices[0].message.parsed
check(isinstance(w, Weather), f"parse gave {r.choices[0].message}")
print("parse Weather:", w)

r = client.chat.completions.parse(
    model=MODEL,
    messages=[{"role": "user", "content": "Solve 8x + 7 = -23 step by step; keep it short."}],
    response_format=MathAnswer,
    temperature=0,
    max_tokens=400,
)
m = r.choices[0].message.parsed
check(isinstance(m, MathAnswer), f"parse gave {r.choices[0].message}")
print("parse MathAnswer:", m.final_answer, len(m.steps), "steps")

# --- a tool round trip ---------------------------------------------------------------------
tools = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "unit": {"type": "string", "enum": ["c", "f"]},
                },
                "required": ["city"],
            },
        },
    }
]
messages = [{"role": "user", "content": "What is the weather like in Paris today?"}]
r = client.chat.completions.create(
    model=MODEL, messages=messages, tools=tools, temperature=0, max_tokens=100
)
choice = r.choices[0]
check(choice.finish_reason == "tool_calls", f"auto: expected a call, got {choice}")
calls = choice.message.tool_calls
check(calls and calls[0].function.name == "get_weather", f"calls: {calls}")
args = json.loads(calls[0].function.arguments)
check(isinstance(args.get("city"), str), f"arguments: {args}")
print("tool call:", calls[0].function.name, args)

messages.append(choice.message.model_dump(exclude_none=True))
messages.append(
    {"role": "tool", "tool_call_id": calls[0].id, "content": json.dumps({"temp": 21, "unit": "c", "sky": "sunny"})}
)
# the tool result reaches the prompt in the template's own form (llama-server's endpoint,
# called with the client's HTTP layer)
shown = client.post(
    base + "/apply-template", cast_to=object, body={"messages": messages, "tools": tools}
)
result = messages[-1]["content"]
check(f"<tool_response>\n{result}\n</tool_response>" in shown["prompt"], f"prompt: {shown}")

# the answer in words: tool_choice "none" (offered the tool again, the 0.5B model calls it
# again rather than reading the result; what it writes is its own affair, the shape is ours)
r = client.chat.completions.create(
    model=MODEL, messages=messages, tools=tools, tool_choice="none", temperature=0, max_tokens=80
)
final = r.choices[0]
check(final.finish_reason in ("stop", "length") and not final.message.tool_calls, f"final: {final}")
check(isinstance(final.message.content, str) and final.message.content, f"final: {final}")
print("final answer:", repr(final.message.content))

# --- a streamed call equals the non-streamed one -------------------------------------------
ask = dict(
    model=MODEL,
    messages=[{"role": "user", "content": "Weather in Rome in fahrenheit?"}],
    tools=tools,
    tool_choice="required",
    temperature=0,
    max_tokens=100,
)
whole = client.chat.completions.create(**ask).choices[0].message.tool_calls
parts = {}
content = ""
finish = None
for chunk in client.chat.completions.create(stream=True, **ask):
    if not chunk.choices:
        continue
    d = chunk.choices[0].delta
    content += d.content or ""
    for tc in d.tool_calls or []:
        p = parts.setdefault(tc.index, {"name": "", "arguments": "", "id": None})
        if tc.id:
            p["id"] = tc.id
        if tc.function and tc.function.name:
            p["name"] += tc.function.name
        if tc.function and tc.function.arguments:
            p["arguments"] += tc.function.arguments
    finish = chunk.choices[0].finish_reason or finish
streamed = [(parts[i]["name"], parts[i]["arguments"]) for i in sorted(parts)]
check(
    streamed == [(c.function.name, c.function.arguments) for c in whole],
    f"streamed {streamed} != {whole}",
)
check(all(parts[i]["id"] for i in parts), "every streamed call has an id")
check("<tool_call>" not in content and finish == "tool_calls", f"content {content!r}, finish {finish}")
print("streamed call:", streamed)

# --- structured output over many schemas ---------------------------------------------------
cases = json.load(open(schemas_path))


def run(case):
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": case["prompt"] + " Answer in JSON."}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": case["name"], "schema": case["schema"], "strict": True},
        },
        temperature=0,
        max_tokens=300,
    )
    text = r.choices[0].message.content
    try:
        value = json.loads(text)
        jsonschema.validate(value, case["schema"])
    except Exception as e:  # noqa: BLE001 - any failure is reported with the case
        return case["name"], False, f"{r.choices[0].finish_reason}: {text!r}: {e}"
    return case["name"], True, text


with ThreadPoolExecutor(4) as pool:
    results = list(pool.map(run, cases))
bad = [r for r in results if not r[1]]
for name, ok, text in results:
    print(f"schema {name}: {'ok' if ok else 'INVALID'} {text}")
check(not bad, f"{len(bad)} of {len(results)} schemas gave invalid output")
print(f"{len(results)} schemas: all outputs valid")
print("all OpenAI client checks passed")
