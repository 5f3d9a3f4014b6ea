#!/usr/bin/env python3
"""Tokens/s of data-parallel lstmgrad training on 1 to 64 nodes, modelled from measured numbers.

Each node runs one process of `lstmgrad train` with B_node streams (weak scaling: the global batch
grows with the nodes, as data-parallel language-model training does). One update costs

    t(N) = t_compute + t_sum(N)
    t_sum(N) = 2 (N-1)/N * S / bandwidth + 2 (N-1) * latency

t_compute: one node's forward, backward and update at B_node streams (measured: `lstmgrad train`
on this 2-core machine, tokens/s of one process). S: the bytes of one update's sum (the LSTM and
readout gradients, and the embedding rows the window used; measured by counting). The sum is a
reduce-scatter and an all-gather of point-to-point messages (src/cli/mpi_collective.cpp): each rank
sends and receives 2 (N-1)/N of S, and posts 2 (N-1) messages, whose start-up cost `latency` is
counted as if the network card handled them one after another (pessimistic for small N).

Overlapped (--comm-overlap, the default): the readout's piece starts when the readout's backward
ends, each layer's when its backward ends, and the last layer's and the embedding's rows (the
`tail` bytes) when the backward ends. The link is busy from the first start, so what the backward
left after the first start (`window`, a share of t_compute, measured as overlap_window_s) hides
all of the sum but the tail at best:

    t(N) = t_compute + max(tail * t_sum(N), t_sum(N) - window * t_compute)

That assumes something other than the computing cores moves the bytes (a network card's DMA, an
idle core for the TCP stack): on the 2-core development machine, both cores computing, the copies
only move into the backward and nothing is gained (measured, docs/scaling.md).

Usage: bench/scaling_model.py [T_SMALL T_MEDIUM [WINDOW_SMALL WINDOW_MEDIUM]]
(seconds per update on one node, and the backward's share after the first piece starts)
"""

PRESETS = {
    # name: (tokens per update per node, measured seconds per update on one node, bytes summed)
    # zaremba-small: T 20 x B 20; 4.65M parameters, of which the sum sends the LSTM and readout
    # (2.65M) and the embedding rows a window uses (235 of 10000 rows x 200 on average in PTB).
    "zaremba-small": (400, None, 4 * (2_653_200 + 235 * 200)),
    # zaremba-medium: T 35 x B 20; 19.8M parameters: LSTM 6.77M, readout 6.51M, embedding rows
    # 361 of 10000 x 650 on average in PTB.
    "zaremba-medium": (700, None, 4 * (6_770_400 + 6_510_000 + 361 * 650)),
}

# The tail of each preset's sum (layer 0's tensors and the embedding rows), a share of its bytes.
TAIL = {"zaremba-small": (321_600 + 235 * 200) / (2_653_200 + 235 * 200),
        "zaremba-medium": (3_385_200 + 361 * 650) / (6_770_400 + 6_510_000 + 361 * 650)}

LINKS = {"10 Gb/s": 10e9 / 8 * 0.9, "100 Gb/s": 100e9 / 8 * 0.9}  # 90% of the line rate
LATENCY = 20e-6  # seconds per message over Ethernet (loopback TCP measured 14 us: docs/scaling.md)
NODES = [1, 2, 4, 8, 16, 32, 64]


def t_sum(n, S, bw):
    return 0 if n == 1 else 2 * (n - 1) / n * S / bw + 2 * (n - 1) * LATENCY


def exposed(n, name, S, bw, t_c, window):
    """Seconds of an update's sum not hidden behind the backward (window None: not overlapped)."""
    ts = t_sum(n, S, bw)
    return ts if window is None else max(TAIL[name] * ts, ts - window * t_c)


def main():
    import sys
    # seconds per update on one node, and the backward's share after the first piece starts,
    # measured (docs/scaling.md gives the commands)
    arg = [float(a) for a in sys.argv[1:]]
    step = {"zaremba-small": arg[0] if len(arg) > 0 else 0.0408,
            "zaremba-medium": arg[1] if len(arg) > 1 else 0.25}
    window = {"zaremba-small": arg[2] if len(arg) > 2 else 0.2,
              "zaremba-medium": arg[3] if len(arg) > 3 else 0.2}
    head = " | ".join(f"N={n}" for n in NODES)
    print("Weak scaling: every node B = 20 streams (global batch 20 N); tokens/s, and the share of")
    print("an update spent waiting for the sum; the sum after the backward, or overlapped with it.\n")
    print(f"| preset | link | sum | summed per update | compute per update | {head} |")
    print("|---|---|---|---|---|" + "---|" * len(NODES))
    for name, (tokens, _, S) in PRESETS.items():
        t_c = step[name]
        for link, bw in LINKS.items():
            for how, w in (("after", None), ("overlapped", window[name])):
                cells = []
                for n in NODES:
                    te = exposed(n, name, S, bw, t_c, w)
                    cells.append(f"{n * tokens / (t_c + te) / 1000:.0f}k "
                                 f"({100 * te / (t_c + te):.0f}%)")
                print(f"| {name} | {link} | {how} | {S / 1e6:.1f} MB | {t_c * 1000:.1f} ms | "
                      + " | ".join(cells) + " |")
    print("\nStrong scaling: the recipe's global batch of 20 split over N nodes (compute taken as")
    print("t_compute / N, which small per-node batches do not reach); tokens/s.\n")
    strong = [n for n in NODES if n <= 20] + [20]
    strong = sorted(set(strong))
    print("| preset | link | " + " | ".join(f"N={n}" for n in strong) + " | sum > compute from |")
    print("|---|---|" + "---|" * len(strong) + "---|")
    for name, (tokens, _, S) in PRESETS.items():
        t_c = step[name]
        for link, bw in LINKS.items():
            cross = next((n for n in strong if t_sum(n, S, bw) > t_c / n), None)
            cells = " | ".join(f"{tokens / (t_c / n + t_sum(n, S, bw)) / 1000:.0f}k" for n in strong)
            print(f"| {name} | {link} | {cells} | {'N=' + str(cross) if cross else '-'} |")


if __name__ == "__main__":
    main()
