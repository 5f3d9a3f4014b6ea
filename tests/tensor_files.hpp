// Comparing the tensors of two safetensors files, for the command-line tests.
#pragma once
#include <gtest/gtest.h>

#include <filesystem>

#include "lstmgrad/safetensors.hpp"

namespace lstmgrad::test {

// Every tensor of the two files bit for bit (metadata aside: wall times differ); on a failure,
// the first entry that differs.
inline ::testing::AssertionResult same_tensors(const std::filesystem::path& a,
                                               const std::filesystem::path& b) {
  const io::TensorFile fa = io::read_safetensors(a), fb = io::read_safetensors(b);
  if (fa.tensors.size() != fb.tensors.size())
    return ::testing::AssertionFailure() << "different tensor counts";
  for (const io::Tensor& t : fa.tensors) {
    const io::Tensor* u = fb.find(t.name);
    if (!u) return ::testing::AssertionFailure() << "missing " << t.name;
    if (t.bytes == u->bytes) continue;
    if (!io::is_float(t.dtype) || t.dtype != u->dtype)
      return ::testing::AssertionFailure() << t.name << " differs";
    const auto x = io::to_floats<double>(t, a.string()), y = io::to_floats<double>(*u, b.string());
    for (size_t k = 0; k < x.size() && k < y.size(); ++k)
      if (x[k] != y[k])
        return ::testing::AssertionFailure() << t.name << "[" << k << "]: " << x[k] << " vs "
                                             << y[k] << " (diff " << x[k] - y[k] << ")";
    return ::testing::AssertionFailure() << t.name << " differs in shape";
  }
  return ::testing::AssertionSuccess();
}

}  // namespace lstmgrad::test
