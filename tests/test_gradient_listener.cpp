// LanguageModel's GradientListener (what data-parallel training starts summing while the backward
// runs, docs/scaling.md): each final_from(from) comes in the promised order, at the promised
// offsets, and grad[from, end) then already holds the bits backward returns; poll() comes
// between the steps, from the calling thread; and a listener changes no bit of the gradient.
// The readout fused or not, tied or not, weight drop (whose product backward now applies layer
// by layer), the row-split layer (layer norm, projection), float32 and float64, teams of 1 and 3.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <thread>

#include "compare.hpp"
#include "lstmgrad/lstm.hpp"

namespace lstmgrad::test {
namespace {

template <class Real>
class Recorder final : public GradientListener {
 public:
  explicit Recorder(std::span<const Real> grad) : grad_(grad) {}
  void final_from(size_t from) override {
    EXPECT_EQ(std::this_thread::get_id(), caller_);
    froms.push_back(from);
    snapshots.emplace_back(grad_.begin() + static_cast<ptrdiff_t>(from), grad_.end());
  }
  void poll() override {
    EXPECT_EQ(std::this_thread::get_id(), caller_);
    ++polls;
  }
  std::vector<size_t> froms;
  std::vector<std::vector<Real>> snapshots;
  int polls = 0;

 private:
  std::span<const Real> grad_;
  std::thread::id caller_ = std::this_thread::get_id();
};

struct ListenerCase {
  std::string name;
  ModelConfig cfg;
  Regularization reg;
};

std::vector<ListenerCase> listener_cases() {
  Regularization awd;
  awd.dropout_in = 0.4, awd.dropout_hid = 0.25, awd.dropout_out = 0.4, awd.dropout_emb = 0.1;
  awd.weight_drop = 0.5, awd.ar = 2, awd.tar = 1;
  std::vector<ListenerCase> v;
  v.push_back({"plain", {InputKind::embedding, Readout::linear, 120, 48, 48, 2}, {}});
  v.push_back(
      {"awd_tied", {InputKind::embedding, Readout::linear, 120, 48, 48, 3, false, true}, awd});
  ListenerCase rows{
      "layer_norm_projection", {InputKind::embedding, Readout::linear, 90, 16, 16, 2}, awd};
  rows.cfg.layer_norm = true, rows.cfg.proj = 16, rows.cfg.hidden = {24, 20};
  v.push_back(rows);
  v.push_back({"dense_identity", {InputKind::dense, Readout::identity, 32, 10, 32, 2}, {}});
  return v;
}

// Where the pieces begin, in the order backward makes them final.
std::vector<size_t> expected_froms(const ModelConfig& cfg) {
  const ParameterOffsets o = parameter_offsets(cfg);
  std::vector<size_t> want;
  if (o.decoder_bias) want.push_back(cfg.tie_weights ? *o.decoder_bias : *o.decoder_weight);
  for (int64_t k = cfg.L - 1; k >= 0; --k)
    want.push_back(o.layers[static_cast<size_t>(k)].weight_ih);
  return want;
}

template <class Real>
void expect_listener_sees_final_pieces(const ListenerCase& c, int threads) {
  const ModelConfig& cfg = c.cfg;
  std::mt19937_64 rng(3);
  const std::vector<Real> params = cast<Real>(uniform(parameter_count(cfg), rng, -0.2, 0.2));
  Batch<Real> b;
  b.T = 7, b.B = 5;
  std::uniform_int_distribution<int64_t> id(0, cfg.V - 1);
  for (int64_t k = 0; k < b.T * b.B; ++k) {
    if (cfg.input == InputKind::embedding) b.tokens.push_back(id(rng));
    b.target.push_back(id(rng));
  }
  if (cfg.input == InputKind::dense) b.dense = cast<Real>(uniform(b.T * b.B * cfg.X, rng));
  LanguageModel<Real> lm(cfg);
  lm.set_threads(threads);
  std::vector<Real> plain(params.size(), Real(0)), heard(params.size(), Real(0));
  for (std::vector<Real>* grad : {&plain, &heard}) {
    Recorder<Real> rec(*grad);
    lm.set_gradient_listener(grad == &heard ? &rec : nullptr);
    lm.set_regularization(c.reg, 11);  // the same masks both times
    lm.forward(params, b, Reduction::mean);
    lm.backward(*grad, params, b);
    if (grad == &plain) {
      EXPECT_TRUE(rec.froms.empty());
      continue;
    }
    EXPECT_EQ(rec.froms, expected_froms(cfg));
    for (size_t k = 0; k < rec.froms.size(); ++k)
      EXPECT_EQ(0, std::memcmp(rec.snapshots[k].data(), heard.data() + rec.froms[k],
                               rec.snapshots[k].size() * sizeof(Real)))
          << "the gradient from " << rec.froms[k] << " changed after final_from";
    // every step of every layer (a thread 0 without rows of its own in the row-split layer: once)
    EXPECT_GE(rec.polls, threads == 1 ? b.T * cfg.L : cfg.L);
  }
  EXPECT_EQ(0, std::memcmp(plain.data(), heard.data(), plain.size() * sizeof(Real)));
  lm.set_gradient_listener(nullptr);
}

class Listener : public ::testing::TestWithParam<ListenerCase> {};

TEST_P(Listener, ToldPiecesAreFinalAndChangeNothing) {
  for (int threads : {1, 3}) {
    SCOPED_TRACE("threads " + std::to_string(threads));
    expect_listener_sees_final_pieces<float>(GetParam(), threads);
    expect_listener_sees_final_pieces<double>(GetParam(), threads);
  }
}

INSTANTIATE_TEST_SUITE_P(Backward, Listener, ::testing::ValuesIn(listener_cases()),
                         [](const auto& p) { return p.param.name; });

}  // namespace
}  // namespace lstmgrad::test
