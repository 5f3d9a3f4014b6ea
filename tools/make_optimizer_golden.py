#!/usr/bin/env python3
"""Golden trajectories of torch.optim's SGD, ASGD and Adam with weight decay and clipping.

    /usr/bin/python3 tools/make_optimizer_golden.py [--out tests/data/optimizer]

Each case runs the optimizer on a fixed sequence of gradients (not the gradients of a model: the
optimizer alone is under test) over two parameter tensors, in float64
(torch.set_default_dtype(torch.float64), so that ASGD's eta and mu are float64 too), as a
training step of lstmgrad does it: torch.nn.utils.clip_grad_norm_ over both tensors, then
optimizer.step(). The learning rate changes from step to step (as --bptt-jitter changes it),
which shows ASGD's order: its update uses the lr given to the step before. The `nt_asgd` case
runs SGD first and then, from step `switch`, a new torch.optim.ASGD(t0=0, lambd=0), as AWD-LSTM's
main.py switches. tests/test_optimizer.cpp replays the same gradients through
lstmgrad::Optimizer and compares within 1e-12 relative.

Each file (safetensors, F64):
  p0 [n]          the parameters before the first step (the two tensors flattened, in order)
  grads [S, n]    the gradient given at each step (before clipping)
  lr [S]          the learning rate of each step
  params [S, n]   the parameters after each step
  ax [S, n]       ASGD's average after each step (0 before the switch); nt_asgd only
  __metadata__    kind, weight_decay, clip, switch (the first ASGD step, 0-based; nt_asgd)
"""

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_np  # noqa: E402

SHAPES = [(5, 3), (7,)]
STEPS = 14


def run_case(name, kind, weight_decay, clip, switch=None):
    torch.manual_seed(sum(map(ord, name)))
    params = [torch.nn.Parameter(torch.empty(s).uniform_(-1, 1)) for s in SHAPES]
    p0 = torch.cat([p.detach().flatten() for p in params]).numpy().copy()
    # Gradient scales from 0.05 to 3: clipping (at `clip`) is active at some steps, not at others.
    scales = torch.linspace(0.05, 3.0, STEPS)[torch.randperm(STEPS)]
    grads = [[torch.randn(s) * scales[t] for s in SHAPES] for t in range(STEPS)]
    # Like lr * seq_len / bptt for BPTT lengths around 70 (AWD-LSTM's lr 30).
    lrs = [30.0 * float(torch.randint(55, 86, ()).item()) / 70.0 for _ in range(STEPS)]
    if kind == "adam":
        lrs = [lr / 3000 for lr in lrs]

    def make(k, lr):
        if k == "sgd":
            return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
        if k == "asgd":
            return torch.optim.ASGD(params, lr=lr, t0=0, lambd=0.0, weight_decay=weight_decay)
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)

    opt = make("sgd" if kind == "nt_asgd" else kind, lrs[0])
    out_p, out_ax = [], []
    for t in range(STEPS):
        if kind == "nt_asgd" and t == switch:
            opt = make("asgd", lrs[t])
        for p, g in zip(params, grads[t]):
            p.grad = g.clone()
        torch.nn.utils.clip_grad_norm_(params, clip)
        for group in opt.param_groups:
            group["lr"] = lrs[t]
        opt.step()
        out_p.append(torch.cat([p.detach().flatten() for p in params]).numpy().copy())
        if kind == "nt_asgd":
            if "ax" in opt.state[params[0]]:
                out_ax.append(torch.cat([opt.state[p]["ax"].flatten() for p in params]).numpy())
            else:
                out_ax.append(np.zeros_like(p0))
    tensors = {
        "p0": p0,
        "grads": np.stack([torch.cat([g.flatten() for g in gs]).numpy() for gs in grads]),
        "lr": np.array(lrs),
        "params": np.stack(out_p),
    }
    meta = {"kind": kind, "weight_decay": repr(weight_decay), "clip": repr(clip),
            "torch": torch.__version__}
    if kind == "nt_asgd":
        tensors["ax"] = np.stack(out_ax).copy()
        meta["switch"] = str(switch)
    return tensors, meta


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests",
                                                  "data", "optimizer"))
    args = ap.parse_args()
    torch.set_default_dtype(torch.float64)
    os.makedirs(args.out, exist_ok=True)
    cases = [
        ("sgd_decay_clip", "sgd", 1.2e-2, 1.0, None),
        ("nt_asgd", "nt_asgd", 1.2e-2, 1.0, 4),
        ("asgd_no_decay", "nt_asgd", 0.0, 1.0, 0),
        ("adam_decay_clip", "adam", 1.2e-2, 1.0, None),
    ]
    for name, kind, wd, clip, switch in cases:
        tensors, meta = run_case(name, kind, wd, clip, switch)
        safetensors_np.save(os.path.join(args.out, name + ".safetensors"), tensors, meta)
        print(name, "written")


if __name__ == "__main__":
    main()
