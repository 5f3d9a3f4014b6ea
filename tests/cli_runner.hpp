// Runs the lstmgrad command for the command-line tests: exit code, stdout and stderr.
#pragma once
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "temp_dir.hpp"

namespace lstmgrad::test {

struct CliResult {
  int rc = -1;
  std::string out, err;
};

inline std::string slurp(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A shell command line, its stdout and stderr captured.
inline CliResult run_shell(const std::string& command) {
  TempDir tmp;
  const std::string cmd = command + " >" + (tmp / "out").string() + " 2>" + (tmp / "err").string();
  const int status = std::system(cmd.c_str());
  CliResult r;
  r.rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = slurp(tmp / "out");
  r.err = slurp(tmp / "err");
  return r;
}

// `args` is appended to the binary's path as shell words (the tests quote what they pass).
inline CliResult run_cli(const std::string& args) {
  return run_shell(std::string(LSTMGRAD_CLI_PATH) + " " + args);
}

inline size_t count_lines(const std::string& s) {
  size_t n = 0;
  for (char c : s) n += c == '\n';
  return n;
}

}  // namespace lstmgrad::test
