#!/usr/bin/env python3
"""How well the agent does on a handful of simple goals, each with an automatic check.

    scripts/agent_goals.py [--backend embedded|openai] [--base-url URL] [--model M] [--json]

Runs `target/release/autoglm run --json` once per goal in a fresh state directory (models stay
in $AUTOGLM_MODELS), then checks the answer, the tools called and the files left in the
workspace. Prints one line per goal and a summary; a figure, not a test: a 135M model gets some
of these wrong, and the point is to know which.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AUTOGLM = os.path.join(ROOT, "target", "release", "autoglm")

# (goal, tools offered, check(outcome, workspace) -> problem or None)
def has(text, *needles):
    return all(n.lower() in (text or "").lower() for n in needles)


def called(outcome, tool):
    return any(s.get("kind") == "tool_call" and s.get("tool") == tool for s in outcome["steps"])


def check_answer(*needles, tool=None):
    def check(o, ws):
        if tool and not called(o, tool):
            return f"{tool} was not called"
        if not has(o.get("answer"), *needles):
            return f"answer lacks {needles}: {o.get('answer')!r}"
        return None
    return check


def check_call(tool, needle):
    def check(o, ws):
        args = [json.dumps(s.get("arguments")) for s in o["steps"]
                if s.get("kind") == "tool_call" and s.get("tool") == tool]
        if not args:
            return f"{tool} was not called"
        return None if any(needle.lower() in a.lower() for a in args) else f"{tool} got {args[0][:120]}"
    return check


def check_file(name, content):
    def check(o, ws):
        p = os.path.join(ws, name)
        if not os.path.exists(p):
            return f"{name} was not written"
        got = open(p, encoding="utf-8", errors="replace").read()
        return None if content.lower() in got.lower() else f"{name} holds {got!r}"
    return check


GOALS = [
    ("What is 17 * 23? Use the calculator.", "calculator", check_answer("391", tool="calculator")),
    ("Use the calculator to compute (1234 + 4321) * 2.", "calculator", check_answer("11110", tool="calculator")),
    ("What is 2 to the power of 20? Use the calculator.", "calculator", check_answer("1048576", tool="calculator")),
    ("Write the text 'hello world' to a file named hello.txt.", "write_file", check_file("hello.txt", "hello world")),
    ("Use python to print the sum of the numbers from 1 to 100.", "python", check_answer("5050", tool="python")),
    ("Use the shell to count the words in the sentence 'the quick brown fox'.", "shell", check_answer("4", tool="shell")),
    ("Save to memory: the project meeting is on Friday.", "memory_save", check_call("memory_save", "friday")),
    ("What is the capital of France?", "", check_answer("paris")),
]


def run(args, home, goal, tools):
    cmd = [AUTOGLM, "run", "--json", "--backend", args.backend, "--model", args.model]
    if args.base_url:
        cmd += ["--base-url", args.base_url]
    if tools:
        cmd += ["--tools", tools]
    cmd.append(goal)
    env = dict(os.environ, AUTOGLM_HOME=home)
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    dt = time.time() - t0
    try:
        outcome = json.loads(p.stdout)
    except json.JSONDecodeError:
        return None, dt, f"exit {p.returncode}, no JSON: {p.stderr[-400:]}"
    return outcome, dt, None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="embedded")
    ap.add_argument("--base-url")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    passed = 0
    rows = []
    for goal, tools, check in GOALS:
        home = tempfile.mkdtemp(prefix="autoglm-goals-")
        outcome, dt, err = run(args, home, goal, tools)
        if outcome is not None:
            ws_root = os.path.join(home, "workspaces", outcome["task_id"])
            err = check(outcome, ws_root)
            if err is None and outcome["status"] != "succeeded":
                err = f"status {outcome['status']}"
        ok = err is None
        passed += ok
        calls = [f"{s['tool']}({json.dumps(s.get('arguments'))})" for s in (outcome or {}).get("steps", [])
                 if s.get("kind") == "tool_call"]
        row = {"goal": goal, "ok": ok, "problem": err, "seconds": round(dt, 1),
               "status": (outcome or {}).get("status"), "answer": (outcome or {}).get("answer"),
               "tool_calls": calls}
        rows.append(row)
        if not args.json:
            mark = "PASS" if ok else "FAIL"
            print(f"{mark} {dt:6.1f}s  {goal}\n      calls: {', '.join(calls) or '-'}\n"
                  f"      answer: {(row['answer'] or '')[:160]!r}" + (f"\n      problem: {err}" if err else ""))
    if args.json:
        print(json.dumps({"backend": args.backend, "model": args.model, "passed": passed,
                          "total": len(GOALS), "goals": rows}))
    else:
        print(f"{passed}/{len(GOALS)} goals passed ({args.backend}, {args.model})")


if __name__ == "__main__":
    sys.exit(main())
