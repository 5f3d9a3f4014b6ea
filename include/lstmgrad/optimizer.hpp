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

// asgd: torch.optim.ASGD with t0 = 0 and lambd = 0, as AWD-LSTM runs it (below).
// NT-ASGD's trigger (AWD-LSTM's main.py): `history` holds the earlier validation losses (not
// `loss`, this one's); true when more than n checks exist and `loss` is above the best of those
// older than the last n: len(history) > n and loss > min(history[:-n]). n >= 1.
bool nonmono_triggered(std::span<const double> history, double loss, int64_t n);

enum class OptimizerKind { sgd, adam, asgd };
OptimizerKind parse_optimizer(const std::string& s);
std::string to_string(OptimizerKind k);

// Every kind first takes g = clip_factor * g + weight_decay * p (torch.optim's weight_decay: an L2
// term added after clipping). Then
// SGD: p -= lr g. Adam (torch.optim.Adam defaults): m = b1 m + (1-b1) g, v = b2 v + (1-b2) g^2,
// p -= lr (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps).
// ASGD (torch.optim.ASGD, t0 = 0, lambd = 0, as torch 1.13's _single_tensor_asgd computes it):
// at step t (1-based), p -= eta g; then ax = p while mu == 1, else ax += (p - ax) mu; then
// eta = lr (this step's) and mu = 1 / max(1, t). eta starts as the first step's lr, so from the
// second step on each update uses the lr given to the step before it (torch's order; it matters
// when the lr changes from step to step, as with --bptt-jitter). mu is 1 at steps 1 and 2, so
// after step t >= 2, ax is the mean of the parameters after steps 2..t. eta and mu are Real, as
// torch keeps them in tensors of the default dtype.
// start_averaging() turns an SGD optimizer into ASGD from its next step (NT-ASGD's switch: AWD
// builds a new torch.optim.ASGD, so the averaging's own step count starts at 0).
template <class Real>
class Optimizer {
 public:
  Optimizer(OptimizerKind kind, size_t n, double beta1 = 0.9, double beta2 = 0.999,
            double eps = 1e-8, double weight_decay = 0);
  void step(std::span<Real> params, std::span<const Real> grad, double lr);
  // The same update with g * grad_scale (clip_factor) for g, in one pass that also zeroes grad
  // for the next accumulation: what a training step needs, without three more passes over the
  // parameters. The result is bit-identical to clip_grad_norm, then step, then zeroing.
  // `zero`: sorted, disjoint ranges where grad is already 0 (as for grad_norm). SGD without weight
  // decay neither reads nor writes them (p -= lr * 0 leaves p as it is); Adam, ASGD and weight
  // decay ignore them, as the moments, the average and w * p change there too.
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
  double weight_decay() const { return weight_decay_; }

  // ASGD: the average ax (empty before averaging starts), its own step count and eta (the lr
  // the next step uses; 0 before the first step). set_averaging restores them from a checkpoint.
  void start_averaging();
  bool averaging() const { return kind_ == OptimizerKind::asgd; }
  const std::vector<Real>& ax() const { return ax_; }
  int64_t averaging_steps() const { return avg_t_; }
  double eta() const { return eta_; }
  void set_averaging(std::vector<Real> ax, int64_t steps, double eta);

 private:
  OptimizerKind kind_;
  size_t n_;
  double beta1_, beta2_, eps_, weight_decay_;
  int64_t t_ = 0;
  std::vector<Real> m_, v_;
  std::vector<Real> ax_;  // ASGD's average
  int64_t avg_t_ = 0;     // ASGD's steps
  double eta_ = 0;        // ASGD's lr for its next step (0: take that step's)
};

}  // namespace lstmgrad
