"""lstmgrad.torch.LSTM against torch.nn.LSTM: outputs, final states and every gradient (input,
h0, c0, each parameter) on random shapes for every constructor option, padded and packed, with
and without an initial state; gradcheck in float64; state_dict round trips; a word language
model trained 50 steps with each; the errors for bad input. Skipped where torch is missing.

Tolerances: float64 1e-10 (both sum in different orders: agreement is ~1e-15 relative per op);
float32 1e-5 (the engine's float32 uses polynomial sigmoid/tanh, ~1e-7 relative each)."""

import copy
import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import lstmgrad.torch as lt  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def pair(dtype, seed=0, **kw):
    """An nn.LSTM and an lstmgrad LSTM with the same weights."""
    torch.manual_seed(seed)
    ref = torch.nn.LSTM(**kw).to(dtype)
    mine = lt.LSTM(**kw).to(dtype)
    mine.load_state_dict(ref.state_dict())
    return ref, mine


def close(got, want, tol, what):
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    err = (got - want).abs().max().item() if got.numel() else 0.0
    scale = max(want.abs().max().item() if want.numel() else 0.0, 1.0)
    assert err <= tol * scale, f"{what}: max abs diff {err:.3g} > {tol * scale:.3g}"


def run(module, x, hx, gy, gh, gc):
    """Forward, then backward of sum(gy*y) + sum(gh*h_n) + sum(gc*c_n); returns outputs and
    gradients (input, h0, c0, each parameter by name)."""
    for p in module.parameters():
        p.grad = None
    x = x.detach().clone().requires_grad_()
    hx = None if hx is None else tuple(t.detach().clone().requires_grad_() for t in hx)
    y, (hn, cn) = module(x, hx)
    loss = (y * gy).sum() + (hn * gh).sum() + (cn * gc).sum()
    loss.backward()
    grads = {"input": x.grad}
    if hx is not None:
        grads["h0"], grads["c0"] = hx[0].grad, hx[1].grad
    grads.update({n: p.grad for n, p in module.named_parameters()})
    return {"output": y.detach(), "h_n": hn.detach(), "c_n": cn.detach()}, grads


