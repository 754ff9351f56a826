#!/usr/bin/env python3
"""Serving checks against a running `autoglm serve` (or any OpenAI-compatible server), from a
second process over loopback. Standard library only.

    scripts/serving_checks.py BASE_URL [--pid PID] [--prefix-tokens 1500] [--overload 500]

prefix  For three fresh prompts sharing a ~1,500-token prefix (a long system message), time to
        first token of the first request (cold) and of a second request with the same prefix
        and another question (warm); prints the ratio warm / cold. The issue's bar is <= 0.15.
overload  OVERLOAD simultaneous requests (16 tokens each): each must end as a full answer (200)
        or a fast refusal (429 with Retry-After); none may hang or fail otherwise. With --pid,
        the server's resident memory before, at the peak, and after.

Prints one JSON line per check and exits non-zero if a check fails. Sends $AUTOGLM_API_KEY as a
bearer token when set (a server started without --no-auth needs a key with the models scope).
"""
import argparse
import json
import os
import random
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request

WORDS = ("river mountain lantern copper meadow orbit canvas thunder pepper harbor violet engine "
         "quartz ember saddle glacier marble falcon willow prism cedar anchor velvet comet").split()


HEADERS = {"Content-Type": "application/json"}
if os.environ.get("AUTOGLM_API_KEY"):
    HEADERS["Authorization"] = "Bearer " + os.environ["AUTOGLM_API_KEY"]


def post(base, body, timeout=600):
    req = urllib.request.Request(base.rstrip("/") + "/chat/completions", data=json.dumps(body).encode(),
                                 headers=HEADERS)
    t0 = time.time()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read()), time.time() - t0, dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}"), time.time() - t0, dict(e.headers)


def ttft(base, messages):
    """Seconds to the first streamed token."""
    body = {"messages": messages, "max_tokens": 4, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    req = urllib.request.Request(base.rstrip("/") + "/chat/completions", data=json.dumps(body).encode(),
                                 headers=HEADERS)
    t0 = time.time()
    first, usage = None, None
    with urllib.request.urlopen(req, timeout=600) as r:
        for line in r:
            line = line.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            d = json.loads(line[6:])
            if d.get("usage"):
                usage = d["usage"]
            for c in d.get("choices", []):
                if first is None and c.get("delta", {}).get("content"):
                    first = time.time() - t0
    return first if first is not None else time.time() - t0, usage


def rss_kib(pid):
    if not pid:
        return None
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


def prefix_check(base, prefix_tokens):
    ratios, rows = [], []
    for trial in range(3):
        rnd = random.Random(1000 + trial + int(time.time()))
        # About 1.3 tokens a word for these words; the usage below reports the exact count.
        system = " ".join(rnd.choice(WORDS) for _ in range(int(prefix_tokens / 1.3)))
        sys_msg = {"role": "system", "content": "Reference notes: " + system}
        cold, u1 = ttft(base, [sys_msg, {"role": "user", "content": "Which word comes first?"}])
        warm, u2 = ttft(base, [sys_msg, {"role": "user", "content": "Count the rivers."}])
        cached = (u2 or {}).get("prompt_tokens_details", {}).get("cached_tokens")
        ratios.append(warm / cold)
        rows.append({"prompt_tokens": (u1 or {}).get("prompt_tokens"), "cold_s": round(cold, 3),
                     "warm_s": round(warm, 3), "cached_tokens": cached})
    r = statistics.median(ratios)
    print(json.dumps({"check": "prefix", "median_ratio": round(r, 3), "trials": rows}))
    return r <= 0.15


def overload_check(base, n, pid):
    before = rss_kib(pid)
    results = [None] * n
    peak = [before or 0]
    barrier = threading.Barrier(n)

    def one(i):
        barrier.wait()
        body = {"messages": [{"role": "user", "content": f"Say something about the number {i}."}],
                "max_tokens": 16, "temperature": 0}
        try:
            status, data, secs, headers = post(base, body, timeout=600)
            ok = status == 200 and data["choices"][0]["message"]["content"] is not None
            results[i] = (status, secs, ok, headers.get("Retry-After") or headers.get("retry-after"))
        except Exception as e:  # a hang (timeout) or a broken connection
            results[i] = ("error", 0.0, False, repr(e))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    t0 = time.time()
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        time.sleep(0.2)
        r = rss_kib(pid)
        if r:
            peak[0] = max(peak[0], r)
    wall = time.time() - t0
    time.sleep(2)
    after = rss_kib(pid)
    done = [r for r in results if r and r[0] == 200 and r[2]]
    refused = [r for r in results if r and r[0] == 429]
    other = [r for r in results if r not in done and r not in refused]
    out = {"check": "overload", "requests": n, "answered": len(done), "refused_429": len(refused),
           "other": len(other), "wall_s": round(wall, 1),
           "refusal_p50_ms": round(1000 * statistics.median([r[1] for r in refused]), 1) if refused else None,
           "refusal_max_ms": round(1000 * max(r[1] for r in refused), 1) if refused else None,
           "retry_after_present": all(r[3] for r in refused),
           "answer_p50_s": round(statistics.median([r[1] for r in done]), 2) if done else None,
           "rss_kib": {"before": before, "peak": peak[0] if pid else None, "after": after}}
    if other:
        out["examples"] = [str(o)[:200] for o in other[:3]]
    print(json.dumps(out))
    return not other and len(done) + len(refused) == n and out["retry_after_present"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("--pid", type=int)
    ap.add_argument("--prefix-tokens", type=int, default=1500)
    ap.add_argument("--overload", type=int, default=500)
    ap.add_argument("--only", choices=["prefix", "overload"])
    a = ap.parse_args()
    ok = True
    if a.only in (None, "prefix"):
        ok &= prefix_check(a.base, a.prefix_tokens)
    if a.only in (None, "overload"):
        ok &= overload_check(a.base, a.overload, a.pid)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
