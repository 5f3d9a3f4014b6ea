// BidirectionalLstm (lstmgrad/stack.hpp): two one-layer Lstm per layer over the packed layout (a
// dense batch is a packed one with T equal batch sizes), the reverse direction reading the rows
// permuted so that each sequence starts at its own last step. Sizes: N rows, I a layer's input
// width (X, then 2Y), H hidden, Y a direction's output (P with a projection, else H).
#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "lstmgrad/stack.hpp"

namespace lstmgrad {

template <class Real>
struct BidirectionalLstm<Real>::Impl {
  Impl(int64_t X, int64_t H, int64_t L, int64_t P) : X_(X), H_(H), L_(L), Y_(P > 0 ? P : H) {
    for (int64_t k = 0; k < L; ++k) {
      dirs_.emplace_back(k == 0 ? X : 2 * Y_, H, 1, P);  // 2k: forward
      dirs_.emplace_back(k == 0 ? X : 2 * Y_, H, 1, P);  // 2k + 1: reverse
    }
  }
  void forward(const Real* x, std::span<const LstmLayerWeights<Real>> w, const Real* h0,
               const Real* s0, std::span<const int64_t> bs, Real* y, Real* h_n, Real* s_n);

  int64_t X_, H_, L_, Y_;
  int64_t N_ = 0, B_ = 0, T_ = 0;
  std::vector<Lstm<Real>> dirs_;  // [2L]
  std::vector<int64_t> perm_;     // [N] row r of the reversed batch is row perm_[r]; an involution
  std::vector<std::vector<Real>> out_;  // [L] [N,2Y] each layer's output (the next one's input)
  std::vector<std::vector<Real>> rev_;  // [L] [N,I] each layer's input, rows permuted
  std::vector<Real> a_, b_, c_, d_;     // scratch [N, max(X, 2Y)]
};

namespace {

// The reversal of a packed batch: row (t, b) takes row (len_b - 1 - t, b).
std::vector<int64_t> reversal(std::span<const int64_t> bs) {
  const int64_t T = static_cast<int64_t>(bs.size()), B = bs[0];
  std::vector<int64_t> off(static_cast<size_t>(T)), len(static_cast<size_t>(B), 0);
  int64_t N = 0;
  for (int64_t t = 0; t < T; ++t) {
    off[t] = N, N += bs[t];
    for (int64_t b = 0; b < bs[t]; ++b) len[b] = t + 1;
  }
  std::vector<int64_t> perm(static_cast<size_t>(N));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t b = 0; b < bs[t]; ++b) perm[off[t] + b] = off[len[b] - 1 - t] + b;
  return perm;
}

// out[r] = in[perm[r]], rows of width n.
template <class Real>
void permute_rows(Real* out, const Real* in, const std::vector<int64_t>& perm, int64_t n) {
  for (size_t r = 0; r < perm.size(); ++r)
    std::copy_n(in + perm[r] * n, n, out + static_cast<int64_t>(r) * n);
}

template <class T>
const T* at(const T* p, int64_t i, int64_t stride) {
  return p ? p + i * stride : nullptr;
}
template <class T>
T* at(T* p, int64_t i, int64_t stride) {
  return p ? p + i * stride : nullptr;
}

}  // namespace

template <class Real>
void BidirectionalLstm<Real>::Impl::forward(const Real* x,
                                            std::span<const LstmLayerWeights<Real>> w,
                                            const Real* h0, const Real* s0,
                                            std::span<const int64_t> bs, Real* y, Real* h_n,
                                            Real* s_n) {
  if (static_cast<int64_t>(w.size()) != 2 * L_)
    throw std::invalid_argument("BidirectionalLstm: " + std::to_string(w.size()) +
                                " layers of weights, expected 2L = " + std::to_string(2 * L_));
  if (bs.empty() || bs[0] < 1)
    throw std::invalid_argument("BidirectionalLstm: batch_sizes must be non-empty and >= 1");
  perm_ = reversal(bs);  // (Lstm::forward_packed checks the rest of bs)
  const int64_t N = static_cast<int64_t>(perm_.size()), B = bs[0], Y = Y_;
  const int64_t Sh = B * Y, Ss = B * H_;  // one direction's h and s states
  N_ = N, B_ = B, T_ = static_cast<int64_t>(bs.size());
  out_.resize(static_cast<size_t>(L_)), rev_.resize(static_cast<size_t>(L_));
  const size_t wide = static_cast<size_t>(N * std::max(X_, 2 * Y));
  a_.resize(wide), b_.resize(wide), c_.resize(wide), d_.resize(wide);
  const Real* in = x;
  for (int64_t k = 0; k < L_; ++k) {
    const int64_t I = k == 0 ? X_ : 2 * Y;
    out_[k].resize(static_cast<size_t>(N * 2 * Y)), rev_[k].resize(static_cast<size_t>(N * I));
    permute_rows(rev_[k].data(), in, perm_, I);
    const int64_t f = 2 * k, r = 2 * k + 1;
    dirs_[f].forward_packed(in, w.subspan(f, 1), at(h0, f, Sh), at(s0, f, Ss), bs, a_.data(),
                            at(h_n, f, Sh), at(s_n, f, Ss));
    dirs_[r].forward_packed(rev_[k].data(), w.subspan(r, 1), at(h0, r, Sh), at(s0, r, Ss), bs,
                            b_.data(), at(h_n, r, Sh), at(s_n, r, Ss));
    Real* out = out_[k].data();
    for (int64_t row = 0; row < N; ++row) {  // [fwd | rev], the reverse rows put back in order
      std::copy_n(a_.data() + row * Y, Y, out + row * 2 * Y);
      std::copy_n(b_.data() + perm_[row] * Y, Y, out + row * 2 * Y + Y);
    }
    in = out;
  }
  if (y) std::copy_n(out_[L_ - 1].data(), N * 2 * Y, y);
}

