// Fuzz target: the safetensors reader (header JSON, dtypes, shapes, offsets) and the conversion
// of every tensor it accepts.
#include "fuzz_input.hpp"
#include "lstmgrad/safetensors.hpp"
#include "safetensors_mutator.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return lstmgrad::fuzz::read_bytes(data, size, ".safetensors", [](const auto& path) {
    const lstmgrad::io::TensorFile f = lstmgrad::io::read_safetensors(path);
    for (const lstmgrad::io::Tensor& t : f.tensors) {
      if (lstmgrad::io::is_float(t.dtype))
        (void)lstmgrad::io::to_floats<double>(t, path.string());
      else
        (void)lstmgrad::io::to_ints(t, path.string());
    }
  });
}
