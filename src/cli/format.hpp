// Small helpers for the commands' text output.
#pragma once
#include <fmt/format.h>

#include <string>
#include <vector>

namespace lstmgrad::cli {

// "(1.815832309e-04, 1.815832309e-04)" with `digits` significant digits.
inline std::string vec(const std::vector<double>& v, int digits = 10) {
  std::string out = "(";
  for (size_t k = 0; k < v.size(); ++k)
    out += (k ? ", " : "") + fmt::format("{:.{}g}", v[k], digits);
  return out + ")";
}

inline std::string num(double v, int digits = 10) {
  return fmt::format("{:.{}g}", v, digits);
}

}  // namespace lstmgrad::cli