OPTIONS = [
    dict(num_layers=L, bias=b, batch_first=bf, bidirectional=bd)
    for L, b, bf, bd in itertools.product([1, 2, 3], [True, False], [False, True], [False, True])
] + [  # with a projection (proj_size: a random size below H)
    dict(num_layers=L, bias=b, batch_first=L == 2, bidirectional=bd, proj=True)
    for L, b, bd in itertools.product([1, 2, 3], [True, False], [False, True])
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
@pytest.mark.parametrize("with_state", [False, True])
def test_padded_matches_nn_lstm(dtype, opts, with_state):
    rng = np.random.default_rng(hash((str(opts), with_state)) % 2**32)
    T, B, X, H = (int(v) for v in rng.integers(1, 7, 4))
    opts = dict(opts)
    P = 0
    if opts.pop("proj", False):
        H = max(H, 2)
        P = opts["proj_size"] = int(rng.integers(1, H))
    R = P or H  # h's width
    ref, mine = pair(dtype, seed=int(rng.integers(1000)), input_size=X, hidden_size=H, **opts)
    D, L = 2 if opts["bidirectional"] else 1, opts["num_layers"]
    shape = (B, T, X) if opts["batch_first"] else (T, B, X)
    x = torch.randn(shape, dtype=dtype)
    hx = (torch.randn(L * D, B, R, dtype=dtype), torch.randn(L * D, B, H, dtype=dtype)) if with_state else None
    yshape = shape[:2] + (D * R,)
    gy, gh, gc = torch.randn(yshape, dtype=dtype), torch.randn(L * D, B, R, dtype=dtype), torch.randn(L * D, B, H, dtype=dtype)
    want_out, want_grad = run(ref, x, hx, gy, gh, gc)
    got_out, got_grad = run(mine, x, hx, gy, gh, gc)
    for k in want_out:
        close(got_out[k], want_out[k], TOL[dtype], k)
    assert got_grad.keys() == want_grad.keys()
    for k in want_grad:
        close(got_grad[k], want_grad[k], TOL[dtype], "grad " + k)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("enforce_sorted", [True, False])
@pytest.mark.parametrize("proj_size", [0, 3])
def test_packed_matches_nn_lstm(dtype, bidirectional, with_state, enforce_sorted, proj_size):
    torch.manual_seed(3)
    B, X, H, L = 5, 3, 4, 2
    R = proj_size or H  # h's width
    lengths = torch.tensor([7, 7, 5, 2, 1]) if enforce_sorted else torch.tensor([2, 7, 1, 5, 7])
    ref, mine = pair(dtype, input_size=X, hidden_size=H, num_layers=L, bidirectional=bidirectional,
                     proj_size=proj_size)
    D = 2 if bidirectional else 1
    x = torch.randn(7, B, X, dtype=dtype)
    hx = (torch.randn(L * D, B, R, dtype=dtype), torch.randn(L * D, B, H, dtype=dtype)) if with_state else None
    gy = torch.randn(7, B, D * R, dtype=dtype)
    gh, gc = torch.randn(L * D, B, R, dtype=dtype), torch.randn(L * D, B, H, dtype=dtype)

    def packed_run(module):
        xx = x.detach().clone().requires_grad_()
        h = None if hx is None else tuple(t.detach().clone().requires_grad_() for t in hx)
        for p in module.parameters():
            p.grad = None
        out, (hn, cn) = module(pack_padded_sequence(xx, lengths, enforce_sorted=enforce_sorted), h)
        y, ylen = pad_packed_sequence(out)
        assert ylen.tolist() == lengths.tolist()
        ((y * gy).sum() + (hn * gh).sum() + (cn * gc).sum()).backward()
        g = {"input": xx.grad, **{n: p.grad for n, p in module.named_parameters()}}
        if h is not None:
            g["h0"], g["c0"] = h[0].grad, h[1].grad
        return {"output": y.detach(), "h_n": hn.detach(), "c_n": cn.detach()}, g

    want_out, want_grad = packed_run(ref)
    got_out, got_grad = packed_run(mine)
    for k in want_out:
        close(got_out[k], want_out[k], TOL[dtype], k)
    for k in want_grad:
        close(got_grad[k], want_grad[k], TOL[dtype], "grad " + k)


def test_unbatched_input_matches_nn_lstm():
    ref, mine = pair(torch.float64, input_size=3, hidden_size=4, num_layers=2)
    x = torch.randn(5, 3, dtype=torch.float64)
    hx = (torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64))
    (y1, (h1, c1)), (y2, (h2, c2)) = ref(x, hx), mine(x, hx)
    for a, b, n in ((y2, y1, "output"), (h2, h1, "h_n"), (c2, c1, "c_n")):
        close(a.detach(), b.detach(), 1e-10, n)


@pytest.mark.parametrize("proj_size", [0, 2])
def test_dropout_draws_nn_lstm_masks(proj_size):
    # In training, dropout between layers through torch.dropout, in nn.LSTM's order: from the same
    # generator state, the same masks and so the same results and gradients.
    ref, mine = pair(torch.float64, input_size=3, hidden_size=5, num_layers=3, dropout=0.5,
                     proj_size=proj_size)
    R = proj_size or 5
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    gy, gh, gc = torch.randn(4, 2, R, dtype=torch.float64), torch.randn(3, 2, R, dtype=torch.float64), torch.randn(3, 2, 5, dtype=torch.float64)
    torch.manual_seed(11)
    want_out, want_grad = run(ref, x, None, gy, gh, gc)
    torch.manual_seed(11)
    got_out, got_grad = run(mine, x, None, gy, gh, gc)
    for k in want_out:
        close(got_out[k], want_out[k], 1e-10, k)
    for k in want_grad:
        close(got_grad[k], want_grad[k], 1e-10, "grad " + k)
    mine.eval()
    ref.eval()  # evaluation: no dropout
    close(mine(x)[0].detach(), ref(x)[0].detach(), 1e-10, "eval output")


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("packed", [False, True])
def test_options_together_match_nn_lstm(bidirectional, packed):
    # Dropout in training (the layer-by-layer path), a projection, no bias, with or without both
    # directions and a PackedSequence: the same generator state gives nn.LSTM's results.
    kw = dict(input_size=3, hidden_size=5, num_layers=3, dropout=0.4, bias=False,
              bidirectional=bidirectional, proj_size=2)
    ref, mine = pair(torch.float64, seed=4, **kw)
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    lengths = torch.tensor([6, 5, 3, 1])
    results = []
    for m in (ref, mine):
        torch.manual_seed(7)
        xx = x.clone().requires_grad_()
        out, (h, c) = m(pack_padded_sequence(xx, lengths) if packed else xx)
        y = pad_packed_sequence(out)[0] if packed else out
        (y.pow(2).sum() + h.sum() + c.pow(2).sum()).backward()
        results.append({"output": y.detach(), "h_n": h.detach(), "c_n": c.detach(), "grad input": xx.grad,
                        **{"grad " + n: p.grad for n, p in m.named_parameters()}})
    for k, want in results[0].items():
        close(results[1][k], want, 1e-10, k)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("proj_size", [0, 1])
