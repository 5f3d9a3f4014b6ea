#!/usr/bin/python3
"""Round trip between PyTorch's nn.LSTM and lstmgrad, through safetensors files.

    check   build (and optionally train) an nn.LSTM language model in PyTorch, or load one from
            --model/--batch; export model.safetensors and batch.safetensors; run
            `lstmgrad grad`; read its gradient file back and print, per tensor, the largest
            difference from PyTorch's autograd. Exit 1 above the tolerance (1e-9 for --dtype f64,
            1e-4 for f32), 2 when lstmgrad or a file could not be used.
    export  write model.safetensors, batch.safetensors and PyTorch's expected.safetensors (the
            gradient file lstmgrad should produce) without running lstmgrad.
    load    the other direction: load a model.safetensors written by lstmgrad (or anyone) into
            nn.LSTM; with --batch print PyTorch's loss, with --grads also compare a gradient file.

Needs Debian's PyTorch: run with /usr/bin/python3 (torch 1.13). See docs/interop.md.

The difference printed for each tensor is max|lstmgrad - torch| / max|torch| (the largest error
relative to the tensor's scale; the absolute error when the tensor is all zeros).

The model, the loss and the file layouts here are the reference for tools/make_golden.py, which
imports this module.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_np  # noqa: E402  (sits next to this file)

REDUCTIONS = ("mean", "sum", "batch_mean")
TOLERANCE = {"f64": 1e-9, "f32": 1e-4}
CONFIG_KEY = "lstmgrad.config"


class InputError(Exception):
    """A file or flag that cannot be used; the message names it."""


# ---------------------------------------------------------------------------------------------
# The model: encoder (embedding or none) -> nn.LSTM stack -> decoder (linear or identity).
# cfg: {"input": "dense"|"embedding", "readout": "identity"|"linear", "V", "X", "H", "L"}, and
# "peephole": true for the cell with peepholes (FunctionalLSTMLM).


class LSTMLM(torch.nn.Module):
    """PyTorch's word_language_model RNNModel, restricted to what lstmgrad computes. Parameter
    names (state_dict keys) are lstmgrad's tensor names."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = dict(cfg)
        if cfg["input"] == "embedding":
            self.encoder = torch.nn.Embedding(cfg["V"], cfg["X"])
        self.rnn = torch.nn.LSTM(cfg["X"], cfg["H"], num_layers=cfg["L"], batch_first=False)
        if cfg["readout"] == "linear":
            self.decoder = torch.nn.Linear(cfg["H"], cfg["V"])

    def forward(self, inp, h0=None, s0=None):
        """inp: int64 [T,B] token ids or float [T,B,X]; h0, s0: [L,B,H] or None (zeros).
        Returns logits [T,B,V], h_n, s_n [L,B,H]."""
        x = self.encoder(inp) if self.cfg["input"] == "embedding" else inp
        T, B = x.shape[0], x.shape[1]
        zeros = x.new_zeros(self.cfg["L"], B, self.cfg["H"])
        out, (h_n, s_n) = self.rnn(x, (zeros if h0 is None else h0, zeros if s0 is None else s0))
        logits = self.decoder(out) if self.cfg["readout"] == "linear" else out
        assert logits.shape[:2] == (T, B)
        return logits, h_n, s_n


