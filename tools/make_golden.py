#!/usr/bin/python3
"""Writes the PyTorch golden files under tests/data/golden/, so that the C++ tests check every
gradient of lstmgrad against PyTorch's autograd with no Python in CI.

    /usr/bin/python3 tools/make_golden.py [--out tests/data/golden] [--selftest] [--no-write]

Each case folder holds model.safetensors, batch.safetensors and expected.safetensors (the
gradient file `lstmgrad grad` writes); sgd/ holds a 10-step loss trajectory. The model, loss and
file layouts are those of tools/torch_roundtrip.py (see docs/interop.md); everything is float64
and seeded, so a rerun writes the same bytes (on the same torch and numpy).

--selftest reads every file back and checks it four ways: the files are the bytes this script
writes; a model rebuilt from model.safetensors gives expected.safetensors again; an independent
numpy LSTM (the handout's equations, gate blocks i, f, g, o) gives the same loss and final states,
and its central finite differences give every gradient; and torch.autograd.gradcheck passes on
the `handout` case. --no-write skips writing (checks the files already there).
"""

import argparse
import filecmp
import json
import os
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_np  # noqa: E402
import torch_roundtrip as rt  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "tests", "data", "golden")
MAX_FILE_BYTES = 50 * 1024

# name, input, readout, targets, L, T, B, V, X, H, reduction, non-zero h0/s0, what it covers.
# X is the dense width or the embedding width E; V = H for the identity readout.
CASES = [
    dict(name="handout", input="dense", readout="identity", targets="soft", L=1, T=3, B=2, V=3, X=2, H=3,
         reduction="mean", state=True,
         covers="the handout's model: p = softmax(h), dense x, soft targets y, initial state given"),
    dict(name="embed_class_sum", input="embedding", readout="linear", targets="class", L=2, T=5, B=3, V=7,
         X=4, H=5, reduction="sum", state=False,
         covers="language model: embedding, 2 layers, linear readout, class targets, sum"),
    dict(name="deep_long", input="embedding", readout="linear", targets="class", L=3, T=20, B=4, V=11, X=6,
         H=8, reduction="mean", state=True,
         covers="3 layers, 20 steps (long BPTT through s and h), initial state given"),
    dict(name="tiny", input="dense", readout="linear", targets="class", L=2, T=1, B=1, V=3, X=1, H=1,
         reduction="mean", state=False,
         covers="every size 1 (T=1: no recurrence; H=1, X=1, B=1): index and stride slips"),
    dict(name="embed_soft", input="embedding", readout="linear", targets="soft", L=1, T=7, B=4, V=5, X=3, H=4,
         reduction="sum", state=True,
         covers="soft targets with the linear readout, sum, initial state given"),
    dict(name="identity_class", input="dense", readout="identity", targets="class", L=2, T=10, B=2, V=4, X=3,
         H=4, reduction="mean", state=False,
         covers="identity readout over 2 layers, class targets, dense-input gradient through 2 layers"),
    dict(name="zaremba_scale", input="embedding", readout="linear", targets="class", L=2, T=6, B=3, V=9, X=5,
         H=5, reduction="batch_mean", state=False,
         covers="batch_mean reduction (sum over T of the mean over B = sum / B)"),
    dict(name="peephole", input="embedding", readout="linear", targets="class", L=2, T=8, B=3, V=7, X=4, H=5,
         reduction="mean", state=True, peephole=True,
         covers="peepholes (the functional twin): rnn.weight_peephole_l{k}, s feeding i, f, o, initial state"),
]
SGD = dict(name="sgd", input="embedding", readout="linear", targets="class", L=2, T=5, B=3, V=7, X=4, H=5,
           reduction="mean", state=False, lr=0.5, steps=10,
           covers="10 plain SGD steps p -= 0.5 * grad on one batch (embed_class_sum's shapes, mean)")


def _config(case):
    cfg = {k: case[k] for k in ("input", "readout", "V", "X", "H", "L")}
    if case.get("peephole"):
        cfg["peephole"] = True
    return cfg


def _seed(case):
    # A stable seed per case name (Python's hash() is salted per process).
    return int.from_bytes(case["name"].encode(), "little") % (2**32)


def build(case):
    """The case's float64 model and batch, deterministic in the case's name."""
    rng = np.random.default_rng(_seed(case))
    cfg = _config(case)
    model = rt.new_model(cfg, rng)
    batch = rt.new_batch(cfg, case["T"], case["B"], rng, soft=case["targets"] == "soft", state=case["state"])
    return model, batch


def _metadata(case):
    return {"reduction": case["reduction"],
            "generator": f"tools/make_golden.py, torch {torch.__version__}, numpy {np.__version__}"}


