"""Drives a running `fulcrum serve` with the official openai package. Usage: openai_client.py BASE_URL"""
import concurrent.futures
import json
import sys
import urllib.error
import urllib.request

import openai

from common import check, connect

base = sys.argv[1]
client, model, greedy = connect(base)


# Chat, non-streaming and streaming: the same greedy text.
msgs = [{"role": "user", "content": "Write a Python function that adds two numbers."}]
full = client.chat.completions.create(messages=msgs, max_tokens=24, **greedy)
text = full.choices[0].message.content
check(full.object == "chat.completion" and full.choices[0].message.role == "assistant", "chat completion shape")
check(len(text) > 0 and full.choices[0].finish_reason in ("stop", "length"), "chat produced text")
check(full.usage.prompt_tokens > 0 and full.usage.total_tokens == full.usage.prompt_tokens + full.usage.completion_tokens, "usage adds up")
stream = client.chat.completions.create(messages=msgs, max_tokens=24, stream=True,
                                        stream_options={"include_usage": True}, **greedy)
parts, reasons, usage = [], [], None
for chunk in stream:
    if chunk.usage:
        usage = chunk.usage
    for c in chunk.choices:
        parts.append(c.delta.content or "")
        if c.finish_reason:
            reasons.append(c.finish_reason)
check("".join(parts) == text, "streamed chat equals the non-streamed text")
check(reasons == [full.choices[0].finish_reason], "one finish_reason at the end of the stream")
check(usage is not None and usage.completion_tokens == full.usage.completion_tokens, "stream usage with include_usage")

# Completions: length limit, stop strings, logprobs.
c = client.completions.create(prompt="def fibonacci(n):", max_tokens=8, **greedy)
check(c.choices[0].finish_reason == "length" and c.usage.completion_tokens == 8, "max_tokens gives finish_reason length")
counting = client.completions.create(prompt="1, 2, 3, 4, 5,", max_tokens=20, **greedy)
check(" 8," in counting.choices[0].text, "the model counts on")
stopped = client.completions.create(prompt="1, 2, 3, 4, 5,", max_tokens=20, stop=[" 8"], **greedy)
check(stopped.choices[0].finish_reason == "stop", "stop string ends generation")
check(stopped.choices[0].text == counting.choices[0].text.split(" 8")[0], "text is cut before the stop string")
lp = client.chat.completions.create(messages=msgs, max_tokens=4, logprobs=True, top_logprobs=2, **greedy)
content = lp.choices[0].logprobs.content
check(len(content) >= 1 and all(t.logprob <= 0 and len(t.top_logprobs) == 2 for t in content), "chat logprobs")
check(abs(content[0].top_logprobs[0].logprob - content[0].logprob) < 1e-4, "greedy pick is the top alternative")
clp = client.completions.create(prompt="Hello", max_tokens=3, logprobs=2, **greedy)
check(len(clp.choices[0].logprobs.token_logprobs) == 3, "completion logprobs")

# logit_bias: banning Qwen's end tokens (<|endoftext|>, <|im_end|>) makes a one-word answer run to max_tokens.
short = [{"role": "user", "content": "Reply with one word: hello."}]
ended = client.chat.completions.create(messages=short, max_tokens=24, **greedy)
check(ended.choices[0].finish_reason == "stop", "a one-word answer ends by itself")
banned = client.chat.completions.create(messages=short, max_tokens=24, logit_bias={"151643": -100, "151645": -100},
                                        **greedy)
check(banned.choices[0].finish_reason == "length" and banned.usage.completion_tokens == 24,
      "logit_bias -100 bans the end tokens")
check(banned.choices[0].message.content.startswith(ended.choices[0].message.content), "the bias changes nothing else")

# Errors.
for kwargs, param in [(dict(n=99), "n"), (dict(temperature=7), "temperature"), (dict(presence_penalty=5), "presence_penalty"),
                      (dict(best_of=2, n=3), "best_of"), (dict(extra_body={"frobnicate": 1}), "frobnicate"),
                      (dict(logit_bias={"999999": 1}), "logit_bias"), (dict(extra_body={"response_format": {"type": "xml"}}), "response_format"),
                      (dict(extra_body={"regex": "[0-9"}), "regex"), (dict(extra_body={"grammar": "root ::= nowhere"}), "grammar"),
                      (dict(extra_body={"json_schema": {"type": "object", "properties": {"a": {"$ref": "#/nope"}}}}), "json_schema"),
                      (dict(extra_body={"regex": "a", "grammar": "root ::= \"a\""}), "regex")]:
    try:
        client.completions.create(prompt="x", max_tokens=2, model=model, **kwargs)
        check(False, f"{kwargs} rejected")
    except openai.BadRequestError as e:
        check(e.status_code == 400 and e.param == param, f"{kwargs} is a 400 naming '{param}'")
