"""lstmgrad.torch.LSTM: a drop-in for torch.nn.LSTM on the CPU, on lstmgrad's engine.

Same constructor, parameter names and shapes (state_dicts load both ways), forward signature and
outputs as torch.nn.LSTM, for float32 and float64 CPU tensors: padded input (time-major or
batch_first, batched or unbatched), PackedSequence input, optional (h0, c0), multiple layers,
bias=False, dropout between layers, bidirectional, proj_size. The engine runs through a
torch.autograd.Function on the tensors' memory (numpy views), so this module links no libtorch.

Not supported, with an error naming the argument: tensors not on the CPU or of another dtype
(ValueError), device= other than the CPU (ValueError).

Errors for bad input are ValueError with the tensor's name, its shape and what was expected.
"""

import math
import os
import threading
import warnings

import numpy as np
import torch
from torch.autograd.function import once_differentiable
from torch.nn.utils.rnn import PackedSequence

from . import _core
from ._core import empty_cache  # the outputs' memory cache, as torch.cuda.empty_cache

__all__ = ["LSTM", "set_num_threads", "get_num_threads", "empty_cache"]

_ENGINES = {torch.float32: _core.LstmFloat32, torch.float64: _core.LstmFloat64}
_BIDIRECTIONAL = {torch.float32: _core.BidirectionalLstmFloat32, torch.float64: _core.BidirectionalLstmFloat64}
_threads = 0  # the engine's threads for every module; 0: the engine's own choice


def set_num_threads(n):
    """The threads every lstmgrad.torch.LSTM's engine runs on from now on (0, the default: the
    engine's own choice, as `lstmgrad train` makes it: the work split for the machine's cores, or
    OMP_NUM_THREADS where set, and run by as many threads as pay on a busy machine). torch's own
    threads (torch.set_num_threads) are separate and change nothing here."""
    global _threads
    _threads = int(n)


def _machine_threads():
    """The engine's split by default: OMP_NUM_THREADS (its first number) where set, else the cores
    this process may run on. Not the OpenMP runtime's current count: importing torch sets that
    (to torch's own intra-op threads, 1 on a 2-core VM), which would halve the engine's speed."""
    first = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if first.isdigit() and int(first) > 0:
        return int(first)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def get_num_threads():
    return _threads


class _Engine:
    """One C++ stack with the activations of one forward; `generation` counts its forwards, so
    that a backward can tell whether its forward's activations are still there."""

    def __init__(self, dtype, X, H, L, D, P):
        self.core = (_BIDIRECTIONAL if D == 2 else _ENGINES)[dtype](X, H, L, P)
        self.generation = 0
        self.rows = 0  # the most T*B it has run: its activations' memory grows to fit


class _Pool:
    """Free engines by (dtype, X, H, L, D, P). A forward that records a graph leases one until the
    graph is freed (_Lease); one that does not gives it back at once. So several calls of one
    module in one graph each keep their own activations. A call takes the free engine that fits
    its T*B rows most tightly (else the largest, which grows): the segments of a PackedSequence
    find the engines they had last time, and memory stays near what one graph needs."""

    def __init__(self):
        self.free = {}
        self.lock = threading.Lock()  # a module may run in several Python threads at once

    def take(self, key, rows, threads=None, precision="f32"):
        with self.lock:
            free = self.free.get(key)
            engine = None
            if free:
                fits = [e for e in free if e.rows >= rows]
                engine = min(fits, key=lambda e: e.rows) if fits else max(free, key=lambda e: e.rows)
                free.remove(engine)
        if engine is None:
            engine = _Engine(*key)
        n = _threads if threads is None else threads
        if n == 0:  # the machine's cores split the work; the running threads chosen by measuring
            engine.core.set_team(_machine_threads(), 0)
        else:
            engine.core.set_threads(n)
        engine.core.set_precision(precision)
        engine.generation += 1
        engine.rows = max(engine.rows, rows)
        return engine

    def give(self, key, engine):
        with self.lock:
            self.free.setdefault(key, []).append(engine)

    def reclaim(self, key, engine, generation):
        """Takes `engine` back out of the free list if it is there and still holds the activations
        of forward number `generation`; else False."""
        with self.lock:
            free = self.free.get(key, [])
            if engine.generation != generation or engine not in free:  # identity: no __eq__
                return False
            free.remove(engine)
            return True

    def __getstate__(self):  # a copied or pickled module starts with no engines
        return {}

    def __setstate__(self, state):
        self.__init__()