def write_case(case, folder):
    model, batch = build(case)
    os.makedirs(folder, exist_ok=True)
    rt.save_model(os.path.join(folder, "model.safetensors"), model)
    rt.save_batch(os.path.join(folder, "batch.safetensors"), batch)
    expected = rt.reference_gradients(model, batch, case["reduction"])
    safetensors_np.save(os.path.join(folder, "expected.safetensors"), expected, _metadata(case))


def sgd_trajectory(model, batch, case):
    """The loss before each of `steps` SGD steps and after the last: [steps + 1]."""
    losses = rt.train_sgd(model, batch, case["reduction"], case["steps"], case["lr"])
    losses.append(float(rt.reference_gradients(model, batch, case["reduction"])["loss"]))
    return np.array(losses, dtype=np.float64)


def write_sgd(case, folder):
    model, batch = build(case)
    os.makedirs(folder, exist_ok=True)
    rt.save_model(os.path.join(folder, "model.safetensors"), model)
    rt.save_batch(os.path.join(folder, "batch.safetensors"), batch)
    losses = sgd_trajectory(model, batch, case)
    meta = {**_metadata(case), "lr": repr(case["lr"]), "steps": str(case["steps"])}
    safetensors_np.save(os.path.join(folder, "trajectory.safetensors"), {"loss": losses}, meta)


def write_all(out):
    for case in CASES:
        write_case(case, os.path.join(out, case["name"]))
    write_sgd(SGD, os.path.join(out, SGD["name"]))
    write_readme(out)


# ---------------------------------------------------------------------------------------------
# README (generated, so that it always describes the files next to it).


def _names(path):
    tensors, meta = safetensors_np.load(path)
    return ", ".join(f"`{n}` {list(t.shape)}" for n, t in sorted(tensors.items())), meta


