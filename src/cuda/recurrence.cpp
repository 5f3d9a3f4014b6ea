// cuda::parse_recurrence: plain C++, in every build (with or without the CUDA backend).
#include "lstmgrad/cuda.hpp"
#include "lstmgrad/error.hpp"

namespace lstmgrad::cuda {

Recurrence parse_recurrence(const std::string& s) {
  if (s == "auto") return Recurrence::automatic;
  if (s == "persistent") return Recurrence::persistent;
  if (s == "steps") return Recurrence::steps;
  throw InputError("--recurrence: expected auto, persistent or steps, got '" + s + "'");
}

}  // namespace lstmgrad::cuda
