#!/usr/bin/python3
"""lstmgrad.torch.LSTM against torch.nn.LSTM in one process: forward + backward of the LSTM alone,
and optionally a whole word-language-model training step (issue 15, docs/python.md).

    PYTHONPATH=build/python /usr/bin/python3 bench/torch_dropin.py \
        [--presets zaremba-small,zaremba-medium,char-rnn] [--torch-threads 1,2] \
        [--lstmgrad-threads 0] [--runs 20] [--warmup 3] [--settle 0.25] [--lm-step [--block 5]]
        [--no-input-grad] [--alone [--against-bench --rounds 5]] [--lm-only MODULE] [--parts]
        [--tiny] [--json]

fwdbwd: forward with autograd over x [T,B,X] (requires_grad, as a layer inside a model has; not
with --no-input-grad, as `lstmgrad bench` runs it), then backward of a fixed dL/dy; both modules
hold the same weights, float32 unless --dtype float64. Each (module, torch threads) pair is timed
as the median of --runs after --warmup; the modules alternate run by run so that a change in
machine load touches both, and each timed run starts --settle seconds after the last one ended:
Debian's torch calls OpenBLAS, whose worker threads spin about 0.1 s after each call
(OPENBLAS_THREAD_TIMEOUT), on the cores the next run needs; without the pause the module that
runs after nn.LSTM shares the machine with them (lstmgrad's zaremba-medium fwdbwd measured 112 ms
so, 85 ms alone).
lm_step (--lm-step, presets that have it): Embedding -> LSTM -> Linear(H, 10000) -> cross-entropy
-> backward -> SGD step, timed as a training loop runs it: in each of --runs rounds each module
runs --block + 1 steps back to back, the first untimed (it follows the other module's); the
median of the timed steps. No pause: in a loop torch's spinning OpenBLAS workers from one step's
GEMMs run beside the next step's LSTM, and a step after an idle pause starts on idle vCPUs (on
this VM a zaremba-small forward took 6.4 ms after 0.25 s idle, 3.1 ms in a loop).
--lm-only MODULE (nn.LSTM or lstmgrad): that module's LM step alone in this process, as a user's
training loop runs it (--runs rounds of --block steps); in one process the two modules share
glibc's heap, and each one's frees move the thresholds at which the other's memory goes back to
the kernel (docs/python.md, "Speed").
--torch-threads: torch.set_num_threads for each measurement (PyTorch's best setting is the
fastest of the list); --lstmgrad-threads: the engine's threads (0: its own choice, up to
OMP_NUM_THREADS). --alone: lstmgrad.torch.LSTM's fwdbwd only, as a hot loop (no pause, no
nn.LSTM beside it), what `lstmgrad bench --mode fwdbwd` times of the engine alone: the wrapper's
cost. --against-bench (with --alone): that hot loop and `lstmgrad bench`'s own timing of the preset
(lstmgrad._core.bench: the command line's code, the default team split for the machine's cores)
alternate in this one process, --rounds times, so that what differs from process to process
(memory layout, which core is whose) touches both. --tiny: small shapes, a check that the script
runs (no meaningful times).
"""

import argparse
import json
import statistics
import sys
import time

import torch

import lstmgrad.torch as lt
from lstmgrad import _core

PRESETS = {  # name: (T, B, X, H, L, has lm_step) as in `lstmgrad bench`
    "zaremba-small": (35, 20, 200, 200, 2, True),
    "zaremba-medium": (35, 20, 650, 650, 2, True),
    "char-rnn": (50, 50, 65, 512, 2, False),
}
TINY = {"tiny": (5, 3, 7, 8, 2, True)}
V = 10000


def fwdbwd_step(module, x, gy):
    def step():
        y, _ = module(x)
        y.backward(gy)
        x.grad = None
        for p in module.parameters():
            p.grad = None

    return step


LM_PARTS = ("embedding", "lstm fwd", "readout+loss fwd", "readout bwd", "lstm bwd",
            "embedding bwd", "sgd")


