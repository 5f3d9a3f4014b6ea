#!/usr/bin/env python3
"""Writes tests/data/golden_cache/cache.safetensors: the continuous cache's loss (Grave et al. 2016)
on random top-layer outputs, probabilities and targets, computed the way AWD-LSTM's pointer.py
computes it, in numpy float64.

pointer.py keeps the whole history of outputs and one-hot next words as concatenated arrays,
slices the last `window` rows for each position, takes softmax(theta * history @ h_t) as the
attention, and mixes  p = lambda * (attention @ one_hot) + (1 - lambda) * p_model  over the whole
vocabulary. This script does the same (vocabulary-wide, no ring), with one deviation that lstmgrad
makes too (docs/cli.md): the cache applies as soon as the history holds a position, where
pointer.py waits until it holds more than `window`.

Usage: python3 tools/make_cache_golden.py [--out tests/data/golden_cache]
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_np  # noqa: E402


def cache_loss(h, p, y, window, theta, lam):
    """h [T,B,H], p [T,B,V], y [T,B] -> the sum of -log p_mix(y) over every position; each of the
    B streams has its own history."""
    T, B, H = h.shape
    V = p.shape[2]
    total = 0.0
    for b in range(B):
        hist = np.zeros((0, H))
        words = np.zeros((0, V))
        for t in range(T):
            dist = p[t, b]
            if len(hist) > 0:
                keys, nxt = hist[-window:], words[-window:]
                logits = theta * keys @ h[t, b]
                attn = np.exp(logits - logits.max())
                attn /= attn.sum()
                dist = lam * (attn @ nxt) + (1 - lam) * p[t, b]
            total -= np.log(dist[y[t, b]])
            hist = np.vstack([hist, h[t, b][None]])
            words = np.vstack([words, np.eye(V)[y[t, b]][None]])
    return total


def main():
    ap = argparse.ArgumentParser()
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "..", "tests", "data", "golden_cache"))
    a = ap.parse_args()
    rng = np.random.default_rng(2016)
    T, B, H, V, seq = 23, 2, 6, 5, 7  # windows of 7, 7, 7, 2: the history crosses windows
    window, theta, lam = 9, 0.8, 0.25  # the history wraps (more than 9 positions per stream)
    h = rng.uniform(-1, 1, (T, B, H))
    p = rng.uniform(0.05, 1, (T, B, V))
    p /= p.sum(axis=2, keepdims=True)
    y = rng.integers(0, V, (T, B))
    loss = cache_loss(h, p, y, window, theta, lam)
    os.makedirs(a.out, exist_ok=True)
    safetensors_np.save(
        os.path.join(a.out, "cache.safetensors"),
        {
            "h": h, "p": p, "target": y.astype(np.int64),
            "shape": np.array([T, B, H, V, seq], dtype=np.int64),
            "options": np.array([window, theta, lam]),
            "loss": np.array([loss]),
        },
        {"written_by": "tools/make_cache_golden.py"},
    )
    print(f"loss {loss:.15g}")


if __name__ == "__main__":
    main()
