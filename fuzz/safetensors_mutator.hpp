// A libFuzzer custom mutator for the readers of safetensors-shaped files (safetensors, model,
// batch and checkpoint targets): 8 bytes of little-endian header length N, N bytes of header JSON
// (the lstmgrad metadata are JSON again, inside its strings), then the tensors' bytes. libFuzzer's
// byte mutations almost never keep N equal to the header's length, so nearly every input stopped
// at the first check, before the header, the config, the vocabulary or a checkpoint's run state
// was read (docs/reliability.md). This one, three times in four, mutates the header or the data
// alone with libFuzzer's own mutator (its dictionary, fuzz/safetensors.dict, included) and writes
// the new N; the fourth time it mutates the raw bytes, so the length checks stay covered too.
// Included by exactly one source file of each target. LSTMGRAD_FUZZ_PLAIN=1 in the environment
// turns it into libFuzzer's plain mutation (to measure what it adds).
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

extern "C" size_t LLVMFuzzerMutate(uint8_t* data, size_t size, size_t max_size);

extern "C" size_t LLVMFuzzerCustomMutator(uint8_t* data, size_t size, size_t max_size,
                                          unsigned int seed) {
  static const bool plain = std::getenv("LSTMGRAD_FUZZ_PLAIN") != nullptr;
  if (plain) return LLVMFuzzerMutate(data, size, max_size);
  std::minstd_rand rng(seed);
  uint64_t n = 0;
  if (size >= 8)
    for (int k = 7; k >= 0; --k) n = n << 8 | data[k];
  if (size < 8 || n > size - 8 || max_size < size || rng() % 4 == 0)
    return LLVMFuzzerMutate(data, size, max_size);
  const size_t rest = size - 8 - static_cast<size_t>(n);
  // Each part in a buffer as large as the whole may grow to, then put back together.
  const bool header = rng() % 3 != 0;
  const size_t part = header ? static_cast<size_t>(n) : rest;
  if (part == 0) return LLVMFuzzerMutate(data, size, max_size);
  const size_t room = max_size - (size - part);  // >= part
  std::vector<uint8_t> buf(room);
  const uint8_t* start = data + 8 + (header ? 0 : static_cast<size_t>(n));
  std::memcpy(buf.data(), start, part);
  const size_t grown = LLVMFuzzerMutate(buf.data(), part, room);
  if (header) {
    const std::vector<uint8_t> tail(data + 8 + n, data + size);
    n = grown;
    std::memcpy(data + 8, buf.data(), grown);
    if (!tail.empty()) std::memcpy(data + 8 + grown, tail.data(), tail.size());  // (no null)
  } else {
    std::memcpy(data + 8 + n, buf.data(), grown);
  }
  for (int k = 0; k < 8; ++k) data[k] = static_cast<uint8_t>(n >> (8 * k));
  return 8 + static_cast<size_t>(n) + (header ? rest : grown);
}
