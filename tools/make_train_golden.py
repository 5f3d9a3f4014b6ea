#!/usr/bin/python3
"""Writes tests/data/golden_train/: the parameters PyTorch reaches after a number of updates of
`lstmgrad train`'s loop, run by the PyTorch twin (tools/awd_twin.py) on lstmgrad's own random
draws (tools/lstmgrad_draws.py: the initial parameters, the --bptt-jitter lengths, every mask),
for tests/test_train_golden.cpp (no Python at test time).

    /usr/bin/python3 tools/make_train_golden.py [--out tests/data/golden_train]

The gradient checks prove one update's gradient; this proves the loop around it, update for
update, against an implementation written from PyTorch's pieces: the corpus cut into streams, the
windows and the carried state, the learning-rate schedule and the jitter's scaling, each
update's fresh masks, the clip, weight decay, SGD (torch.optim.SGD) and averaged SGD
(torch.optim.ASGD, as AWD-LSTM uses it). What the loop does, as AWD-LSTM's main.py and
docs/cli.md say:
- B contiguous streams of floor(N/B) tokens; windows along them, the state carried from one to
  the next and zero at each epoch's start;
- --bptt-jitter: per window a length len (lstmgrad_draws.bptt_length) from the position where
  the last one ended, T = min(len, n - 1 - position) steps, the lr scaled by len / seq;
- without: windows of seq steps (the last one shorter);
- the lr of epoch e: lr / lr_decay^max(0, e - decay_after);
- --loss mean: CE averaged over the T x B targets (+ AR + TAR); batch_mean: that times T;
- the gradient's global norm clipped to --clip (torch.nn.utils.clip_grad_norm_), then the
  optimizer with --weight-decay.

Files: train.txt and valid.txt (the corpus, written here), and per case {case}.safetensors:
every parameter under lstmgrad's names after `max_steps` updates, `optimizer.ax` (the average,
in the layout's order) for averaged SGD, `losses` [max_steps] (each update's cross-entropy);
__metadata__: `flags` (the `lstmgrad train` flags of the case, --data excepted), `max_steps`,
`train_loss` (the epoch's mean cross-entropy per target at the stop, as metrics.jsonl's
train_loss), `generator`. float64 throughout.
"""

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import awd_twin  # noqa: E402
import lstmgrad_draws as draws  # noqa: E402
import safetensors_np  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "tests", "data", "golden_train")

AWD = ("--level word --embed 6 --layers 3 --hidden 8,10,6 --tie-weights --dropout-in 0.65 "
       "--dropout-hid 0.3 --dropout-out 0.4 --dropout-emb 0.1 --weight-drop 0.5 --ar 2 --tar 1 "
       "--weight-decay 1.2e-6 --batch 4 --seq 12 --bptt-jitter --clip 0.25 --init 0.1 "
       "--loss mean")
