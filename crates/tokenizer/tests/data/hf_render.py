"""Renders a chat template over test cases the way Hugging Face transformers does (jinja2
sandbox, trim_blocks + lstrip_blocks, loop controls, HF's tojson / raise_exception /
strftime_now), one JSON object per line: {"ok": text} or {"err": message}.

Regenerate the fixture with:
    python3 hf_render.py features.jinja template_cases.json > features.expected.jsonl
Like llama.cpp, `tools` is only passed when a case has tools.
"""
import json
import sys
from datetime import datetime

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def strftime_now(fmt):
    return datetime.now().strftime(fmt)


env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
env.filters["tojson"] = tojson
env.globals["raise_exception"] = raise_exception
env.globals["strftime_now"] = strftime_now
template = env.from_string(open(sys.argv[1], encoding="utf-8").read())
for case in json.load(open(sys.argv[2], encoding="utf-8")):
    kwargs = dict(case.get("extra", {}))
    if case.get("tools") is not None:
        kwargs["tools"] = case["tools"]
    try:
        out = template.render(
            messages=case["messages"],
            add_generation_prompt=case.get("add_generation_prompt", True),
            bos_token="<s>",
            eos_token="</s>",
            **kwargs,
        )
        print(json.dumps({"ok": out}, ensure_ascii=False))
    except Exception as e:  # the Rust side only checks that it fails too
        print(json.dumps({"err": str(e)}, ensure_ascii=False))