class FunctionalLSTMLM(torch.nn.Module):
    """The same model written from torch.nn.functional pieces, one step at a time, so that cell
    variants nn.LSTM lacks can be expressed (and so that it runs alike on torch 1.13 and later).
    cfg["peephole"]: i and f also see s_prev, o sees s, through the diagonal weights
    rnn.weight_peephole_l{k} [3,H] (rows p_i, p_f, p_o). Parameter names are LSTMLM's."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = dict(cfg)
        V, X, H, L = cfg["V"], cfg["X"], cfg["H"], cfg["L"]
        if cfg["input"] == "embedding":
            self.encoder = torch.nn.Embedding(V, X)
        self.rnn = torch.nn.Module()
        for k in range(L):
            shapes = {"weight_ih": (4 * H, X if k == 0 else H), "weight_hh": (4 * H, H),
                      "bias_ih": (4 * H,), "bias_hh": (4 * H,)}
            if cfg.get("peephole"):
                shapes["weight_peephole"] = (3, H)
            for name, shape in shapes.items():
                self.rnn.register_parameter(f"{name}_l{k}", torch.nn.Parameter(torch.empty(shape)))
        if cfg["readout"] == "linear":
            self.decoder = torch.nn.Linear(H, V)

    def forward(self, inp, h0=None, s0=None):
        F = torch.nn.functional
        x = F.embedding(inp, self.encoder.weight) if self.cfg["input"] == "embedding" else inp
        T, B = x.shape[0], x.shape[1]
        L, H = self.cfg["L"], self.cfg["H"]
        zeros = x.new_zeros(L, B, H)
        h0 = zeros if h0 is None else h0
        s0 = zeros if s0 is None else s0
        h_n, s_n = [], []
        for k in range(L):
            W_ih, W_hh = getattr(self.rnn, f"weight_ih_l{k}"), getattr(self.rnn, f"weight_hh_l{k}")
            b = getattr(self.rnn, f"bias_ih_l{k}") + getattr(self.rnn, f"bias_hh_l{k}")
            P = getattr(self.rnn, f"weight_peephole_l{k}", None)
            h, s, out = h0[k], s0[k], []
            for t in range(T):
                z = F.linear(x[t], W_ih) + F.linear(h, W_hh) + b  # [B,4H]: i, f, g, o
                zi, zf, za, zo = z.split(H, dim=1)
                if P is not None:
                    zi, zf = zi + P[0] * s, zf + P[1] * s
                i, f, a = torch.sigmoid(zi), torch.sigmoid(zf), torch.tanh(za)
                s = f * s + i * a
                o = torch.sigmoid(zo + P[2] * s if P is not None else zo)
                h = o * torch.tanh(s)
                out.append(h)
            h_n.append(h), s_n.append(s)
            x = torch.stack(out)
        logits = self.decoder(x) if self.cfg["readout"] == "linear" else x
        return logits, torch.stack(h_n), torch.stack(s_n)


def make_model(cfg):
    """nn.LSTM's model for the plain cell, the functional twin for a cell variant."""
    return FunctionalLSTMLM(cfg) if cfg.get("peephole") else LSTMLM(cfg)


def lm_loss(logits, target, target_probs, reduction):
    """Cross-entropy -sum_k y_k log p_k, p = softmax(logits), written out so that soft targets
    work on torch 1.13. mean: over all T*B positions; sum; batch_mean: sum / B (the mean over the
    batch at each step, summed over time)."""
    logp = torch.log_softmax(logits, dim=-1)
    if target_probs is not None:
        per_position = -(target_probs * logp).sum(dim=-1)
    else:
        per_position = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    T, B = per_position.shape
    total = per_position.sum()
    if reduction == "mean":
        return total / (T * B)
    if reduction == "sum":
        return total
    if reduction == "batch_mean":
        return total / B
    raise InputError(f"--reduction: expected one of {', '.join(REDUCTIONS)}, got {reduction!r}")


def new_model(cfg, rng, scale=0.5):
    """A float64 LSTMLM with every parameter uniform(-scale, scale) from the numpy Generator
    `rng` (bias_ih and bias_hh both random, so a reader that drops one of them is caught)."""
    model = make_model(cfg).double()
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.copy_(torch.from_numpy(rng.uniform(-scale, scale, size=tuple(p.shape))))
    return model


def new_batch(cfg, T, B, rng, soft=False, state=False):
    """A random batch as numpy arrays under the batch file's names."""
    L, H, V, X = cfg["L"], cfg["H"], cfg["V"], cfg["X"]
    batch = {}
    if cfg["input"] == "embedding":
        batch["input"] = rng.integers(0, V, size=(T, B), dtype=np.int64)
    else:
        batch["input"] = rng.uniform(-1.0, 1.0, size=(T, B, X))
    if soft:
        z = rng.normal(size=(T, B, V))
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        batch["target_probs"] = e / e.sum(axis=-1, keepdims=True)
    else:
        batch["target"] = rng.integers(0, V, size=(T, B), dtype=np.int64)
    if state:
        batch["h0"] = rng.uniform(-0.5, 0.5, size=(L, B, H))
        batch["s0"] = rng.uniform(-1.0, 1.0, size=(L, B, H))
    return batch


# ---------------------------------------------------------------------------------------------
# Files.


def model_tensors(model, dtype=np.float64):
    """The model file's tensors: the state_dict (already lstmgrad's names) as numpy arrays."""
    return {name: t.detach().cpu().numpy().astype(dtype) for name, t in model.state_dict().items()}


def save_model(path, model, dtype=np.float64, extra_metadata=None):
    metadata = {CONFIG_KEY: json.dumps(model.cfg, sort_keys=True)}
    metadata.update(extra_metadata or {})
    safetensors_np.save(path, model_tensors(model, dtype), metadata)


