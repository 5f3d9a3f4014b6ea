#!/usr/bin/python3
"""Writes tests/data/golden_awd/*.safetensors: PyTorch's objective and every gradient of the
regularised language model (tools/awd_twin.py) with masks PyTorch draws, for
tests/test_regularize_golden.cpp (no Python at test time).

    /usr/bin/python3 tools/make_awd_golden.py [--out tests/data/golden_awd] [--selftest]

Each file holds, in float64: the parameters under lstmgrad's names; the masks (mask.emb [V],
mask.in [B,E], mask.hid.{k} [B,H], mask.out [B,H], mask.weight.{k} [4H,H], mask.rec.{k} [B,H]
(recurrent dropout on h_{t-1}), mask.zone_h.{k} and mask.zone_s.{k} [T,B,H] (zoneout's 0/1 masks;
absent with zoneout on: the expectation, as evaluation runs it), each present only when
that regulariser is on); tokens and targets (I64 [T,B]); h0, s0 [L,B,H]; the objective `loss`, its
cross-entropy `ce`; grad.{name} for every parameter, grad.h0 and grad.s0. __metadata__: `config`
(JSON: V, E, H, L, tie_weights, and zoneout_h, zoneout_s, layer_norm where on), `ar`, `tar`, `generator`. Seeded per case name: a rerun on the
same torch writes the same bytes.

--selftest first checks the twin: without masks it is nn.LSTM (the same h_n, s_n and outputs to
1e-12 with the same weights), and torch.autograd.gradcheck passes on its objective with every
regulariser on.
"""

import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import awd_twin  # noqa: E402
import safetensors_np  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "tests", "data", "golden_awd")

BASE = dict(V=11, E=6, H=6, L=2, T=5, B=3, tie=False, state=False,
            dropout_emb=0.0, dropout_in=0.0, dropout_hid=0.0, dropout_out=0.0, weight_drop=0.0,
            ar=0.0, tar=0.0, dropout_rec=0.0, zoneout_h=0.0, zoneout_s=0.0, zone_masks=True,
            layer_norm=False, hidden=None, proj=0)
CASES = [
    dict(BASE, name="dropout_in", dropout_in=0.5),
    dict(BASE, name="dropout_hid", dropout_hid=0.5),
    dict(BASE, name="dropout_out", dropout_out=0.5),
    dict(BASE, name="dropout_emb", dropout_emb=0.5),
    dict(BASE, name="weight_drop", weight_drop=0.5),
    dict(BASE, name="ar", ar=2.0),
    dict(BASE, name="tar", tar=1.0),
    dict(BASE, name="tied", tie=True),
    # AWD-LSTM's combination (its PTB rates), 3 layers, tied, a carried-in state.
    dict(BASE, name="awd", L=3, T=7, B=4, tie=True, state=True, dropout_emb=0.1, dropout_in=0.4,
         dropout_hid=0.25, dropout_out=0.4, weight_drop=0.5, ar=2.0, tar=1.0),
    dict(BASE, name="dropout_rec", dropout_rec=0.5),
    # Recurrent dropout with everything else: both it and weight drop act on the recurrent product.
    dict(BASE, name="awd_rec", L=3, T=6, B=3, tie=True, state=True, dropout_emb=0.1,
         dropout_in=0.4, dropout_hid=0.25, dropout_out=0.4, weight_drop=0.5, ar=2.0, tar=1.0,
         dropout_rec=0.3),
    # Zoneout with masks (a training forward), and as evaluation runs it (the expectation).
    dict(BASE, name="zoneout", zoneout_h=0.3, zoneout_s=0.4),
    dict(BASE, name="zoneout_expectation", zoneout_h=0.3, zoneout_s=0.4, zone_masks=False),
    dict(BASE, name="awd_zoneout", L=3, T=6, B=3, tie=True, state=True, dropout_emb=0.1,
         dropout_in=0.4, dropout_hid=0.25, dropout_out=0.4, weight_drop=0.5, ar=2.0, tar=1.0,
         dropout_rec=0.3, zoneout_h=0.1, zoneout_s=0.2),
    # The layer-normalised cell alone, and with everything else.
    dict(BASE, name="layer_norm", layer_norm=True, state=True),
    dict(BASE, name="awd_layer_norm", L=3, T=6, B=3, tie=True, state=True, dropout_emb=0.1,
         dropout_in=0.4, dropout_hid=0.25, dropout_out=0.4, weight_drop=0.5, ar=2.0, tar=1.0,
         dropout_rec=0.3, zoneout_h=0.1, zoneout_s=0.2, layer_norm=True),
    # Per-layer widths (AWD-LSTM's shape in small: wide middle, top = E for the tie), everything on;
    # then the layer-normalised cell with them. h0, s0 and their gradients are the layers' [B,H_k]
    # blocks one after another (flat).
    dict(BASE, name="hidden_sizes", L=3, T=6, B=3, E=5, H=5, hidden=[7, 9, 5], tie=True,
         state=True, dropout_emb=0.1, dropout_in=0.4, dropout_hid=0.25, dropout_out=0.4,
         weight_drop=0.5, ar=2.0, tar=1.0, dropout_rec=0.3, zoneout_h=0.1, zoneout_s=0.2),
    dict(BASE, name="hidden_sizes_layer_norm", L=2, T=5, B=3, H=4, hidden=[8, 4], state=True,
         dropout_rec=0.3, layer_norm=True),
    # The projection (LSTMP): H is its size P, `hidden` the cells' widths; h0 and its gradient
    # are the layers' [B,P] blocks, s0's [B,H_k]. Alone; with everything AWD uses, tied (P = E),
    # recurrent dropout and zoneout; with layer norm.
    dict(BASE, name="projection", L=2, T=5, B=3, H=4, hidden=[7, 6], proj=4, state=True),
    dict(BASE, name="awd_projection", L=3, T=6, B=3, E=4, H=4, hidden=[7, 9, 6], proj=4,
         tie=True, state=True, dropout_emb=0.1, dropout_in=0.4, dropout_hid=0.25,
         dropout_out=0.4, weight_drop=0.5, ar=2.0, tar=1.0, dropout_rec=0.3, zoneout_h=0.1,
         zoneout_s=0.2),
    dict(BASE, name="projection_layer_norm", L=2, T=5, B=3, H=3, hidden=[6, 5], proj=3,
         state=True, dropout_rec=0.3, layer_norm=True),
]


