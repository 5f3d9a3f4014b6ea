"""lstmgrad: an LSTM stack with a hand-derived backward pass, from numpy (docs/python.md).

    import numpy as np, lstmgrad
    lstm = lstmgrad.Lstm(input_size=3, hidden_size=4, num_layers=2, dtype=np.float64)
    params = lstm.init_params(seed=0)                      # nn.LSTM's names and shapes
    y, h_n, s_n = lstm.forward(x, params)                  # x [T,B,X] -> y [T,B,H], [L,B,H] x2
    dx, dh0, ds0, grads = lstm.backward(dy, dh_n, ds_n)    # grads: name -> array

The language model (float64, the command line's reference path): load_model / save_model
(model files, docs/cli.md), load_batch, grad(config, params, batch) (what `lstmgrad grad`
computes), exercise2() (the handout's Exercise 2, what `lstmgrad exercise` prints).

s is the cell state (PyTorch's c). Arrays are time-major and of the engine's dtype (float32 or
float64); C-contiguous arrays are read in place. Bad input raises ValueError naming the argument.
The stack's output arrays take their memory from a cache that keeps what dead arrays held (up to
512 MiB idle, set_cache_limit), so that a loop does not pay page faults every step:
empty_cache() frees it, cache_info() says what it holds.
`lstmgrad.torch.LSTM` is the drop-in for torch.nn.LSTM (import it explicitly; it needs torch).
"""

import json

import numpy as np

from . import _core
from ._core import (InputError, bf16_supported, cache_info, empty_cache, parameter_layout,
                    set_cache_limit)

__all__ = ["Lstm", "InputError", "parameter_layout", "load_model", "save_model", "load_batch", "grad",
           "exercise2", "empty_cache", "cache_info", "set_cache_limit"]

_ENGINES = {np.dtype(np.float32): _core.LstmFloat32, np.dtype(np.float64): _core.LstmFloat64}
_BIDIRECTIONAL = {
    np.dtype(np.float32): _core.BidirectionalLstmFloat32,
    np.dtype(np.float64): _core.BidirectionalLstmFloat64,
}
_KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")


