#!/usr/bin/env python3
"""cuDNN side of `lstmgrad bench --device cuda`: PyTorch's nn.LSTM on the same presets and modes.

What it measures (float32, time-major input x [T,B,X], weights nn.LSTM's default
uniform(-1/sqrt(H), 1/sqrt(H)), inputs uniform(-1, 1)):
  fwd      the training-mode forward (module.train(), autograd recording): y [T,B,H], h_n, c_n.
  fwdbwd   that forward, then y.backward(dy) for a fixed random dy [T,B,H]; x requires grad, so
           dL/dx is computed too. Parameter and input grads are set to None before each run.
  lm_step  (zaremba-small, zaremba-medium) as PyTorch's word_language_model: Embedding(10000, X)
           -> LSTM(X, H, L) -> Linear(H, 10000) -> cross-entropy (mean over T*B) against random
           targets -> backward -> SGD p -= 1e-3 * grad under no_grad, grads set to None.

TF32 is off (torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32 are False);
torch.backends.cudnn.benchmark is left at its default (False). Three input sets are rotated so
caches do not flatter. On CUDA each run is timed with a pair of CUDA events after --warmup untimed
runs; --device cpu (smoke test only) uses time.perf_counter. The median of --runs is reported.

Run, on the GPU machine, from the repository root:
  python3 bench/cudnn_lstm.py --lstmgrad build/lstmgrad --out results.json
--lstmgrad PATH also runs `PATH bench --device cuda --json ...` and prints
ratio = cudnn ms / lstmgrad ms (above 1 means lstmgrad is faster). Works with PyTorch 1.13 and 2.x.
"""
import argparse
import json
import platform
import statistics
import subprocess
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

PRESETS = {  # name: (T, B, X, H, L)
    "zaremba-small": (35, 20, 200, 200, 2),
    "zaremba-medium": (35, 20, 650, 650, 2),
    "char-rnn": (50, 50, 65, 512, 2),
    "throughput": (100, 64, 512, 512, 1),
    "large": (50, 128, 1024, 1024, 1),
    "big-batch": (100, 256, 1024, 1024, 2),
}
LM_PRESETS = ("zaremba-small", "zaremba-medium")
MODES = ("fwd", "fwdbwd", "lm_step")
VOCAB, LR, NSETS = 10000, 1e-3, 3


def uniform(shape, dev, lo=-1.0, hi=1.0):
    return torch.empty(*shape, device=dev).uniform_(lo, hi)


def make_step(preset, mode, dev):
    """Builds the model and 3 input sets; returns a closure that runs one step on the next set."""
    T, B, X, H, L = PRESETS[preset]
    lstm = nn.LSTM(X, H, L).to(dev).train()  # default init: uniform(-1/sqrt(H), 1/sqrt(H))
    k = [0]

    def next_set(sets):
        k[0] = (k[0] + 1) % NSETS
        return sets[k[0]]

    if mode in ("fwd", "fwdbwd"):
        xs = [uniform((T, B, X), dev).requires_grad_(mode == "fwdbwd") for _ in range(NSETS)]
        dy = uniform((T, B, H), dev)
        params = list(lstm.parameters())

        def step():
            x = next_set(xs)
            if mode == "fwd":
                lstm(x)  # y, (h_n, c_n); the graph is built, then dropped
                return
            for p in params:
                p.grad = None
            x.grad = None
            y, _ = lstm(x)
            y.backward(dy)
        return step

    emb, dec = nn.Embedding(VOCAB, X).to(dev), nn.Linear(H, VOCAB).to(dev)
    params = list(emb.parameters()) + list(lstm.parameters()) + list(dec.parameters())
    sets = [(torch.randint(0, VOCAB, (T, B), device=dev),
             torch.randint(0, VOCAB, (T * B,), device=dev)) for _ in range(NSETS)]

    def step():
        tokens, targets = next_set(sets)
        y, _ = lstm(emb(tokens))
        loss = F.cross_entropy(dec(y).view(T * B, VOCAB), targets)
        loss.backward()
        with torch.no_grad():
            for p in params:
                p.add_(p.grad, alpha=-LR)
                p.grad = None
    return step


def time_ms(step, dev, warmup, runs):
    """Per-run times in ms: CUDA event pairs on the GPU, perf_counter on the CPU."""
    for _ in range(warmup):
        step()
    if dev.type != "cuda":
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            step()
            times.append((time.perf_counter() - t0) * 1e3)
        return times
    torch.cuda.synchronize(dev)
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(runs)]
    for start, end in events:
        start.record()
        step()
        end.record()
    torch.cuda.synchronize(dev)
    return [start.elapsed_time(end) for start, end in events]