for messages, what in [([{"role": "wizard", "content": "hi"}], "an unknown role"),
                       ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,x"}}]}], "an image part")]:
    try:
        client.chat.completions.create(messages=messages, max_tokens=2, model=model)
        check(False, what + " rejected")
    except openai.BadRequestError as e:
        check(e.param == "messages", what + " is a 400 naming 'messages'")
try:
    client.chat.completions.create(messages=msgs, max_tokens=2, model="gpt-4")
    check(False, "an unknown model rejected")
except openai.NotFoundError as e:
    check(e.code == "model_not_found", "an unknown model is a 404 model_not_found")
check(client.models.retrieve(model).id == model, "/v1/models/{id} finds the served model")
try:
    client.models.retrieve("gpt-4")
    check(False, "an unknown model id rejected")
except openai.NotFoundError as e:
    check(e.code == "model_not_found", "/v1/models/{id} of another model is a 404")

# Structured outputs: a Pydantic model through the client's parse helper, and a schema with nesting, enums, arrays and
# bounds over several seeds and temperatures, with and without speculation; JSON mode; a GBNF grammar; a regex.
import pydantic
from typing import List, Literal


class Address(pydantic.BaseModel):
    city: str
    zip: str


class Person(pydantic.BaseModel):
    name: str
    age: int
    role: Literal["admin", "user", "guest"]
    tags: List[str]
    address: Address


person_msgs = [{"role": "user", "content": "Invent a user of a web shop and describe them."}]
parsed = client.beta.chat.completions.parse(messages=person_msgs, max_tokens=200, response_format=Person, **greedy)
check(isinstance(parsed.choices[0].message.parsed, Person) and parsed.choices[0].finish_reason == "stop",
      "chat.completions.parse gives a valid Pydantic object")
schema = {"type": "object", "additionalProperties": False, "required": ["id", "kind", "scores", "ok"],
          "properties": {"id": {"type": "integer", "minimum": 0, "maximum": 999},
                         "kind": {"enum": ["cat", "dog", "fish"]},
                         "scores": {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 3},
                         "ok": {"type": "boolean"}, "note": {"type": "string", "maxLength": 20}}}
fmt = {"type": "json_schema", "json_schema": {"name": "pet", "schema": schema, "strict": True}}
for seed, temperature in [(1, 0.0), (2, 0.7), (3, 1.0), (4, 1.3)]:
    r = client.chat.completions.create(messages=[{"role": "user", "content": "Describe a pet as JSON."}], max_tokens=120,
                                       model=model, seed=seed, temperature=temperature, response_format=fmt)
    v = json.loads(r.choices[0].message.content)
    check(set(v) <= set(schema["properties"]) and {"id", "kind", "scores", "ok"} <= set(v) and 0 <= v["id"] <= 999
          and v["kind"] in ("cat", "dog", "fish") and 1 <= len(v["scores"]) <= 3 and isinstance(v["ok"], bool)
          and len(v.get("note", "")) <= 20, f"the schema holds at temperature {temperature} (seed {seed})")
plain = client.chat.completions.create(messages=person_msgs, max_tokens=80, response_format=fmt,
                                       extra_body={"spec": "off"}, **greedy)
fast = client.chat.completions.create(messages=person_msgs, max_tokens=80, response_format=fmt,
                                      extra_body={"spec": "del"}, **greedy)
check(plain.choices[0].message.content == fast.choices[0].message.content, "a constrained output is the same with DEL")
obj = client.chat.completions.create(messages=msgs, max_tokens=80, response_format={"type": "json_object"}, **greedy)
check(isinstance(json.loads(obj.choices[0].message.content), dict), "JSON mode gives a JSON object")
digits = client.completions.create(prompt="The year was", max_tokens=12, temperature=1.0, seed=9, model=model,
                                   extra_body={"grammar": 'root ::= " " [1-9] [0-9] [0-9] [0-9] "."'})
check(len(digits.choices[0].text) == 6 and digits.choices[0].text[1:5].isdigit() and digits.choices[0].finish_reason == "stop",
      "a GBNF grammar: a year and a full stop")
phone = client.completions.create(prompt="Call me at", max_tokens=20, model=model, temperature=0.8, seed=2, n=2,
                                  extra_body={"regex": r" \([0-9]{3}\) [0-9]{3}-[0-9]{4}"})
import re
check(all(re.fullmatch(r" \([0-9]{3}\) [0-9]{3}-[0-9]{4}", ch.text) for ch in phone.choices), "a regex holds in every choice")
streamed_json = "".join(ch.choices[0].delta.content or "" for ch in client.chat.completions.create(
    messages=person_msgs, max_tokens=200, response_format=fmt, stream=True, **greedy) if ch.choices)
check(json.loads(streamed_json) is not None, "a streamed constrained output is valid JSON")

# Tool calling: the model calls a function, the client sends the result back, the model answers; a streamed call
# reassembles into the same call; `required` and a named choice always give a valid call of the function's schema.
weather_tool = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
time_tool = {"type": "function", "function": {"name": "get_time", "description": "The current time in a time zone",
                                              "parameters": {"type": "object", "properties": {"zone": {"type": "string"}},
                                                             "required": ["zone"]}}}
tools = [weather_tool, time_tool]
ask = [{"role": "user", "content": "What is the weather like in Paris today?"}]
first = client.chat.completions.create(messages=ask, tools=tools, max_tokens=100, **greedy)
call = first.choices[0].message.tool_calls[0] if first.choices[0].message.tool_calls else None
check(call is not None and call.function.name == "get_weather" and json.loads(call.function.arguments)["city"] == "Paris"
      and first.choices[0].finish_reason == "tool_calls" and call.id.startswith("call_"),
      "tool_choice auto: the model calls get_weather for Paris")
answer_msgs = ask + [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                     {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 21, "sky": "sunny"})}]
# The history renders through Qwen's template (<tool_call> and <tool_response> turns); `none` asks for a text answer.
answer = client.chat.completions.create(messages=answer_msgs, tools=tools, tool_choice="none", max_tokens=60, **greedy)
check(not answer.choices[0].message.tool_calls and "21" in (answer.choices[0].message.content or ""),
      "after the tool's result the model answers with it")