def test_gradcheck_float64(bidirectional, proj_size):
    torch.manual_seed(5)
    m = lt.LSTM(3, 2, num_layers=2, bidirectional=bidirectional, proj_size=proj_size).double()
    D = 2 if bidirectional else 1
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2 * D, 2, proj_size or 2, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(2 * D, 2, 2, dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in m.named_parameters()]

    def f(x, h0, c0, *params):
        y, (hn, cn) = _call_with(m, names, params, x, h0, c0)
        return y, hn, cn

    params = [p.detach().clone().requires_grad_() for p in m.parameters()]
    assert torch.autograd.gradcheck(f, (x, h0, c0, *params), eps=1e-6, atol=1e-7)


def _call_with(m, names, params, x, h0, c0):
    """m(x, (h0, c0)) with its parameters replaced by `params` (torch 1.13 has no torch.func)."""
    from torch.nn.utils import stateless

    return stateless.functional_call(m, dict(zip(names, params)), (x, (h0, c0)))


def test_state_dict_round_trips_both_ways():
    for kw in (dict(num_layers=2), dict(num_layers=2, bidirectional=True, bias=False),
               dict(num_layers=2, bidirectional=True, proj_size=2)):
        ref = torch.nn.LSTM(4, 3, **kw)
        mine = lt.LSTM(4, 3, **kw)
        assert list(mine.state_dict().keys()) == list(ref.state_dict().keys())
        for (n1, p1), (n2, p2) in zip(mine.named_parameters(), ref.named_parameters()):
            assert n1 == n2 and p1.shape == p2.shape
        mine.load_state_dict(ref.state_dict())
        back = torch.nn.LSTM(4, 3, **kw)
        back.load_state_dict(mine.state_dict())
        for k, v in ref.state_dict().items():
            assert torch.equal(back.state_dict()[k], v), k
        x = torch.randn(3, 2, 4)
        close(mine(x)[0].detach(), back(x)[0].detach(), 1e-5, "output after the round trip")


def test_word_language_model_trains_the_same_50_steps():
    # Embedding -> LSTM -> Linear -> cross-entropy, SGD, from the same weights and batches:
    # the same losses at every step (float64, 1e-9).
    V, E, H, T, B = 30, 8, 10, 6, 4
    torch.manual_seed(9)
    data = torch.randint(0, V, (50, T + 1, B))

    def make(cls):
        torch.manual_seed(1)
        emb = torch.nn.Embedding(V, E).double()
        rnn = cls(E, H, num_layers=2).double()
        dec = torch.nn.Linear(H, V).double()
        return emb, rnn, dec

    ref_parts, mine_parts = make(torch.nn.LSTM), make(lt.LSTM)
    mine_parts[1].load_state_dict(ref_parts[1].state_dict())
    curves = []
    for emb, rnn, dec in (ref_parts, mine_parts):
        params = [*emb.parameters(), *rnn.parameters(), *dec.parameters()]
        opt = torch.optim.SGD(params, lr=0.5)
        losses, hidden = [], None
        for step in range(50):
            x, y = data[step, :-1], data[step, 1:]
            out, hidden = rnn(emb(x), hidden)
            hidden = tuple(h.detach() for h in hidden)  # truncated BPTT: carry the state
            loss = torch.nn.functional.cross_entropy(dec(out).reshape(-1, V), y.reshape(-1))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            opt.step()
            losses.append(loss.item())
        curves.append(losses)
    np.testing.assert_allclose(curves[1], curves[0], rtol=0, atol=1e-9)
    assert curves[0][-1] < curves[0][0]  # it learned something: the comparison is not vacuous


