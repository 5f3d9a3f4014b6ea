"""lstmgrad.Lstm, the numpy API: forward against a plain numpy LSTM written here from the
equations (docs/derivation.md, "Forward"), backward against central finite differences of that
forward, float32 against float64, the errors for bad input; model files, grad and the handout's
Exercise 2. Needs numpy only."""

import pathlib
import sys
import threading

import numpy as np
import pytest

import lstmgrad


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def reference(x, params, h0, s0, L):
    """The stack in float64 numpy loops: gate blocks i, f, a (PyTorch's g), o; with weight_hr_l{k}
    (a projection) h = (o tanh s) W_hr^T."""
    T, B, _ = x.shape
    H = s0.shape[2]
    inp, hn, sn = x, [], []
    for k in range(L):
        W, U = params[f"weight_ih_l{k}"], params[f"weight_hh_l{k}"]
        b = params.get(f"bias_ih_l{k}", 0) + params.get(f"bias_hh_l{k}", 0)
        h, s, out = h0[k], s0[k], []
        for t in range(T):
            z = inp[t] @ W.T + h @ U.T + b
            i, f, a, o = sigmoid(z[:, :H]), sigmoid(z[:, H : 2 * H]), np.tanh(z[:, 2 * H : 3 * H]), sigmoid(z[:, 3 * H :])
            s = i * a + f * s
            h = o * np.tanh(s)
            if f"weight_hr_l{k}" in params:
                h = h @ params[f"weight_hr_l{k}"].T
            out.append(h)
        inp = np.stack(out)
        hn.append(h)
        sn.append(s)
    return inp, np.stack(hn), np.stack(sn)


def problem(T, B, X, H, L, seed, dtype=np.float64, bias=True, proj=0):
    lstm = lstmgrad.Lstm(X, H, L, dtype=dtype, proj_size=proj)
    R = proj or H  # h's width
    rng = np.random.default_rng(seed)
    params = {n: rng.uniform(-0.8, 0.8, s).astype(dtype) for n, s in lstm.parameter_layout(bias)}
    x = rng.uniform(-1, 1, (T, B, X)).astype(dtype)
    h0 = rng.uniform(-0.5, 0.5, (L, B, R)).astype(dtype)
    s0 = rng.uniform(-0.5, 0.5, (L, B, H)).astype(dtype)
    gy = rng.uniform(-1, 1, (T, B, R)).astype(dtype)
    ghn = rng.uniform(-1, 1, (L, B, R)).astype(dtype)
    gsn = rng.uniform(-1, 1, (L, B, H)).astype(dtype)
    return lstm, params, x, h0, s0, gy, ghn, gsn


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("proj", [0, 4, 8])  # 8: wider than the cell (nn.LSTM refuses it)
def test_forward_matches_numpy_reference(bias, proj):
    lstm, params, x, h0, s0, *_ = problem(5, 3, 4, 6, 2, 1, bias=bias, proj=proj)
    y, hn, sn = lstm.forward(x, params, h0, s0)
    ry, rhn, rsn = reference(x, params, h0, s0, 2)
    for got, want in ((y, ry), (hn, rhn), (sn, rsn)):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-13)


@pytest.mark.parametrize("proj", [0, 2, 5])
def test_backward_matches_finite_differences(proj):
    L = 2
    lstm, params, x, h0, s0, gy, ghn, gsn = problem(4, 2, 3, 3, L, 2, proj=proj)

    def loss(x, params, h0, s0):
        y, hn, sn = reference(x, params, h0, s0, L)
        return (y * gy).sum() + (hn * ghn).sum() + (sn * gsn).sum()

    lstm.forward(x, params, h0, s0)
    dx, dh0, ds0, grads = lstm.backward(gy, ghn, gsn)

    def fd(arr, *args):  # central differences, e = 1e-6: ~1e-10 relative for O(1) values
        g = np.zeros_like(arr)
        for i in np.ndindex(arr.shape):
            old = arr[i]
            arr[i] = old + 1e-6
            up = loss(*args)
            arr[i] = old - 1e-6
            down = loss(*args)
            arr[i] = old
            g[i] = (up - down) / 2e-6
        return g

    args = (x, params, h0, s0)
    np.testing.assert_allclose(dx, fd(x, *args), atol=1e-8)
    np.testing.assert_allclose(dh0, fd(h0, *args), atol=1e-8)
    np.testing.assert_allclose(ds0, fd(s0, *args), atol=1e-8)
    for name, p in params.items():
        np.testing.assert_allclose(grads[name], fd(p, *args), atol=1e-8, err_msg=name)


