// Fuzz target: training checkpoints (parameters, optimizer moments, carried state, RNG state and
// the stored options), as train --resume reads them.
#include "fuzz_input.hpp"
#include "safetensors_mutator.hpp"
#include "train/run_state.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return lstmgrad::fuzz::read_bytes(data, size, ".safetensors", [](const auto& path) {
    (void)lstmgrad::train::read_checkpoint<double>(path);
    (void)lstmgrad::train::read_checkpoint<float>(path);
  });
}
