// A small text with structure to learn, for the training tests: four phrases in a pseudo-random
// order, one per line.
#pragma once
#include <string>

namespace lstmgrad::test {

inline std::string phrases(int lines, unsigned seed) {
  const char* words[] = {"the cat sat on the mat", "a dog ran in the park", "the bird sang at dawn",
                         "a fox hid by the river"};
  std::string s;
  for (int k = 0; k < lines; ++k) {
    seed = seed * 1103515245u + 12345u;
    s += words[(seed >> 16) % 4];
    s += "\n";
  }
  return s;
}

}  // namespace lstmgrad::test