def _seed(case):
    return int.from_bytes(case["name"].encode(), "little") % (2**32)


def build(case):
    g = torch.Generator().manual_seed(_seed(case))
    widths = case["hidden"] or [case["H"]] * case["L"]
    model = awd_twin.AwdTwin(case["V"], case["E"], widths, tie=case["tie"],
                             init=0.5, generator=g, zoneout_h=case["zoneout_h"],
                             zoneout_s=case["zoneout_s"], layer_norm=case["layer_norm"],
                             proj=case["proj"])
    T, B, L, H = case["T"], case["B"], case["L"], case["H"]
    tokens = torch.randint(0, case["V"], (T, B), generator=g)
    targets = torch.randint(0, case["V"], (T, B), generator=g)
    masks = model.draw_masks(B, case["dropout_emb"], case["dropout_in"], case["dropout_hid"],
                             case["dropout_out"], case["weight_drop"], generator=g,
                             dropout_rec=case["dropout_rec"])
    if case["zone_masks"]:
        masks.zone_h, masks.zone_s = model.draw_zoneout(T, B, generator=g)
    if case["hidden"]:  # flat: the layers' [B,P_k] (h) and [B,H_k] (s) blocks one after another
        h0 = (torch.rand(B * sum(model.out), generator=g, dtype=torch.float64) - 0.5)
        h0.requires_grad_()
        s0 = (torch.rand(B * sum(widths), generator=g, dtype=torch.float64) * 2 - 1)
        s0.requires_grad_()
    elif case["state"]:
        h0 = (torch.rand(L, B, H, generator=g, dtype=torch.float64) - 0.5).requires_grad_()
        s0 = (torch.rand(L, B, H, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_()
    else:
        h0 = torch.zeros(L, B, H, dtype=torch.float64, requires_grad=True)
        s0 = torch.zeros(L, B, H, dtype=torch.float64, requires_grad=True)
    return model, tokens, targets, masks, h0, s0


def layers(state, model, widths):
    """A state as the twin takes it: a list of [B,W_k], from [L,B,W] or from the flat blocks."""
    if state.dim() == 3:
        return list(state.unbind(0))
    B = state.numel() // sum(widths)
    return [part.view(B, w) for part, w in zip(state.split([B * w for w in widths]), widths)]


def compute(case):
    model, tokens, targets, masks, h0, s0 = build(case)
    loss, ce, _, _ = model.forward(tokens, targets, masks, case["ar"], case["tar"],
                                   layers(h0, model, model.out), layers(s0, model, model.hidden))
    loss.backward()
    out = {}
    for name, p in model.params.items():
        out[name] = p.detach().numpy()
        out["grad." + name] = p.grad.numpy()
    if masks.emb is not None:
        out["mask.emb"] = masks.emb.numpy()
    if masks.inp is not None:
        out["mask.in"] = masks.inp.numpy()
    for k, m in enumerate(masks.hid or []):
        out[f"mask.hid.{k}"] = m.numpy()
    if masks.out is not None:
        out["mask.out"] = masks.out.numpy()
    for k, m in enumerate(masks.weight or []):
        out[f"mask.weight.{k}"] = m.numpy()
    for k, m in enumerate(masks.rec or []):
        out[f"mask.rec.{k}"] = m.numpy()
    for k, m in enumerate(masks.zone_h or []):
        out[f"mask.zone_h.{k}"] = m.numpy()
    for k, m in enumerate(masks.zone_s or []):
        out[f"mask.zone_s.{k}"] = m.numpy()
    out["tokens"] = tokens.numpy().astype(np.int64)
    out["targets"] = targets.numpy().astype(np.int64)
    out["h0"] = h0.detach().numpy()
    out["s0"] = s0.detach().numpy()
    out["grad.h0"] = h0.grad.numpy()
    out["grad.s0"] = s0.grad.numpy()
    out["loss"] = np.array(loss.item(), dtype=np.float64)
    out["ce"] = np.array(ce.item(), dtype=np.float64)
    config = {"V": case["V"], "E": case["E"], "H": case["H"], "L": case["L"],
              "tie_weights": case["tie"]}
    for key in ("zoneout_h", "zoneout_s", "layer_norm", "hidden", "proj"):  # where on
        if case[key]:
            config[key] = case[key]
    meta = {
        "config": json.dumps(config),
        "ar": repr(case["ar"]),
        "tar": repr(case["tar"]),
        "generator": f"tools/make_awd_golden.py, torch {torch.__version__}, numpy {np.__version__}",
    }
    return out, meta


def selftest():
    torch.set_default_dtype(torch.float64)
    # 1. Without masks the twin is nn.LSTM (gate order i, f, g, o; both biases).
    g = torch.Generator().manual_seed(1)
    V, E, H, L, T, B = 7, 4, 4, 2, 6, 3
    twin = awd_twin.AwdTwin(V, E, [H] * L, generator=g, init=0.5)
    lstm = torch.nn.LSTM(E, H, num_layers=L)
    with torch.no_grad():
        for name, p in lstm.named_parameters():
            p.copy_(twin.params["rnn." + name])
    tokens = torch.randint(0, V, (T, B), generator=g)
    targets = torch.randint(0, V, (T, B), generator=g)
    _, _, h_n, s_n = twin.forward(tokens, targets)
    x = torch.nn.functional.embedding(tokens, twin.params["encoder.weight"])
    _, (h_ref, s_ref) = lstm(x)
    err = max((torch.stack(h_n) - h_ref).abs().max().item(), (torch.stack(s_n) - s_ref).abs().max().item())
    assert err < 1e-12, f"twin vs nn.LSTM: {err}"
    # ... and with a projection, nn.LSTM(proj_size=P) (its weight_hr_l{k}).
    P = 3
    twin = awd_twin.AwdTwin(V, E, [H] * L, generator=g, init=0.5, proj=P)
    lstm = torch.nn.LSTM(E, H, num_layers=L, proj_size=P)
    with torch.no_grad():
        for name, p in lstm.named_parameters():
            p.copy_(twin.params["rnn." + name])
    _, _, h_n, s_n = twin.forward(tokens, targets)
    x = torch.nn.functional.embedding(tokens, twin.params["encoder.weight"])
    _, (h_ref, s_ref) = lstm(x)
    err_p = max((torch.stack(h_n) - h_ref).abs().max().item(),
                (torch.stack(s_n) - s_ref).abs().max().item())
    assert err_p < 1e-12, f"twin vs nn.LSTM(proj_size): {err_p}"
    # 2. gradcheck of the objective with every regulariser on, as a function of every parameter.
    case = next(c for c in CASES if c["name"] == "awd_projection")
    model, tokens, targets, masks, h0, s0 = build(case)
    names = model.names()

    def objective(*ps):
        model.params = dict(zip(names, ps))
        return model.forward(tokens, targets, masks, case["ar"], case["tar"],
                             layers(h0, model, model.out), layers(s0, model, model.hidden))[0]

    ps = [model.params[n].detach().clone().requires_grad_() for n in names]
    assert torch.autograd.gradcheck(objective, ps, eps=1e-6, atol=1e-7), "gradcheck"
    print(f"selftest: twin = nn.LSTM ({err:.1e}), with proj_size ({err_p:.1e}); gradcheck passes "
          "on the AWD combination with a projection")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--selftest", action="store_true")
    a = ap.parse_args()
    torch.set_default_dtype(torch.float64)
    if a.selftest:
        selftest()
    os.makedirs(a.out, exist_ok=True)
    for case in CASES:
        tensors, meta = compute(case)
        path = os.path.join(a.out, case["name"] + ".safetensors")
        safetensors_np.save(path, tensors, meta)
        print(f"{path}: loss {float(tensors['loss']):.12g} (ce {float(tensors['ce']):.12g})")


if __name__ == "__main__":
    main()