def config_from_tensors(tensors, metadata, where):
    """The model config: from __metadata__["lstmgrad.config"] when present, else inferred from
    the tensor shapes; either way checked against the shapes."""
    def shape(name):
        if name not in tensors:
            raise InputError(f"{where}: missing tensor {name}")
        return list(tensors[name].shape)

    L = 0
    while f"rnn.weight_ih_l{L}" in tensors:
        L += 1
    if L == 0:
        raise InputError(f"{where}: no rnn.weight_ih_l0; not an LSTM model file")
    four_h, X = shape("rnn.weight_ih_l0")
    H = shape("rnn.weight_hh_l0")[1]
    inferred = {"input": "embedding" if "encoder.weight" in tensors else "dense",
                "readout": "linear" if "decoder.weight" in tensors else "identity",
                "X": X, "H": H, "L": L}
    if "rnn.weight_peephole_l0" in tensors:
        inferred["peephole"] = True
    if inferred["readout"] == "linear":
        inferred["V"] = shape("decoder.weight")[0]
    elif inferred["input"] == "embedding":
        inferred["V"] = shape("encoder.weight")[0]
    else:
        inferred["V"] = H
    cfg = inferred
    if CONFIG_KEY in metadata:
        try:
            stated = json.loads(metadata[CONFIG_KEY])
        except json.JSONDecodeError as e:
            raise InputError(f"{where}: __metadata__ {CONFIG_KEY} is not JSON: {e}") from None
        for key, value in inferred.items():
            if key in stated and stated[key] != value:
                raise InputError(f"{where}: {CONFIG_KEY} says {key}={stated[key]!r}, tensors say {value!r}")
        if bool(stated.get("peephole", False)) != bool(inferred.get("peephole", False)):
            raise InputError(f"{where}: {CONFIG_KEY} says peephole={stated.get('peephole', False)!r}, "
                             "tensors say the opposite (rnn.weight_peephole_l0)")
        cfg = {**inferred, **{k: stated[k] for k in inferred if k in stated}}
    # Every expected tensor must be there with the right shape.
    want = {name: list(t.shape) for name, t in make_model(cfg).state_dict().items()}
    for name, s in want.items():
        if shape(name) != s:
            raise InputError(f"{where}: {name}: expected shape {s}, got {shape(name)}")
    if four_h != 4 * H:
        raise InputError(f"{where}: rnn.weight_ih_l0 has {four_h} rows, expected 4H = {4 * H}")
    return cfg


def load_model(path):
    """An LSTMLM (float64) from a model.safetensors. Tensors that are not parameters (optimizer
    state, say) are ignored; bias_ih and bias_hh load as stored (only their sum matters, so a
    file with all of b in bias_ih and zeros in bias_hh gives the same network)."""
    tensors, metadata = safetensors_np.load(path)
    cfg = config_from_tensors(tensors, metadata, path)
    model = make_model(cfg).double()
    names = set(model.state_dict())
    model.load_state_dict({n: torch.from_numpy(np.asarray(tensors[n], dtype=np.float64)) for n in names})
    ignored = sorted(set(tensors) - names)
    return model, ignored


def load_batch(path, cfg):
    """The batch file as numpy arrays, checked against the model config."""
    tensors, _ = safetensors_np.load(path)
    L, H, V, X = cfg["L"], cfg["H"], cfg["V"], cfg["X"]
    if "input" not in tensors:
        raise InputError(f"{path}: missing tensor input")
    inp = tensors["input"]
    if cfg["input"] == "embedding":
        if inp.ndim != 2 or inp.dtype.kind != "i":
            raise InputError(f"{path}: input: expected int64 [T,B] token ids, got {inp.dtype} {list(inp.shape)}")
        if inp.size and (inp.min() < 0 or inp.max() >= V):
            raise InputError(f"{path}: input: token ids must lie in [0, {V}), got [{inp.min()}, {inp.max()}]")
        inp = inp.astype(np.int64)
    else:
        if inp.ndim != 3 or inp.shape[2] != X or inp.dtype.kind != "f":
            raise InputError(f"{path}: input: expected float [T,B,{X}], got {inp.dtype} {list(inp.shape)}")
        inp = inp.astype(np.float64)
    T, B = inp.shape[:2]
    batch = {"input": inp}
    if ("target" in tensors) == ("target_probs" in tensors):
        raise InputError(f"{path}: needs exactly one of target, target_probs")
    if "target" in tensors:
        y = tensors["target"]
        if list(y.shape) != [T, B] or y.dtype.kind != "i" or (y.size and (y.min() < 0 or y.max() >= V)):
            raise InputError(f"{path}: target: expected int64 [{T},{B}] in [0, {V})")
        batch["target"] = y.astype(np.int64)
    else:
        y = tensors["target_probs"]
        if list(y.shape) != [T, B, V]:
            raise InputError(f"{path}: target_probs: expected [{T},{B},{V}], got {list(y.shape)}")
        batch["target_probs"] = y.astype(np.float64)
    for name in ("h0", "s0"):
        if name in tensors:
            if list(tensors[name].shape) != [L, B, H]:
                raise InputError(f"{path}: {name}: expected [{L},{B},{H}], got {list(tensors[name].shape)}")
            batch[name] = tensors[name].astype(np.float64)
    return batch


