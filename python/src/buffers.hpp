// lstmgrad._core's output arrays (buffers.cpp): memory that goes back to a cache when its array
// dies, for the next call's arrays to reuse.
//
// Why: a training loop asks for the same outputs every step (y, h_n, c_n, dL/dx, the weights'
// gradients), and glibc hands large blocks back to the kernel when they are freed (mmap above
// 128 KiB, or a trimmed heap top). Each step then touches fresh pages, and on these VMs a page
// fault costs 10-25 us: a zaremba-small forward + backward paid 730 faults and ran 18.6 ms in
// place of 11.5. The cache keeps freed blocks instead (up to a limit of bytes idle), in size
// classes of 1/8 of a power of two so that slightly different sizes (packed batches of
// different lengths) share blocks.
#pragma once
#include <pybind11/numpy.h>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace lstmgrad::python {

// The most bytes the cache keeps idle by default; a block freed beyond the limit goes back to
// the system.
inline constexpr size_t kDefaultCacheLimit = size_t{512} << 20;

// A C-contiguous array of `shape` whose memory comes from the cache (uninitialised, as
// numpy.empty; 64-byte aligned).
template <class Real>
pybind11::array_t<Real> new_array(const std::vector<int64_t>& shape);

// What the cache holds idle: bytes and blocks.
struct CacheStats {
  size_t bytes = 0, blocks = 0, limit = 0;
};
CacheStats cache_stats();
// Frees every idle block (arrays alive keep theirs and return them when they die).
void empty_cache();
// The most bytes kept idle from now on (0: none, every block freed when its array dies); idle
// blocks beyond it are freed now.
void set_cache_limit(size_t bytes);

}  // namespace lstmgrad::python