rendered = json.loads(urllib.request.urlopen(urllib.request.Request(
    base + "/tokenize", data=json.dumps({"messages": answer_msgs, "with_pieces": True}).encode())).read())
pieces = "".join(t["piece"] for t in rendered["tokens"])
check('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"' in pieces
      and '<tool_response>\n{"temperature": 21' in pieces, "tool calls and results render through the template")
parts = {}
reason = None
for chunk in client.chat.completions.create(messages=ask, tools=tools, max_tokens=100, stream=True, **greedy):
    for ch in chunk.choices:
        reason = ch.finish_reason or reason
        for d in ch.delta.tool_calls or []:
            p = parts.setdefault(d.index, {"name": "", "arguments": ""})
            p["name"] += d.function.name or ""
            p["arguments"] += d.function.arguments or ""
check(list(parts.values()) == [{"name": call.function.name, "arguments": call.function.arguments}] and reason == "tool_calls",
      "streamed tool-call deltas reassemble into the same call")
def valid_calls(r):
    calls = r.choices[0].message.tool_calls or []
    ok = bool(calls)
    for c in calls:
        args = json.loads(c.function.arguments)
        ok = ok and (c.function.name == "get_weather" and set(args) == {"city", "unit"}
                     and args["unit"] in ("celsius", "fahrenheit") and isinstance(args["city"], str)
                     or c.function.name == "get_time" and isinstance(args.get("zone"), str))
    return ok, calls


for seed, temperature in [(1, 0.0), (2, 0.8), (3, 1.2)]:
    joke = [{"role": "user", "content": "Tell me a joke."}]
    for choice in ["required", {"type": "function", "function": {"name": "get_time"}}]:
        r = client.chat.completions.create(messages=joke, tools=tools, tool_choice=choice, parallel_tool_calls=False,
                                           max_tokens=120, model=model, seed=seed, temperature=temperature)
        ok, calls = valid_calls(r)
        ok = ok and len(calls) == 1 and r.choices[0].finish_reason == "tool_calls"
        if isinstance(choice, dict):
            ok = ok and calls[0].function.name == "get_time"
        check(ok, f"tool_choice {choice if isinstance(choice, str) else 'named'} gives one valid call at temperature {temperature}")
    # Parallel calls: as many as the model writes, each valid (a small model may go on until max_tokens).
    r = client.chat.completions.create(messages=joke, tools=tools, tool_choice="required", max_tokens=120, model=model,
                                       seed=seed, temperature=temperature)
    ok, calls = valid_calls(r)
    check(ok and r.choices[0].finish_reason in ("tool_calls", "length"),
          f"tool_choice required with parallel calls gives {len(calls)} valid calls at temperature {temperature}")
