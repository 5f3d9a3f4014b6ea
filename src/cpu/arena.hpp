// Carves consecutive buffers out of one allocation (an arena sized up front).
#pragma once
#include <cstdint>

namespace lstmgrad::cpu {

template <class Real>
class Carver {
 public:
  explicit Carver(Real* base) : p_(base) {}
  Real* operator()(int64_t n) {  // the next n elements
    Real* q = p_;
    p_ += n;
    return q;
  }

 private:
  Real* p_;
};

}  // namespace lstmgrad::cpu