def save_batch(path, batch, float_dtype=np.float64):
    safetensors_np.save(path, {k: (v.astype(float_dtype) if v.dtype.kind == "f" else v) for k, v in batch.items()})


# ---------------------------------------------------------------------------------------------
# PyTorch's gradients: the gradient file lstmgrad writes, computed by autograd.


def reference_gradients(model, batch, reduction):
    """Runs `model` (float64) on `batch` and returns what `lstmgrad grad` writes: one gradient
    per parameter under its name, loss (shape []), h_n, s_n, grad.input (dense input),
    grad.h0 / grad.s0 (when the batch gives them)."""
    model.zero_grad(set_to_none=True)
    inp = torch.from_numpy(batch["input"])
    if inp.is_floating_point():
        inp.requires_grad_(True)
    state = {k: torch.from_numpy(batch[k]).requires_grad_(True) for k in ("h0", "s0") if k in batch}
    target = torch.from_numpy(batch["target"]) if "target" in batch else None
    probs = torch.from_numpy(batch["target_probs"]) if "target_probs" in batch else None
    logits, h_n, s_n = model(inp, state.get("h0"), state.get("s0"))
    loss = lm_loss(logits, target, probs, reduction)
    loss.backward()
    out = {}
    for name, p in model.named_parameters():
        out[name] = (p.grad if p.grad is not None else torch.zeros_like(p)).detach().numpy().copy()
    out["loss"] = loss.detach().numpy().reshape(())
    out["h_n"] = h_n.detach().numpy().copy()
    out["s_n"] = s_n.detach().numpy().copy()
    if inp.requires_grad:
        out["grad.input"] = inp.grad.numpy().copy()
    for k, t in state.items():
        out[f"grad.{k}"] = t.grad.numpy().copy()
    return out


def compare(got, want, tol):
    """Per tensor of `want`: max abs difference and max|got - want| / max|want|. Returns
    (ok, rows) with rows (name, abs, rel, verdict)."""
    ok, rows = True, []
    for name, ref in want.items():
        if name not in got:
            rows.append((name, None, None, "MISSING"))
            ok = False
            continue
        g = np.asarray(got[name], dtype=np.float64)
        if list(g.shape) != list(ref.shape):
            rows.append((name, None, None, f"SHAPE {list(g.shape)} != {list(ref.shape)}"))
            ok = False
            continue
        if not np.all(np.isfinite(g)):
            rows.append((name, None, None, "NON-FINITE"))
            ok = False
            continue
        diff = float(np.max(np.abs(g - ref))) if ref.size else 0.0
        scale = float(np.max(np.abs(ref))) if ref.size else 0.0
        rel = diff / scale if scale > 0 else diff
        verdict = "ok" if rel <= tol else "FAIL"
        ok = ok and rel <= tol
        rows.append((name, diff, rel, verdict))
    for name in sorted(set(got) - set(want)):
        rows.append((name, None, None, "extra (not compared)"))
    return ok, rows


def print_rows(rows, tol, file=sys.stdout):
    print(f"{'tensor':24s} {'max abs diff':>13s} {'max rel diff':>13s}  (tolerance {tol:g})", file=file)
    for name, diff, rel, verdict in rows:
        if diff is None:
            print(f"{name:24s} {'':>13s} {'':>13s}  {verdict}", file=file)
        else:
            print(f"{name:24s} {diff:13.3e} {rel:13.3e}  {verdict}", file=file)


