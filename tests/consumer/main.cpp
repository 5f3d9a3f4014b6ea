// The consumer of an installed lstmgrad: a small model, its parameter count, one forward pass.
#include <cmath>
#include <cstdio>
#include <vector>

#include "lstmgrad/batch.hpp"
#include "lstmgrad/lstm.hpp"
#include "lstmgrad/model.hpp"

int main() {
  lstmgrad::ModelConfig cfg;
  cfg.input = lstmgrad::InputKind::embedding;
  cfg.readout = lstmgrad::Readout::linear;
  cfg.V = 5, cfg.X = 3, cfg.H = 4, cfg.L = 1;
  // encoder 5x3, weight_ih 16x3, weight_hh 16x4, bias_ih 16, bias_hh 16, decoder 5x4 and 5.
  const size_t n = lstmgrad::parameter_count(cfg);
  if (n != 184) {
    std::printf("FAIL parameter_count %zu, expected 184\n", n);
    return 1;
  }
  std::vector<double> params(n);
  for (size_t k = 0; k < n; ++k) params[k] = 0.1 * std::sin(static_cast<double>(k));
  lstmgrad::Batch<double> batch;
  batch.T = 1, batch.B = 1;
  batch.tokens = {2};
  batch.target = {3};
  lstmgrad::LanguageModel<double> lm(cfg);
  const double loss = lm.forward(params, batch, lstmgrad::Reduction::mean);
  // Small weights: the prediction is near uniform, so the loss is near log(V).
  if (!std::isfinite(loss) || std::abs(loss - std::log(5.0)) > 0.5) {
    std::printf("FAIL loss %g\n", loss);
    return 1;
  }
  std::printf("OK parameter_count %zu loss %.6f\n", n, loss);
  return 0;
}