def test_float32_matches_float64():
    lstm64, params, x, h0, s0, gy, ghn, gsn = problem(6, 4, 5, 20, 2, 3)
    lstm32 = lstmgrad.Lstm(5, 20, 2, dtype=np.float32)
    f32 = lambda a: a.astype(np.float32)  # noqa: E731
    out64 = lstm64.forward(x, params, h0, s0)
    out32 = lstm32.forward(f32(x), {n: f32(p) for n, p in params.items()}, f32(h0), f32(s0))
    for a, b in zip(out32, out64):
        np.testing.assert_allclose(a, b, atol=1e-5)
    g64 = lstm64.backward(gy, ghn, gsn)
    g32 = lstm32.backward(f32(gy), f32(ghn), f32(gsn))
    for a, b in zip(g32[:3], g64[:3]):
        np.testing.assert_allclose(a, b, atol=1e-4)
    for n in params:
        np.testing.assert_allclose(g32[3][n], g64[3][n], atol=1e-4, err_msg=n)


def test_non_contiguous_input_is_copied_not_misread():
    lstm, params, x, h0, s0, gy, *_ = problem(4, 3, 2, 3, 1, 4)
    y = lstm.forward(x, params)[0]
    xf = np.asfortranarray(x)
    assert not xf.flags.c_contiguous
    np.testing.assert_array_equal(lstm.forward(xf, params)[0], y)


def test_none_gradients_are_zeros():
    lstm, params, x, h0, s0, gy, ghn, gsn = problem(3, 2, 2, 3, 2, 5)
    lstm.forward(x, params, h0, s0)
    a = lstm.backward(gy, None, None)
    b = lstm.backward(gy, np.zeros_like(ghn), np.zeros_like(gsn))
    for u, v in zip(a[:3], b[:3]):
        np.testing.assert_array_equal(u, v)


