"""Structured output and tool calls on the second chat model (Qwen2.5-Coder-1.5B-Instruct) through the official openai
client. Usage: second_model.py BASE_URL"""
import json
import sys
from typing import Annotated, List, Literal

import pydantic

from common import check, connect

base = sys.argv[1]
client, model, greedy = connect(base)


class Address(pydantic.BaseModel):
    city: str
    zip: str


class Person(pydantic.BaseModel):
    name: str
    age: int
    role: Literal["admin", "user", "guest"]
    # Bounded: greedy, this model lists tags until max_tokens under an unbounded array.
    tags: Annotated[List[str], pydantic.Field(max_length=4)]
    address: Address


check("1.5b" in model, f"serving {model}")
parsed = client.beta.chat.completions.parse(
    messages=[{"role": "user", "content": "Invent a user of a web shop and describe them."}], max_tokens=200,
    response_format=Person, **greedy)
check(isinstance(parsed.choices[0].message.parsed, Person) and parsed.choices[0].finish_reason == "stop",
      "chat.completions.parse gives a valid Pydantic object")
sampled = client.beta.chat.completions.parse(
    messages=[{"role": "user", "content": "Describe a guest user."}], max_tokens=200, response_format=Person,
    model=model, temperature=1.0, seed=7)
check(isinstance(sampled.choices[0].message.parsed, Person), "a sampled parse is valid too")

weather = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"]}}}
ask = [{"role": "user", "content": "What is the weather like in Paris today?"}]
first = client.chat.completions.create(messages=ask, tools=[weather], max_tokens=100, **greedy)
calls = first.choices[0].message.tool_calls or []
check(len(calls) == 1 and calls[0].function.name == "get_weather"
      and json.loads(calls[0].function.arguments).get("city") == "Paris" and first.choices[0].finish_reason == "tool_calls",
      "tool_choice auto: the model calls get_weather for Paris")
follow = ask + [{"role": "assistant", "content": None, "tool_calls": [calls[0].model_dump()]},
                {"role": "tool", "tool_call_id": calls[0].id, "content": json.dumps({"temperature": 21, "sky": "sunny"})}]
answer = client.chat.completions.create(messages=follow, tools=[weather], tool_choice="none", max_tokens=60, **greedy)
text = answer.choices[0].message.content or ""
check("21" in text and "Paris" in text and "<tool_call>" not in text, f"the model answers from the tool's result: {text!r}")
forced = client.chat.completions.create(messages=[{"role": "user", "content": "Hello!"}], tools=[weather],
                                        tool_choice="required", parallel_tool_calls=False, max_tokens=80,
                                        model=model, temperature=0.9, seed=3)
calls = forced.choices[0].message.tool_calls or []
args = json.loads(calls[0].function.arguments) if calls else {}
check(len(calls) == 1 and set(args) >= {"city", "unit"} and args["unit"] in ("celsius", "fahrenheit"),
      "tool_choice required gives a valid call")