def train_sgd(model, batch, reduction, steps, lr):
    """Plain SGD in PyTorch, p -= lr * grad; returns the loss before each step."""
    losses = []
    for _ in range(steps):
        g = reference_gradients(model, batch, reduction)
        losses.append(float(g["loss"]))
        with torch.no_grad():
            for name, p in model.named_parameters():
                p -= lr * torch.from_numpy(g[name])
    return losses


# ---------------------------------------------------------------------------------------------
# Commands.


def run_lstmgrad(binary, model_path, batch_path, out_path, dtype, reduction):
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        raise InputError(f"--lstmgrad: {binary} is not an executable file (build it first, or pass --lstmgrad PATH)")
    cmd = [binary, "grad", "--model", model_path, "--batch", batch_path, "--out", out_path,
           "--dtype", dtype, "--reduction", reduction]
    print("$ " + " ".join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        raise InputError(f"{binary}: did not finish within 600 s") from None
    if proc.stdout.strip():
        print(proc.stdout.rstrip())
    if proc.returncode != 0:
        raise InputError(f"{binary} grad exited with {proc.returncode}: {proc.stderr.strip()}")
    if not os.path.isfile(out_path):
        raise InputError(f"{binary} grad exited 0 but wrote no {out_path}")


def _shape_args(p):
    g = p.add_argument_group("model and batch (when no --model/--batch are given)")
    g.add_argument("--input", choices=("embedding", "dense"), default="embedding")
    g.add_argument("--readout", choices=("linear", "identity"), default="linear")
    g.add_argument("--V", type=int, default=10, help="vocabulary / classes (= H for identity)")
    g.add_argument("--X", type=int, default=8, help="embedding or dense input width")
    g.add_argument("--H", type=int, default=16)
    g.add_argument("--L", type=int, default=2)
    g.add_argument("--T", type=int, default=12)
    g.add_argument("--B", type=int, default=4)
    g.add_argument("--targets", choices=("class", "soft"), default="class")
    g.add_argument("--state", action="store_true", help="random non-zero h0, s0")
    g.add_argument("--seed", type=int, default=1)
    g.add_argument("--train-steps", type=int, default=0, help="plain SGD steps in PyTorch before export")
    g.add_argument("--lr", type=float, default=0.5)
    g.add_argument("--file-dtype", choices=("f64", "f32"), default="f64",
                   help="float dtype of the exported model and batch files")


def _build(args):
    """The model and batch from --model/--batch, or new ones from the shape flags."""
    if args.model or args.batch:
        if not (args.model and args.batch):
            raise InputError("--model and --batch go together")
        model, ignored = load_model(args.model)
        if ignored:
            print(f"note: {args.model}: ignoring non-parameter tensors {', '.join(ignored)}")
        return model, load_batch(args.batch, model.cfg)
    cfg = {"input": args.input, "readout": args.readout, "V": args.V, "X": args.X, "H": args.H, "L": args.L}
    if cfg["readout"] == "identity":
        cfg["V"] = cfg["H"]
    if min(cfg["V"], cfg["X"], cfg["H"], cfg["L"], args.T, args.B) < 1:
        raise InputError("sizes V, X, H, L, T, B must be >= 1")
    rng = np.random.default_rng(args.seed)
    model = new_model(cfg, rng)
    batch = new_batch(cfg, args.T, args.B, rng, soft=args.targets == "soft", state=args.state)
    if args.train_steps:
        losses = train_sgd(model, batch, args.reduction, args.train_steps, args.lr)
        print(f"trained {args.train_steps} SGD steps in PyTorch: loss {losses[0]:.6f} -> {losses[-1]:.6f}")
    if args.file_dtype == "f32":  # what lstmgrad reads is what PyTorch must use
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.float().double())
        batch = {k: (v.astype(np.float32).astype(np.float64) if v.dtype.kind == "f" else v) for k, v in batch.items()}
    return model, batch


def _export(model, batch, folder, file_dtype):
    fd = np.float32 if file_dtype == "f32" else np.float64
    os.makedirs(folder, exist_ok=True)
    model_path, batch_path = os.path.join(folder, "model.safetensors"), os.path.join(folder, "batch.safetensors")
    save_model(model_path, model, fd)
    save_batch(batch_path, batch, fd)
    return model_path, batch_path


