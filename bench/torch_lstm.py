#!/usr/bin/python3
"""PyTorch side of `lstmgrad bench` (docs/benchmarks.md): the same presets, modes and JSON keys.

fwd: nn.LSTM forward under torch.no_grad() (PyTorch's fastest forward, an inference forward:
compare.sh sets it beside lstmgrad's infer too; lstmgrad's fwd also saves what backward needs).
fwdbwd: forward with autograd, then backward of a fixed dL/dh, with dL/dx (x.requires_grad, as
lstmgrad's and oneDNN's fwdbwd compute it). lm_step: Embedding -> LSTM -> Linear(H, 10000) ->
cross-entropy (mean) -> backward -> SGD step, zero_grad(set_to_none=True). float32 throughout.

BLAS threads are fixed by the environment before torch loads (OPENBLAS_NUM_THREADS): run once per
setting, as bench/compare.sh does. Warm-up runs, then the median of the timed runs.
"""
import argparse
import json
import re
import statistics
import sys
import time

import torch

PRESETS = {  # name: (T, B, X, H, L, lm_step)
    "zaremba-small": (35, 20, 200, 200, 2, True),
    "zaremba-medium": (35, 20, 650, 650, 2, True),
    "char-rnn": (50, 50, 65, 512, 2, False),
    "throughput": (100, 64, 512, 512, 1, False),
    "large": (50, 128, 1024, 1024, 1, False),
}
V = 10000


def peak_rss_mb():
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1)) / 1024.0


def reset_peak_rss():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def median_ms(step, warmup, runs):
    for _ in range(warmup):
        step()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def stack_flops_per_token(T, B, X, H, L):
    return sum(2.0 * 4 * H * ((X if k == 0 else H) + H) for k in range(L))


def run(name, mode, warmup, runs):
    T, B, X, H, L, _ = PRESETS[name]
    torch.manual_seed(5)
    reset_peak_rss()
    flops = stack_flops_per_token(T, B, X, H, L)
    if mode in ("fwd", "fwdbwd"):
        lstm = torch.nn.LSTM(X, H, L)
        x = torch.rand(T, B, X) * 2 - 1
        if mode == "fwdbwd":
            x.requires_grad_(True)
        dh = torch.rand(T, B, H) * 2 - 1
        if mode == "fwd":
            def step():
                with torch.no_grad():
                    lstm(x)
        else:
            flops *= 3

            def step():
                for p in lstm.parameters():
                    p.grad = None
                x.grad = None
                out, _ = lstm(x)
                out.backward(dh)
    else:
        emb = torch.nn.Embedding(V, X)
        lstm = torch.nn.LSTM(X, H, L)
        dec = torch.nn.Linear(H, V)
        params = list(emb.parameters()) + list(lstm.parameters()) + list(dec.parameters())
        opt = torch.optim.SGD(params, lr=1e-3)
        loss_fn = torch.nn.CrossEntropyLoss()
        tokens = torch.randint(0, V, (T, B))
        target = torch.randint(0, V, (T * B,))
        flops = 3 * (flops + 2.0 * V * H)

        def step():
            opt.zero_grad(set_to_none=True)
            out, _ = lstm(emb(tokens))
            loss = loss_fn(dec(out.reshape(T * B, H)), target)
            loss.backward()
            opt.step()
    ms = median_ms(step, warmup, runs)
    tokens = T * B
    return {
        "preset": name,
        "mode": mode,
        "threads": torch.get_num_threads(),
        "blas_threads": int(__import__("os").environ.get("OPENBLAS_NUM_THREADS", "0")),
        "ms": ms,
        "tokens_per_s": tokens / (ms / 1e3),
        "gflops": flops * tokens / (ms / 1e3) / 1e9,
        "peak_rss_mb": peak_rss_mb(),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), help="one preset (default: all)")
    ap.add_argument("--mode", default="all", choices=["all", "fwd", "fwdbwd", "lm_step"])
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    out = []
    for name in [a.preset] if a.preset else list(PRESETS):
        for mode in ("fwd", "fwdbwd", "lm_step"):
            if a.mode not in ("all", mode) or (mode == "lm_step" and not PRESETS[name][5]):
                continue
            r = run(name, mode, a.warmup, a.runs)
            out.append(r)
            if not a.json:
                print(f"{r['preset']:<15} {r['mode']:<8} {r['threads']:>3}x{r['blas_threads']:<3}"
                      f" {r['ms']:>10.2f} {r['tokens_per_s']:>12.0f} {r['gflops']:>9.1f}"
                      f" {r['peak_rss_mb']:>9.1f}", flush=True)
    if a.json:
        json.dump(out, sys.stdout, indent=1)
        print()


if __name__ == "__main__":
    main()
