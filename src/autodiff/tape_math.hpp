// The cell's arithmetic on the autodiff tape (core/cell_math.hpp's M): every operation a node,
// so that the tape differentiates, on its own, the same forward that the hand-derived backward
// (core::cell_backward) is written for. Only what the forward uses.
#pragma once
#include "lstmgrad/autodiff.hpp"

namespace lstmgrad::ad {

struct TapeMath {
  Tape& tape;
  Var mul(Var x, Var y) const { return tape.mul(x, y); }
  Var fma(Var x, Var y, Var c) const { return tape.add(tape.mul(x, y), c); }
  Var sigmoid(Var x) const { return tape.sigmoid(x); }
  Var tanh(Var x) const { return tape.tanh(x); }
};

}  // namespace lstmgrad::ad