none = client.chat.completions.create(messages=ask, tools=tools, tool_choice="none", max_tokens=30, **greedy)
check(not none.choices[0].message.tool_calls and none.choices[0].message.content, "tool_choice none: text only")
for bad_tools, param in [([{"type": "function", "function": {"name": "bad name"}}], "tools"),
                         ([{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {"$ref": "#/x"}}}}}], "tool_choice")]:
    try:
        client.chat.completions.create(messages=ask, tools=bad_tools, tool_choice="required", max_tokens=5, **greedy)
        check(False, f"bad tools are refused ({param})")
    except openai.BadRequestError as e:
        check(e.body.get("param") == param, f"bad tools are a 400 naming '{param}'")

# Embeddings: llama.cpp's vectors for the same texts (embedding_reference.json, from embedding_reference.py), mean and
# last-token pooled; base64 the same floats; one text alone the same as in a batch; bad fields named.
import base64
import math
import pathlib
import struct

reference = json.loads((pathlib.Path(__file__).parent / "embedding_reference.json").read_text())


def cosine(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


for pooling in ("mean", "last"):
    got = client.embeddings.create(input=reference["texts"], model=model, extra_body={"pooling": pooling})
    check(got.usage.prompt_tokens > 0 and [d.index for d in got.data] == [0, 1, 2], f"{pooling} embeddings: shape")
    for d, ref in zip(got.data, reference[pooling]):
        check(len(d.embedding) == len(ref) and cosine(d.embedding, ref) > 0.999
              and abs(math.sqrt(sum(v * v for v in d.embedding)) - 1) < 1e-4,
              f"{pooling} embedding of text {d.index} agrees with llama.cpp (cosine {cosine(d.embedding, ref):.6f})")
alone = client.embeddings.create(input=reference["texts"][1], model=model).data[0].embedding
raw = client.embeddings.with_raw_response.create(input=reference["texts"][1], model=model, encoding_format="base64")
b64 = json.loads(raw.text)["data"][0]["embedding"]
floats = list(struct.unpack(f"<{len(alone)}f", base64.b64decode(b64)))
check(floats == alone, "base64 embeddings are the same floats")
check(cosine(alone, client.embeddings.create(input=reference["texts"], model=model).data[1].embedding) > 0.999999,
      "a text embeds the same alone and in a batch")
for kwargs, param in [(dict(input="x", dimensions=8), "dimensions"), (dict(input=""), "input"),
                      (dict(input=[[999999]]), "input"), (dict(input="x", extra_body={"pooling": "cls"}), "pooling")]:
    try:
        client.embeddings.create(model=model, **kwargs)
        check(False, f"embeddings {kwargs} rejected")
    except openai.BadRequestError as e:
        check(e.param == param, f"embeddings {kwargs} is a 400 naming '{param}'")

# n and best_of: three choices; greedy, three identical ones; sampled with a seed, each its own seed stream.
three = client.completions.create(prompt="def fibonacci(n):", max_tokens=8, n=3, **greedy)
check(sorted(ch.index for ch in three.choices) == [0, 1, 2] and all(ch.text == c.choices[0].text for ch in three.choices),
      "n=3 at temperature 0: three identical choices")
check(three.usage.completion_tokens == 24 and three.usage.prompt_tokens == c.usage.prompt_tokens,
      "n=3 usage: every choice's tokens, the prompt once")
sampled = client.chat.completions.create(messages=msgs, max_tokens=12, n=3, temperature=1.0, seed=5, model=model)
check(len({ch.message.content for ch in sampled.choices}) > 1, "n=3 sampled: the choices differ")
again = client.chat.completions.create(messages=msgs, max_tokens=12, n=3, temperature=1.0, seed=5, model=model)
check([ch.message.content for ch in again.choices] == [ch.message.content for ch in sampled.choices],
      "n=3 with a seed is reproducible")
streamed = {}
for chunk in client.chat.completions.create(messages=msgs, max_tokens=12, n=3, temperature=1.0, seed=5, model=model,
                                            stream=True):
    for ch in chunk.choices:
        streamed[ch.index] = streamed.get(ch.index, "") + (ch.delta.content or "")
check([streamed[i] for i in range(3)] == [ch.message.content for ch in sampled.choices], "n=3 streamed: the same choices")
best = client.completions.create(prompt="The capital of France is", max_tokens=6, n=1, best_of=3, temperature=1.0,
                                 seed=3, logprobs=1, model=model)
pool = client.completions.create(prompt="The capital of France is", max_tokens=6, n=3, temperature=1.0, seed=3,
                                 logprobs=1, model=model)
mean = lambda ch: sum(ch.logprobs.token_logprobs) / len(ch.logprobs.token_logprobs)
check(len(best.choices) == 1 and best.choices[0].text == max(pool.choices, key=mean).text,
      "best_of=3 returns the choice of the best mean log-probability")
# Prompts as token ids and as arrays: one choice per prompt (and per n), in order.
ids = [int(t) for t in json.loads(urllib.request.urlopen(urllib.request.Request(
    base + "/tokenize", data=json.dumps({"content": "def fibonacci(n):"}).encode())).read())["tokens"]]
by_ids = client.completions.create(prompt=ids, max_tokens=8, **greedy)
check(by_ids.choices[0].text == c.choices[0].text, "a prompt of token ids (from /tokenize) gives the text's completion")
several = client.completions.create(prompt=["def fibonacci(n):", ids, "1, 2, 3, 4, 5,"], max_tokens=8, n=2, **greedy)
texts = [ch.text for ch in sorted(several.choices, key=lambda ch: ch.index)]
check(len(texts) == 6 and texts[0] == texts[1] == texts[2] == texts[3] == c.choices[0].text, "an array of prompts, n=2 each")
detok = json.loads(urllib.request.urlopen(urllib.request.Request(
    base + "/detokenize", data=json.dumps({"tokens": ids}).encode())).read())
check(detok["content"] == "def fibonacci(n):", "/detokenize inverts /tokenize")
echoed = client.completions.create(prompt="def fibonacci(n):", max_tokens=8, echo=True, **greedy)
check(echoed.choices[0].text == "def fibonacci(n):" + c.choices[0].text, "echo prepends the prompt")
# echo with logprobs scores the prompt (what evaluation harnesses send, max_tokens 0): the first token has none, and
# the generated tokens, scored as a prompt, get the log-probabilities they were generated with.
def token_ids(text, add_special=True):
    return [t["id"] if isinstance(t, dict) else t for t in json.loads(urllib.request.urlopen(urllib.request.Request(
        base + "/tokenize", data=json.dumps({"content": text, "add_special": add_special}).encode())).read())["tokens"]]


gen = client.completions.create(prompt="def fibonacci(n):", max_tokens=8, logprobs=2, **greedy)
# The same tokens as generated (text would be tokenized anew, merging across the boundary): each piece is one token.
gen_ids = [token_ids(piece, False) for piece in gen.choices[0].logprobs.tokens]
check(all(len(i) == 1 for i in gen_ids), "each generated piece is one token")
scored = client.completions.create(prompt=token_ids("def fibonacci(n):") + [i[0] for i in gen_ids], max_tokens=0,
                                   echo=True, logprobs=2, **greedy)
lp, glp = scored.choices[0].logprobs, gen.choices[0].logprobs
k = len(glp.tokens)
check(scored.choices[0].text == "def fibonacci(n):" + gen.choices[0].text and lp.token_logprobs[0] is None
      and lp.top_logprobs[0] is None and "".join(lp.tokens) == scored.choices[0].text
      and lp.text_offset[1] == len(lp.tokens[0]) and scored.usage.completion_tokens == 0
      and scored.choices[0].finish_reason == "length", "echo with logprobs and max_tokens 0 scores the prompt only")
# (Within 0.1: scoring runs these positions as one 13-token pass, generation as a 5-token prefill then single-token
# steps, through different kernels; the differences seen are up to 0.04.)
check(lp.tokens[-k:] == glp.tokens and all(abs(a - b) < 0.1 for a, b in zip(lp.token_logprobs[-k:], glp.token_logprobs))
      and all(set(a) == set(b) for a, b in zip(lp.top_logprobs[-k:], glp.top_logprobs)),
      "prompt log-probabilities agree with the generated tokens' own")
# And they reproduce `fulcrum eval ppl` (run by the test on the same file): its first 128-token window scores its second
# half, tokens 65 to 127, each given all before it.
import math
import os
ppl_ids = token_ids(open(os.environ["FULCRUM_TEST_PPL_FILE"]).read())[:128]
window = client.completions.create(prompt=ppl_ids, max_tokens=0, echo=True, logprobs=0, **greedy).choices[0].logprobs
second_half = window.token_logprobs[65:128]
ppl = math.exp(-sum(second_half) / len(second_half))
reference = float(os.environ["FULCRUM_TEST_PPL_128"])
check(len(second_half) == 63 and abs(ppl / reference - 1) < 0.001,
      f"echo log-probabilities give eval ppl's perplexity ({ppl:.4f} against {reference:.4f})")
both = client.completions.create(prompt="def fibonacci(n):", max_tokens=4, echo=True, logprobs=1, **greedy)
check(len(both.choices[0].logprobs.tokens) == len(lp.tokens) - k + 4 and both.choices[0].logprobs.token_logprobs[-1] is not None,
      "echo with logprobs covers the prompt and the generated tokens")
# Penalties: a frequency penalty breaks the model's counting (it repeats ", " every step), a presence penalty too.
for penalty in [dict(frequency_penalty=2.0), dict(presence_penalty=2.0), dict(extra_body={"repetition_penalty": 1.5})]:
    penalised = client.completions.create(prompt="1, 2, 3, 4, 5,", max_tokens=20, **penalty, **greedy)
    check(penalised.choices[0].text != counting.choices[0].text, f"{penalty} changes what the model writes")
# Fill-in-the-middle: Qwen2.5-Coder completes the body between a signature and its use.
fim = client.completions.create(prompt="def add(a, b):\n    return ", suffix="\n\nprint(add(2, 3))\n", max_tokens=8,
                                stop=["\n"], **greedy)
check("a + b" in fim.choices[0].text, f"suffix fills in the middle ({fim.choices[0].text!r})")
try:
    client.completions.create(prompt="word " * 2000, max_tokens=2, model=model)
    check(False, "long prompt rejected")
except openai.BadRequestError as e:
    check(e.code == "context_length_exceeded", "a prompt longer than the context is a 400 naming the limit")
req = urllib.request.Request(base + "/v1/chat/completions", data=b"{oops", headers={"Content-Type": "application/json"})
try:
    urllib.request.urlopen(req)
    check(False, "malformed JSON rejected")
except urllib.error.HTTPError as e:
    body = json.loads(e.read())
    check(e.code == 400 and body["error"]["type"] == "invalid_request_error", "malformed JSON is an OpenAI-shaped 400")

# Concurrency: greedy requests running together give exactly what each gives alone.
prompts = ["The capital of France is", "def quicksort(xs):", "Once upon a time", "SELECT * FROM", "import numpy as np\n"]
alone = [client.completions.create(prompt=p, max_tokens=16, **greedy).choices[0].text for p in prompts]
with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
    together = list(pool.map(lambda p: client.completions.create(prompt=p, max_tokens=16, **greedy).choices[0].text, prompts))
check(together == alone, "concurrent greedy requests match their solo outputs")

# Speculation (prompt lookup) is lossless: alone and concurrently, with and without logprobs, the same greedy text.
lookup = dict(extra_body={"spec": "lookup:6"}, **greedy)
counting_prompts = ["1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 1, 2, 3, 4, 5,", "a b c d e f g a b c d e f g a b c"]
plain = [client.completions.create(prompt=p, max_tokens=24, **greedy).choices[0].text for p in prompts + counting_prompts]
with concurrent.futures.ThreadPoolExecutor(4) as pool:
    spec = list(pool.map(lambda p: client.completions.create(prompt=p, max_tokens=24, **lookup).choices[0].text,
                         prompts + counting_prompts))
check(spec == plain, "prompt-lookup speculation leaves greedy output unchanged")
drafted = [l for l in urllib.request.urlopen(base + "/metrics").read().decode().splitlines()
           if l.startswith("fulcrum_spec_accepted_tokens_total")]
check(drafted and float(drafted[0].split()[-1]) > 0, "lookup drafts were accepted on repetitive text")
lp_plain = client.completions.create(prompt=counting_prompts[0], max_tokens=8, logprobs=2, **greedy)
lp_spec = client.completions.create(prompt=counting_prompts[0], max_tokens=8, logprobs=2, **lookup)
check(lp_plain.choices[0].logprobs.token_logprobs == lp_spec.choices[0].logprobs.token_logprobs,
      "speculation reports the same log-probabilities")
check(lp_spec.usage.completion_tokens == lp_plain.usage.completion_tokens, "speculation counts the same usage")
# Early exit (the first 20 of 24 layers draft 3 tokens; 62 % of their predictions match the full model), concurrently and with sampling: lossless too.
accepted_before = float([l for l in urllib.request.urlopen(base + "/metrics").read().decode().splitlines()
                         if l.startswith("fulcrum_spec_accepted_tokens_total")][0].split()[-1])
early = dict(extra_body={"spec": "early-exit:20,3"}, **greedy)
with concurrent.futures.ThreadPoolExecutor(4) as pool:
    spec_ee = list(pool.map(lambda p: client.completions.create(prompt=p, max_tokens=24, **early).choices[0].text,
                            prompts + counting_prompts))
check(spec_ee == plain, "early-exit speculation leaves greedy output unchanged")
accepted_after = float([l for l in urllib.request.urlopen(base + "/metrics").read().decode().splitlines()
                        if l.startswith("fulcrum_spec_accepted_tokens_total")][0].split()[-1])
check(accepted_after > accepted_before, "early-exit drafts were accepted")
# Sampling verifies drafts by rejection sampling, so the text follows another random path; it must still stop right.
ee_sampled = client.completions.create(prompt=prompts[0], max_tokens=12, temperature=0.8, seed=7, model=model,
                                       extra_body={"spec": "early-exit:20,3"})
check(ee_sampled.usage.completion_tokens == 12 or ee_sampled.choices[0].finish_reason == "stop",
      "sampling with early-exit drafts ends at max_tokens or a stop")
# DEL and auto (a controller per request over the early exits, and prompt lookup for auto): lossless, concurrently.
for mode in ["del", "auto"]:
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        adaptive = list(pool.map(lambda p: client.completions.create(prompt=p, max_tokens=24, extra_body={"spec": mode},
                                                                     **greedy).choices[0].text, prompts + counting_prompts))
    check(adaptive == plain, f"'spec': '{mode}' leaves greedy output unchanged")
# Alone, with a prompt not in the prefix cache, DEL initialises its exits' statistics from the prompt's end.
client.completions.create(prompt="Write a haiku about the sea and the wind.", max_tokens=4, extra_body={"spec": "del"},
                          **greedy)
metrics_text = urllib.request.urlopen(base + "/metrics").read().decode()
check('fulcrum_spec_drafter_accepted_tokens_total{drafter="lookup"}' in metrics_text
      and 'fulcrum_spec_drafter_draft_tokens_total{drafter="exit:20"}' in metrics_text,
      "speculation metrics are reported per drafter")
shadow_rows = [l for l in metrics_text.splitlines() if l.startswith("fulcrum_spec_shadow_rows_total")]
check(shadow_rows and float(shadow_rows[0].split()[-1]) > 0, "DEL's controllers computed shadow tokens")
# A draft model (the server drafts with the model itself, so every draft is right), concurrently; named or not.
def drafter_counts(name):
    text = urllib.request.urlopen(base + "/metrics").read().decode()
    get = lambda series: float(([l for l in text.splitlines()
                                 if l.startswith(f'fulcrum_spec_drafter_{series}_total{{drafter="{name}"}}')] or ["x 0"])[0].split()[-1])
    return get("draft_tokens"), get("accepted_tokens")
for mode in ["draft", "draft:qwen2.5-coder-0.5b-instruct,6"]:
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        drafted_text = list(pool.map(lambda p: client.completions.create(prompt=p, max_tokens=24, extra_body={"spec": mode},
                                                                         **greedy).choices[0].text, prompts + counting_prompts))
    check(drafted_text == plain, f"'spec': '{mode}' leaves greedy output unchanged")
d_drafted, d_accepted = drafter_counts("draft")
check(d_drafted > 0 and d_accepted == d_drafted, "a model drafting for itself has every draft accepted")
for bad_spec in ["draft:gemma3-270m", "early-exit:24,3"]:
    try:
        client.completions.create(prompt="x", max_tokens=2, extra_body={"spec": bad_spec}, **greedy)
        check(False, f"speculation {bad_spec} rejected")
    except openai.BadRequestError as e:
        check(e.param == "spec", f"'spec': '{bad_spec}' is a 400 naming the field")
try:
    client.completions.create(prompt="x", max_tokens=2, extra_body={"spec": "draft:x"}, **greedy)
    check(False, "unsupported speculation rejected")
except openai.BadRequestError as e:
    check("drafts with" in str(e), "a draft model the server does not run is a 400 that says so")

# Prefix caching: a repeated long prompt reuses its blocks and gives the same text.
system = "You are a careful assistant. " * 20
msgs2 = [{"role": "system", "content": system}, {"role": "user", "content": "Say hi."}]
first = client.chat.completions.create(messages=msgs2, max_tokens=8, **greedy)
second = client.chat.completions.create(messages=msgs2, max_tokens=8, **greedy)
check(second.usage.prompt_tokens_details.cached_tokens >= 64, "prefix cache hit on the repeated prompt")
check(first.choices[0].message.content == second.choices[0].message.content, "cached prefix gives the same text")

# A client that disconnects mid-stream is cancelled and its blocks freed.
import time

s = client.completions.create(prompt="Tell me a long story.", max_tokens=300, stream=True, **greedy)
for i, _ in enumerate(s):
    if i == 2:
        break
s.close()
deadline = time.time() + 10
running = None
while time.time() < deadline:
    m = urllib.request.urlopen(base + "/metrics").read().decode()
    running = [l for l in m.splitlines() if l.startswith("fulcrum_num_requests_running ")][0].split()[1]
    usage = [l for l in m.splitlines() if l.startswith("fulcrum_kv_cache_usage_perc ")][0].split()[1]
    if float(running) == 0 and float(usage) == 0:
        break
    time.sleep(0.1)
check(float(running) == 0 and float(usage) == 0, "a disconnected stream is cancelled and its KV blocks freed")

# The metrics routers read from vLLM, through Prometheus' own parser: the same values as Fulcrum's names.
from prometheus_client.parser import text_string_to_metric_families
families = {f.name: f for f in text_string_to_metric_families(urllib.request.urlopen(base + "/metrics").read().decode())}
sample = lambda name: families[name].samples[0]
for name in ["num_requests_waiting", "num_requests_running", "kv_cache_usage_perc", "num_preemptions_total"]:
    vllm = sample("vllm:" + name.removesuffix("_total"))
    check(vllm.labels.get("model_name") == model and vllm.value == sample("fulcrum_" + name.removesuffix("_total")).value,
          f"vllm:{name} mirrors fulcrum_{name}")
config = sample("vllm:cache_config_info").labels
kv_tokens = sample("fulcrum_kv_cache_tokens").value
check(config["block_size"] == "16" and int(config["num_gpu_blocks"]) * 16 == kv_tokens, "vllm:cache_config_info gives the pool's blocks")
check(sample("vllm:lora_requests_info").labels["running_lora_adapters"] == "", "vllm:lora_requests_info is present and empty")
ttft = families["vllm:time_to_first_token_seconds"]
check(ttft.type == "histogram" and [s.value for s in ttft.samples if s.name.endswith("_count")][0] > 0,
      "vllm:time_to_first_token_seconds is a histogram with observations")
success = {s.labels["finished_reason"]: s.value for s in families["vllm:request_success"].samples
           if s.name == "vllm:request_success_total"}
check(success["stop"] > 0 and success["length"] > 0 and success["abort"] >= 1,
      f"vllm:request_success_total counts requests by how they ended ({success})")
e2e = families["vllm:e2e_request_latency_seconds"]
e2e_count = [s.value for s in e2e.samples if s.name.endswith("_count")][0]
check(e2e.type == "histogram" and e2e_count == sum(success.values()),
      "vllm:e2e_request_latency_seconds observes every ended request")
live = json.loads(urllib.request.urlopen(base + "/live").read())
ready = json.loads(urllib.request.urlopen(base + "/ready").read())
check(live["status"] == "alive" and ready["status"] == "ok", "/live and /ready answer")

# An internal error (injected: the server runs with FULCRUM_INJECT_PANIC_MAX_TOKENS=29) fails the requests in flight
# with a 500 or an error event, and the server goes on serving everyone else.
try:
    client.completions.create(prompt="The capital of France is", max_tokens=29, **greedy)
    check(False, "an engine failure is reported as an error")
except openai.InternalServerError as e:
    check(e.status_code == 500 and "internal error" in str(e), "an engine failure is a 500 server_error")
try:
    for _ in client.completions.create(prompt="Once upon a time", max_tokens=29, stream=True, **greedy):
        pass
    check(False, "an engine failure mid-stream is reported")
except openai.APIError as e:
    check("internal error" in str(e), "an engine failure mid-stream is an error event")
after = client.completions.create(prompt=prompts[0], max_tokens=16, **greedy).choices[0].text
check(after == alone[0], "the engine serves new requests normally after a failure")
check(urllib.request.urlopen(base + "/health").status == 200, "health stays ok after a recovered failure")

metrics = urllib.request.urlopen(base + "/metrics").read().decode()
for name in ["fulcrum_num_requests_waiting", "fulcrum_kv_cache_usage_perc", "fulcrum_prefix_cache_hits_total",
             "fulcrum_time_to_first_token_seconds_bucket", "fulcrum_generation_tokens_total"]:
    check(name in metrics, "metric " + name)
print("all passed")