def environment(dev):
    cuda = dev.type == "cuda"
    return {"torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if cuda else None,
            "device": torch.cuda.get_device_name(dev) if cuda else platform.processor() or "cpu",
            "allow_tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "allow_tf32_cudnn": torch.backends.cudnn.allow_tf32,
            "cudnn_benchmark": torch.backends.cudnn.benchmark, "python": platform.python_version()}


def run_lstmgrad(args):
    """Runs `lstmgrad bench --json` with the same cases; returns its list of records."""
    cmd = [args.lstmgrad, "bench", "--device", args.device, "--json",
           "--runs", str(args.runs), "--warmup", str(args.warmup)]
    if args.preset:
        cmd += ["--preset", args.preset]
    if args.mode != "all":
        cmd += ["--mode", args.mode]
    print("running: " + " ".join(cmd), file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"lstmgrad exited with {proc.returncode}: {proc.stderr.strip()}")
    out = proc.stdout
    return json.loads(out[out.index("["):])  # tolerate any banner before the JSON list


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--preset", choices=sorted(PRESETS), help="one preset (default: all)")
    ap.add_argument("--mode", default="all", choices=MODES + ("all",))
    ap.add_argument("--runs", type=int, default=50, help="timed runs (the median is reported)")
    ap.add_argument("--warmup", type=int, default=10, help="untimed runs first")
    ap.add_argument("--json", action="store_true", help="a JSON list of records, not the table")
    ap.add_argument("--lstmgrad", metavar="PATH", help="also run PATH bench and compare")
    ap.add_argument("--out", metavar="FILE", help="write records, both sides, environment here")
    args = ap.parse_args()
    if args.runs < 1 or args.warmup < 0:
        ap.error("--runs must be >= 1 and --warmup >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("cudnn_lstm.py: --device cuda but torch.cuda.is_available() is False")

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    dev = torch.device(args.device)
    env = environment(dev)
    if not args.json:
        print(f"# device {env['device']}, torch {env['torch']}, CUDA {env['cuda']}, "
              f"cuDNN {env['cudnn']}, TF32 off", flush=True)
        print(f"{'preset':<15} {'mode':<8} {'ms':>10} {'tokens/s':>12}", flush=True)

    records = []
    for preset in ([args.preset] if args.preset else list(PRESETS)):
        T, B, X, H, L = PRESETS[preset]
        for mode in MODES:
            if args.mode not in ("all", mode) or (mode == "lm_step" and preset not in LM_PRESETS):
                continue
            times = time_ms(make_step(preset, mode, dev), dev, args.warmup, args.runs)
            ms = statistics.median(times)
            r = {"preset": preset, "mode": mode, "T": T, "B": B, "X": X, "H": H, "L": L,
                 "ms": ms, "ms_min": min(times), "tokens_per_s": T * B / (ms / 1e3),
                 "runs": args.runs}
            records.append(r)
            if not args.json:
                print(f"{preset:<15} {mode:<8} {ms:>10.3f} {r['tokens_per_s']:>12.0f}", flush=True)
            if dev.type == "cuda":
                torch.cuda.empty_cache()

    theirs, error = [], None
    if args.lstmgrad:
        try:
            theirs = run_lstmgrad(args)
        except (OSError, RuntimeError, ValueError) as e:
            error = str(e)
            print(f"cudnn_lstm.py: lstmgrad failed: {error}", file=sys.stderr, flush=True)
        by_case = {(t["preset"], t["mode"]): t["ms"] for t in theirs}
        for r in records:
            lg = by_case.get((r["preset"], r["mode"]))
            r["lstmgrad_ms"], r["ratio"] = lg, (r["ms"] / lg if lg else None)  # None: no such case
        if not args.json:
            print(f"\n{'preset':<15} {'mode':<8} {'cudnn ms':>10} {'lstmgrad ms':>12} "
                  f"{'ratio':>7}", flush=True)
            for r in records:
                lg, ratio = r["lstmgrad_ms"], r["ratio"]
                lg = f"{'-':>12}" if lg is None else f"{lg:>12.3f}"
                ratio = f"{'-':>7}" if ratio is None else f"{ratio:>7.2f}"
                print(f"{r['preset']:<15} {r['mode']:<8} {r['ms']:>10.3f} {lg} {ratio}", flush=True)
            print("ratio = cudnn ms / lstmgrad ms (above 1: lstmgrad is faster)", flush=True)
    if args.json:
        print(json.dumps(records, indent=1), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"environment": env, "cudnn": records, "lstmgrad": theirs,
                       "lstmgrad_error": error}, f, indent=1)
    if error:
        sys.exit(1)


if __name__ == "__main__":
    main()