def test_bad_input_raises_the_documented_errors():
    m = lt.LSTM(3, 4, num_layers=2)
    with pytest.raises(ValueError, match=r"input: shape \(5, 2, 2\), expected \(T, B, 3\)"):
        m(torch.randn(5, 2, 2))
    with pytest.raises(ValueError, match=r"h0: shape \(1, 2, 4\), expected \(2, 2, 4\)"):
        m(torch.randn(5, 2, 3), (torch.zeros(1, 2, 4), torch.zeros(2, 2, 4)))
    with pytest.raises(ValueError, match=r"input: dtype torch.float16"):
        m(torch.randn(5, 2, 3).half())
    with pytest.raises(ValueError, match=r"input: dtype torch.float64, the module's parameters are torch.float32"):
        m(torch.randn(5, 2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"input: on meta; lstmgrad.torch.LSTM runs on the CPU only"):
        m(torch.empty(5, 2, 3, device="meta"))
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"on cuda"):
            m(torch.randn(5, 2, 3, device="cuda"))
    with pytest.raises(ValueError, match=r"proj_size has to be smaller than hidden_size"):
        lt.LSTM(3, 4, proj_size=4)
    with pytest.raises(ValueError, match=r"proj_size=-1"):
        lt.LSTM(3, 4, proj_size=-1)
    mp = lt.LSTM(3, 4, num_layers=2, proj_size=2)
    with pytest.raises(ValueError, match=r"h0: shape \(2, 2, 4\), expected \(2, 2, 2\)"):
        mp(torch.randn(5, 2, 3), (torch.zeros(2, 2, 4), torch.zeros(2, 2, 4)))
    with pytest.raises(ValueError, match=r"c0: shape \(2, 2, 2\), expected \(2, 2, 4\)"):
        mp(torch.randn(5, 2, 3), (torch.zeros(2, 2, 2), torch.zeros(2, 2, 2)))
    with pytest.raises(ValueError, match=r"device=cuda"):
        lt.LSTM(3, 4, device="cuda")
    with pytest.raises(RuntimeError, match=r"sorted in decreasing order"):  # torch's own check
        pack_padded_sequence(torch.randn(5, 3, 3), torch.tensor([2, 5, 1]))
    bad = torch.nn.utils.rnn.PackedSequence(torch.randn(6, 3), torch.tensor([2, 3, 1]))
    with pytest.raises(ValueError, match=r"input.batch_sizes: \[2, 3, 1\]; expected positive and non-increasing"):
        m(bad)


