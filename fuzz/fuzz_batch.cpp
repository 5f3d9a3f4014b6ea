// Fuzz target: batch files, read against a fixed model configuration of each input kind.
#include "fuzz_input.hpp"
#include "lstmgrad/model_io.hpp"
#include "safetensors_mutator.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return lstmgrad::fuzz::read_bytes(data, size, ".safetensors", [](const auto& path) {
    lstmgrad::ModelConfig cfg;
    cfg.V = 7, cfg.X = 4, cfg.H = 5, cfg.L = 2;
    try {
      (void)lstmgrad::load_batch<double>(path, cfg);
    } catch (const lstmgrad::InputError&) {
    }
    cfg.input = lstmgrad::InputKind::dense;
    (void)lstmgrad::load_batch<float>(path, cfg);
  });
}
