#!/usr/bin/env python3
"""Speed of `autoglm bench` against llama.cpp on the same machine, model and threads.

    scripts/bench_vs_llamacpp.py [--model smollm2-135m] [--threads 2] [--rounds 2] [--batch 16]

Builds llama.cpp once through the shared anchor script (../shared/bench/llamacpp-anchor.sh, or
$AUTOGLM_ANCHOR), then alternates llama-bench and `autoglm bench` ROUNDS times (A B A B ...) so
that both see the same machine conditions, and prints each figure's median over rounds and the
ratio ours / llama.cpp. With --batch B it also compares B sequences decoding together against
llama-batched-bench. Figures, not a pass/fail test: these machines are shared and noisy.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ANCHOR = os.environ.get("AUTOGLM_ANCHOR", os.path.join(ROOT, "..", "shared", "bench", "llamacpp-anchor.sh"))
AUTOGLM = os.path.join(ROOT, "target", "release", "autoglm")


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr[-2000:]}")
    return r.stdout


def llama_bench(path, threads):
    out = run(["bash", ANCHOR, "bench", path, str(threads)])
    figs = {}
    for line in out.splitlines():
        m = re.search(r"\|\s*(pp\d+|tg\d+)\s*\|\s*([\d.]+)", line)
        if m:
            figs[m.group(1)] = float(m.group(2))
    return figs


def llama_batched(path, threads, batch):
    out = run(["bash", ANCHOR, "batched", path, str(threads)])
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        # PP | TG | B | N_KV | T_PP s | S_PP t/s | T_TG s | S_TG t/s | T s | S t/s
        if len(cells) == 10 and cells[2] == str(batch):
            return float(cells[7])
    return None


def ours(model, threads, batch=0):
    args = [AUTOGLM, "bench", "-m", model, "-t", str(threads), "--json"]
    if batch:
        # after a 128-token prompt per sequence, as the anchor's llama-batched-bench -npp 128
        args += ["-p", "0", "--batch", str(batch), "--batch-prompt", "128", "-r", "3"]
    return json.loads(run(args).strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=0)
    a = ap.parse_args()

    if not os.path.exists(AUTOGLM):
        run(["cargo", "build", "--release", "-p", "autoglm-cli"])
    info = json.loads(run([AUTOGLM, "model", "info", a.model, "--json"]))
    path = info["path"]
    run(["bash", ANCHOR, "build"])

    rows = {"pp512": ([], []), "tg128": ([], [])}
    batch_rows = ([], [])
    for _ in range(a.rounds):
        ref = llama_bench(path, a.threads)
        got = ours(a.model, a.threads)
        rows["pp512"][0].append(ref.get("pp512"))
        rows["pp512"][1].append(got["pp_tok_s"])
        rows["tg128"][0].append(ref.get("tg128"))
        rows["tg128"][1].append(got["tg_tok_s"])
        if a.batch:
            batch_rows[0].append(llama_batched(path, a.threads, a.batch))
            batch_rows[1].append(ours(a.model, a.threads, a.batch)["batch_tg_tok_s"])

    print(f"{a.model}, {a.threads} threads, medians over {a.rounds} alternating rounds (llama.cpp: 5 reps each)")
    print(f"{'test':<14}{'llama.cpp':>12}{'autoglm':>12}{'ratio':>8}")
    table = list(rows.items())
    if a.batch:
        table.append((f"{a.batch}x tg", batch_rows))
    for name, (ref, got) in table:
        ref = [x for x in ref if x]
        got = [x for x in got if x]
        if not ref or not got:
            continue
        r, g = statistics.median(ref), statistics.median(got)
        print(f"{name:<14}{r:>12.1f}{g:>12.1f}{g / r:>7.2f}x")
    # Every round's figures, for judging the noise behind the medians.
    for name, (ref, got) in table:
        pairs = ", ".join(f"{x or 0:.1f}/{y or 0:.1f}" for x, y in zip(ref, got))
        print(f"  {name} by round (llama.cpp/autoglm): {pairs}")


if __name__ == "__main__":
    main()