def write_readme(out):
    lines = [
        "# PyTorch golden files",
        "",
        "Generated by `tools/make_golden.py` (do not edit by hand; rerun it):",
        "",
        "    /usr/bin/python3 tools/make_golden.py --selftest",
        "",
        f"with Debian's PyTorch {torch.__version__} and numpy {np.__version__}, everything in float64",
        "(`torch.set_default_dtype(torch.float64)`). The model is `torch.nn.LSTM(X, H, num_layers=L)`",
        "(time-major) after `torch.nn.Embedding(V, E)` (embedding input) and before",
        "`torch.nn.Linear(H, V)` (linear readout) or nothing (identity readout: logits = h of the top",
        "layer). Loss: -sum_k y_k log softmax(logits)_k per position, summed over the T*B positions",
        "and divided by T*B (`mean`), 1 (`sum`) or B (`batch_mean`). Every parameter, both biases",
        "included, is uniform(-0.5, 0.5); dense inputs are uniform(-1, 1), h0 uniform(-0.5, 0.5),",
        "s0 uniform(-1, 1), soft targets softmax(N(0,1)). Each case is seeded by its name.",
        "The `peephole` case uses tools/torch_roundtrip.py's FunctionalLSTMLM (the same model written",
        "from torch.nn.functional pieces, with i, f = sigmoid(... + p_i/p_f s_prev) and",
        "o = sigmoid(... + p_o s), the weights in `rnn.weight_peephole_l{k}` [3,H]), which the",
        "self-test first checks against nn.LSTM on the plain cell.",
        "",
        "Formats (safetensors; see docs/interop.md and docs/cli.md, \"File formats\"):",
        "",
        "- `model.safetensors`: nn.LSTM's state_dict with `rnn.` prefixed, plus `encoder.weight` /",
        "  `decoder.weight`, `decoder.bias`; `__metadata__` `lstmgrad.config` = JSON",
        "  `{\"input\", \"readout\", \"V\", \"X\", \"H\", \"L\"}`. `bias_ih` and `bias_hh` are both non-zero",
        "  (only their sum matters).",
        "- `batch.safetensors`: `input` (I64 [T,B] or F64 [T,B,X]), `target` (I64 [T,B]) or",
        "  `target_probs` (F64 [T,B,V]), optionally `h0`, `s0` (F64 [L,B,H]).",
        "- `expected.safetensors`: what `lstmgrad grad` must write: the gradient of every parameter",
        "  under its name (`bias_ih` and `bias_hh` get equal gradients), `loss` (F64 []), `h_n`,",
        "  `s_n` (F64 [L,B,H]), `grad.input` (dense input), `grad.h0`, `grad.s0` (when the batch",
        "  has h0, s0). `__metadata__` `reduction`.",
        "",
        "`--selftest` checks that the files are what the script writes, that a model rebuilt from",
        "the files reproduces them, that an independent numpy LSTM gives the same loss and states",
        "and, by central finite differences, every gradient, and runs torch.autograd.gradcheck on",
        "`handout`.",
        "",
        "## Cases",
        "",
        "| case | input | readout | targets | L | T | B | V | X/E | H | reduction | h0/s0 | covers |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in CASES + [SGD]:
        lines.append(
            f"| `{c['name']}` | {c['input']} | {c['readout']} | {c['targets']} | {c['L']} | {c['T']} | {c['B']} "
            f"| {c['V']} | {c['X']} | {c['H']} | {c['reduction']} | {'yes' if c['state'] else 'zero'} "
            f"| {c['covers']} |")
    lines += ["", "## Files", ""]
    for c in CASES + [SGD]:
        folder = os.path.join(out, c["name"])
        lines.append(f"### `{c['name']}/`")
        lines.append("")
        files = ["model", "batch", "expected"] if c is not SGD else ["model", "batch", "trajectory"]
        for f in files:
            path = os.path.join(folder, f + ".safetensors")
            names, meta = _names(path)
            lines.append(f"- `{f}.safetensors` ({os.path.getsize(path)} bytes): {names}")
            if "reduction" in meta and f != "model":
                lines.append(f"  (reduction `{meta['reduction']}`)")
        if c is SGD:
            lines += ["",
                      "`trajectory.safetensors` `loss` [11]: the loss before each of 10 plain SGD steps",
                      "(p -= lr * grad for every parameter, lr = 0.5 (`__metadata__` `lr`), no clipping,",
                      "the same batch every step, zero initial state) and after the last. `bias_ih` and",
                      "`bias_hh` are stepped separately, as PyTorch does, so their sum moves by",
                      "2 * lr * grad: an implementation that keeps one bias b must step it by",
                      "2 * lr * dL/db to follow this trajectory."]
        lines.append("")
    with open(os.path.join(out, "README.md") + ".tmp", "w") as f:
        f.write("\n".join(lines))
    os.replace(os.path.join(out, "README.md") + ".tmp", os.path.join(out, "README.md"))


# ---------------------------------------------------------------------------------------------
# Self-test: an independent numpy LSTM and finite differences.


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def np_forward(params, cfg, batch, reduction):
    """The handout's equations in numpy, nothing shared with torch:
    i, f, o = sigmoid(V_* x + U_* h_prev + b_*), a = tanh(...), s = i*a + f*s_prev, h = o*tanh(s),
    gate blocks of weight_ih / weight_hh rows in the order i, f, a (PyTorch's g), o; with
    peepholes, + p_i s_prev, + p_f s_prev and + p_o s inside the sigmoids of i, f and o.
    Returns (loss, h_n, s_n)."""
    L, H = cfg["L"], cfg["H"]
    inp = batch["input"]
    x = params["encoder.weight"][inp] if cfg["input"] == "embedding" else inp  # [T,B,X]
    T, B = x.shape[:2]
    h_n, s_n = np.zeros((L, B, H)), np.zeros((L, B, H))
    for k in range(L):
        Wx, Wh = params[f"rnn.weight_ih_l{k}"], params[f"rnn.weight_hh_l{k}"]
        b = params[f"rnn.bias_ih_l{k}"] + params[f"rnn.bias_hh_l{k}"]
        h = batch["h0"][k] if "h0" in batch else np.zeros((B, H))
        s = batch["s0"][k] if "s0" in batch else np.zeros((B, H))
        out = np.empty((T, B, H))
        for t in range(T):
            z = x[t] @ Wx.T + h @ Wh.T + b  # [B,4H]
            p = params.get(f"rnn.weight_peephole_l{k}", np.zeros((3, H)))
            i, f = _sigmoid(z[:, :H] + p[0] * s), _sigmoid(z[:, H:2 * H] + p[1] * s)
            a = np.tanh(z[:, 2 * H:3 * H])
            s = i * a + f * s
            o = _sigmoid(z[:, 3 * H:] + p[2] * s)
            h = o * np.tanh(s)
            out[t] = h
        h_n[k], s_n[k], x = h, s, out
    logits = x @ params["decoder.weight"].T + params["decoder.bias"] if cfg["readout"] == "linear" else x
    m = logits.max(axis=-1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(axis=-1, keepdims=True))
    if "target_probs" in batch:
        per = -(batch["target_probs"] * logp).sum(axis=-1)
    else:
        per = -np.take_along_axis(logp, batch["target"][..., None], axis=-1)[..., 0]
    div = {"mean": T * B, "sum": 1, "batch_mean": B}[reduction]
    return per.sum() / div, h_n, s_n


def finite_differences(params, cfg, batch, reduction, names, eps=1e-5):
    """Central differences of np_forward's loss for every entry of each tensor in `names`
    (parameters, or grad.input / grad.h0 / grad.s0 for the batch tensors)."""
    out = {}
    for name in names:
        src = batch if name.startswith("grad.") else params
        key = name[len("grad."):] if name.startswith("grad.") else name
        arr = src[key]
        g = np.zeros(arr.shape)
        for idx in np.ndindex(arr.shape):
            keep = arr[idx]
            arr[idx] = keep + eps
            up = np_forward(params, cfg, batch, reduction)[0]
            arr[idx] = keep - eps
            down = np_forward(params, cfg, batch, reduction)[0]
            arr[idx] = keep
            g[idx] = (up - down) / (2 * eps)
        out[name] = g
    return out


def _rel(a, b):
    scale = np.max(np.abs(b)) if b.size else 0.0
    diff = np.max(np.abs(a - b)) if b.size else 0.0
    return diff / scale if scale > 0 else diff


def torch_gradcheck(case, folder):
    """torch.autograd.gradcheck (its own finite differences) on nn.LSTM with the case's files."""
    from torch.nn.utils.stateless import functional_call

    model, _ = rt.load_model(os.path.join(folder, "model.safetensors"))
    batch = rt.load_batch(os.path.join(folder, "batch.safetensors"), model.cfg)
    names = [n for n, _ in model.named_parameters()]
    target = torch.from_numpy(batch["target"]) if "target" in batch else None
    probs = torch.from_numpy(batch["target_probs"]) if "target_probs" in batch else None
    extra = [k for k in ("input", "h0", "s0") if k in batch and batch[k].dtype.kind == "f"]

    def f(*tensors):
        params = dict(zip(names, tensors[:len(names)]))
        given = dict(zip(extra, tensors[len(names):]))
        inp = given.get("input", torch.from_numpy(batch["input"]))
        logits, h_n, s_n = functional_call(model, params, (inp, given.get("h0"), given.get("s0")))
        return rt.lm_loss(logits, target, probs, case["reduction"]), h_n, s_n

    inputs = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
    inputs += [torch.from_numpy(batch[k].copy()).requires_grad_(True) for k in extra]
    return torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-8, rtol=1e-6)