class Lstm:
    """The L-layer LSTM stack: forward over x [T,B,X] with optional h0, s0 [L,B,H]; backward
    from dL/dy [T,B,H] and optional dL/dh_n, dL/ds_n. Parameters are a dict with nn.LSTM's names
    (weight_ih_l{k} [4H,in], weight_hh_l{k} [4H,H], bias_ih_l{k}, bias_hh_l{k} [4H]; a layer
    without both biases has none). threads: the engine's threads (0: its own choice).
    bidirectional: nn.LSTM's, with its `_reverse` parameters; outputs [T,B,2H], states [2L,B,H]
    (layer k's forward direction at 2k, its reverse at 2k+1). proj_size: nn.LSTM's (P >= 1;
    nn.LSTM also needs P < H), every h projected to P by weight_hr_l{k} [P,H]: y and h [.., P]
    (2P bidirectional), s stays H wide, weight_hh_l{k} [4H,P], layers above the first read P (2P)
    inputs."""

    def __init__(self, input_size, hidden_size, num_layers=1, dtype=np.float64, threads=0,
                 bidirectional=False, proj_size=0):
        dtype = np.dtype(dtype)
        if dtype not in _ENGINES:
            raise ValueError(f"dtype: {dtype}, expected float32 or float64")
        self.dtype = dtype
        self.bidirectional = bool(bidirectional)
        engines = _BIDIRECTIONAL if self.bidirectional else _ENGINES
        self._engine = engines[dtype](int(input_size), int(hidden_size), int(num_layers), int(proj_size))
        self._engine.set_threads(int(threads))
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.proj_size = int(proj_size)

    def set_threads(self, n):
        """The engine's threads for the calls that follow (0: chosen by the engine)."""
        self._engine.set_threads(int(n))

    def set_precision(self, precision):
        """'f32', or 'bf16' (float32 engines on a CPU with AVX512_BF16, else ValueError): the
        GEMMs' operands rounded to bfloat16, their sums and everything else float32."""
        self._engine.set_precision(str(precision))

    def set_dropout(self, p, seed=0):
        """Dropout between layers for the forwards that follow (Lstm::set_dropout: lstmgrad's own
        masks from `seed`; p = 0 turns it off). Not for a bidirectional stack."""
        if self.bidirectional:
            raise NotImplementedError("lstmgrad.Lstm.set_dropout: bidirectional stacks have no dropout "
                                      "(lstmgrad.torch.LSTM applies torch.dropout between layers)")
        self._engine.set_dropout(float(p), int(seed))

    def parameter_layout(self, bias=True):
        """[(name, shape)] in nn.LSTM's order."""
        H, P = self.hidden_size, self.proj_size
        if not self.bidirectional:
            return parameter_layout(self.input_size, H, self.num_layers, bias, P)
        R, out = P or H, []
        for name, k in self._units():
            shapes = [(4 * H, self.input_size if k == 0 else 2 * R), (4 * H, R), (4 * H,), (4 * H,),
                      (P, H)]
            kinds = list(zip(_KINDS, shapes))
            out += [(kind + name, s) for kind, s in kinds[: 4 if bias else 2] + kinds[4:] * bool(P)]
        return out

    def _units(self):
        """(suffix, layer) of every direction of every layer, in nn.LSTM's order."""
        D = ["", "_reverse"] if self.bidirectional else [""]
        return [(f"_l{k}{d}", k) for k in range(self.num_layers) for d in D]

    def init_params(self, seed=0, bias=True):
        """nn.LSTM's initialisation, uniform in [-1/sqrt(H), 1/sqrt(H)], from numpy's generator."""
        rng = np.random.default_rng(seed)
        k = 1.0 / np.sqrt(self.hidden_size)
        return {
            name: rng.uniform(-k, k, size=shape).astype(self.dtype)
            for name, shape in self.parameter_layout(bias)
        }

    def _layers(self, params):
        missing = [n for n, _ in self.parameter_layout(False) if n not in params]
        if missing:
            raise ValueError(f"params: missing {', '.join(missing)}")
        known = {n for n, _ in self.parameter_layout(True)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"params: unknown names {', '.join(unknown)}")
        kinds = _KINDS if self.proj_size else _KINDS[:4]
        return [tuple(params.get(kind + name) for kind in kinds) for name, _ in self._units()]

    def forward(self, input, params, h0=None, s0=None):
        """Returns (y [T,B,H], h_n [L,B,H], s_n [L,B,H]) and keeps what backward needs: input
        and params must stay unchanged until then."""
        return self._engine.forward(input, self._layers(params), h0, s0)

    def forward_packed(self, input, params, batch_sizes, h0=None, s0=None):
        """Sequences of different lengths in PyTorch's PackedSequence layout: batch_sizes [T] the
        rows of each step (non-increasing), input [N,X] step 0's rows, then step 1's, ...
        Returns (y [N,H], h_n, s_n [L,B,H], B = batch_sizes[0]), each sequence's final state at
        its own last step; backward then takes grad_output [N,H] and returns dL/dx [N,X]."""
        layers = self._layers(params)
        return self._engine.forward_packed(input, layers, np.asarray(batch_sizes, dtype=np.int64), h0, s0)

    def backward(self, grad_output=None, grad_h_n=None, grad_s_n=None):
        """Backward of the last forward; None stands for zeros. Returns (dL/dx [T,B,X],
        dL/dh0, dL/ds0 [L,B,H], {name: dL/dparam})."""
        dx, dh0, ds0, layers = self._engine.backward(grad_output, grad_h_n, grad_s_n)
        grads = {}
        for (unit, _), g in zip(self._units(), layers):
            for kind, a in zip(_KINDS, g):
                if a is not None:
                    grads[kind + unit] = a
        return dx, dh0, ds0, grads


def load_model(path):
    """A model file (docs/cli.md): {"config": dict (input, readout, V, X, H, L), "params":
    {name: float64 array}, "metadata": dict, "vocab": list}. InputError (a ValueError) names
    the file and the tensor for a bad file."""
    config, params, metadata, vocab = _core.load_model(str(path))
    return {"config": json.loads(config), "params": params, "metadata": metadata, "vocab": vocab}


def save_model(path, config, params, vocab=None, metadata=None):
    """Writes a model file atomically; config as load_model gives it, params {name: array}."""
    _core.save_model(str(path), json.dumps(config), params, list(vocab or []), dict(metadata or {}))


def load_batch(path, config):
    """A batch file for `config`: {"tokens" [T,B] int64 or "input" [T,B,X], "target" [T,B] int64
    or "target_probs" [T,B,V], optionally "h0", "s0" [L,B,H]}."""
    return _core.load_batch(str(path), json.dumps(config))


def grad(config, params, batch, reduction="mean", threads=0):
    """The loss of the language model `config` with `params` on `batch` (a dict as load_batch
    gives) and its gradients, in float64: {"loss", "grads": {name: array}, "h_n", "s_n",
    "grad_input" (dense input), "grad_h0", "grad_s0"}. reduction: mean, sum or batch_mean."""
    return _core.gradient(json.dumps(config), params, batch, reduction, int(threads))


def exercise2(values=None, lr=0.1):
    """The handout's Exercise 2 (docs/derivation.md): the handout's numbers, or those of a
    --values JSON file; returns every intermediate as a dict."""
    return _core.exercise2(None if values is None else str(values), float(lr))
