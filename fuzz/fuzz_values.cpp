// Fuzz target: the `exercise --values` JSON file.
#include "fuzz_input.hpp"
#include "lstmgrad/exercise.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return lstmgrad::fuzz::read_bytes(
      data, size, ".json", [](const auto& path) { (void)lstmgrad::read_handout_values(path); });
}