CASES = [
    # AWD-LSTM's recipe (its rates; SGD at lr 30, the phase before the switch), 2 epochs' worth,
    # AWD-LSTM's own initialisation (--init-scheme awd).
    dict(name="awd_sgd", flags=AWD + " --optimizer sgd --lr 30 --seed 3 --epochs 3 "
         "--init-scheme awd", max_steps=60),
    # The same with averaging from the first update (the phase after NT-ASGD's switch). At lr 30
    # on so small a model the loop is chaotic: rounding's 1e-16 grows ~1.4x an update, so the
    # comparison stops after 30.
    dict(name="awd_asgd", flags=AWD + " --optimizer asgd --lr 30 --seed 4 --epochs 3",
         max_steps=30),
    # Zaremba et al.'s recipe: dropout on the non-recurrent connections (masks per position),
    # the lr halved from epoch 2, loss summed over the steps.
    dict(name="zaremba", flags="--level word --embed 8 --layers 2 --hidden 8 --batch 4 --seq 10 "
         "--optimizer sgd --lr 1 --decay-after 1 --lr-decay 2 --clip 5 --init 0.1 --dropout 0.5 "
         "--loss batch_mean --seed 5 --epochs 3", max_steps=70),
    # The other cells: recurrent dropout, zoneout on h and s, per-layer sizes.
    dict(name="cells", flags="--level word --embed 6 --layers 2 --hidden 7,5 --dropout-rec 0.3 "
         "--zoneout-h 0.1 --zoneout-s 0.2 --dropout-hid 0.2 --batch 3 --seq 9 "
         "--optimizer sgd --lr 2 --clip 1 --init 0.1 --loss mean --seed 6 --epochs 3",
         max_steps=50),
    # Layer norm with them. Its loop is sensitive (two PyTorch runs whose initial parameters
    # differ by 1e-15 relative differ by 1e-4 after 20 updates at lr 2): a small lr keeps the
    # comparison meaningful over 40 updates.
    dict(name="layer_norm", flags="--level word --embed 6 --layers 2 --hidden 7,5 --layer-norm "
         "--dropout-rec 0.3 --zoneout-h 0.1 --zoneout-s 0.2 --batch 3 --seq 9 --optimizer sgd "
         "--lr 0.2 --clip 1 --init 0.1 --loss mean --seed 6 --epochs 3", max_steps=40),
]


def phrases(lines, seed):
    """tests/phrases.hpp's text, with a second sentence set so the vocabulary has some size."""
    words = ["the cat sat on the mat", "a dog ran in the park", "the bird sang at dawn",
             "a fox hid by the river", "my old clock stopped at noon", "we saw the fox run"]
    out = []
    for _ in range(lines):
        seed = (seed * 1103515245 + 12345) & 0xFFFFFFFF
        out.append(words[(seed >> 16) % len(words)])
    return "\n".join(out) + "\n"


def parse_flags(flags):
    toks = flags.split()
    o, i = {}, 0
    while i < len(toks):
        key = toks[i][2:]
        if i + 1 < len(toks) and not toks[i + 1].startswith("--"):
            o[key] = toks[i + 1]
            i += 2
        else:
            o[key] = True
            i += 1
    return o


def layout(V, E, hidden, out, tie, layer_norm):
    """parameter_layout (src/core/model.cpp): (name, shape) in the file's and the draws' order."""
    names = [("encoder.weight", (V, E))]
    for k, H in enumerate(hidden):
        n_in = E if k == 0 else out[k - 1]
        names += [(f"rnn.weight_ih_l{k}", (4 * H, n_in)), (f"rnn.weight_hh_l{k}", (4 * H, out[k])),
                  (f"rnn.bias_ih_l{k}", (4 * H,)), (f"rnn.bias_hh_l{k}", (4 * H,))]
        if layer_norm:
            for part, n in (("ih", 4 * H), ("hh", 4 * H), ("cell", H)):
                names += [(f"rnn.weight_ln_{part}_l{k}", (n,)), (f"rnn.bias_ln_{part}_l{k}", (n,))]
    if not tie:
        names.append(("decoder.weight", (V, out[-1])))
    names.append(("decoder.bias", (V,)))
    return names


def tensor(values, shape):
    return torch.tensor(values, dtype=torch.float64).reshape(shape)


