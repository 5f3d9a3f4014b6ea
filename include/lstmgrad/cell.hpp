// lstmgrad: one LSTM step, forward and backward, on B rows at once (B = 1 is the handout's case).
//
//   i = sigmoid(V_i x + U_i h_prev + b_i)      f = sigmoid(V_f x + U_f h_prev + b_f)
//   o = sigmoid(V_o x + U_o h_prev + b_o)      a = tanh(V_a x + U_a h_prev + b_a)
//   s = i * a + f * s_prev                     h = o * tanh(s)
//
// Sizes: B rows, X input width, H hidden width. V [4H,X], U [4H,H], b [4H], rows packed as gate
// blocks [i; f; a; o] (PyTorch's i, f, g, o). Derivation: docs/derivation.md, "One step".
#pragma once
#include <cstdint>
#include <vector>

namespace lstmgrad {

template <class Real>
struct CellWeights {
  const Real* V;  // [4H,X]
  const Real* U;  // [4H,H]
  const Real* b;  // [4H]
  int64_t X, H;
};

// Parameter gradients, accumulated (+=); the caller zeroes them.
template <class Real>
struct CellGrads {
  Real* dV;  // [4H,X]
  Real* dU;  // [4H,H]
  Real* db;  // [4H]
};

// Owning parameters of one cell, for the exercise, tests and small examples.
template <class Real>
struct CellParams {
  int64_t X = 0, H = 0;
  std::vector<Real> V, U, b;  // [4H,X], [4H,H], [4H]
  CellParams(int64_t X_, int64_t H_) : X(X_), H(H_), V(4 * H_ * X_), U(4 * H_ * H_), b(4 * H_) {}
  CellWeights<Real> view() const { return {V.data(), U.data(), b.data(), X, H}; }
};

// Forward. Outputs: h [B,H], s [B,H], gates [B,4H] (i, f, a, o after their activations; saved for
// backward). Inputs: x [B,X], h_prev [B,H], s_prev [B,H].
template <class Real>
void cell_forward(Real* h, Real* s, Real* gates, const Real* x, const Real* h_prev,
                  const Real* s_prev, const CellWeights<Real>& w, int64_t B);

// Backward. Outputs: dx [B,X], dh_prev [B,H], ds_prev [B,H] (overwritten); parameter gradients
// accumulated into g; dz [B,4H] scratch (left holding the pre-activation gradients).
// Inputs: dh [B,H] (dL/dh of this step), ds [B,H] (dL/ds arriving from later use of s, or zeros);
// saved: gates, s; and the forward inputs x, h_prev, s_prev.
template <class Real>
void cell_backward(Real* dx, Real* dh_prev, Real* ds_prev, const CellGrads<Real>& g, Real* dz,
                   const Real* dh, const Real* ds, const Real* gates, const Real* s, const Real* x,
                   const Real* h_prev, const Real* s_prev, const CellWeights<Real>& w, int64_t B);

}  // namespace lstmgrad
