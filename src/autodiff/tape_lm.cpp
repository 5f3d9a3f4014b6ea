// lstmgrad: the LSTM language model (docs/design.md, "The model") written on the autodiff tape.
//
// Only the forward pass is written here; every gradient comes from Tape::backward. Nothing in
// this file knows the hand-derived backward pass, which is the point: it is the independent
// reference the hand-derived code is checked against.
//
// Rows are the batch: x_t is [B,in], h and s are [B,H]. A weight W [4H,in] is used as x W^T, its
// gate blocks [V_i; V_f; V_a; V_o] taken as rows of W. Biases [4H] become [4H,1] leaves (same
// flat data) whose blocks are transposed to [1,H] rows and broadcast over the batch.
#include <fmt/format.h>

#include <optional>
#include <stdexcept>
#include <string>
#include <utility>

#include "autodiff/tape_math.hpp"
#include "core/cell_math.hpp"
#include "lstmgrad/autodiff.hpp"

namespace lstmgrad::ad {
namespace {

// Sizes the model and the tape cannot check for us, with messages that say which field.
void check_inputs(const ModelConfig& cfg, const std::vector<double>& params,
                  const Batch<double>& b) {
  validate_config(cfg);
  auto fail = [](const std::string& what) { throw std::invalid_argument("tape_lm: " + what); };
  const size_t TB = static_cast<size_t>(b.T * b.B);
  const size_t LBH = static_cast<size_t>(cfg.h_offset(cfg.L, b.B));
  const size_t LBS = static_cast<size_t>(cfg.s_offset(cfg.L, b.B));
  if (b.T < 1 || b.B < 1) fail(fmt::format("need T >= 1 and B >= 1, got T {} B {}", b.T, b.B));
  if (params.size() != parameter_count(cfg))
    fail(fmt::format("params: expected {} values, got {}", parameter_count(cfg), params.size()));
  if (cfg.input == InputKind::dense && b.dense.size() != TB * static_cast<size_t>(cfg.X))
    fail(fmt::format("dense input: expected [T,B,X] = {} values, got {}",
                     TB * static_cast<size_t>(cfg.X), b.dense.size()));
  if (cfg.input == InputKind::embedding) {
    if (b.tokens.size() != TB)
      fail(fmt::format("tokens: expected [T,B] = {} values, got {}", TB, b.tokens.size()));
    for (int64_t id : b.tokens)
      if (id < 0 || id >= cfg.V) fail(fmt::format("token {} out of range [0, {})", id, cfg.V));
  }
  if (b.soft_targets()) {
    if (b.target_probs.size() != TB * static_cast<size_t>(cfg.V))
      fail(fmt::format("target_probs: expected [T,B,V] = {} values, got {}",
                       TB * static_cast<size_t>(cfg.V), b.target_probs.size()));
  } else {
    if (b.target.size() != TB)
      fail(fmt::format("target: expected [T,B] = {} values, got {}", TB, b.target.size()));
    for (int64_t y : b.target)
      if (y < 0 || y >= cfg.V) fail(fmt::format("target {} out of range [0, {})", y, cfg.V));
  }
  if (!b.h0.empty() && b.h0.size() != LBH)
    fail(fmt::format("h0: expected [L,B,H] = {} values, got {}", LBH, b.h0.size()));
  if (!b.s0.empty() && b.s0.size() != LBS)
    fail(fmt::format("s0: expected [L,B,H] = {} values, got {}", LBS, b.s0.size()));
}

// values[offset : offset + rows*cols] as a [rows,cols] tensor.
Tensor slice(const std::vector<double>& values, size_t offset, int64_t rows, int64_t cols) {
  const auto first = values.begin() + static_cast<std::ptrdiff_t>(offset);
  return Tensor(rows, cols, std::vector<double>(first, first + rows * cols));
}

// The parameters as leaves, one per ParamInfo and in the same order, so that the flat gradient is
// the leaves' gradients concatenated.
struct Params {
  std::vector<ParamInfo> layout;
  std::vector<Var> leaves;
  Var get(const std::string& name) const {
    for (size_t k = 0; k < layout.size(); ++k)
      if (layout[k].name == name) return leaves[k];
    throw std::logic_error("tape_lm: no parameter " + name);
  }
  bool has(const std::string& name) const {
    for (const ParamInfo& info : layout)
      if (info.name == name) return true;
    return false;
  }
};

Params make_params(Tape& tape, const ModelConfig& cfg, const std::vector<double>& flat) {
  Params p{parameter_layout(cfg), {}};
  for (const ParamInfo& info : p.layout) {
    // 2-D weights keep their shape; 1-D biases [n] become columns [n,1].
    const int64_t rows = info.shape[0];
    const int64_t cols = info.shape.size() == 2 ? info.shape[1] : 1;
    p.leaves.push_back(tape.leaf(slice(flat, info.offset, rows, cols)));
  }
  return p;
}

// One layer's weights, split into the four gate blocks (i, f, a, o) and shaped for row-batch use.
struct LayerVars {
  Var Vt[4];  // [in,H] V_g^T: the block rows [g*H, (g+1)*H) of weight_ih, transposed
  Var Ut[4];  // [H,H]  U_g^T: the same blocks of weight_hh
  Var b[4];   // [1,H]  b_g: bias_ih block + bias_hh block (PyTorch's two biases add up)
  std::optional<core::CellUnit<Var>> unit;  // [1,H] each: the peephole rows p_i, p_f, p_o
  Var W_hh;                                 // [4H,H] whole (after weight drop): layer norm's cell
  std::optional<Var> W_hr_t;                // [H,P] the projection's W_hr^T (ModelConfig::proj)
};

// P: layer k's output width (the columns of weight_hh).
LayerVars layer_vars(Tape& tape, const Params& p, int64_t k, int64_t H, int64_t P,
                     const std::vector<double>* weight_mask) {
  const Var W_ih = p.get(fmt::format("rnn.weight_ih_l{}", k));  // [4H,in]
  Var W_hh = p.get(fmt::format("rnn.weight_hh_l{}", k));        // [4H,P]
  if (weight_mask)  // weight drop: U' = U * M, a constant mask
    W_hh = tape.mul(W_hh, tape.constant(Tensor(4 * H, P, *weight_mask)));
  const Var b_ih = p.get(fmt::format("rnn.bias_ih_l{}", k));  // [4H,1]
  const Var b_hh = p.get(fmt::format("rnn.bias_hh_l{}", k));  // [4H,1]
  LayerVars lv;
  lv.W_hh = W_hh;
  for (int g = 0; g < 4; ++g) {
    lv.Vt[g] = tape.transpose(tape.rows(W_ih, g * H, H));
    lv.Ut[g] = tape.transpose(tape.rows(W_hh, g * H, H));
    lv.b[g] = tape.transpose(tape.add(tape.rows(b_ih, g * H, H), tape.rows(b_hh, g * H, H)));
  }
  const std::string peephole = fmt::format("rnn.weight_peephole_l{}", k);  // [3,H]
  if (p.has(peephole)) {
    const Var W = p.get(peephole);
    lv.unit = core::CellUnit<Var>{tape.rows(W, 0, 1), tape.rows(W, 1, 1), tape.rows(W, 2, 1)};
  }
  const std::string hr = fmt::format("rnn.weight_hr_l{}", k);  // [P,H]
  if (p.has(hr)) lv.W_hr_t = tape.transpose(p.get(hr));
  return lv;
}

// One step of one layer: the equations of docs/derivation.md, "Forward", with x [B,in], h, s [B,H].
//   i = sigmoid(x V_i^T + h U_i^T + b_i)   (and f, o alike)   a = tanh(x V_a^T + h U_a^T + b_a)
//   s = i * a + f * s_prev                 h = o * tanh(s)
void cell(Tape& tape, const LayerVars& lv, Var x, Var& h, Var& s, const std::optional<Var>& rec) {
  const Var hr = rec ? tape.mul(h, *rec) : h;  // recurrent dropout: the product reads h * mask
  auto pre = [&](int g) {                      // [B,H] the gate's pre-activation
    return tape.add(tape.add(tape.matmul(x, lv.Vt[g]), tape.matmul(hr, lv.Ut[g])), lv.b[g]);
  };
  core::CellGates<Var> g;
  const Var s_prev = s;
  core::cell_forward(TapeMath{tape}, pre(0), pre(1), pre(2), pre(3), s_prev,
                     lv.unit ? &*lv.unit : nullptr, g, s, h);
}

// Layer norm over each column of A [n,m] (PyTorch's LayerNorm of a row, transposed), with gain
// and bias [n,1]: built from matmul, sub, mul and rsqrt, so the tape differentiates it itself.
Var ln_cols(Tape& tape, Var A, Var gain, Var bias) {
  const Tensor& a = tape.value(A);
  const int64_t n = a.rows, m = a.cols;
  const Var ones_1n = tape.constant(Tensor(1, n, std::vector<double>(static_cast<size_t>(n), 1.0)));
  const Var ones_n1 = tape.constant(Tensor(n, 1, std::vector<double>(static_cast<size_t>(n), 1.0)));
  const Var ones_1m = tape.constant(Tensor(1, m, std::vector<double>(static_cast<size_t>(m), 1.0)));
  const Var mean = tape.scale(tape.matmul(ones_1n, A), 1.0 / static_cast<double>(n));  // [1,m]
  const Var centred = tape.sub(A, tape.matmul(ones_n1, mean));
  const Var var = tape.scale(tape.matmul(ones_1n, tape.mul(centred, centred)),
                             1.0 / static_cast<double>(n));  // biased, as PyTorch's
  const Var r = tape.rsqrt(var, kLayerNormEps);
  const Var normed = tape.mul(centred, tape.matmul(ones_n1, r));
  return tape.add(tape.mul(normed, tape.matmul(gain, ones_1m)), tape.matmul(bias, ones_1m));
}

// The layer-normalised cell (ModelConfig::layer_norm; cpu/row_layer.hpp): one step of layer k.
//   z = LN(x W_ih^T) + LN(h_{t-1} W_hh^T) + b_ih + b_hh over 4H;  s = f s_prev + i a;
//   h = o tanh(LN(s)) over H.  Computed transposed ([4H,B]) so that gate blocks are row ranges.
void cell_ln(Tape& tape, const Params& p, int64_t k, int64_t H, Var W_hh, Var x, Var& h, Var& s,
             const std::optional<Var>& rec) {
  auto get = [&](const char* name) { return p.get(fmt::format(fmt::runtime(name), k)); };
  const Var hr = rec ? tape.mul(h, *rec) : h;
  const int64_t B = tape.value(x).rows;
  const Var ones_1b = tape.constant(Tensor(1, B, std::vector<double>(static_cast<size_t>(B), 1.0)));
  const Var zx = tape.matmul(get("rnn.weight_ih_l{}"), tape.transpose(x));    // [4H,B]
  const Var zh = tape.matmul(W_hh, tape.transpose(hr));                       // [4H,B]
  const Var bias = tape.add(get("rnn.bias_ih_l{}"), get("rnn.bias_hh_l{}"));  // [4H,1]
  const Var z =
      tape.add(tape.add(ln_cols(tape, zx, get("rnn.weight_ln_ih_l{}"), get("rnn.bias_ln_ih_l{}")),
                        ln_cols(tape, zh, get("rnn.weight_ln_hh_l{}"), get("rnn.bias_ln_hh_l{}"))),
               tape.matmul(bias, ones_1b));
  auto gate = [&](int g) { return tape.transpose(tape.rows(z, g * H, H)); };  // [B,H]
  const Var i = tape.sigmoid(gate(0)), f = tape.sigmoid(gate(1));
  const Var a = tape.tanh(gate(2)), o = tape.sigmoid(gate(3));
  s = tape.add(tape.mul(f, s), tape.mul(i, a));
  const Var y = tape.transpose(
      ln_cols(tape, tape.transpose(s), get("rnn.weight_ln_cell_l{}"), get("rnn.bias_ln_cell_l{}")));
  h = tape.mul(o, tape.tanh(y));
}

// Rows [B,n] of a [T,B,n] array at step t.
Tensor step_rows(const std::vector<double>& a, int64_t t, int64_t B, int64_t n) {
  return slice(a, static_cast<size_t>(t * B * n), B, n);
}

// y as [B,V] rows at step t: the soft targets, or the one-hot rows of the class targets.
Tensor targets_at(const Batch<double>& b, int64_t t, int64_t V) {
  if (b.soft_targets()) return step_rows(b.target_probs, t, b.B, V);
  Tensor y(b.B, V);
  for (int64_t r = 0; r < b.B; ++r) y(r, b.target[static_cast<size_t>(t * b.B + r)]) = 1.0;
  return y;
}

// Appends a tape value to a flat vector.
void append(std::vector<double>& out, const Tensor& t) {
  out.insert(out.end(), t.v.begin(), t.v.end());
}

}  // namespace

TapeLmResult tape_lm(const ModelConfig& cfg, const std::vector<double>& params,
                     const Batch<double>& batch, Reduction red) {
  return tape_lm(cfg, params, batch, red, TapeRegularization{});
}

TapeLmResult tape_lm(const ModelConfig& cfg, const std::vector<double>& params,
                     const Batch<double>& batch, Reduction red, const TapeRegularization& reg) {
  check_inputs(cfg, params, batch);
  const int64_t T = batch.T, B = batch.B, H = cfg.H, L = cfg.L, V = cfg.V, X = cfg.X;
  Tape tape;
  const Params p = make_params(tape, cfg, params);
  const Masks<double> none;
  const Masks<double>& m = reg.masks ? *reg.masks : none;
  auto need = [](const std::vector<double>& v, int64_t n, const char* what) {
    if (!v.empty() && v.size() != static_cast<size_t>(n))
      throw std::invalid_argument(
          fmt::format("tape_lm: mask {}: expected {} values, got {}", what, n, v.size()));
  };
  // A locked mask [B,W] as one constant, the same at every step (none: nullopt).
  auto locked = [&](const std::vector<double>& v, int64_t W,
                    const char* what) -> std::optional<Var> {
    if (v.empty()) return std::nullopt;
    need(v, B * W, what);
    return tape.constant(Tensor(B, W, v));
  };
  if (!m.hid.empty() && m.hid.size() != static_cast<size_t>(L - 1))
    throw std::invalid_argument("tape_lm: mask hid: expected L-1 masks");
  if (!m.weight.empty() && m.weight.size() != static_cast<size_t>(L))
    throw std::invalid_argument("tape_lm: mask weight: expected L masks");
  if (!m.rec.empty() && m.rec.size() != static_cast<size_t>(L))
    throw std::invalid_argument("tape_lm: mask rec: expected L masks");
  for (size_t k = 0; k < m.weight.size(); ++k)
    need(m.weight[k],
         4 * cfg.width(static_cast<int64_t>(k)) * cfg.out_width(static_cast<int64_t>(k)),
         "weight[k]");

  // Layer 0's input per step, [B,X]: the dense vectors as leaves (so dinput comes out), or the
  // embedding rows of the tokens (gather_rows accumulates the gradient of repeated tokens). With
  // embedding dropout the rows come from encoder.weight * mask (the mask over rows, broadcast
  // over the X columns as a [V,X] constant).
  Var table{};
  if (cfg.input == InputKind::embedding) {
    table = p.get("encoder.weight");
    if (!m.emb.empty()) {
      need(m.emb, V, "emb");
      Tensor full(V, X);
      for (int64_t v = 0; v < V; ++v)
        for (int64_t j = 0; j < X; ++j) full(v, j) = m.emb[static_cast<size_t>(v)];
      table = tape.mul(table, tape.constant(full));
    }
  }
  const std::optional<Var> in_mask = locked(m.in, X, "in");
  std::vector<Var> x0(static_cast<size_t>(T));  // [T] each [B,X]
  std::vector<Var> x(static_cast<size_t>(T));   // layer 0's input, after the input mask
  for (int64_t t = 0; t < T; ++t) {
    if (cfg.input == InputKind::dense) {
      x0[static_cast<size_t>(t)] = tape.leaf(step_rows(batch.dense, t, B, X));
    } else {
      const auto first = batch.tokens.begin() + static_cast<std::ptrdiff_t>(t * B);
      x0[static_cast<size_t>(t)] = tape.gather_rows(table, std::vector<int64_t>(first, first + B));
    }
    x[static_cast<size_t>(t)] =
        in_mask ? tape.mul(x0[static_cast<size_t>(t)], *in_mask) : x0[static_cast<size_t>(t)];
  }

  // The stack: layer k runs over all T steps; its outputs replace `x` as layer k+1's inputs
  // (through the locked mask between layers, when there is one).
  std::vector<Var> top(static_cast<size_t>(T));  // the top layer's h_1 .. h_T before any mask
  const std::vector<double> zeros_h(static_cast<size_t>(cfg.h_offset(L, B)), 0.0);
  const std::vector<double> zeros_s(static_cast<size_t>(cfg.s_offset(L, B)), 0.0);
  const std::vector<double>& h0 = batch.h0.empty() ? zeros_h : batch.h0;
  const std::vector<double>& s0 = batch.s0.empty() ? zeros_s : batch.s0;
  std::vector<Var> h0_vars, s0_vars, hn_vars, sn_vars;  // [L] each [B,P_k], [B,H_k]
  for (int64_t k = 0; k < L; ++k) {
    const int64_t Hk = cfg.width(k), Pk = cfg.out_width(k);  // the cell's width, h's
    const LayerVars lv = layer_vars(tape, p, k, Hk, Pk,
                                    m.weight.empty() ? nullptr : &m.weight[static_cast<size_t>(k)]);
    // h0[k] and s0[k] (layer k's [B,P_k] and [B,H_k] blocks) are leaves: we want dh0, ds0
    Var h = tape.leaf(slice(h0, static_cast<size_t>(cfg.h_offset(k, B)), B, Pk));
    Var s = tape.leaf(slice(s0, static_cast<size_t>(cfg.s_offset(k, B)), B, Hk));
    h0_vars.push_back(h);
    s0_vars.push_back(s);
    const std::optional<Var> mask =
        k + 1 < L
            ? (m.hid.empty() ? std::nullopt : locked(m.hid[static_cast<size_t>(k)], Pk, "hid[k]"))
            : locked(m.out, Pk, "out");
    const std::optional<Var> rec =
        m.rec.empty() ? std::nullopt : locked(m.rec[static_cast<size_t>(k)], Pk, "rec[k]");
    // Zoneout at step t: d (a mask slice, or the rate: the expectation) and 1 - d as constants,
    // [B,W] (W: P_k on h, H_k on s).
    auto zone = [&](const std::vector<std::vector<double>>& masks, double rate, int64_t W,
                    int64_t t, bool keep) {
      Tensor d(B, W);
      for (int64_t i = 0; i < B * W; ++i) {
        const double di = masks.empty()
                              ? rate
                              : masks[static_cast<size_t>(k)][static_cast<size_t>(t * B * W + i)];
        d.v[static_cast<size_t>(i)] = keep ? di : 1 - di;
      }
      return tape.constant(d);
    };
    for (const auto* z : {&m.zone_h, &m.zone_s}) {
      if (!z->empty() && z->size() != static_cast<size_t>(L))
        throw std::invalid_argument("tape_lm: mask zone_h/zone_s: expected L masks");
      if (!z->empty())
        need((*z)[static_cast<size_t>(k)], T * B * (z == &m.zone_h ? Pk : Hk), "zone[k]");
    }
    for (int64_t t = 0; t < T; ++t) {
      const Var h_prev = h, s_prev = s;
      if (cfg.layer_norm)
        cell_ln(tape, p, k, Hk, lv.W_hh, x[static_cast<size_t>(t)], h, s, rec);
      else
        cell(tape, lv, x[static_cast<size_t>(t)], h, s, rec);
      if (lv.W_hr_t) h = tape.matmul(h, *lv.W_hr_t);  // the projection: h~ = (o tanh s) W_hr^T
      if (cfg.zoneout()) {  // s = d_s s_prev + (1 - d_s) s~, h = d_h h_prev + (1 - d_h) h~
        s = tape.add(tape.mul(s_prev, zone(m.zone_s, cfg.zoneout_s, Hk, t, true)),
                     tape.mul(s, zone(m.zone_s, cfg.zoneout_s, Hk, t, false)));
        h = tape.add(tape.mul(h_prev, zone(m.zone_h, cfg.zoneout_h, Pk, t, true)),
                     tape.mul(h, zone(m.zone_h, cfg.zoneout_h, Pk, t, false)));
      }
      if (k + 1 == L) top[static_cast<size_t>(t)] = h;
      x[static_cast<size_t>(t)] = mask ? tape.mul(h, *mask) : h;
    }
    hn_vars.push_back(h);
    sn_vars.push_back(s);
  }

  // Readout and loss. logits [B,V] = h, or h W_dec^T + b_dec (tied: W_dec = encoder.weight,
  // undropped); p = softmax(logits) row-wise; per position L = -sum_k y_k log p_k. The total is
  // scaled by -1/N, N the reduction's count.
  Var Wt{}, bias{};
  if (cfg.readout == Readout::linear) {
    Wt = tape.transpose(p.get(cfg.tie_weights ? "encoder.weight" : "decoder.weight"));  // [H,V]
    bias = tape.transpose(p.get("decoder.bias"));                                       // [1,V]
  }
  Var total{};
  for (int64_t t = 0; t < T; ++t) {
    const Var h = x[static_cast<size_t>(t)];  // [B,H] the top layer's output (after its mask)
    const Var logits = cfg.readout == Readout::linear ? tape.add(tape.matmul(h, Wt), bias) : h;
    const Var y = tape.constant(targets_at(batch, t, V));                     // [B,V]
    const Var ylogp = tape.sum(tape.mul(y, tape.log(tape.softmax(logits))));  // 1x1
    total = t == 0 ? ylogp : tape.add(total, ylogp);
  }
  const double n = red == Reduction::mean         ? static_cast<double>(T * B)
                   : red == Reduction::batch_mean ? static_cast<double>(B)
                                                  : 1.0;
  const Var ce = tape.scale(total, -1.0 / n);
  Var loss = ce;
  // AR: ar * mean of the readout's input squared, over T*B*H entries.
  if (reg.ar > 0) {
    Var sq{};
    for (int64_t t = 0; t < T; ++t) {
      const Var o = x[static_cast<size_t>(t)];
      const Var st = tape.sum(tape.mul(o, o));
      sq = t == 0 ? st : tape.add(sq, st);
    }
    loss = tape.add(loss, tape.scale(sq, reg.ar / static_cast<double>(T * B * H)));
  }
  // TAR: tar * mean of (h_{t+1} - h_t)^2 of the top layer before its mask, over (T-1)*B*H.
  if (reg.tar > 0 && T > 1) {
    Var sq{};
    for (int64_t t = 0; t + 1 < T; ++t) {
      const Var d = tape.sub(top[static_cast<size_t>(t + 1)], top[static_cast<size_t>(t)]);
      const Var st = tape.sum(tape.mul(d, d));
      sq = t == 0 ? st : tape.add(sq, st);
    }
    loss = tape.add(loss, tape.scale(sq, reg.tar / static_cast<double>((T - 1) * B * H)));
  }

  tape.backward(loss);

  TapeLmResult out;
  out.loss = tape.value(loss).v[0];
  out.ce = tape.value(ce).v[0];
  for (Var leaf : p.leaves) append(out.grad, tape.grad(leaf));
  for (int64_t k = 0; k < L; ++k) {
    append(out.h_n, tape.value(hn_vars[static_cast<size_t>(k)]));
    append(out.s_n, tape.value(sn_vars[static_cast<size_t>(k)]));
    append(out.dh0, tape.grad(h0_vars[static_cast<size_t>(k)]));
    append(out.ds0, tape.grad(s0_vars[static_cast<size_t>(k)]));
  }
  if (cfg.input == InputKind::dense)
    for (Var xt : x0) append(out.dinput, tape.grad(xt));  // [T,B,X]
  return out;
}

}  // namespace lstmgrad::ad
