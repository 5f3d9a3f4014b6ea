// lstmgrad: gradient clipping and the optimizers, on the flat parameter vector.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace lstmgrad {

// A run [begin, end) of elements of the flat parameter (or gradient) vector.
struct ElementRange {
  size_t begin = 0, end = 0;
};

// The global L2 norm of g, summed in float64 over fixed blocks (threads share the blocks; the
// result is the same for any thread count). `zero`: sorted, disjoint ranges of g that are not
// read: known to be 0 (the embedding rows no token of the batch used; a 0 adds exactly 0 to its
// lane's non-negative sum, so the norm is bit-identical to the dense one, zero = {}), or summed
// elsewhere (the trainer adds the readout's squares that backward took).
template <class Real>
double grad_norm(std::span<const Real> g, std::span<const ElementRange> zero = {});

// What clipping scales the gradient by: max_norm / (norm + 1e-6) when norm > max_norm (PyTorch's
// clip_grad_norm_), else 1. max_norm <= 0: no clipping.
double clip_factor(double norm, double max_norm);

// The global L2 norm of g; when it exceeds max_norm, g is scaled by clip_factor. Returns the norm
// before clipping.
template <class Real>
double clip_grad_norm(std::span<Real> g, double max_norm);

// The rows of a [rows, width] table stored from element `offset` of the flat vector that no id
// in `ids` selects, as sorted, disjoint element ranges (neighbouring rows merged) in `zero`: for
// an embedding, the rows whose gradient the batch left at 0. `mark` [rows] is scratch, all 0
// before and after; both vectors keep their capacity, so a training loop that passes the same
// ones at every step allocates nothing after its first. ids are assumed in [0, rows).
void unused_rows(std::span<const int64_t> ids, int64_t rows, int64_t width, size_t offset,
                 std::vector<uint8_t>& mark, std::vector<ElementRange>& zero);

enum class OptimizerKind { sgd, adam };
OptimizerKind parse_optimizer(const std::string& s);
std::string to_string(OptimizerKind k);

// SGD: p -= lr g. Adam (torch.optim.Adam defaults): m = b1 m + (1-b1) g, v = b2 v + (1-b2) g^2,
// p -= lr (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps).
template <class Real>
class Optimizer {
 public:
  Optimizer(OptimizerKind kind, size_t n, double beta1 = 0.9, double beta2 = 0.999,
            double eps = 1e-8);
  void step(std::span<Real> params, std::span<const Real> grad, double lr);
  // The same update with g * grad_scale (clip_factor) for g, in one pass that also zeroes grad
  // for the next accumulation: what a training step needs, without three more passes over the
  // parameters. The result is bit-identical to clip_grad_norm, then step, then zeroing.
  // `zero`: sorted, disjoint ranges where grad is already 0 (as for grad_norm). SGD neither reads
  // nor writes them (p -= lr * 0 leaves p as it is); Adam ignores them, as its moments decay at
  // every step.
  void step_and_zero(std::span<Real> params, std::span<Real> grad, double lr, double grad_scale,
                     std::span<const ElementRange> zero = {});

  OptimizerKind kind() const { return kind_; }
  int64_t steps() const { return t_; }
  // State for checkpoints: m, v (empty for SGD) and the step count.
  std::vector<Real>& m() { return m_; }
  std::vector<Real>& v() { return v_; }
  const std::vector<Real>& m() const { return m_; }
  const std::vector<Real>& v() const { return v_; }
  void set_steps(int64_t t) { t_ = t; }

 private:
  OptimizerKind kind_;
  double beta1_, beta2_, eps_;
  int64_t t_ = 0;
  std::vector<Real> m_, v_;
};

}  // namespace lstmgrad