def test_module_calls_twice_before_backward_and_retain_graph():
    ref, mine = pair(torch.float64, input_size=3, hidden_size=4, num_layers=2)
    x1, x2 = torch.randn(4, 2, 3, dtype=torch.float64), torch.randn(5, 2, 3, dtype=torch.float64)
    for m in (ref, mine):
        m.zero_grad()
        (m(x1)[0].sum() + 2 * m(x2)[0].sum()).backward()
    for (n, a), b in zip(mine.named_parameters(), ref.parameters()):
        close(a.grad, b.grad, 1e-10, n)
    # Two backwards through one graph, nothing in between: the same gradient twice.
    mine.zero_grad()
    y = mine(x1)[0].sum()
    y.backward(retain_graph=True)
    once = mine.weight_hh_l0.grad.clone()
    y.backward()
    close(mine.weight_hh_l0.grad, 2 * once, 1e-12, "second backward")
    # Another forward and backward of the module in between take the engine the first backward
    # gave back: the second backward runs the forward again (from the saved inputs) on an engine
    # of its own, and gets the same gradient.
    mine.zero_grad()
    y = mine(x1)[0].sum()
    y.backward(retain_graph=True)
    mine(x2)[0].sum().backward()
    mine.zero_grad()
    y.backward()
    close(mine.weight_hh_l0.grad, once, 1e-12, "backward after another forward")
    # Same with an initial state, packed input and bidirectional, float64, against nn.LSTM.
    ref, mine = pair(torch.float64, input_size=3, hidden_size=4, num_layers=2, bidirectional=True)
    xp = pack_padded_sequence(torch.randn(5, 3, 3, dtype=torch.float64), torch.tensor([5, 3, 2]))
    h0 = torch.randn(4, 3, 4, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(4, 3, 4, dtype=torch.float64, requires_grad=True)
    for m in (ref, mine):
        m.zero_grad()
        h0.grad = c0.grad = None
        out, (hn, cn) = m(xp, (h0, c0))
        loss = out.data.sum() + (hn * cn).sum()
        loss.backward(retain_graph=True)
        m(torch.randn(4, 2, 3, dtype=torch.float64))[0].sum().backward()  # takes the engine
        m.zero_grad()
        h0.grad = c0.grad = None
        loss.backward()
        grads = [p.grad.clone() for p in m.parameters()] + [h0.grad.clone(), c0.grad.clone()]
        if m is ref:
            want = grads
    for a, b in zip(grads, want):
        close(a, b, 1e-10, "second backward, forward run again")


def test_a_loop_that_keeps_its_output_runs_on_one_engine(monkeypatch):
    # `out, hidden = model(x, hidden)`: the previous step's out (and its graph) is alive while
    # the next forward runs. Its engine went back to the pool when its backward ended, so the
    # loop runs on one engine, not two in turn (twice the activations' memory).
    made = []

    class Counted(lt._Engine):
        def __init__(self, *args):
            super().__init__(*args)
            made.append(self)

    monkeypatch.setattr(lt, "_Engine", Counted)
    m = lt.LSTM(3, 4, num_layers=2)
    x = torch.randn(6, 2, 3)
    hidden, out = None, None
    for _ in range(4):
        out, hidden = m(x, hidden)
        out.sum().backward()
        hidden = tuple(h.detach() for h in hidden)
    assert out.grad_fn is not None  # the last graph is alive
    assert len(made) == 1


def test_deepcopy_and_no_grad():
    ref, mine = pair(torch.float32, input_size=3, hidden_size=4)
    x = torch.randn(4, 2, 3)
    mine(x)[0].sum().backward()
    clone = copy.deepcopy(mine)
    with torch.no_grad():
        close(clone(x)[0], ref(x)[0], 1e-5, "deepcopy output under no_grad")


def test_docs_example_runs():
    # docs/python.md's example, as written (the first python block under "## Example").
    import pathlib
    import re

    doc = (pathlib.Path(__file__).resolve().parents[2] / "docs" / "python.md").read_text()
    section = doc[doc.index("## Example"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "docs/python.md example", "exec"), {})


def test_double_backward_raises():
    m = lt.LSTM(2, 3).double()
    x = torch.randn(3, 1, 2, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(m(x)[0].sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match=r"does not require grad|differentiable"):
        g.sum().backward()


def test_engines_are_reused_and_fit_their_calls():
    # Each forward holds its own engine until its graph is freed; the next batches take back the
    # engine that fits their rows most tightly: memory stays what one graph needs.
    m = lt.LSTM(3, 4)
    x1, x2 = torch.randn(9, 4, 3, requires_grad=True), torch.randn(2, 3, 3, requires_grad=True)
    for _ in range(3):
        out, (hn, cn) = m(pack_padded_sequence(x1, torch.tensor([9, 7, 4, 2])))
        (out.data.sum() + hn.sum() + m(x2)[0].sum()).backward()
        del out, hn, cn
    engines = [e for free in m._pool.free.values() for e in free]
    assert sorted(e.rows for e in engines) == [6, 22]  # 2*3 rows; 4+4+3+3+2+2+2+1+1 rows


def test_flatten_parameters_and_single_layer_dropout_warning():
    with pytest.warns(UserWarning, match="dropout"):
        m = lt.LSTM(3, 4, dropout=0.5)
    m.flatten_parameters()  # nn.LSTM's cuDNN call: accepted, nothing to do


def test_one_module_in_two_threads():
    # Each call leases its own engine (the pool is locked): the same results as one at a time.
    import threading

    ref, mine = pair(torch.float64, input_size=3, hidden_size=8, num_layers=2)
    xs = [torch.randn(12, 4, 3, dtype=torch.float64) for _ in range(2)]
    want = [ref(x)[0].detach() for x in xs]
    got = [None, None]

    def run(k):
        for _ in range(20):
            x = xs[k].clone().requires_grad_()
            y = mine(x)[0]
            y.sum().backward()
            got[k] = y.detach()

    threads = [threading.Thread(target=run, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in (0, 1):
        close(got[k], want[k], 1e-10, f"thread {k}")


def test_default_threads_ignore_torchs():
    # Importing torch sets the OpenMP runtime's thread count to torch's own (1 on a 2-core VM);
    # the engine's default split is the machine's cores all the same. float32 results depend on
    # the split alone, so the default gives the bits of an explicit split of the cores, whatever
    # torch.set_num_threads says.
    before = torch.get_num_threads()
    torch.manual_seed(3)
    m = lt.LSTM(24, 64, num_layers=2)
    x = torch.randn(9, 6, 24)
    try:
        lt.set_num_threads(lt._machine_threads())
        want = m(x)[0].detach()
        lt.set_num_threads(0)
        for n in (1, 2):
            torch.set_num_threads(n)
            assert torch.equal(m(x)[0].detach(), want), f"torch threads {n}"
    finally:
        torch.set_num_threads(before)
        lt.set_num_threads(0)


@pytest.mark.skipif(not lt._core.bf16_supported(), reason="this CPU has no AVX512_BF16")
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("proj_size", [0, 5])
def test_bf16_precision_follows_nn_lstm(bidirectional, packed, proj_size):
    """precision='bf16': bfloat16 GEMM operands, float32 sums. Outputs, states and every gradient
    within 3e-2 of each tensor's scale of nn.LSTM's float32 (bf16 keeps 8 significant bits;
    measured below 1e-2), and further from it than float32's own 1e-5 (the bf16 path ran)."""
    torch.manual_seed(5)
    T, B, X, H, L = 6, 5, 7, 13, 2
    kw = dict(input_size=X, hidden_size=H, num_layers=L, bidirectional=bidirectional,
              proj_size=proj_size)
    ref = torch.nn.LSTM(**kw)
    mine = lt.LSTM(**kw, precision="bf16")
    mine.load_state_dict(ref.state_dict())
    D, R = 2 if bidirectional else 1, proj_size or H
    x = torch.randn(T, B, X)
    hx = (torch.randn(L * D, B, R), torch.randn(L * D, B, H))
    gy, gh, gc = torch.randn(T, B, D * R), torch.randn(L * D, B, R), torch.randn(L * D, B, H)
    if packed:  # lengths 6, 6, 4, 3, 1: the steps run as segments of their own
        lengths = torch.tensor([6, 6, 4, 3, 1])
        mask = (torch.arange(T).unsqueeze(1) < lengths).unsqueeze(2)
        gy = gy * mask

        def call(module):
            xx = x.detach().clone().requires_grad_()
            for p in module.parameters():
                p.grad = None
            y, (hn, cn) = module(pack_padded_sequence(xx, lengths), hx)
            y, _ = pad_packed_sequence(y, total_length=T)
            ((y * gy).sum() + (hn * gh).sum() + (cn * gc).sum()).backward()
            return [y, hn, cn, xx.grad] + [p.grad for p in module.parameters()]

        got, want = call(mine), call(ref)
    else:
        got_out, got_grad = run(mine, x, hx, gy, gh, gc)
        want_out, want_grad = run(ref, x, hx, gy, gh, gc)
        got = list(got_out.values()) + list(got_grad.values())
        want = list(want_out.values()) + list(want_grad.values())
    worst = 0.0
    for g, w in zip(got, want):
        close(g, w, 3e-2, "bf16")
        worst = max(worst, (g - w).abs().max().item() / max(w.abs().max().item(), 1.0))
    assert worst > 1e-5, "as close as float32: not the bf16 path?"


def test_bf16_precision_refusals():
    with pytest.raises(ValueError, match="precision"):
        lt.LSTM(3, 4, precision="fp8")
    with pytest.raises(ValueError, match="bf16"):
        lt.LSTM(3, 4, dtype=torch.float64, precision="bf16")


def test_bench_leaves_torchs_threads_alone():
    """_core.bench splits the default team for `shares` cores by setting OpenMP's count for the
    call, the count importing torch set to torch's own: afterwards it is what it was."""
    from lstmgrad import _core

    before = torch.get_num_threads()
    for want in {before, 2}:
        torch.set_num_threads(want)
        _core.bench("zaremba-small", "fwd", runs=1, warmup=0, threads=0, shares=3)
        assert torch.get_num_threads() == want
    torch.set_num_threads(before)
