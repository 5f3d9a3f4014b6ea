// A training run checked end to end, for the tests of model variants: `common` (a `train`
// command with --train, --valid and every flag but --out) run whole into `a`, and stopped after
// `stop` updates into `b` and resumed there; the two must hold the same model and checkpoint bits,
// and `eval` of a's model (float64, `eval_flags` giving --batch and --seq) must reproduce its last
// validation loss to 1e-12. Returns a's metrics.jsonl lines.
#pragma once
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli_runner.hpp"
#include "tensor_files.hpp"

namespace lstmgrad::test {

inline std::vector<nlohmann::json> resumed_run_matches(const std::string& common,
                                                       const std::filesystem::path& a,
                                                       const std::filesystem::path& b, int stop,
                                                       const std::string& valid,
                                                       const std::string& eval_flags) {
  std::vector<nlohmann::json> lines;
  const CliResult ra = run_cli(common + " --out " + a.string());
  EXPECT_EQ(ra.rc, 0) << ra.err;
  EXPECT_EQ(run_cli(common + " --out " + b.string() + " --max-steps " + std::to_string(stop)).rc,
            0);
  const CliResult rb = run_cli("train --resume " + b.string() + " --quiet");
  EXPECT_EQ(rb.rc, 0) << rb.err;
  if (ra.rc != 0 || rb.rc != 0) return lines;
  EXPECT_TRUE(same_tensors(a / "model.safetensors", b / "model.safetensors"));
  EXPECT_TRUE(same_tensors(a / "checkpoint.safetensors", b / "checkpoint.safetensors"));
  std::ifstream in(a / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) lines.push_back(nlohmann::json::parse(line));
  EXPECT_FALSE(lines.empty());
  if (lines.empty()) return lines;
  const CliResult e = run_cli("eval --json --dtype f64 " + eval_flags + " --model " +
                              (a / "model.safetensors").string() + " --data " + valid);
  EXPECT_EQ(e.rc, 0) << e.err;
  if (e.rc == 0) {
    EXPECT_NEAR(nlohmann::json::parse(e.out)["loss"].get<double>(),
                lines.back()["valid_loss"].get<double>(), 1e-12);
  }
  return lines;
}

}  // namespace lstmgrad::test
