#!/usr/bin/python3
"""A functional PyTorch twin of lstmgrad's regularised language model (AWD-LSTM's regularisers).

Written from torch.nn.functional pieces and an explicit LSTM cell loop (no nn.LSTM, no
WeightDrop module), so that it runs on Debian's torch 1.13 and on current releases alike, and
takes its masks as explicit tensors: the golden files (tools/make_awd_golden.py) hand the same
masks to lstmgrad; a training script can let the model draw its own (`draw_masks`).

The model, in lstmgrad's parameter names (docs/design.md, "Regularisation"):

    E' = encoder.weight * m_emb[:, None]          embedding dropout (rows, lookup only)
    x_t = E'[token_t] * m_in                      locked mask [B,E], the same at every t
    layer k: U' = weight_hh_l{k} * m_weight[k]    weight drop (DropConnect on U)
             i, f, g, o = split(x W_ih^T + b_ih + (h * m_rec[k]) U'^T + b_hh)
             s~ = f s + i g; h~ = o tanh(s~)          m_rec[k] locked [B,H]: recurrent dropout
             s = d_s s + (1 - d_s) s~; h = d_h h + (1 - d_h) h~   zoneout: d [T,B,H] of 0/1 per
                                                      step, or the rate itself (expectation)
             layer norm (layer_norm=True): z = LN(x W_ih^T) + LN(h U'^T) + b over 4H,
             h~ = o tanh(LN(s~)) over H (F.layer_norm, eps 1e-5, gains and biases per layer)
             projection (proj=P, LSTMP): h~ = (o tanh s~) W_hr^T, P wide (rnn.weight_hr_l{k})
             the next layer reads h * m_hid[k]    locked [B,H]
    top:     d_t = h_t * m_out                    locked [B,H]
    logits = d W_dec^T + b_dec                    W_dec = encoder.weight (undropped) when tied
    objective = CE(mean) + ar * mean(d^2) + tar * mean((h_{t+1} - h_t)^2)   (h: top, before m_out)

Each mask entry is 0 or 1/(1-p). Per-layer hidden sizes are allowed here (AWD's 400/1150/400) even
where lstmgrad's engine takes one H for every layer.
"""

import math

import torch
import torch.nn.functional as F


def read_words(path, vocab, grow):
    """A word-level text as lstmgrad reads it: whitespace-separated words, <eos> after each line,
    ids in the order of first appearance. `vocab` (word -> id) grows when `grow`; otherwise an
    unknown word ends the program with a message naming the file."""
    ids = []
    with open(path) as f:
        for line in f:
            for w in line.split() + ["<eos>"]:
                if w not in vocab:
                    if not grow:
                        raise SystemExit(f"{path}: word {w!r} not in the training vocabulary")
                    vocab[w] = len(vocab)
                ids.append(vocab[w])
    return ids


class Masks:
    """The masks of one forward; None where a regulariser is off."""

    def __init__(self, emb=None, inp=None, hid=None, out=None, weight=None, rec=None,
                 zone_h=None, zone_s=None):
        self.emb = emb        # [V]
        self.inp = inp        # [B,E]
        self.hid = hid        # list of L-1 [B,H_k] (None entries allowed), or None
        self.out = out        # [B,H_top]
        self.weight = weight  # list of L [4H_k,H_k], or None
        self.rec = rec        # list of L [B,H_k] (Gal and Ghahramani's mask on h_{t-1}), or None
        self.zone_h = zone_h  # list of L [T,B,H_k] of 0/1 (1: keep h_{t-1}), or None: expectation
        self.zone_s = zone_s  # the same for s


def _mask(shape, p, generator, dtype):
    if p <= 0:
        return None
    keep = torch.bernoulli(torch.full(shape, 1 - p, dtype=dtype), generator=generator)
    return keep / (1 - p)


