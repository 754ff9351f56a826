#!/usr/bin/env python3
"""Drives an OpenAI-compatible server with the official `openai` package and checks what a real
client sees: a chat completion, a streamed one that adds up to the same text, usage, the model
list, and the client's own error types for a bad request and an unknown model.

    scripts/openai_client_check.py BASE_URL      (e.g. http://127.0.0.1:8080/v1)

Prints one line per check and exits non-zero on the first failure.
"""
import sys

import openai


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