def cmd_check(args):
    model, batch = _build(args)
    tol = args.tolerance if args.tolerance is not None else TOLERANCE[args.dtype]
    folder = args.workdir or tempfile.mkdtemp(prefix="lstmgrad-roundtrip-")
    try:
        if args.model:
            model_path, batch_path = args.model, args.batch
        else:
            model_path, batch_path = _export(model, batch, folder, args.file_dtype)
        grads_path = os.path.join(folder, "grads.safetensors")
        run_lstmgrad(args.lstmgrad, model_path, batch_path, grads_path, args.dtype, args.reduction)
        got, metadata = safetensors_np.load(grads_path)
        for p in safetensors_np.check(grads_path):
            print(f"note: {grads_path}: {p}")
        if metadata.get("reduction", args.reduction) != args.reduction:
            print(f"note: {grads_path}: __metadata__ reduction is {metadata['reduction']!r}, asked {args.reduction!r}")
        want = reference_gradients(model, batch, args.reduction)
        ok, rows = compare(got, want, tol)
        print_rows(rows, tol)
        print(f"{'PASS' if ok else 'FAIL'}: lstmgrad grad --dtype {args.dtype} vs PyTorch {torch.__version__} autograd")
        return 0 if ok else 1
    finally:
        if not args.workdir and not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
        elif not args.workdir:
            print(f"files kept in {folder}")


def cmd_export(args):
    model, batch = _build(args)
    model_path, batch_path = _export(model, batch, args.out_dir, args.file_dtype)
    expected = os.path.join(args.out_dir, "expected.safetensors")
    safetensors_np.save(expected, reference_gradients(model, batch, args.reduction), {"reduction": args.reduction})
    print(f"wrote {model_path}, {batch_path}, {expected}")
    return 0


def cmd_load(args):
    if args.grads and not args.batch:
        raise InputError("--grads needs --batch (the batch the gradients were computed on)")
    model, ignored = load_model(args.model)
    print(f"{args.model}: loaded into nn.LSTM; config {json.dumps(model.cfg, sort_keys=True)}")
    if ignored:
        print(f"note: ignoring non-parameter tensors {', '.join(ignored)}")
    print(model)
    if not args.batch:
        return 0
    batch = load_batch(args.batch, model.cfg)
    want = reference_gradients(model, batch, args.reduction)
    print(f"PyTorch loss ({args.reduction}) on {args.batch}: {float(want['loss']):.12g}")
    if not args.grads:
        return 0
    got, _ = safetensors_np.load(args.grads)
    tol = args.tolerance if args.tolerance is not None else TOLERANCE[args.dtype]
    ok, rows = compare(got, want, tol)
    print_rows(rows, tol)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("check", help="export, run lstmgrad grad, compare with autograd")
    c.add_argument("--lstmgrad", default="build/lstmgrad", help="the lstmgrad binary (default build/lstmgrad)")
    c.add_argument("--model", help="use this model.safetensors instead of a new model")
    c.add_argument("--batch", help="use this batch.safetensors (with --model)")
    c.add_argument("--dtype", choices=("f64", "f32"), default="f64", help="lstmgrad's compute dtype")
    c.add_argument("--reduction", choices=REDUCTIONS, default="mean")
    c.add_argument("--tolerance", type=float, help="override 1e-9 (f64) / 1e-4 (f32)")
    c.add_argument("--workdir", help="write the files here and keep them (default: a temporary folder)")
    c.add_argument("--keep", action="store_true", help="keep the temporary folder")
    _shape_args(c)

    e = sub.add_parser("export", help="write model, batch and PyTorch's expected gradients")
    e.add_argument("--out-dir", required=True)
    e.add_argument("--model", help=argparse.SUPPRESS)
    e.add_argument("--batch", help=argparse.SUPPRESS)
    e.add_argument("--reduction", choices=REDUCTIONS, default="mean")
    _shape_args(e)

    lo = sub.add_parser("load", help="load a model.safetensors (e.g. written by lstmgrad) into nn.LSTM")
    lo.add_argument("--model", required=True)
    lo.add_argument("--batch", help="print PyTorch's loss on this batch")
    lo.add_argument("--grads", help="compare this gradient file with PyTorch's (needs --batch)")
    lo.add_argument("--reduction", choices=REDUCTIONS, default="mean")
    lo.add_argument("--dtype", choices=("f64", "f32"), default="f64", help="picks the tolerance")
    lo.add_argument("--tolerance", type=float)

    args = p.parse_args(argv)
    torch.set_default_dtype(torch.float64)
    try:
        return {"check": cmd_check, "export": cmd_export, "load": cmd_load}[args.command](args)
    except (InputError, safetensors_np.SafetensorsError, OSError) as err:
        print(f"torch_roundtrip: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