def lm_step(rnn, X, H, tokens, targets, v, dtype, parts=None):
    """One training step of Embedding(v, X) -> rnn -> Linear(H, v), the two layers drawn from
    seed 1 (the same for every module); with `parts` (a list), each step appends the seconds of
    its LM_PARTS (the backward's parts are cut by hooks on the LSTM's output and input
    gradients)."""
    torch.manual_seed(1)
    emb = torch.nn.Embedding(v, X).to(dtype)
    dec = torch.nn.Linear(H, v).to(dtype)
    params = [*emb.parameters(), *rnn.parameters(), *dec.parameters()]
    opt = torch.optim.SGD(params, lr=0.1)

    def step(timed=True):
        t = [time.perf_counter()]
        e = emb(tokens)
        t.append(time.perf_counter())
        out, _ = rnn(e)
        t.append(time.perf_counter())
        loss = torch.nn.functional.cross_entropy(dec(out).reshape(-1, v), targets.reshape(-1))
        t.append(time.perf_counter())
        if parts is not None:
            out.register_hook(lambda g: t.append(time.perf_counter()))
            e.register_hook(lambda g: t.append(time.perf_counter()))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if parts is not None:
            t.append(time.perf_counter())
        opt.step()
        if parts is not None and timed:
            t.append(time.perf_counter())
            parts.append([b - a for a, b in zip(t, t[1:])])

    return step


