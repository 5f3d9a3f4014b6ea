// lstmgrad: the arithmetic of the float32 engine's GEMMs (`--precision`).
//   f32   float32 operands and sums (the default).
//   bf16  bfloat16 operands (8 significant bits) with float32 sums, AVX512_BF16's vdpbf16ps:
//         twice the multiply-add rate. Everything else stays float32: the weights, the cell
//         state, the nonlinearities, every gradient and the optimizer. docs/design.md,
//         "bfloat16".
#pragma once
#include <string>

namespace lstmgrad {

enum class Precision { f32, bf16 };

// "f32" or "bf16"; anything else throws InputError naming `what` (the flag or field).
Precision parse_precision(const std::string& s, const std::string& what = "--precision");
const char* precision_name(Precision p);

// Whether this CPU runs the bf16 kernels (AVX512_BF16 with AVX512BW). Where it does not, bf16
// is refused with require_bf16's message; nothing falls back silently.
bool bf16_supported();
void require_bf16();  // throws InputError where !bf16_supported()

}  // namespace lstmgrad