def _np(t):
    """A numpy view of a CPU tensor's memory (a copy only when it is not contiguous)."""
    return None if t is None else t.detach().contiguous().numpy()


def _layers(weights, per_layer):
    """The engine's tuples (weight_ih, weight_hh, bias_ih, bias_hh, weight_hr) from nn.LSTM's
    tensors, per_layer of them for each layer: weight_ih, weight_hh[, bias_ih, bias_hh][, weight_hr]
    (2 or 4 without a projection, 3 or 5 with one); absent ones are None."""
    w = [_np(t) for t in weights]
    bias, proj = per_layer >= 4, per_layer % 2 == 1
    out = []
    for i in range(0, len(w), per_layer):
        u = w[i : i + per_layer]
        out.append((u[0], u[1], u[2] if bias else None, u[3] if bias else None, u[-1] if proj else None))
    return out


class _Lease:
    """An engine taken from a pool for one forward's graph, held from the forward to the end of
    its backward, then back in the pool with the activations still in it. A training loop that
    keeps a step's output alive into the next step (`out, hidden = model(x, hidden)`) so runs on
    one engine, not two in turn (twice the activations' memory). A second backward through the
    graph (retain_graph) takes the engine back if no forward has used it since (`generation`),
    else a fresh one and runs the forward again from the saved inputs: the same activations, bit
    for bit, so the same gradients."""

    def __init__(self, pool, key, rows):
        self.pool, self.key, self.rows = pool, key, rows
        self.engine = pool.take(key, rows)
        self.generation, self.held = self.engine.generation, True

    def reclaim(self):
        """The engine holding this forward's activations, or None if they are gone (run the
        forward again on the engine renew() takes)."""
        if not self.held:
            self.held = self.pool.reclaim(self.key, self.engine, self.generation)
        return self.engine if self.held else None

    def renew(self):
        self.engine = self.pool.take(self.key, self.rows)
        self.generation, self.held = self.engine.generation, True
        return self.engine

    def release(self):
        if self.held:
            self.held = False
            self.pool.give(self.key, self.engine)

    def __del__(self):
        self.release()


def _engine_forward(engine, x, h0, c0, weights, per_layer, batch_sizes):
    if batch_sizes is None:
        return engine.core.forward(_np(x), _layers(weights, per_layer), _np(h0), _np(c0))
    return engine.core.forward_packed(_np(x), _layers(weights, per_layer), batch_sizes, _np(h0), _np(c0))


class _StackFunction(torch.autograd.Function):
    """y, h_n, c_n = the L-layer stack over x [T,B,X] (or packed rows [N,X] with batch_sizes, a
    numpy int64 array) from (h0, c0) [L,B,H] (None: zeros), with weights per layer (weight_ih,
    weight_hh[, bias_ih, bias_hh])."""

    @staticmethod
    def forward(ctx, pool, key, per_layer, batch_sizes, x, h0, c0, *weights):
        lease = _Lease(pool, key, _rows(x, batch_sizes))
        y, hn, cn = _engine_forward(lease.engine, x, h0, c0, weights, per_layer, batch_sizes)
        ctx.set_materialize_grads(False)
        ctx.lease, ctx.per_layer, ctx.batch_sizes = lease, per_layer, batch_sizes
        ctx.save_for_backward(x, h0, c0, *weights)  # torch checks they were not modified in place
        return torch.from_numpy(y), torch.from_numpy(hn), torch.from_numpy(cn)

    @staticmethod
    @once_differentiable  # the backward is the engine's: a double backward raises, clearly
    def backward(ctx, gy, ghn, gcn):
        x, h0, c0, *weights = ctx.saved_tensors  # raises if one was modified in place since
        lease = ctx.lease
        engine = lease.reclaim()
        if engine is None:  # a second backward, the engine reused since the first: forward again
            engine = lease.renew()
            _engine_forward(engine, x, h0, c0, weights, ctx.per_layer, ctx.batch_sizes)
        need = ctx.needs_input_grad
        try:
            dx, dh0, dc0, grads = engine.core.backward(
                _np(gy), _np(ghn), _np(gcn), None, need[4], need[5], need[6]
            )
        finally:
            lease.release()
        out = [None, None, None, None]
        out += [None if a is None else torch.from_numpy(a) for a in (dx, dh0, dc0)]
        for layer in grads:
            out += [torch.from_numpy(a) for a in layer if a is not None]
        return tuple(out)


