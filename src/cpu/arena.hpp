// Carves consecutive buffers out of one allocation (an arena sized up front).
#pragma once
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>

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

// n zeroed elements of a trivial type from calloc, which gives fresh pages (a large block: the
// kernel's, or the heap's new top) without writing them: a page costs memory only once something
// is written to it. For arenas of which a call may use a part (bf16's backward operands, which
// a forward or an inference never touches); std::vector would write every zero.
template <class T>
class ZeroedBuffer {
 public:
  // Zeroed, n elements (the old contents are dropped).
  void assign(size_t n) {
    p_.reset();
    n_ = 0;
    if (n == 0) return;
    p_.reset(static_cast<T*>(std::calloc(n, sizeof(T))));
    if (!p_) throw std::bad_alloc();
    n_ = n;
  }
  T* data() const { return p_.get(); }
  size_t size() const { return n_; }
  bool empty() const { return n_ == 0; }

 private:
  struct Free {
    void operator()(T* p) const { std::free(p); }
  };
  std::unique_ptr<T, Free> p_;
  size_t n_ = 0;
};

}  // namespace lstmgrad::cpu
