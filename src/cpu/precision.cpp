#include "lstmgrad/precision.hpp"

#include "cpu/bf16.hpp"
#include "lstmgrad/error.hpp"

namespace lstmgrad {

Precision parse_precision(const std::string& s, const std::string& what) {
  if (s == "f32" || s == "float32") return Precision::f32;
  if (s == "bf16" || s == "bfloat16") return Precision::bf16;
  throw InputError(what + ": unknown precision '" + s + "' (f32 or bf16)");
}

const char* precision_name(Precision p) {
  return p == Precision::bf16 ? "bf16" : "f32";
}

bool bf16_supported() {
  return cpu::bf16_available();
}

void require_bf16() {
  if (!bf16_supported())
    throw InputError(
        "precision bf16: this CPU has no AVX512_BF16 (vdpbf16ps) or its AVX-512 kernels are "
        "off; use f32");
}

}  // namespace lstmgrad
