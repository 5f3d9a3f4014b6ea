#!/usr/bin/python3
"""Variable-length batches: nn.LSTM and lstmgrad.torch.LSTM on a PackedSequence and on the padded
batch, forward + backward (docs/python.md; pytorch issue 149194 for nn.LSTM's packed path).

    PYTHONPATH=build/python /usr/bin/python3 bench/torch_packed.py [--runs 3] [--threads 1]

The batch: 64 sequences with lengths uniform in [100, 1000] (seed 0), X = H = 256, one layer,
float32; torch and lstmgrad each on --threads threads. Median of --runs after one warm-up run.
"""

import argparse
import statistics
import time

import torch
from torch.nn.utils.rnn import pack_padded_sequence

import lstmgrad.torch as lt


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sequences", type=int, default=64)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    lt.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(100, 1001, (a.sequences,), generator=g).sort(descending=True).values
    X = H = 256
    T = int(lengths[0])
    x = torch.randn(T, a.sequences, X, generator=g)
    for b, n in enumerate(lengths.tolist()):
        x[n:, b] = 0
    ref = torch.nn.LSTM(X, H)
    mine = lt.LSTM(X, H)
    mine.load_state_dict(ref.state_dict())

    def padded(module):
        def step():
            xi = x.clone().requires_grad_()
            y, _ = module(xi)
            y.sum().backward()
        return step

    def packed(module):
        def step():
            xi = x.clone().requires_grad_()
            y, _ = module(pack_padded_sequence(xi, lengths))
            y.data.sum().backward()
        return step

    cases = [("nn.LSTM padded", padded(ref)), ("nn.LSTM packed", packed(ref)),
             ("lstmgrad padded", padded(mine)), ("lstmgrad packed", packed(mine))]
    tokens = int(lengths.sum())
    print(f"{a.sequences} sequences, {tokens} tokens ({100 * tokens / (T * a.sequences):.0f}% of "
          f"the padded {T} x {a.sequences}), X = H = {X}, {a.threads} thread(s)")
    medians = {}
    for name, step in cases:
        step()  # warm-up
        times = []
        for _ in range(a.runs):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        medians[name] = statistics.median(times)
        print(f"{name:>16}: {medians[name]:8.3f} s (median of {a.runs})")
    print(f"lstmgrad packed vs nn.LSTM packed: {medians['nn.LSTM packed'] / medians['lstmgrad packed']:.1f}x; "
          f"vs its own padded: {medians['lstmgrad padded'] / medians['lstmgrad packed']:.2f}x")


if __name__ == "__main__":
    main()
