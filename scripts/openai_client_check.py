#!/usr/bin/env python3
"""Drives an OpenAI-compatible server with the official `openai` package and checks what a real
client sees: a chat completion, a streamed one that adds up to the same text, usage, the model
list, tool calls (plain and streamed, parsed by the client's own types), structured output with
a JSON schema (the client's `parse` helper with a pydantic model), log-probabilities, and the
client's own error types for a bad request and an unknown model.

    scripts/openai_client_check.py BASE_URL      (e.g. http://127.0.0.1:8080/v1)

Prints one line per check and exits non-zero on the first failure.
"""
import json
import sys

import openai
import pydantic

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "maxLength": 40},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"], "additionalProperties": False}}},
]


class City(pydantic.BaseModel):
    name: str
    country: str
    population: int


def main():
    base = sys.argv[1]
    client = openai.OpenAI(base_url=base, api_key="none", max_retries=0, timeout=120)
    msgs = [{"role": "user", "content": "Name three colours."}]

    r = client.chat.completions.create(model="default", messages=msgs, temperature=0, max_tokens=24)
    text = r.choices[0].message.content
    assert r.object == "chat.completion" and text, r
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, r.usage
    print("chat: ok", repr(text[:40]))

    parts, finish, usage = [], None, None
    for chunk in client.chat.completions.create(
        model="default", messages=msgs, temperature=0, max_tokens=24, stream=True,
        stream_options={"include_usage": True},
    ):
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.content:
                parts.append(c.delta.content)
            if c.finish_reason:
                finish = c.finish_reason
    assert "".join(parts) == text, ("".join(parts), text)
    assert finish == r.choices[0].finish_reason and usage.completion_tokens == r.usage.completion_tokens
    print("stream: ok", len(parts), "chunks")

    again = client.chat.completions.create(model="default", messages=msgs, temperature=0, max_tokens=24)
    assert again.usage.prompt_tokens_details.cached_tokens > 0, again.usage
    print("prefix cache: ok", again.usage.prompt_tokens_details.cached_tokens, "cached prompt tokens")

    ask = [{"role": "user", "content": "What's the weather in Rome?"}]
    # One city, one call: without parallel_tool_calls=False a sampled second call may be cut
    # off by max_tokens (finish_reason "length"), which is right but not what this checks.
    r = client.chat.completions.create(model="default", messages=ask, tools=TOOLS,
                                       tool_choice="required", parallel_tool_calls=False,
                                       seed=3, max_tokens=60)
    calls = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls" and calls, r
    args = json.loads(calls[0].function.arguments)
    assert calls[0].function.name == "get_weather" and isinstance(args["city"], str), calls
    assert args["unit"] in ("celsius", "fahrenheit"), args
    print("tools: ok", calls[0].function.name, calls[0].function.arguments)

    streamed = {}
    for chunk in client.chat.completions.create(model="default", messages=ask, tools=TOOLS,
                                                tool_choice="required", seed=3, max_tokens=60,
                                                stream=True):
        for c in chunk.choices:
            for d in c.delta.tool_calls or []:
                e = streamed.setdefault(d.index, {"name": "", "arguments": ""})
                e["name"] += d.function.name or ""
                e["arguments"] += d.function.arguments or ""
    assert streamed[0] == {"name": calls[0].function.name,
                           "arguments": calls[0].function.arguments}, streamed
    print("tools stream: ok")

    history = ask + [r.choices[0].message.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": calls[0].id, "content": '{"temp": 21}'}]
    r = client.chat.completions.create(model="default", messages=history, tools=TOOLS,
                                       tool_choice="none", temperature=0, max_tokens=30)
    assert r.choices[0].message.content and not r.choices[0].message.tool_calls, r
    print("tool result: ok", repr(r.choices[0].message.content[:40]))

    # `parse` moved out of `beta` in newer clients.
    completions = getattr(client.chat.completions, "parse", None) and client.chat.completions
    parsed = (completions or client.beta.chat.completions).parse(
        model="default", messages=[{"role": "user", "content": "Describe Paris as JSON."}],
        response_format=City, seed=1, max_tokens=80)
    city = parsed.choices[0].message.parsed
    assert isinstance(city, City), parsed
    print("json_schema: ok", city)

    r = client.chat.completions.create(model="default", messages=msgs, temperature=0, max_tokens=5,
                                       logprobs=True, top_logprobs=2)
    lp = r.choices[0].logprobs.content
    assert lp and all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in lp), lp
    print("logprobs: ok", [round(t.logprob, 3) for t in lp])

    models = client.models.list()
    assert models.data and models.data[0].id, models
    print("models: ok", models.data[0].id)

    try:
        client.chat.completions.create(model="default", messages=msgs, temperature=-1)
        raise AssertionError("temperature -1 was accepted")
    except openai.BadRequestError as e:
        assert "temperature" in str(e), e
    print("bad request: ok")
    try:
        client.chat.completions.create(model="no-such-model", messages=msgs)
        raise AssertionError("unknown model was accepted")
    except openai.NotFoundError:
        pass
    print("unknown model: ok")


if __name__ == "__main__":
    main()