def _rows(x, batch_sizes):
    return x.shape[0] if batch_sizes is not None else x.shape[0] * x.shape[1]


def _run_stack(pool, x, h0, c0, weights, per_layer, batch_sizes=None, D=1):
    """The stack on x [T,B,X] (or packed rows [N,X] with batch_sizes), of one direction or two
    (D = 2: BidirectionalLstm): through the autograd Function when a gradient may be asked for,
    straight to the engine otherwise."""
    L = len(weights) // per_layer // D
    P = weights[per_layer - 1].shape[0] if per_layer % 2 else 0  # weight_hr [P,H]
    key = (x.dtype, x.shape[-1], weights[1].shape[0] // 4, L, D, P)
    tensors = [x, h0, c0, *weights]
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return _StackFunction.apply(pool, key, per_layer, batch_sizes, x, h0, c0, *weights)
    engine = pool.take(key, _rows(x, batch_sizes))
    try:
        y, hn, cn = _engine_forward(engine, x, h0, c0, weights, per_layer, batch_sizes)
    finally:
        pool.give(key, engine)
    return torch.from_numpy(y), torch.from_numpy(hn), torch.from_numpy(cn)


def _segments(batch_sizes):
    """Runs of equal batch size in a PackedSequence: [(row offset, steps, rows)]."""
    bs = batch_sizes.tolist()
    segs, t0, off = [], 0, 0
    for t in range(1, len(bs) + 1):
        if t == len(bs) or bs[t] != bs[t0]:
            segs.append((off, t - t0, bs[t0]))
            off += (t - t0) * bs[t0]
            t0 = t
    return segs


def _scan(pool, data, segs, h0, c0, weights, per_layer, reverse):
    """A stack over packed rows data [N,X] (time-major, segments of equal batch size, rows sorted
    by decreasing length) from h0 [L,B,R], c0 [L,B,H] (B = the first segment's rows; None: zeros;
    R = P with a projection, else H). Returns (y [N,R], h_n [L,B,R], c_n [L,B,H]); each
    sequence's final state is at its own last step.
    reverse: each sequence is read from its last step to its first (bidirectional's second
    direction). Several segments run as one packed engine call (Lstm::forward_packed)."""
    R = weights[1].shape[1]  # weight_hh [4H,R]
    if len(segs) == 1:  # padded: one segment, all rows the same length
        off, n, b = segs[0]
        x = data.view(n, b, -1)
        if reverse:
            x = x.flip(0)
        y, hn, cn = _run_stack(pool, x, h0, c0, weights, per_layer)
        if reverse:
            y = y.flip(0)
        return y.reshape(n * b, R), hn, cn
    bs = torch.tensor([b for _, n, b in segs for _ in range(n)], dtype=torch.int64)
    if reverse:  # each sequence from its own last step: a permutation of the rows (its own inverse)
        order = _reversal(bs)
        data = data.index_select(0, order)
    y, hn, cn = _run_stack(pool, data, h0, c0, weights, per_layer, bs.numpy())
    if reverse:
        y = y.index_select(0, order)
    return y, hn, cn


def _reversal(bs):
    """The rows of a packed batch with batch sizes bs [T] with each sequence's steps reversed:
    row (t, b) takes row (len_b - 1 - t, b)."""
    T, B = len(bs), int(bs[0])
    lengths = (bs.unsqueeze(1) > torch.arange(B)).sum(0)  # [B]
    off = torch.cumsum(bs, 0) - bs  # [T] first row of each step
    t = torch.repeat_interleave(torch.arange(T), bs)  # [N] the step of each row
    b = torch.arange(int(bs.sum())) - off[t]  # [N] its sequence
    return off[lengths[b] - 1 - t] + b


class LSTM(torch.nn.Module):
    """torch.nn.LSTM's interface on lstmgrad's engine (CPU, float32 and float64).

    Extra keywords (not in nn.LSTM): threads, the engine's threads for this module (None: the
    value of lstmgrad.torch.set_num_threads); precision, "f32" or "bf16" (float32 parameters
    only: bfloat16 GEMM operands with float32 sums, on a CPU with AVX512_BF16, about 1.4-1.8x
    the float32 speed and agreeing with it to about 1e-2 of each tensor's scale)."""

    def __init__(
        self,
        input_size,
        hidden_size,
        num_layers=1,
        bias=True,
        batch_first=False,
        dropout=0.0,
        bidirectional=False,
        proj_size=0,
        device=None,
        dtype=None,
        *,
        threads=None,
        precision="f32",
    ):
        super().__init__()
        if precision not in ("f32", "bf16"):
            raise ValueError(f"lstmgrad.torch.LSTM: precision={precision!r}: 'f32' or 'bf16'")
        if precision == "bf16" and not _core.bf16_supported():
            raise ValueError("lstmgrad.torch.LSTM: precision='bf16': this CPU has no AVX512_BF16")
        if precision == "bf16" and (dtype or torch.get_default_dtype()) != torch.float32:
            raise ValueError("lstmgrad.torch.LSTM: precision='bf16' needs float32 parameters")
        if not isinstance(proj_size, int) or isinstance(proj_size, bool) or proj_size < 0:
            raise ValueError(f"lstmgrad.torch.LSTM: proj_size={proj_size!r}: expected an int >= 0")
        if proj_size and proj_size >= int(hidden_size):
            raise ValueError("proj_size has to be smaller than hidden_size")  # nn.LSTM's words
        if device is not None and torch.device(device).type != "cpu":
            raise ValueError(f"lstmgrad.torch.LSTM: device={device}: only the CPU is supported")
        if dtype is not None and dtype not in _ENGINES:
            raise ValueError(f"lstmgrad.torch.LSTM: dtype={dtype}: float32 or float64 only")
        if not isinstance(dropout, (int, float)) or not 0 <= dropout <= 1 or isinstance(dropout, bool):
            raise ValueError("dropout should be a number in range [0, 1] representing the probability "
                             "of an element being zeroed")
        if int(num_layers) < 1 or int(hidden_size) < 1 or int(input_size) < 1:
            raise ValueError("input_size, hidden_size and num_layers must be >= 1, got "
                             f"{input_size}, {hidden_size}, {num_layers}")
        if dropout > 0 and int(num_layers) == 1:
            warnings.warn("dropout option adds dropout after all but last recurrent layer, so non-zero "
                          f"dropout expects num_layers greater than 1, but got dropout={dropout} and "
                          f"num_layers={num_layers}")  # nn.LSTM's warning
        self.mode = "LSTM"
        self.input_size, self.hidden_size = int(input_size), int(hidden_size)
        self.num_layers, self.bias, self.batch_first = int(num_layers), bool(bias), bool(batch_first)
        self.dropout, self.bidirectional = float(dropout), bool(bidirectional)
        self.proj_size = int(proj_size)
        self.threads, self.precision = threads, precision
        self._pool = _Pool()
        D, H, P = 2 if bidirectional else 1, self.hidden_size, self.proj_size
        R = P or H  # h's width
        kw = {"dtype": dtype or torch.get_default_dtype()}
        self._flat_weights_names = []
        for k in range(self.num_layers):
            for d in range(D):
                sfx = f"_l{k}" + ("_reverse" if d else "")
                in_k = self.input_size if k == 0 else D * R
                shapes = [("weight_ih", (4 * H, in_k)), ("weight_hh", (4 * H, R))]
                if self.bias:
                    shapes += [("bias_ih", (4 * H,)), ("bias_hh", (4 * H,))]
                if P:
                    shapes += [("weight_hr", (P, H))]
                for name, shape in shapes:
                    self.register_parameter(name + sfx, torch.nn.Parameter(torch.empty(shape, **kw)))
                    self._flat_weights_names.append(name + sfx)
        self.reset_parameters()

    def reset_parameters(self):
        """nn.LSTM's: every parameter uniform in [-1/sqrt(H), 1/sqrt(H)]."""
        k = 1.0 / math.sqrt(self.hidden_size)
        for w in self.parameters():
            torch.nn.init.uniform_(w, -k, k)

    def flatten_parameters(self):
        """nn.LSTM's call to pack its weights for cuDNN: nothing to do here."""

    @property
    def all_weights(self):
        return [[getattr(self, n) for n in self._layer_names(i)] for i in range(self._units())]

    def _units(self):
        return self.num_layers * (2 if self.bidirectional else 1)

    def _per_layer(self):
        """Tensors per layer and direction: weight_ih, weight_hh[, bias_ih, bias_hh][, weight_hr]."""
        return (4 if self.bias else 2) + (1 if self.proj_size else 0)

    def _layer_names(self, i):
        per = self._per_layer()
        return self._flat_weights_names[i * per : (i + 1) * per]

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        if self.proj_size:
            s += f", proj_size={self.proj_size}"
        return s

    def _weights(self, units):
        return [getattr(self, n) for i in units for n in self._layer_names(i)]

    def _check(self, name, t, shape):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.device.type != "cpu":
            raise ValueError(f"{name}: on {t.device}; lstmgrad.torch.LSTM runs on the CPU only")
        dtype = self.weight_ih_l0.dtype
        if t.dtype not in _ENGINES:
            raise ValueError(f"{name}: dtype {t.dtype}; lstmgrad.torch.LSTM takes float32 or float64")
        if t.dtype != dtype:
            raise ValueError(f"{name}: dtype {t.dtype}, the module's parameters are {dtype} "
                             "(convert one of them with .float() or .double())")
        if shape is not None and tuple(t.shape) != tuple(shape):
            raise ValueError(f"{name}: shape {tuple(t.shape)}, expected {tuple(shape)}")

    def forward(self, input, hx=None):
        for name in self._flat_weights_names:
            p = getattr(self, name)
            if p.device.type != "cpu" or p.dtype not in _ENGINES:
                raise ValueError(f"{name}: {p.dtype} on {p.device}; lstmgrad.torch.LSTM runs on "
                                 "float32 or float64 CPU parameters")
        D, H, U = 2 if self.bidirectional else 1, self.hidden_size, self._units()
        R = self.proj_size or H  # h's width
        packed = isinstance(input, PackedSequence)
        if packed:
            data, batch_sizes, sorted_idx, unsorted_idx = input
            self._check("input.data", data, None)
            if data.dim() != 2 or data.shape[1] != self.input_size:
                raise ValueError(f"input.data: shape {tuple(data.shape)}, expected "
                                 f"(N, {self.input_size}) with input_size={self.input_size}")
            bs = batch_sizes
            if bs.dim() != 1 or len(bs) == 0 or bool((bs[1:] > bs[:-1]).any()) or int(bs[-1]) < 1:
                raise ValueError(f"input.batch_sizes: {bs.tolist()}; expected positive and "
                                 "non-increasing (lengths sorted in decreasing order)")
            B = int(bs[0])
            segs = _segments(bs)
            x = data
            batched = True
        else:
            self._check("input", input, None)
            if input.dim() not in (2, 3) or input.shape[-1] != self.input_size:
                raise ValueError(f"input: shape {tuple(input.shape)}, expected "
                                 f"({'B, T' if self.batch_first else 'T, B'}, {self.input_size}) "
                                 f"or (T, {self.input_size}) with input_size={self.input_size}")
            batched = input.dim() == 3
            x = input if batched else input.unsqueeze(1)
            if batched and self.batch_first:
                x = x.transpose(0, 1)
            T, B = x.shape[0], x.shape[1]
            if T < 1 or B < 1:
                raise ValueError(f"input: shape {tuple(input.shape)}; needs at least one step and one "
                                 "sequence")
            segs = [(0, T, B)]
            x = x.reshape(T * B, self.input_size)
        h0 = c0 = None
        if hx is not None:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise ValueError("hx: expected a tuple (h0, c0)")
            h0, c0 = hx
            self._check("h0", h0, (U, B, R) if batched else (U, R))
            self._check("c0", c0, (U, B, H) if batched else (U, H))
            if not batched:
                h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
            if packed and sorted_idx is not None:
                h0, c0 = h0.index_select(1, sorted_idx), c0.index_select(1, sorted_idx)
        y, hn, cn = self._layers(x, segs, h0, c0)
        if packed:
            if unsorted_idx is not None:
                hn, cn = hn.index_select(1, unsorted_idx), cn.index_select(1, unsorted_idx)
            return PackedSequence(y, batch_sizes, sorted_idx, unsorted_idx), (hn, cn)
        T, B = segs[0][1], segs[0][2]
        y = y.view(T, B, D * R)
        if self.batch_first and batched:
            y = y.transpose(0, 1)
        if not batched:
            y, hn, cn = y.squeeze(1), hn.squeeze(1), cn.squeeze(1)
        return y, (hn, cn)

    def _layers(self, x, segs, h0, c0):
        """x [N,X] packed rows -> (y [N,D*R], h_n [L*D,B,R], c_n [L*D,B,H])."""
        per = self._per_layer()
        D, L = 2 if self.bidirectional else 1, self.num_layers
        drop = self.dropout > 0 and self.training and L > 1
        if not drop:  # the whole stack, both directions, in one engine call
            off, n, b = segs[0]
            w = self._weights(range(L * D))
            if len(segs) == 1:  # padded
                y, hn, cn = _run_stack(self._pool_for(), x.view(n, b, -1), h0, c0, w, per, None, D)
                return y.reshape(n * b, D * (self.proj_size or self.hidden_size)), hn, cn
            bs = np.array([b for _, n, b in segs for _ in range(n)], dtype=np.int64)
            return _run_stack(self._pool_for(), x, h0, c0, w, per, bs, D)
        hs, cs = [], []
        for k in range(L):  # layer by layer: directions side by side, dropout between layers
            outs = []
            for d in range(D):
                i = k * D + d
                st = (None, None) if h0 is None else (h0[i : i + 1], c0[i : i + 1])
                y, hn, cn = _scan(self._pool_for(), x, segs, *st, self._weights([i]), per, d == 1)
                outs.append(y)
                hs.append(hn)
                cs.append(cn)
            x = outs[0] if D == 1 else torch.cat(outs, dim=1)
            if drop and k + 1 < L:  # nn.LSTM's call, so the same generator draws the same mask
                x = torch.dropout(x, self.dropout, True)
        return x, torch.cat(hs, 0), torch.cat(cs, 0)

    def _pool_for(self):
        if self.threads is None and self.precision == "f32":
            return self._pool
        return _ThreadedPool(self._pool, self.threads, self.precision)


class _ThreadedPool:
    """The module's pool with the module's own thread count and precision."""

    def __init__(self, pool, threads, precision):
        self.pool, self.threads, self.precision = pool, threads, precision

    def take(self, key, rows):
        return self.pool.take(key, rows, self.threads, self.precision)

    def give(self, key, engine):
        self.pool.give(key, engine)

    def reclaim(self, key, engine, generation):
        return self.pool.reclaim(key, engine, generation)