class AwdTwin:
    """Parameters as a dict of leaf tensors named as lstmgrad's layout (encoder.weight,
    rnn.weight_ih_l{k}, rnn.weight_hh_l{k}, rnn.bias_ih_l{k}, rnn.bias_hh_l{k}, decoder.weight
    unless tied, decoder.bias)."""

    def __init__(self, V, E, hidden, tie=False, dtype=torch.float64, init=0.1, generator=None,
                 zoneout_h=0.0, zoneout_s=0.0, layer_norm=False, proj=0):
        self.V, self.E, self.tie, self.dtype = V, E, tie, dtype
        self.layer_norm = layer_norm
        self.zoneout_h, self.zoneout_s = zoneout_h, zoneout_s
        self.hidden = list(hidden) if isinstance(hidden, (list, tuple)) else [hidden]
        self.L = len(self.hidden)
        self.proj = proj
        self.out = [proj or H for H in self.hidden]  # each layer's output (h) width
        if tie and self.out[-1] != E:
            raise ValueError(f"tie needs the top output size ({self.out[-1]}) equal to E ({E})")
        self.params = {}

        def u(*shape):
            t = (torch.rand(*shape, generator=generator, dtype=dtype) * 2 - 1) * init
            return t.requires_grad_()

        self.params["encoder.weight"] = u(V, E)
        for k, H in enumerate(self.hidden):
            n_in = E if k == 0 else self.out[k - 1]
            self.params[f"rnn.weight_ih_l{k}"] = u(4 * H, n_in)
            self.params[f"rnn.weight_hh_l{k}"] = u(4 * H, self.out[k])
            self.params[f"rnn.bias_ih_l{k}"] = u(4 * H)
            self.params[f"rnn.bias_hh_l{k}"] = u(4 * H)
            if proj:
                self.params[f"rnn.weight_hr_l{k}"] = u(proj, H)
            if layer_norm:  # gains near 1 (u's range around 1), biases small, all random
                for part, n in (("ih", 4 * H), ("hh", 4 * H), ("cell", H)):
                    self.params[f"rnn.weight_ln_{part}_l{k}"] = (1 + u(n).detach()).requires_grad_()
                    self.params[f"rnn.bias_ln_{part}_l{k}"] = u(n)
        if not tie:
            self.params["decoder.weight"] = u(V, self.out[-1])
        self.params["decoder.bias"] = u(V)

    def names(self):
        return list(self.params)

    def draw_masks(self, B, dropout_emb=0, dropout_in=0, dropout_hid=0, dropout_out=0,
                   weight_drop=0, generator=None, dropout_rec=0):
        d = self.dtype
        return Masks(
            emb=_mask((self.V,), dropout_emb, generator, d),
            inp=_mask((B, self.E), dropout_in, generator, d),
            hid=[_mask((B, P), dropout_hid, generator, d) for P in self.out[:-1]]
            if dropout_hid > 0 else None,
            out=_mask((B, self.out[-1]), dropout_out, generator, d),
            weight=[_mask((4 * H, P), weight_drop, generator, d)
                    for H, P in zip(self.hidden, self.out)]
            if weight_drop > 0 else None,
            rec=[_mask((B, P), dropout_rec, generator, d) for P in self.out]
            if dropout_rec > 0 else None)

    def draw_zoneout(self, T, B, generator=None):
        """Zoneout's masks for a training forward: d = 1 (keep) with probability p."""
        def keep(p, widths):
            if p <= 0:
                return None
            return [torch.bernoulli(torch.full((T, B, H), p, dtype=self.dtype), generator=generator)
                    for H in widths]
        return keep(self.zoneout_h, self.out), keep(self.zoneout_s, self.hidden)

    def forward(self, tokens, targets, masks=None, ar=0.0, tar=0.0, h0=None, s0=None):
        """tokens, targets: int64 [T,B]. h0, s0: lists of L [B,H_k] or None (zeros).
        Returns (objective, cross_entropy, h_n list, s_n list)."""
        m = masks or Masks()
        P = self.params
        T, B = tokens.shape
        table = P["encoder.weight"]
        if m.emb is not None:
            table = table * m.emb[:, None]
        x = F.embedding(tokens, table)  # [T,B,E]
        if m.inp is not None:
            x = x * m.inp
        h_n, s_n = [], []
        top = None
        for k, H in enumerate(self.hidden):
            W_ih, U = P[f"rnn.weight_ih_l{k}"], P[f"rnn.weight_hh_l{k}"]
            if m.weight is not None and m.weight[k] is not None:
                U = U * m.weight[k]
            b = P[f"rnn.bias_ih_l{k}"] + P[f"rnn.bias_hh_l{k}"]
            rec = m.rec[k] if m.rec is not None else None
            h = h0[k] if h0 is not None else torch.zeros(B, self.out[k], dtype=self.dtype)
            s = s0[k] if s0 is not None else torch.zeros(B, H, dtype=self.dtype)
            pre_x = F.linear(x, W_ih)  # [T,B,4H]: the input projection of all steps
            if self.layer_norm:
                ln = {part: (P[f"rnn.weight_ln_{part}_l{k}"], P[f"rnn.bias_ln_{part}_l{k}"])
                      for part in ("ih", "hh", "cell")}
                pre_x = F.layer_norm(pre_x, (4 * H,), *ln["ih"], eps=1e-5)
            outs = []
            for t in range(T):
                rec_part = F.linear(h if rec is None else h * rec, U)
                if self.layer_norm:
                    rec_part = F.layer_norm(rec_part, (4 * H,), *ln["hh"], eps=1e-5)
                z = pre_x[t] + rec_part + b
                i, f, g, o = z.chunk(4, dim=1)
                s_new = torch.sigmoid(f) * s + torch.sigmoid(i) * torch.tanh(g)
                s_out = F.layer_norm(s_new, (H,), *ln["cell"], eps=1e-5) if self.layer_norm else s_new
                h_new = torch.sigmoid(o) * torch.tanh(s_out)
                if self.proj:
                    h_new = F.linear(h_new, P[f"rnn.weight_hr_l{k}"])
                if self.zoneout_s > 0:
                    d = m.zone_s[k][t] if m.zone_s is not None else self.zoneout_s
                    s_new = d * s + (1 - d) * s_new
                if self.zoneout_h > 0:
                    d = m.zone_h[k][t] if m.zone_h is not None else self.zoneout_h
                    h_new = d * h + (1 - d) * h_new
                s, h = s_new, h_new
                outs.append(h)
            out = torch.stack(outs)  # [T,B,H]
            h_n.append(h)
            s_n.append(s)
            if k + 1 < self.L:
                x = out * m.hid[k] if m.hid is not None and m.hid[k] is not None else out
            else:
                top = out
        dropped = top * m.out if m.out is not None else top
        W_dec = P["encoder.weight"] if self.tie else P["decoder.weight"]
        logits = F.linear(dropped, W_dec, P["decoder.bias"])
        ce = F.cross_entropy(logits.reshape(T * B, self.V), targets.reshape(T * B))
        loss = ce
        if ar > 0:
            loss = loss + ar * dropped.pow(2).mean()
        if tar > 0 and T > 1:
            loss = loss + tar * (top[1:] - top[:-1]).pow(2).mean()
        return loss, ce, h_n, s_n

    def perplexity(self, ce):
        return math.exp(float(ce))
