// The contract every fuzz target checks: a reader given any bytes either returns or throws
// lstmgrad::InputError (a clear refusal naming the file). Anything else (a crash, a sanitizer
// report, another exception, which ends in std::terminate, a hang, an allocation above
// libFuzzer's -malloc_limit_mb) is a finding. The bytes go through a file because the readers
// take paths, as the command line does.
#pragma once
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>

#include "lstmgrad/error.hpp"

namespace lstmgrad::fuzz {

// Writes the input to this process's scratch file (named with `suffix`) and runs `read` on it.
template <class Read>
int read_bytes(const uint8_t* data, size_t size, const char* suffix, Read&& read) {
  static const std::filesystem::path path = std::filesystem::temp_directory_path() /
                                            ("lstmgrad_fuzz_" + std::to_string(getpid()) + suffix);
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  }
  try {
    read(path);
  } catch (const InputError&) {
    // The expected refusal.
  }
  return 0;
}

}  // namespace lstmgrad::fuzz
