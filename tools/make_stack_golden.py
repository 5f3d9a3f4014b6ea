#!/usr/bin/python3
"""Writes tests/data/golden_stack/<case>.safetensors: PyTorch's nn.LSTM (float64) forward and
backward on a seeded problem, so that the C++ test of the public stack (tests/test_stack.cpp,
lstmgrad/stack.hpp) checks outputs, final states and every gradient against PyTorch with no
Python in CI.

    /usr/bin/python3 tools/make_stack_golden.py [--out tests/data/golden_stack]

Each file holds the problem (input [T,B,X], h0/c0 [L,B,H] when given, every parameter as
param.<nn.LSTM name>, the gradients flowing in: grad_output [T,B,H], grad_h_n, grad_c_n) and
PyTorch's results (output, h_n, c_n, grad.input, grad.h0, grad.c0, grad.<name>); metadata T, B,
X, H, L, D (directions), P (proj_size, 0: none). Cases with `lengths` ran as a PackedSequence:
their tensors are padded (zeros, and no gradient, past each sequence's end). With R = P or H,
h states are [L*D,B,R], c states [L*D,B,H], outputs [T,B,D*R]. The loss differentiated is
sum(grad_output * output) + sum(grad_h_n * h_n) + sum(grad_c_n * c_n). Seeded: a rerun writes
the same bytes on the same torch.
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_np  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "tests", "data", "golden_stack")

# name, T, B, X, H, L, initial state given; optional: bidirectional, lengths (a PackedSequence:
# non-increasing lengths per sequence, padded tensors in the file, zeros where padded), P
# (proj_size)
CASES = [
    dict(name="one_layer_state", T=4, B=3, X=5, H=4, L=1, state=True),
    dict(name="two_layers", T=6, B=2, X=3, H=5, L=2, state=False),
    dict(name="three_layers_long", T=25, B=3, X=4, H=6, L=3, state=True),
    dict(name="packed_two_layers", T=7, B=4, X=3, H=4, L=2, state=True, lengths=[7, 5, 5, 2]),
    dict(name="bidirectional", T=5, B=3, X=3, H=4, L=2, state=True, bidirectional=True),
    dict(name="bidirectional_packed", T=6, B=4, X=2, H=3, L=2, state=False, bidirectional=True,
         lengths=[6, 4, 3, 1]),
    dict(name="proj_two_layers", T=6, B=3, X=4, H=5, L=2, state=True, P=3),
    dict(name="proj_packed", T=5, B=3, X=3, H=4, L=2, state=True, P=2, lengths=[5, 3, 2]),
    dict(name="proj_bidirectional_packed", T=5, B=3, X=2, H=5, L=2, state=True, P=3,
         bidirectional=True, lengths=[5, 4, 1]),
]


def make_case(c, seed):
    torch.manual_seed(seed)
    T, B, X, H, L = c["T"], c["B"], c["X"], c["H"], c["L"]
    D = 2 if c.get("bidirectional") else 1
    P = c.get("P", 0)
    R = P or H  # h's width
    lstm = torch.nn.LSTM(X, H, L, bidirectional=D == 2, proj_size=P).double()
    with torch.no_grad():
        for p in lstm.parameters():
            p.uniform_(-0.8, 0.8)
    x = torch.empty(T, B, X, dtype=torch.float64).uniform_(-1, 1).requires_grad_()
    if c["state"]:
        h0 = torch.empty(L * D, B, R, dtype=torch.float64).uniform_(-0.5, 0.5)
        c0 = torch.empty(L * D, B, H, dtype=torch.float64).uniform_(-0.5, 0.5)
    else:
        h0 = torch.zeros(L * D, B, R, dtype=torch.float64)
        c0 = torch.zeros(L * D, B, H, dtype=torch.float64)
    h0.requires_grad_()
    c0.requires_grad_()
    gy = torch.empty(T, B, D * R, dtype=torch.float64).uniform_(-1, 1)
    ghn = torch.empty(L * D, B, R, dtype=torch.float64).uniform_(-1, 1)
    gcn = torch.empty(L * D, B, H, dtype=torch.float64).uniform_(-1, 1)
    lengths = c.get("lengths")
    if lengths:
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor(lengths))
        out, (hn, cn) = lstm(packed, (h0, c0))
        y = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=T)[0]
        for b, n in enumerate(lengths):  # padded steps carry no gradient
            gy[n:, b] = 0
    else:
        y, (hn, cn) = lstm(x, (h0, c0))
    loss = (y * gy).sum() + (hn * ghn).sum() + (cn * gcn).sum()
    loss.backward()
    t = {"input": x.detach(), "grad_output": gy, "grad_h_n": ghn, "grad_c_n": gcn,
         "output": y.detach(), "h_n": hn.detach(), "c_n": cn.detach(),
         "grad.input": x.grad, "grad.h0": h0.grad, "grad.c0": c0.grad}
    if c["state"]:
        t["h0"], t["c0"] = h0.detach(), c0.detach()
    if lengths:
        t["lengths"] = torch.tensor(lengths, dtype=torch.int64)
    for name, p in lstm.named_parameters():
        t["param." + name] = p.detach()
        t["grad." + name] = p.grad
    meta = {k: str(c[k]) for k in ("T", "B", "X", "H", "L")}
    meta["D"], meta["P"] = str(D), str(P)
    meta["torch"] = torch.__version__
    return {k: v.contiguous().numpy() for k, v in t.items()}, meta


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=DEFAULT_OUT, help="folder for the files")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    for seed, c in enumerate(CASES):
        tensors, meta = make_case(c, 1500 + seed)
        path = os.path.join(a.out, c["name"] + ".safetensors")
        safetensors_np.save(path, tensors, meta)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
