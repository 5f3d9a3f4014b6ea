#!/usr/bin/python3
"""The PyTorch side of the Tiny Shakespeare comparison (bench/char_shakespeare.sh).

The same recipe as `lstmgrad train` with the flags that script passes: character level
(vocabulary = the training file's bytes, sorted), embedding -> 2-layer nn.LSTM -> linear readout,
every parameter uniform(-init, init), B contiguous streams, windows of `seq` steps with the state
carried (detached) and reset to zeros at each epoch, loss = mean cross-entropy over the window's
T*B positions, global gradient-norm clipping, Adam (PyTorch defaults), validation over the valid
file's B streams after each epoch. Prints one JSON line per epoch.

Run with Debian's PyTorch: /usr/bin/python3 bench/torch_char_lm.py --train T --valid V ...
"""
import argparse
import json
import time

import torch


def batchify(ids, B):
    n = len(ids) // B
    return torch.tensor(ids[: n * B], dtype=torch.long).view(B, n).t().contiguous()  # [n, B]


class Model(torch.nn.Module):
    def __init__(self, V, E, H, L):
        super().__init__()
        self.encoder = torch.nn.Embedding(V, E)
        self.rnn = torch.nn.LSTM(E, H, num_layers=L)
        self.decoder = torch.nn.Linear(H, V)

    def forward(self, x, state):
        out, state = self.rnn(self.encoder(x), state)
        return self.decoder(out), state


def zeros(args, B):
    z = torch.zeros(args.layers, B, args.hidden)
    return (z, z.clone())


def run_epoch(model, data, args, opt=None):
    B = data.size(1)
    state = zeros(args, B)
    total, count = 0.0, 0
    for k in range(0, data.size(0) - 1, args.seq):
        T = min(args.seq, data.size(0) - 1 - k)
        x, y = data[k:k + T], data[k + 1:k + 1 + T]
        state = tuple(s.detach() for s in state)
        logits, state = model(x, state)
        loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))
        if opt is not None:
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            opt.step()
        total += loss.item() * T * B
        count += T * B
    return total / count


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", required=True)
    p.add_argument("--valid", required=True)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--embed", type=int, default=128)
    p.add_argument("--seq", type=int, default=50)
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--clip", type=float, default=5.0)
    p.add_argument("--init", type=float, default=0.08)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    train = open(args.train, "rb").read()
    valid = open(args.valid, "rb").read()
    vocab = sorted(set(train))
    index = {c: k for k, c in enumerate(vocab)}
    train_data = batchify([index[c] for c in train], args.batch)
    valid_data = batchify([index[c] for c in valid], args.batch)
    model = Model(len(vocab), args.embed, args.hidden, args.layers)
    for w in model.parameters():
        torch.nn.init.uniform_(w, -args.init, args.init)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    start = time.time()
    for epoch in range(1, args.epochs + 1):
        model.train()
        t0 = time.time()
        train_loss = run_epoch(model, train_data, args, opt)
        model.eval()
        with torch.no_grad():
            valid_loss = run_epoch(model, valid_data, args)
        tokens = (train_data.size(0) - 1) * args.batch
        print(json.dumps({"epoch": epoch, "train_loss": train_loss, "valid_loss": valid_loss,
                          "tokens_per_s": tokens / (time.time() - t0),
                          "wall_s": time.time() - start}), flush=True)


if __name__ == "__main__":
    main()
