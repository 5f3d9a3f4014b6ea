// Comparing the tensors of two safetensors files, for the command-line tests.
#pragma once
#include <filesystem>

#include "lstmgrad/safetensors.hpp"

namespace lstmgrad::test {

// Every tensor of the two files bit for bit (metadata aside: wall times differ).
inline bool same_tensors(const std::filesystem::path& a, const std::filesystem::path& b) {
  const io::TensorFile fa = io::read_safetensors(a), fb = io::read_safetensors(b);
  if (fa.tensors.size() != fb.tensors.size()) return false;
  for (const io::Tensor& t : fa.tensors) {
    const io::Tensor* u = fb.find(t.name);
    if (!u || u->bytes != t.bytes) return false;
  }
  return true;
}

}  // namespace lstmgrad::test