def selftest(out):
    failures = []

    def check(ok, what):
        print(f"  {'ok  ' if ok else 'FAIL'} {what}")
        if not ok:
            failures.append(what)

    print("1. the files are the bytes this script writes (deterministic, up to date)")
    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            write_case(case, os.path.join(tmp, case["name"]))
        write_sgd(SGD, os.path.join(tmp, SGD["name"]))
        for case in CASES + [SGD]:
            for f in sorted(os.listdir(os.path.join(tmp, case["name"]))):
                a, b = os.path.join(tmp, case["name"], f), os.path.join(out, case["name"], f)
                check(os.path.isfile(b) and filecmp.cmp(a, b, shallow=False), f"{case['name']}/{f} identical")

    for case in CASES:
        folder = os.path.join(out, case["name"])
        print(f"2. {case['name']}: read back, rebuild, numpy LSTM, finite differences")
        for f in ("model", "batch", "expected"):
            path = os.path.join(folder, f + ".safetensors")
            problems = safetensors_np.check(path)
            size = os.path.getsize(path)
            check(not problems and size < MAX_FILE_BYTES, f"{f}.safetensors {size} bytes, layout clean {problems}")
        tensors, meta = safetensors_np.load(os.path.join(folder, "model.safetensors"))
        check(json.loads(meta[rt.CONFIG_KEY]) == _config(case), f"model config {meta[rt.CONFIG_KEY]}")
        model, ignored = rt.load_model(os.path.join(folder, "model.safetensors"))
        batch = rt.load_batch(os.path.join(folder, "batch.safetensors"), model.cfg)
        expected, emeta = safetensors_np.load(os.path.join(folder, "expected.safetensors"))
        check(emeta.get("reduction") == case["reduction"], f"expected reduction {emeta.get('reduction')}")
        check(all(t.dtype == np.float64 for t in expected.values()), "expected tensors all F64")
        check(expected["loss"].shape == (), f"loss shape {expected['loss'].shape}")
        again = rt.reference_gradients(model, batch, case["reduction"])
        check(sorted(again) == sorted(expected) and all(np.array_equal(again[n], expected[n]) for n in again),
              "model rebuilt from the files reproduces expected.safetensors exactly")
        L = case["L"]
        # Equal up to rounding: autograd sums them in different orders (last-bit differences).
        bias_diff = max(_rel(expected[f"rnn.bias_ih_l{k}"], expected[f"rnn.bias_hh_l{k}"]) for k in range(L))
        check(bias_diff < 1e-14, f"bias_ih and bias_hh gradients equal (rel diff {bias_diff:.1e})")

        params = {n: t.astype(np.float64).copy() for n, t in tensors.items()}
        nbatch = {k: v.copy() for k, v in batch.items()}
        loss, h_n, s_n = np_forward(params, model.cfg, nbatch, case["reduction"])
        check(abs(loss - expected["loss"]) <= 1e-12 * max(1.0, abs(loss)),
              f"numpy loss {loss:.15g} vs torch {float(expected['loss']):.15g}")
        check(_rel(h_n, expected["h_n"]) < 1e-12 and _rel(s_n, expected["s_n"]) < 1e-12, "numpy h_n, s_n")
        names = [n for n in expected if n not in ("loss", "h_n", "s_n")]
        fd = finite_differences(params, model.cfg, nbatch, case["reduction"], names)
        worst = max((_rel(fd[n], expected[n]), n) for n in names)
        check(worst[0] < 1e-6, f"finite differences vs expected, {len(names)} tensors, worst {worst[1]} {worst[0]:.2e}")

    print("3. the functional twin (FunctionalLSTMLM) against nn.LSTM on the plain cell")
    for case in CASES:
        if case.get("peephole"):
            continue
        folder = os.path.join(out, case["name"])
        tensors, _ = safetensors_np.load(os.path.join(folder, "model.safetensors"))
        model, _ = rt.load_model(os.path.join(folder, "model.safetensors"))
        twin = rt.FunctionalLSTMLM(model.cfg).double()
        twin.load_state_dict({n: torch.from_numpy(tensors[n]) for n in twin.state_dict()})
        batch = rt.load_batch(os.path.join(folder, "batch.safetensors"), model.cfg)
        a = rt.reference_gradients(model, batch, case["reduction"])
        b = rt.reference_gradients(twin, batch, case["reduction"])
        worst = max((_rel(b[n], a[n]), n) for n in a)
        check(sorted(a) == sorted(b) and worst[0] < 1e-12, f"{case['name']}: worst {worst[1]} {worst[0]:.1e}")

    print("4. handout: torch.autograd.gradcheck")
    check(torch_gradcheck(CASES[0], os.path.join(out, "handout")), "gradcheck (params, input, h0, s0)")

    print("5. sgd: trajectory")
    folder = os.path.join(out, "sgd")
    traj, meta = safetensors_np.load(os.path.join(folder, "trajectory.safetensors"))
    model, _ = rt.load_model(os.path.join(folder, "model.safetensors"))
    batch = rt.load_batch(os.path.join(folder, "batch.safetensors"), model.cfg)
    again = sgd_trajectory(model, batch, {**SGD, "lr": float(meta["lr"]), "reduction": meta["reduction"]})
    check(traj["loss"].shape == (11,) and np.array_equal(again, traj["loss"]), f"trajectory {traj['loss']}")
    check(bool(np.all(np.diff(traj["loss"]) < 0)), "loss falls at every step")
    # One step by hand from expected-style gradients, with the numpy forward as the loss.
    tensors, _ = safetensors_np.load(os.path.join(folder, "model.safetensors"))
    g = rt.reference_gradients(rt.load_model(os.path.join(folder, "model.safetensors"))[0], batch, meta["reduction"])
    stepped = {n: t - float(meta["lr"]) * g[n] for n, t in tensors.items()}
    l1 = np_forward(stepped, model.cfg, batch, meta["reduction"])[0]
    check(abs(l1 - traj["loss"][1]) < 1e-12, f"numpy loss after one step {l1:.15g}")

    print(f"selftest: {'PASS' if not failures else f'FAIL ({len(failures)})'}")
    return not failures


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=DEFAULT_OUT, help="folder for the case folders (default tests/data/golden)")
    p.add_argument("--selftest", action="store_true", help="check the files after writing them")
    p.add_argument("--no-write", action="store_true", help="only check the files already there")
    args = p.parse_args()
    torch.set_default_dtype(torch.float64)
    if not args.no_write:
        write_all(args.out)
        for case in CASES + [SGD]:
            folder = os.path.join(args.out, case["name"])
            sizes = ", ".join(f"{f} {os.path.getsize(os.path.join(folder, f))}" for f in sorted(os.listdir(folder)))
            print(f"wrote {folder}: {sizes}")
    if args.selftest or args.no_write:
        return 0 if selftest(args.out) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