def run_case(case, train_ids, V):
    o = parse_flags(case["flags"])
    f = lambda k, d=0.0: float(o.get(k, d))  # noqa: E731
    E, B, seq, seed = int(o["embed"]), int(o["batch"]), int(o["seq"]), int(o["seed"])
    L = int(o["layers"])
    hidden = [int(h) for h in str(o["hidden"]).split(",")]
    hidden = hidden * L if len(hidden) == 1 else hidden
    tie, layer_norm, jitter = "tie-weights" in o, "layer-norm" in o, "bptt-jitter" in o
    out = list(hidden)  # no --proj here: each layer's output is its cell width
    zh, zs = f("zoneout-h"), f("zoneout-s")
    twin = awd_twin.AwdTwin(V, E, hidden, tie=tie, dtype=torch.float64, init=f("init"),
                            zoneout_h=zh, zoneout_s=zs, layer_norm=layer_norm)
    names = layout(V, E, hidden, out, tie, layer_norm)
    assert [n for n, _ in names] == twin.names(), (twin.names(), names)

    # The initial parameters: one mt19937_64 draw each, in the layout's order; then layer norm
    # starts as the identity. --init-scheme awd: the LSTM's uniform(+-1/sqrt(H_k)), the readout
    # bias 0.
    rng = draws.Mt19937_64(seed)
    init, awd = f("init"), o.get("init-scheme") == "awd"
    params = {}
    for name, shape in names:
        n = int(np.prod(shape))
        ln = name.startswith("rnn.weight_ln_") or name.startswith("rnn.bias_ln_")
        r = init
        if awd and name.startswith("rnn.") and not ln:
            r = 1.0 / hidden[int(name.rsplit("_l", 1)[1])] ** 0.5
        v = [draws.uniform_real(rng, -r, r) for _ in range(n)]
        if name.startswith("rnn.weight_ln_"):
            v = [1.0] * n
        elif name.startswith("rnn.bias_ln_") or (awd and name == "decoder.bias"):
            v = [0.0] * n
        params[name] = tensor(v, shape).requires_grad_()
    twin.params = params
    plist = list(params.values())

    lr0, clip, wd = f("lr"), f("clip"), f("weight-decay")
    decay, after = f("lr-decay", 1.0), int(o.get("decay-after", 0))
    optimizer = o["optimizer"]
    if optimizer == "asgd":
        opt = torch.optim.ASGD(plist, lr=lr0, t0=0, lambd=0.0, weight_decay=wd)
    else:
        opt = torch.optim.SGD(plist, lr=lr0, weight_decay=wd)
    batch_mean = o["loss"] == "batch_mean"
    p_drop = f("dropout")
    regs = {k: f(k) for k in ("dropout-emb", "dropout-in", "dropout-hid", "dropout-out",
                              "weight-drop", "dropout-rec")}
    ar, tar = f("ar"), f("tar")

    n = len(train_ids) // B
    data = torch.tensor(train_ids[: n * B], dtype=torch.int64).view(B, n).t().contiguous()
    positions = n - 1
    windows = -(-positions // seq)
    steps, losses = 0, []
    epoch = 1
    epoch_sum = epoch_tokens = 0.0
    while steps < case["max_steps"]:
        h = s = None  # each epoch starts from zeros
        offset = window = 0
        epoch_sum = epoch_tokens = 0.0
        lr = lr0 / decay ** max(0, epoch - after)
        while (offset < positions if jitter else window < windows) and steps < case["max_steps"]:
            length = draws.bptt_length(rng, seq) if jitter else seq
            pos = offset if jitter else window * seq
            T = min(length, positions - pos)
            for g in opt.param_groups:
                g["lr"] = lr * length / seq if jitter else lr
            ms = draws.update_seed(seed, steps)
            masks = make_masks(ms, T, B, V, E, hidden, out, p_drop, regs, zh, zs)
            tokens, targets = data[pos : pos + T], data[pos + 1 : pos + 1 + T]
            h0 = None if h is None else [x.detach() for x in h]
            s0 = None if s is None else [x.detach() for x in s]
            loss, ce, h, s = twin.forward(tokens, targets, masks, ar, tar, h0, s0)
            if batch_mean:  # the per-step batch means summed over the steps
                loss, ce = loss * T, ce * T
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(plist, clip)
            opt.step()
            logged = float(ce)
            losses.append(logged)
            epoch_sum += logged * (B if batch_mean else T * B)
            epoch_tokens += T * B
            steps += 1
            offset += length
            window += 1
        epoch += 1
    result = {name: p.detach().numpy().copy() for name, p in params.items()}
    if optimizer == "asgd":
        result["optimizer.ax"] = np.concatenate(
            [opt.state[p]["ax"].detach().numpy().reshape(-1) for p in plist])
    result["losses"] = np.array(losses, dtype=np.float64)
    return result, epoch_sum / epoch_tokens


def make_masks(ms, T, B, V, E, hidden, out, p_drop, regs, zh, zs):
    """The masks of one update, as lstmgrad draws them (src/cpu/regularize.cpp, dropout.hpp)."""
    L = len(hidden)

    def locked(p, W, site):  # [B,W]: entry b*W + j
        return tensor(draws.mask(B * W, p, ms, site), (B, W)) if p > 0 else None

    if p_drop > 0:  # --dropout: a mask per position [T,B,W]; sites 0 (input) .. L (readout)
        per = lambda W, site: tensor(draws.mask(T * B * W, p_drop, ms, site), (T, B, W))  # noqa
        m = awd_twin.Masks(inp=per(E, 0), hid=[per(out[k], k + 1) for k in range(L - 1)],
                           out=per(out[-1], L))
        return m
    m = awd_twin.Masks(
        emb=tensor(draws.mask(V, regs["dropout-emb"], ms, draws.SITE_EMB), (V,))
        if regs["dropout-emb"] > 0 else None,
        inp=locked(regs["dropout-in"], E, draws.SITE_IN),
        hid=[locked(regs["dropout-hid"], out[k], draws.SITE_HID + k) for k in range(L - 1)]
        if regs["dropout-hid"] > 0 else None,
        out=locked(regs["dropout-out"], out[-1], draws.SITE_OUT),
        weight=[tensor(draws.mask(4 * H * P, regs["weight-drop"], ms, draws.SITE_WEIGHT + k),
                       (4 * H, P)) for k, (H, P) in enumerate(zip(hidden, out))]
        if regs["weight-drop"] > 0 else None,
        rec=[locked(regs["dropout-rec"], P, draws.SITE_REC + k) for k, P in enumerate(out)]
        if regs["dropout-rec"] > 0 else None)

    def zone(p, widths, site):  # [T,B,W] of 0/1, 1 (keep the old value) where dropout drops
        if p <= 0:
            return None
        return [tensor([1.0 if x == 0 else 0.0 for x in draws.mask(T * B * W, p, ms, site + k)],
                       (T, B, W)) for k, W in enumerate(widths)]

    m.zone_h, m.zone_s = zone(zh, out, draws.SITE_ZONE_H), zone(zs, hidden, draws.SITE_ZONE_S)
    return m


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=DEFAULT_OUT)
    a = ap.parse_args()
    torch.set_num_threads(1)
    # torch.optim.ASGD keeps its eta and mu in tensors of the default dtype: float32 by default,
    # which rounds mu = 1/3 at the 1e-8 level; float64 here, as lstmgrad computes them.
    torch.set_default_dtype(torch.float64)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "train.txt"), "w") as f:
        f.write(phrases(160, 11))
    with open(os.path.join(a.out, "valid.txt"), "w") as f:
        f.write(phrases(30, 12))
    vocab = {}
    train_ids = awd_twin.read_words(os.path.join(a.out, "train.txt"), vocab, True)
    for case in CASES:
        result, train_loss = run_case(case, train_ids, len(vocab))
        meta = {"flags": case["flags"], "max_steps": str(case["max_steps"]),
                "train_loss": repr(train_loss),
                "generator": f"tools/make_train_golden.py, torch {torch.__version__}"}
        path = os.path.join(a.out, f"{case['name']}.safetensors")
        safetensors_np.save(path, result, meta)
        print(f"{path}: {case['max_steps']} updates, losses {result['losses'][0]:.6f} -> "
              f"{result['losses'][-1]:.6f}, train_loss {train_loss:.10f}")


if __name__ == "__main__":
    main()