template <class Real>
BidirectionalLstm<Real>::BidirectionalLstm(int64_t X, int64_t H, int64_t L, int64_t proj)
    : impl_(std::make_unique<Impl>(X, H, L, proj)) {}
template <class Real>
BidirectionalLstm<Real>::~BidirectionalLstm() = default;
template <class Real>
BidirectionalLstm<Real>::BidirectionalLstm(BidirectionalLstm&&) noexcept = default;
template <class Real>
BidirectionalLstm<Real>& BidirectionalLstm<Real>::operator=(BidirectionalLstm&&) noexcept = default;

template <class Real>
void BidirectionalLstm<Real>::set_team(int shares, int running) {
  for (auto& d : impl_->dirs_) d.set_team(shares, running);
}
template <class Real>
void BidirectionalLstm<Real>::set_precision(Precision p) {
  for (auto& d : impl_->dirs_) d.set_precision(p);
}
template <class Real>
void BidirectionalLstm<Real>::set_threads(int n) {
  set_team(n, n);
}
template <class Real>
int64_t BidirectionalLstm<Real>::steps() const {
  return impl_->T_;
}
template <class Real>
int64_t BidirectionalLstm<Real>::batch() const {
  return impl_->B_;
}
template <class Real>
int64_t BidirectionalLstm<Real>::rows() const {
  return impl_->N_;
}

template <class Real>
void BidirectionalLstm<Real>::forward(const Real* x, std::span<const LstmLayerWeights<Real>> w,
                                      const Real* h0, const Real* s0, int64_t T, int64_t B, Real* y,
                                      Real* h_n, Real* s_n) {
  if (T < 1 || B < 1)
    throw std::invalid_argument("BidirectionalLstm::forward: T and B must be >= 1");
  const std::vector<int64_t> bs(static_cast<size_t>(T), B);
  impl_->forward(x, w, h0, s0, bs, y, h_n, s_n);
}

template <class Real>
void BidirectionalLstm<Real>::forward_packed(const Real* x,
                                             std::span<const LstmLayerWeights<Real>> w,
                                             const Real* h0, const Real* s0,
                                             std::span<const int64_t> batch_sizes, Real* y,
                                             Real* h_n, Real* s_n) {
  impl_->forward(x, w, h0, s0, batch_sizes, y, h_n, s_n);
}

template <class Real>
void BidirectionalLstm<Real>::backward(const Real* dy, const Real* dh_n, const Real* ds_n,
                                       const Real* x, std::span<const LstmLayerWeights<Real>> w,
                                       std::span<const LstmLayerGrads<Real>> g, Real* dx, Real* dh0,
                                       Real* ds0) {
  Impl& m = *impl_;
  if (m.N_ == 0) throw std::logic_error("BidirectionalLstm::backward: no forward to differentiate");
  if (static_cast<int64_t>(w.size()) != 2 * m.L_ || static_cast<int64_t>(g.size()) != 2 * m.L_)
    throw std::invalid_argument(
        "BidirectionalLstm::backward: expected 2L layers of weights and "
        "gradients");
  const int64_t N = m.N_, Y = m.Y_, Sh = m.B_ * Y, Ss = m.B_ * m.H_;
  std::vector<Real> d_out(static_cast<size_t>(N * 2 * Y), Real(0));  // dL/d(layer k's output)
  if (dy) std::copy_n(dy, N * 2 * Y, d_out.data());
  for (int64_t k = m.L_ - 1; k >= 0; --k) {
    const int64_t I = k == 0 ? m.X_ : 2 * Y, f = 2 * k, r = 2 * k + 1;
    const Real* in = k == 0 ? x : m.out_[k - 1].data();
    Real *dyf = m.a_.data(), *dyr = m.b_.data(), *dxf = m.c_.data(), *dxr = m.d_.data();
    for (int64_t row = 0; row < N; ++row) {  // split [fwd | rev]; the reverse half permuted
      std::copy_n(d_out.data() + row * 2 * Y, Y, dyf + row * Y);
      std::copy_n(d_out.data() + m.perm_[row] * 2 * Y + Y, Y, dyr + row * Y);
    }
    const bool want_dx = k > 0 || dx;
    m.dirs_[f].backward(dyf, at(dh_n, f, Sh), at(ds_n, f, Ss), in, w.subspan(f, 1), g.subspan(f, 1),
                        want_dx ? dxf : nullptr, at(dh0, f, Sh), at(ds0, f, Ss));
    m.dirs_[r].backward(dyr, at(dh_n, r, Sh), at(ds_n, r, Ss), m.rev_[k].data(), w.subspan(r, 1),
                        g.subspan(r, 1), want_dx ? dxr : nullptr, at(dh0, r, Sh), at(ds0, r, Ss));
    if (!want_dx) break;
    // The input fed both directions: dL/dinput = dxf + dxr with the reverse rows put back.
    Real* d_in = k > 0 ? d_out.data() : dx;  // [N,I]; d_out is free again (split above)
    for (int64_t row = 0; row < N; ++row)
      for (int64_t i = 0; i < I; ++i)
        d_in[row * I + i] = dxf[row * I + i] + dxr[m.perm_[row] * I + i];
  }
}

template class BidirectionalLstm<float>;
template class BidirectionalLstm<double>;

}  // namespace lstmgrad
