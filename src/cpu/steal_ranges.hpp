// Work items [0, n) shared by a team: thread p starts on its own contiguous share
// [n p / P, n (p + 1) / P) and takes it in order; one that runs out takes items from the end of
// the share with the most left. A core that runs slower (a virtual machine's cores often do, by
// tens of percent) ends up with fewer items, while the threads stay on contiguous runs (items
// next to each other share cache lines at their edges, and neighbours in memory stream better).
//
// Each share is one 64-bit word [lo, hi) on its own cache line: the owner advances lo, a thief
// lowers hi, both by compare-and-swap, so every item is taken exactly once.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>

namespace lstmgrad::cpu {

class StealRanges {
 public:
  // Room for `sets` independent sets of items (one per step, say) and teams of up to `threads`.
  void reserve(int64_t sets, int threads) {
    if (sets * threads <= cap_) return;
    cap_ = sets * threads;
    slots_ = std::make_unique<Slot[]>(static_cast<size_t>(cap_));
  }

  // Thread `id` of `nt` sets its own share of set s to its part of [0, n). Every thread calls
  // this before a barrier that precedes any take() on the set.
  void reset(int64_t s, int id, int nt, int64_t n) {
    const uint64_t lo = static_cast<uint64_t>(n * id / nt),
                   hi = static_cast<uint64_t>(n * (id + 1) / nt);
    slot(s, id, nt).store(lo << 32 | hi, std::memory_order_relaxed);
  }

  // The next item of set s for thread `id`, or -1 when none is left.
  int64_t take(int64_t s, int id, int nt) {
    std::atomic<uint64_t>& own = slot(s, id, nt);
    for (uint64_t r = own.load(std::memory_order_relaxed); lo(r) < hi(r);)
      if (own.compare_exchange_weak(r, (lo(r) + 1) << 32 | hi(r), std::memory_order_relaxed))
        return static_cast<int64_t>(lo(r));
    for (;;) {  // steal from the back of the share with the most left
      int victim = -1;
      uint64_t most = 0;
      for (int t = 0; t < nt; ++t) {
        const uint64_t r = slot(s, t, nt).load(std::memory_order_relaxed);
        if (hi(r) > lo(r) && hi(r) - lo(r) > most) most = hi(r) - lo(r), victim = t;
      }
      if (victim < 0) return -1;
      std::atomic<uint64_t>& v = slot(s, victim, nt);
      uint64_t r = v.load(std::memory_order_relaxed);
      if (lo(r) < hi(r) &&
          v.compare_exchange_strong(r, lo(r) << 32 | (hi(r) - 1), std::memory_order_relaxed))
        return static_cast<int64_t>(hi(r) - 1);
    }
  }

 private:
  struct alignas(64) Slot {
    std::atomic<uint64_t> range{0};
  };
  static uint64_t lo(uint64_t r) { return r >> 32; }
  static uint64_t hi(uint64_t r) { return r & 0xffffffffu; }
  std::atomic<uint64_t>& slot(int64_t s, int id, int nt) { return slots_[s * nt + id].range; }

  std::unique_ptr<Slot[]> slots_;
  int64_t cap_ = 0;
};

}  // namespace lstmgrad::cpu
