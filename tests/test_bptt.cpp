// Hand-derived BPTT against the autodiff tape and finite differences on random shapes, including
// the edge cases T=1, B=1, H=1, X=1 and L=3, for the plain cell and the cell with peepholes
// (lstmgrad check runs the same comparison).
#include <gtest/gtest.h>

#include "lstmgrad/check.hpp"

namespace lstmgrad::test {
namespace {

struct Case {
  const char* name;
  int64_t T, B, X, H, L, V;
  InputKind input;
  Readout readout;
  bool soft;
  Reduction red;
  bool peephole = false;
};

class Bptt : public ::testing::TestWithParam<Case> {};

TEST_P(Bptt, HandMatchesTapeAndFiniteDifferences) {
  const Case c = GetParam();
  for (uint64_t seed : {1u, 2u}) {
    CheckOptions o;
    o.cfg = {c.input, c.readout, c.readout == Readout::identity ? c.H : c.V, c.X, c.H, c.L};
    o.cfg.peephole = c.peephole;
    o.T = c.T, o.B = c.B, o.soft_targets = c.soft, o.reduction = c.red, o.seed = seed;
    o.fd_max_coords = 24;
    const CheckReport r = run_check(o);
    EXPECT_NEAR(r.loss_hand, r.loss_tape, 1e-12 * std::max(1.0, r.loss_tape));
    for (const CheckRow& row : r.rows) {
      // Tape: the same float64 arithmetic in another order (1e-10 of the tensor's scale).
      EXPECT_LE(row.tape_rel, 1e-10) << c.name << " seed " << seed << " " << row.tensor;
      // Five-point central differences, e = 1e-3: O(e^4) truncation, O(1e-16/e) rounding.
      EXPECT_LE(row.fd_rel, 1e-6) << c.name << " seed " << seed << " " << row.tensor;
    }
    EXPECT_TRUE(r.ok);
  }
}

constexpr auto E = InputKind::embedding, D = InputKind::dense;
constexpr auto Lin = Readout::linear, Id = Readout::identity;
INSTANTIATE_TEST_SUITE_P(
    Shapes, Bptt,
    ::testing::Values(Case{"default", 3, 2, 3, 4, 2, 5, E, Lin, false, Reduction::mean},
                      Case{"T1", 1, 3, 2, 3, 2, 4, E, Lin, false, Reduction::mean},
                      Case{"B1", 5, 1, 2, 3, 2, 4, E, Lin, false, Reduction::sum},
                      Case{"H1", 4, 2, 2, 1, 2, 3, D, Lin, true, Reduction::mean},
                      Case{"X1", 4, 2, 1, 3, 1, 3, D, Lin, false, Reduction::batch_mean},
                      Case{"L3", 6, 2, 3, 3, 3, 5, E, Lin, false, Reduction::mean},
                      Case{"all_ones", 1, 1, 1, 1, 1, 1, D, Id, true, Reduction::sum},
                      Case{"handout_model", 4, 3, 2, 3, 1, 3, D, Id, true, Reduction::mean},
                      Case{"identity_deep", 5, 2, 3, 4, 3, 4, D, Id, false, Reduction::sum},
                      Case{"long", 25, 2, 2, 3, 2, 4, E, Lin, true, Reduction::batch_mean},
                      // Peepholes: the gradients of rnn.weight_peephole_l{k} and everything
                      // they change (the carried ds, dz_o through s).
                      Case{"peephole", 4, 2, 3, 4, 2, 5, E, Lin, false, Reduction::mean, true},
                      Case{"peephole_H1", 4, 2, 2, 1, 2, 3, D, Lin, true, Reduction::mean, true},
                      Case{"peephole_L3", 6, 2, 3, 3, 3, 5, D, Id, true, Reduction::sum, true},
                      Case{"peephole_long", 25, 2, 2, 3, 2, 4, E, Lin, false, Reduction::batch_mean,
                           true}),
    [](const auto& test_info) { return std::string(test_info.param.name); });

}  // namespace
}  // namespace lstmgrad::test