def test_threads_in_parallel_release_the_gil():
    # Two engines in two Python threads at once give what each gives alone.
    problems = [problem(20, 8, 16, 32, 2, s) for s in (6, 7)]
    alone = [p[0].forward(p[2], p[1], p[3], p[4])[0].copy() for p in problems]
    out = [None, None]

    def run(k):
        p = problems[k]
        for _ in range(5):
            out[k] = p[0].forward(p[2], p[1], p[3], p[4])[0]

    ts = [threading.Thread(target=run, args=(k,)) for k in (0, 1)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for k in (0, 1):
        np.testing.assert_array_equal(out[k], alone[k])


def test_bad_input_raises_value_error_naming_it():
    lstm, params, x, h0, s0, gy, *_ = problem(3, 2, 4, 5, 2, 8)
    with pytest.raises(ValueError, match=r"input: shape \(3, 2, 3\), expected \(-1, -1, 4\)"):
        lstm.forward(x[:, :, :3], params)
    with pytest.raises(ValueError, match=r"h0: shape \(2, 3, 5\), expected \(2, 2, 5\)"):
        lstm.forward(x, params, np.zeros((2, 3, 5)))
    with pytest.raises(ValueError, match=r"input: dtype float32, expected float64"):
        lstm.forward(x.astype(np.float32), params)
    with pytest.raises(ValueError, match=r"weight_hh_l1: shape \(20, 4\), expected \(20, 5\)"):
        lstm.forward(x, {**params, "weight_hh_l1": np.zeros((20, 4))})
    with pytest.raises(ValueError, match=r"missing weight_ih_l0"):
        lstm.forward(x, {n: p for n, p in params.items() if n != "weight_ih_l0"})
    with pytest.raises(ValueError, match=r"input: expected a numpy array, got list"):
        lstm.forward([[1.0]], params)
    lstm.forward(x, params)
    with pytest.raises(ValueError, match=r"grad_output: shape \(3, 2, 4\), expected \(3, 2, 5\)"):
        lstm.backward(gy[:, :, :4])
    fresh = lstmgrad.Lstm(4, 5, 2)
    with pytest.raises(ValueError, match=r"no forward"):
        fresh.backward(gy)
    with pytest.raises(ValueError):
        lstmgrad.Lstm(0, 5, 1)
    with pytest.raises(ValueError, match=r"dtype: float16"):
        lstmgrad.Lstm(4, 5, 1, dtype=np.float16)


# The language model's side, against the PyTorch golden files of the C++ suite
# (tests/data/golden, tools/make_golden.py), read with tools/safetensors_np.py.
GOLDEN = pathlib.Path(__file__).resolve().parents[2] / "tests" / "data" / "golden"
sys.path.insert(0, str(GOLDEN.parents[2] / "tools"))
import safetensors_np  # noqa: E402


@pytest.mark.parametrize("case", ["handout", "deep_long", "embed_class_sum"])
def test_grad_matches_pytorch_golden(case):
    m = lstmgrad.load_model(GOLDEN / case / "model.safetensors")
    b = lstmgrad.load_batch(GOLDEN / case / "batch.safetensors", m["config"])
    want, meta = safetensors_np.load(GOLDEN / case / "expected.safetensors")
    got = lstmgrad.grad(m["config"], m["params"], b, reduction=meta["reduction"])
    assert abs(got["loss"] - float(want["loss"])) <= 1e-12 * max(1.0, abs(float(want["loss"])))
    for name, g in got["grads"].items():
        np.testing.assert_allclose(g, want[name], rtol=0, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(got["h_n"], want["h_n"], rtol=0, atol=1e-12)
    if "grad.h0" in want:
        np.testing.assert_allclose(got["grad_h0"], want["grad.h0"], rtol=0, atol=1e-12)


def test_model_file_round_trip(tmp_path):
    m = lstmgrad.load_model(GOLDEN / "deep_long" / "model.safetensors")
    lstmgrad.save_model(tmp_path / "m.safetensors", m["config"], m["params"], metadata={"note": "x"})
    back = lstmgrad.load_model(tmp_path / "m.safetensors")
    assert back["config"] == m["config"] and back["metadata"]["note"] == "x"
    for name, p in m["params"].items():
        np.testing.assert_array_equal(back["params"][name], p)
    with pytest.raises(ValueError, match=r"params: missing rnn.weight_hh_l0"):
        lstmgrad.save_model(tmp_path / "bad.safetensors", m["config"],
                            {k: v for k, v in m["params"].items() if k != "rnn.weight_hh_l0"})
    with pytest.raises(lstmgrad.InputError, match=r"nope.safetensors"):
        lstmgrad.load_model(tmp_path / "nope.safetensors")


def test_exercise2_handout_values():
    e = lstmgrad.exercise2()
    # The handout's numbers: q = 5 (V_a1 x + U_a1 h0 + b_1 with every value 1), a = tanh(5).
    assert e["q"] == 5.0 and abs(e["a"] - np.tanh(5.0)) < 1e-15
    assert e["autodiff_rel_err"] < 1e-12 and e["fd_rel_err"] < 1e-6
    np.testing.assert_allclose(e["Va1_after"], np.array(e["Va1_before"]) - 0.1 * np.array(e["dL_dVa1"]))


def test_packed_is_each_sequence_alone():
    lstm, params, x, h0, s0, gy, ghn, gsn = problem(5, 3, 2, 3, 2, 9)
    lengths, bs = [5, 3, 2], [3, 3, 2, 1, 1]
    data = np.concatenate([x[t, :b] for t, b in enumerate(bs)])
    gdata = np.concatenate([gy[t, :b] for t, b in enumerate(bs)])
    y, hn, sn = lstm.forward_packed(data, params, bs, h0, s0)
    dx, dh0, ds0, grads = lstm.backward(gdata, ghn, gsn)
    off = np.cumsum([0] + bs[:-1])
    total = {n: 0 for n in params}
    for b, n in enumerate(lengths):
        one = lstmgrad.Lstm(2, 3, 2)
        rows = [off[t] + b for t in range(n)]
        y1, hn1, sn1 = one.forward(x[:n, b : b + 1], params, h0[:, b : b + 1].copy(), s0[:, b : b + 1].copy())
        dx1, dh01, ds01, g1 = one.backward(gy[:n, b : b + 1], ghn[:, b : b + 1].copy(), gsn[:, b : b + 1].copy())
        np.testing.assert_allclose(y[rows], y1[:, 0], atol=1e-13)
        np.testing.assert_allclose(dx[rows], dx1[:, 0], atol=1e-13)
        for a, a1 in ((hn, hn1), (sn, sn1), (dh0, dh01), (ds0, ds01)):
            np.testing.assert_allclose(a[:, b], a1[:, 0], atol=1e-13)
        for name in params:
            total[name] = total[name] + g1[name]
    for name in params:
        np.testing.assert_allclose(grads[name], total[name], atol=1e-12, err_msg=name)
    with pytest.raises(ValueError, match=r"batch_sizes: expected positive and non-increasing"):
        lstm.forward_packed(data, params, [2, 3, 2, 1, 1])
    with pytest.raises(ValueError, match=r"input: shape \(10, 2\), expected \(9, 2\)"):
        lstm.forward_packed(data[:10], params, [3, 3, 2, 1])


def test_bidirectional_is_two_directions_by_hand():
    # Layer by layer: the forward direction on x, the reverse on x reversed in time, outputs
    # side by side; against the numpy reference, one layer at a time.
    T, B, X, H, L = 4, 2, 3, 2, 2
    lstm = lstmgrad.Lstm(X, H, L, bidirectional=True)
    params = lstm.init_params(seed=3)
    rng = np.random.default_rng(4)
    x = rng.uniform(-1, 1, (T, B, X))
    h0, s0 = rng.uniform(-0.5, 0.5, (2 * L, B, H)), rng.uniform(-0.5, 0.5, (2 * L, B, H))
    y, hn, sn = lstm.forward(x, params, h0, s0)
    inp = x
    for k in range(L):
        p = lambda sfx: {f"{n}_l0": params[f"{n}_l{k}{sfx}"] for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}  # noqa: E731
        yf, hf, sf = reference(inp, p(""), h0[2 * k : 2 * k + 1], s0[2 * k : 2 * k + 1], 1)
        yr, hr, sr = reference(inp[::-1], p("_reverse"), h0[2 * k + 1 : 2 * k + 2], s0[2 * k + 1 : 2 * k + 2], 1)
        np.testing.assert_allclose(hn[2 * k : 2 * k + 2], np.concatenate([hf, hr]), atol=1e-13)
        np.testing.assert_allclose(sn[2 * k : 2 * k + 2], np.concatenate([sf, sr]), atol=1e-13)
        inp = np.concatenate([yf, yr[::-1]], axis=2)
    np.testing.assert_allclose(y, inp, atol=1e-13)
    dx, dh0, ds0, grads = lstm.backward(np.ones_like(y))
    assert dx.shape == x.shape and dh0.shape == h0.shape and set(grads) == set(params)


def test_dropout_drops_between_layers_only():
    lstm, params, x, h0, s0, gy, *_ = problem(4, 3, 3, 5, 2, 12)
    plain = lstm.forward(x, params, h0, s0)
    lstm.set_dropout(0.5, seed=1)
    dropped = lstm.forward(x, params, h0, s0)
    np.testing.assert_array_equal(dropped[1][0], plain[1][0])  # layer 0's state: nothing dropped below it
    assert np.abs(dropped[0] - plain[0]).max() > 1e-3  # layer 1 reads a dropped input
    np.testing.assert_array_equal(lstm.forward(x, params, h0, s0)[0], dropped[0])  # same masks
    lstm.set_dropout(0.0)
    np.testing.assert_array_equal(lstm.forward(x, params, h0, s0)[0], plain[0])
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\)"):
        lstm.set_dropout(1.5)
    with pytest.raises(NotImplementedError, match="bidirectional"):
        lstmgrad.Lstm(3, 5, 2, bidirectional=True).set_dropout(0.5)


def test_bench_times_a_preset_in_this_process():
    """_core.bench runs `lstmgrad bench`'s own timing (bench/torch_dropin.py --against-bench):
    a positive time for a preset and mode, ValueError naming what was wrong."""
    from lstmgrad import _core

    r = _core.bench("zaremba-small", "fwd", runs=1, warmup=0, threads=0, shares=2)
    assert r["ms"] > 0 and r["tokens_per_s"] > 0 and r["gflops"] > 0
    assert _core.bench("zaremba-small", "fwdbwd", runs=1, warmup=0, threads=1)["ms"] > 0
    with pytest.raises(ValueError, match="preset: 'nope', expected one of zaremba-small"):
        _core.bench("nope")
    with pytest.raises(ValueError, match="unknown mode 'sideways'"):
        _core.bench("zaremba-small", "sideways", runs=1, warmup=0)
    with pytest.raises(ValueError, match="runs >= 1"):
        _core.bench("zaremba-small", "fwd", runs=0)


def minor_faults():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def test_a_loop_reuses_its_outputs_memory_without_page_faults():
    """Each step's outputs die before the next step: the next step's outputs take their memory
    from the cache, so the loop touches no fresh pages. Without the cache glibc gives blocks of
    these sizes (256 KiB and more, over its mmap threshold) back to the kernel, and every step
    paid about 200 page faults here (208 with set_cache_limit(0))."""
    lstm, params, x, h0, s0, gy, ghn, gsn = problem(20, 16, 128, 128, 2, seed=9, dtype=np.float32)
    for _ in range(3):  # the first steps fill the cache
        lstm.forward(x, params, h0, s0)
        lstm.backward(gy, ghn, gsn)
    steps, before = 20, minor_faults()
    for _ in range(steps):
        lstm.forward(x, params, h0, s0)
        lstm.backward(gy, ghn, gsn)
    assert (minor_faults() - before) / steps < 5


def test_the_cache_hands_out_no_memory_an_array_still_holds():
    lstm, params, x, h0, s0, gy, ghn, gsn = problem(4, 3, 5, 6, 2, seed=10)
    y1 = lstm.forward(x, params, h0, s0)[0]
    grads1 = lstm.backward(gy, ghn, gsn)[3]
    y1_copy, grads1_copy = y1.copy(), {n: g.copy() for n, g in grads1.items()}
    y2 = lstm.forward(2 * x, params, h0, s0)[0]
    grads2 = lstm.backward(2 * gy, ghn, gsn)[3]
    kept = [y1, *grads1.values()]
    for a in [y2, *grads2.values()]:
        assert not any(np.shares_memory(a, k) for k in kept)
    np.testing.assert_array_equal(y1, y1_copy)  # the first step's arrays are untouched
    for n, g in grads1.items():
        np.testing.assert_array_equal(g, grads1_copy[n])
    assert all(a.ctypes.data % 64 == 0 for a in [y2, *grads2.values()])  # 64-byte aligned


def test_cache_limit_and_empty_cache():
    lstm, params, x, h0, s0, gy, ghn, gsn = problem(30, 8, 64, 64, 1, seed=11)
    saved = lstmgrad.cache_info()["limit"]
    try:
        lstmgrad.empty_cache()
        assert lstmgrad.cache_info()["bytes"] == 0
        lstmgrad.set_cache_limit(0)  # nothing kept
        lstm.forward(x, params, h0, s0)
        assert lstmgrad.cache_info() == {"bytes": 0, "blocks": 0, "limit": 0}
        lstmgrad.set_cache_limit(1 << 30)
        y = lstm.forward(x, params, h0, s0)[0]  # y [30,8,64] float64: 120 KiB, class 128 KiB
        del y
        info = lstmgrad.cache_info()
        assert info["blocks"] == 3 and info["bytes"] >= 30 * 8 * 64 * 8  # y, h_n, s_n
        y = lstm.forward(x, params, h0, s0)[0]  # takes them back; h_n and s_n die again
        assert lstmgrad.cache_info()["bytes"] == 2 * 4096
        del y
        lstmgrad.set_cache_limit(64 << 10)  # the 128 KiB block goes, the two small ones stay
        assert lstmgrad.cache_info() == {"bytes": 2 * 4096, "blocks": 2, "limit": 64 << 10}
        lstmgrad.empty_cache()
        assert lstmgrad.cache_info()["bytes"] == 0
    finally:
        lstmgrad.set_cache_limit(saved)
