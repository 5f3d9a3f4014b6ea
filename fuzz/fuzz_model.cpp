// Fuzz target: model files (tensors, the lstmgrad.config metadata JSON, the vocabulary), in both
// precisions, as grad, eval, sample and train --resume read them.
#include "fuzz_input.hpp"
#include "lstmgrad/model_io.hpp"
#include "safetensors_mutator.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return lstmgrad::fuzz::read_bytes(data, size, ".safetensors", [](const auto& path) {
    (void)lstmgrad::load_model<double>(path);
    (void)lstmgrad::load_model<float>(path);
  });
}
