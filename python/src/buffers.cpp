// The output arrays' cache (buffers.hpp).
#include "buffers.hpp"

#include <cstdlib>
#include <iterator>
#include <map>
#include <mutex>
#include <new>

namespace py = pybind11;

namespace lstmgrad::python {

namespace {

// A block: a 64-byte header holding its class's size, then the array's memory.
constexpr size_t kHeader = 64;

// The size class of n bytes: n rounded up to m * 2^e with 8 <= m < 16 (at most 1/8 more than
// asked), at least 4 KiB.
size_t size_class(size_t n) {
  size_t c = 4096;
  while (c < n && c < (size_t{1} << 60)) c <<= 1;  // the power of two at or above n
  if (c <= 4096) return c;
  const size_t step = c / 16;  // c/2 .. c in eighths of c/2
  return (n + step - 1) / step * step;
}

struct Cache {
  std::mutex mutex;
  std::multimap<size_t, void*> idle;  // by class size
  size_t bytes = 0, limit = kDefaultCacheLimit;
};

// Never destroyed: arrays may die after static destructors run, at interpreter exit.
Cache& cache() {
  static Cache* c = new Cache;
  return *c;
}

void* take(size_t n) {
  const size_t size = size_class(n);
  Cache& c = cache();
  {
    std::lock_guard lock(c.mutex);
    auto it = c.idle.find(size);
    if (it != c.idle.end()) {
      void* block = it->second;
      c.idle.erase(it);
      c.bytes -= size;
      return static_cast<char*>(block) + kHeader;
    }
  }
  void* block = std::aligned_alloc(64, kHeader + size);  // sizes are multiples of 64
  if (!block) throw std::bad_alloc();
  *static_cast<size_t*>(block) = size;
  return static_cast<char*>(block) + kHeader;
}

void give(void* data) {
  void* block = static_cast<char*>(data) - kHeader;
  const size_t size = *static_cast<size_t*>(block);
  Cache& c = cache();
  {
    std::lock_guard lock(c.mutex);
    if (c.bytes + size <= c.limit) {
      c.idle.emplace(size, block);
      c.bytes += size;
      return;
    }
  }
  std::free(block);
}

// Frees idle blocks, the largest first, until at most `keep` bytes are idle.
void free_idle_above(Cache& c, size_t keep) {
  std::vector<void*> freed;
  {
    std::lock_guard lock(c.mutex);
    while (c.bytes > keep) {
      auto it = std::prev(c.idle.end());
      c.bytes -= it->first;
      freed.push_back(it->second);
      c.idle.erase(it);
    }
  }
  for (void* block : freed) std::free(block);
}

}  // namespace

template <class Real>
py::array_t<Real> new_array(const std::vector<int64_t>& shape) {
  size_t n = 1;
  for (int64_t d : shape) n *= static_cast<size_t>(d);
  void* data = take(n * sizeof(Real));
  py::capsule owner(data, [](void* p) { give(p); });  // when the array (or a view of it) dies
  return py::array_t<Real>(shape, static_cast<Real*>(data), owner);
}

template py::array_t<float> new_array<float>(const std::vector<int64_t>&);
template py::array_t<double> new_array<double>(const std::vector<int64_t>&);

CacheStats cache_stats() {
  Cache& c = cache();
  std::lock_guard lock(c.mutex);
  return {c.bytes, c.idle.size(), c.limit};
}

void set_cache_limit(size_t bytes) {
  Cache& c = cache();
  {
    std::lock_guard lock(c.mutex);
    c.limit = bytes;
  }
  free_idle_above(c, bytes);
}

void empty_cache() {
  free_idle_above(cache(), 0);
}

}  // namespace lstmgrad::python
