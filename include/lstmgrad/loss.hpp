// lstmgrad: softmax cross-entropy, L = -sum_k y_k log p_k with p = softmax(z), per row.
// Targets are soft (y [N,V], rows are probability vectors: the handout's y) or class ids
// (y = one-hot). Gradient: dL/dz = p - y (docs/derivation.md, "Softmax cross-entropy").
#pragma once
#include <cstdint>

namespace lstmgrad {

// p [N,V] out (may alias z); z [N,V] logits. At most one of y_probs [N,V] and y_class [N] is
// non-null. Returns the sum over the N rows of the loss, accumulated in double (0 when both are
// null: then only p is computed).
template <class Real>
double softmax_xent_forward(Real* p, const Real* z, const Real* y_probs, const int64_t* y_class,
                            int64_t N, int64_t V);

// dz [N,V] = scale * (p - y); may alias p.
template <class Real>
void softmax_xent_backward(Real* dz, const Real* p, const Real* y_probs, const int64_t* y_class,
                           Real scale, int64_t N, int64_t V);

}  // namespace lstmgrad