def time_blocks(steps, warmup, runs, block):
    """Median seconds of each training step as a training loop runs it: `runs` rounds in which
    each step function in turn runs block + 1 times back to back, the first untimed (it follows
    the other module's steps), so that a change in machine load touches both. Each step function
    takes `timed` (False for the warm-up and the untimed ones)."""
    for s in steps:
        for _ in range(warmup):
            s(timed=False)
    times = [[] for _ in steps]
    for _ in range(runs):
        for k, s in enumerate(steps):
            s(timed=False)
            for _ in range(block):
                t0 = time.perf_counter()
                s()
                times[k].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def time_pair(steps, warmup, runs, settle):
    """Median seconds of each step, alternating between them run by run, each timed run after
    `settle` seconds of quiet."""
    for s in steps:
        for _ in range(warmup):
            s()
    times = [[] for _ in steps]
    for _ in range(runs):
        for k, s in enumerate(steps):
            time.sleep(settle)
            t0 = time.perf_counter()
            s()
            times[k].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default=",".join(PRESETS))
    p.add_argument("--torch-threads", default=str(torch.get_num_threads()),
                   help="comma-separated torch.set_num_threads values to try")
    p.add_argument("--lstmgrad-threads", type=int, default=0)
    p.add_argument("--runs", type=int, default=20,
                   help="timed fwdbwd runs per module; rounds of --block LM steps")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--settle", type=float, default=0.25,
                   help="seconds of quiet before each timed fwdbwd run (the other side's threads "
                        "asleep); LM steps run back to back")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--lm-step", action="store_true", help="also time the language-model step")
    p.add_argument("--block", type=int, default=5,
                   help="timed language-model steps back to back per module and run")
    p.add_argument("--no-input-grad", action="store_true",
                   help="x needs no gradient (as in `lstmgrad bench` fwdbwd: the wrapper's overhead)")
    p.add_argument("--alone", action="store_true",
                   help="lstmgrad's fwdbwd alone in a hot loop (the wrapper's cost)")
    p.add_argument("--against-bench", action="store_true",
                   help="with --alone: alternate with `lstmgrad bench`'s own timing of the same "
                   "preset (lstmgrad._core.bench, the command line's code) in this process, "
                   "--rounds times; the ratio of the medians is the wrapper's cost")
    p.add_argument("--rounds", type=int, default=5, help="rounds of --against-bench")
    p.add_argument("--lm-only", choices=["nn.LSTM", "lstmgrad"],
                   help="only this module's language-model step, alone in this process")
    p.add_argument("--parts", action="store_true",
                   help="with --lm-step: also the median of each part of the step, per module")
    p.add_argument("--tiny", action="store_true", help="tiny shapes: check that the script runs")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    a = p.parse_args()
    if a.against_bench and (a.tiny or not a.alone):
        p.error("--against-bench needs --alone and a preset of `lstmgrad bench` (not --tiny)")
    if a.lm_only and (a.alone or a.parts):
        p.error("--lm-only times one module's LM step: not with --alone or --parts")
    dtype = getattr(torch, a.dtype)
    presets = TINY if a.tiny else {n: PRESETS[n] for n in a.presets.split(",")}
    lt.set_num_threads(a.lstmgrad_threads)
    for name, (T, B, X, H, L, has_lm) in presets.items():
        torch.manual_seed(0)
        ref = torch.nn.LSTM(X, H, L).to(dtype)
        mine = lt.LSTM(X, H, L).to(dtype)
        mine.load_state_dict(ref.state_dict())
        x = torch.randn(T, B, X, dtype=dtype, requires_grad=not a.no_input_grad)
        gy = torch.randn(T, B, H, dtype=dtype)
        if a.against_bench:  # with --alone (checked above)
            mods, engs = [], []
            for _ in range(a.rounds):
                (t_mine,) = time_pair([fwdbwd_step(mine, x, gy)], a.warmup, a.runs, 0.0)
                mods.append(1e3 * t_mine)
                engs.append(_core.bench(name, "fwdbwd", a.runs, a.warmup, a.lstmgrad_threads,
                                        lt._machine_threads())["ms"])
            m, e = statistics.median(mods), statistics.median(engs)
            r = dict(preset=name, mode="wrapper_cost", dtype=a.dtype, lstmgrad_ms=mods,
                     bench_ms=engs, ratio=m / e, runs=a.runs, rounds=a.rounds)
            print(json.dumps(r) if a.json else
                  f"{name:15s} wrapper's cost in one process: module {m:.2f} ms, `lstmgrad bench` "
                  f"{e:.2f} ms, {100 * (m / e - 1):+.1f}% (rounds " +
                  ", ".join(f"{u / v:.3f}" for u, v in zip(mods, engs)) + ")")
            continue
        if a.alone:
            (t_mine,) = time_pair([fwdbwd_step(mine, x, gy)], a.warmup, a.runs, 0.0)
            r = dict(preset=name, mode="fwdbwd_alone", dtype=a.dtype,
                     lstmgrad_threads=a.lstmgrad_threads, lstmgrad_ms=1e3 * t_mine, runs=a.runs)
            print(json.dumps(r) if a.json else
                  f"{name:15s} fwdbwd alone: lstmgrad {1e3 * t_mine:9.2f} ms")
            continue
        v = 50 if a.tiny else V  # the language model's words, its input and targets
        tokens = torch.randint(0, v, (T, B))
        targets = torch.randint(0, v, (T, B))
        for tt in (int(s) for s in a.torch_threads.split(",")):
            torch.set_num_threads(tt)
            if a.lm_only:
                if not has_lm:
                    continue
                rnn = ref if a.lm_only == "nn.LSTM" else mine
                (t,) = time_blocks([lm_step(rnn, X, H, tokens, targets, v, dtype)], a.warmup,
                                   a.runs, a.block)
                r = dict(preset=name, mode="lm_step_alone", module=a.lm_only, dtype=a.dtype,
                         torch_threads=tt, lstmgrad_threads=a.lstmgrad_threads, ms=1e3 * t,
                         runs=a.runs)
                print(json.dumps(r) if a.json else
                      f"{name:15s} lm_step alone, torch threads {tt}: {a.lm_only} {1e3 * t:.2f} ms")
                sys.stdout.flush()
                continue
            rows = [("fwdbwd", *time_pair([fwdbwd_step(ref, x, gy), fwdbwd_step(mine, x, gy)],
                                          a.warmup, a.runs, a.settle))]
            if a.lm_step and has_lm:
                steps, parts = [], ([], [])
                for rnn, part in zip((ref, mine), parts):
                    steps.append(lm_step(rnn, X, H, tokens, targets, v, dtype,
                                         part if a.parts else None))
                rows.append(("lm_step", *time_blocks(steps, a.warmup, a.runs, a.block)))
                for who, part in zip(("nn.LSTM", "lstmgrad"), parts if a.parts else ()):
                    ms = {n: 1e3 * statistics.median(r[k] for r in part)
                          for k, n in enumerate(LM_PARTS)}
                    if a.json:
                        print(json.dumps(dict(preset=name, mode="lm_step_parts", module=who,
                                              torch_threads=tt, parts_ms=ms)))
                    else:
                        print(f"{name:15s} lm_step parts, torch threads {tt}, {who}: " +
                              ", ".join(f"{n} {t:.2f}" for n, t in ms.items()) + " ms")
            for mode, t_ref, t_mine in rows:
                r = dict(preset=name, mode=mode, dtype=a.dtype, torch_threads=tt,
                         lstmgrad_threads=a.lstmgrad_threads, nn_lstm_ms=1e3 * t_ref,
                         lstmgrad_ms=1e3 * t_mine, speedup=t_ref / t_mine, runs=a.runs)
                if a.json:
                    print(json.dumps(r))
                else:
                    print(f"{name:15s} {mode:7s} torch threads {tt:2d}: nn.LSTM {1e3 * t_ref:9.2f} ms"
                          f"  lstmgrad {1e3 * t_mine:9.2f} ms  speedup {t_ref / t_mine:5.2f}x")
                sys.stdout.flush()


if __name__ == "__main__":
    main()
