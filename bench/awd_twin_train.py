#!/usr/bin/python3
"""AWD-LSTM's PTB recipe on the PyTorch twin (tools/awd_twin.py): the same model, the same
regularisers and the same training loop as `lstmgrad train` with bench/awd_ptb.sh's flags, in
PyTorch, so that both can be run side by side for quality (validation perplexity after the same
epochs) and speed (seconds per epoch at each side's best thread setting).

The loop, as lstmgrad's trainer (docs/cli.md, "AWD-LSTM's optimizer") and AWD-LSTM's main.py:
B contiguous streams; per window a length from AWD's jitter (base = seq w.p. 0.95 else seq/2,
length = max(5, int(N(base, 5))), at most 2 seq), the lr scaled by length/seq; fresh masks per
window; the objective CE(mean) + AR + TAR; clip the global norm; SGD with weight decay, switched
to torch.optim.ASGD (t0=0, lambd=0) by the non-monotone rule at the validations; validation of the
average once ASGD averages. --init-scheme as lstmgrad's: uniform (every parameter
uniform(-init, init)) or awd (AWD-LSTM's: the LSTM's parameters uniform(+-1/sqrt(H_k)), the readout
bias 0, the embedding uniform(-init, init)). Different random streams from lstmgrad's:
the two runs agree in distribution, not in bits.

Usage: bench/awd_twin_train.py --data PTB_DIR [--epochs 2] [--threads 2] [--max-updates N] ...
Prints one JSON line per validation and one per epoch ({"epoch", "seconds", "valid_ppl", ...}).
"""
import argparse
import json
import math
import os
import random
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
import awd_twin  # noqa: E402
from awd_twin import AwdTwin  # noqa: E402


def read_words(path, vocab, grow):
    return torch.tensor(awd_twin.read_words(path, vocab, grow), dtype=torch.int64)


def streams(ids, B):
    n = len(ids) // B
    return ids[: n * B].view(B, n).t().contiguous()  # [n,B]


def evaluate(model, data, seq, B):
    h = s = None
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, data.shape[0] - 1, seq):
            T = min(seq, data.shape[0] - 1 - i)
            _, ce, h, s = model.forward(data[i : i + T], data[i + 1 : i + 1 + T], None, 0, 0, h, s)
            total += float(ce) * T * B
            count += T * B
    return total / count


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--embed", type=int, default=400)
    ap.add_argument("--hidden", default="1150,1150,400")
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--eval-batch", type=int, default=10)
    ap.add_argument("--seq", type=int, default=70)
    ap.add_argument("--lr", type=float, default=30)
    ap.add_argument("--clip", type=float, default=0.25)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--max-updates", type=int, default=0, help="stop after this many (timing)")
    ap.add_argument("--dropout-in", type=float, default=0.65)
    ap.add_argument("--dropout-hid", type=float, default=0.3)
    ap.add_argument("--dropout-out", type=float, default=0.4)
    ap.add_argument("--dropout-emb", type=float, default=0.1)
    ap.add_argument("--weight-drop", type=float, default=0.5)
    ap.add_argument("--ar", type=float, default=2)
    ap.add_argument("--tar", type=float, default=1)
    ap.add_argument("--weight-decay", type=float, default=1.2e-6)
    ap.add_argument("--nonmono", type=int, default=5)
    ap.add_argument("--init", type=float, default=0.1)
    ap.add_argument("--init-scheme", choices=("uniform", "awd"), default="uniform")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rnd = random.Random(a.seed)
    gen = torch.Generator().manual_seed(a.seed)

    def path(name):
        for p in (f"ptb.{name}.txt", f"{name}.txt"):
            if os.path.exists(os.path.join(a.data, p)):
                return os.path.join(a.data, p)
        raise SystemExit(f"{a.data}: no {name} text")

    vocab = {}
    train = streams(read_words(path("train"), vocab, True), a.batch)
    valid = streams(read_words(path("valid"), vocab, False), a.eval_batch)
    hidden = [int(h) for h in a.hidden.split(",")]
    model = AwdTwin(len(vocab), a.embed, hidden, tie=True, dtype=torch.float32, init=a.init,
                    generator=gen)
    if a.init_scheme == "awd":
        with torch.no_grad():
            for name, p in model.params.items():
                if name.startswith("rnn."):
                    r = 1.0 / hidden[int(name.rsplit("_l", 1)[1])] ** 0.5
                    p.uniform_(-r, r, generator=gen)
                elif name == "decoder.bias":
                    p.zero_()
    params = list(model.params.values())
    opt = torch.optim.SGD(params, lr=a.lr, weight_decay=a.weight_decay)
    asgd, history, updates = False, [], 0
    for epoch in range(1, a.epochs + 1):
        t0, i, h, s = time.time(), 0, None, None
        tokens = 0
        while i < train.shape[0] - 2:
            base = a.seq if rnd.random() < 0.95 else a.seq / 2
            drawn = min(max(5, int(rnd.gauss(base, 5))), 2 * a.seq)
            T = min(drawn, train.shape[0] - 1 - i)  # AWD-LSTM: the lr by the drawn length
            for g in opt.param_groups:
                g["lr"] = a.lr * drawn / a.seq
            masks = model.draw_masks(a.batch, a.dropout_emb, a.dropout_in, a.dropout_hid,
                                     a.dropout_out, a.weight_drop, gen)
            h = None if h is None else [x.detach() for x in h]
            s = None if s is None else [x.detach() for x in s]
            loss, ce, h, s = model.forward(train[i : i + T], train[i + 1 : i + 1 + T], masks,
                                           a.ar, a.tar, h, s)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, a.clip)
            opt.step()
            i += drawn
            tokens += T * a.batch
            updates += 1
            if a.max_updates and updates >= a.max_updates:
                break
        train_seconds = time.time() - t0
        saved = None
        if asgd:  # validate the average, as AWD-LSTM does
            saved = [p.detach().clone() for p in params]
            with torch.no_grad():
                for p in params:
                    p.copy_(opt.state[p]["ax"])
        v = evaluate(model, valid, a.seq, a.eval_batch)
        if saved is not None:
            with torch.no_grad():
                for p, q in zip(params, saved):
                    p.copy_(q)
        if not asgd and len(history) > a.nonmono and v > min(history[: -a.nonmono]):
            opt = torch.optim.ASGD(params, lr=a.lr, t0=0, lambd=0.0, weight_decay=a.weight_decay)
            asgd = True
        history.append(v)
        seconds = time.time() - t0  # training and validation, as lstmgrad's wall_s counts
        print(json.dumps({"epoch": epoch, "updates": updates, "seconds": round(seconds, 2),
                          "tokens_per_s": round(tokens / train_seconds), "valid_loss": v,
                          "valid_ppl": math.exp(v), "asgd": asgd, "threads": a.threads}),
              flush=True)
        if a.max_updates and updates >= a.max_updates:
            break


if __name__ == "__main__":
    main()
