// `lstmgrad grad` end to end: PyTorch's golden numbers through the command, and bad input (one
// line naming the file and tensor, exit code 2, no output file).
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "cli_runner.hpp"
#include "compare.hpp"
#include "lstmgrad/safetensors.hpp"

namespace lstmgrad::test {
namespace {

const std::string kGolden = std::string(LSTMGRAD_TEST_DATA) + "/golden/";

std::string grad_args(const std::string& model, const std::string& batch, const std::string& out,
                      const std::string& extra = "") {
  return "grad --model '" + model + "' --batch '" + batch + "' --out '" + out + "' " + extra;
}

TEST(GradCli, WritesPyTorchsGradients) {
  TempDir dir;
  for (const char* dtype : {"f64", "f32"}) {
    const std::string c = kGolden + "deep_long/", out = (dir / "g.safetensors").string();
    const CliResult r = run_cli(grad_args(c + "model.safetensors", c + "batch.safetensors", out,
                                          std::string("--dtype ") + dtype));
    ASSERT_EQ(r.rc, 0) << r.err;
    const io::TensorFile got = io::read_safetensors(out);
    const io::TensorFile want = io::read_safetensors(c + "expected.safetensors");
    const double tol = std::string(dtype) == "f64" ? 1e-10 : 1e-4;  // as in test_golden.cpp
    for (const io::Tensor& t : want.tensors) {
      const io::Tensor* g = got.find(t.name);
      ASSERT_NE(g, nullptr) << t.name;
      EXPECT_TRUE(close(t.name, io::to_floats<double>(*g, out), io::to_floats<double>(t, c), tol));
    }
  }
}

// Writes `f` into dir/name and returns the path.
std::string put(const TempDir& dir, const std::string& name, const io::TensorFile& f) {
  const std::string p = (dir / name).string();
  io::write_safetensors(p, f);
  return p;
}

io::TensorFile replace(io::TensorFile f, io::Tensor t) {
  for (io::Tensor& e : f.tensors)
    if (e.name == t.name) e = std::move(t);
  return f;
}

struct BadCase {
  std::string what, model, batch, must_name;
};

TEST(GradCli, BadInputGetsOneLineNamingFileAndTensorAndNoOutput) {
  TempDir dir;
  const std::string c = kGolden + "deep_long/";
  const std::string model = c + "model.safetensors", batch = c + "batch.safetensors";
  const io::TensorFile m = io::read_safetensors(model), b = io::read_safetensors(batch);
  std::vector<BadCase> cases;
  // rnn.weight_hh_l0 not [4H, H] (H = 8).
  cases.push_back({"weight_hh shape",
                   put(dir, "m1.safetensors",
                       replace(m, io::make_tensor("rnn.weight_hh_l0", {32, 7},
                                                  std::vector<double>(32 * 7, 0.1)))),
                   batch, "rnn.weight_hh_l0"});
  // A NaN in a weight.
  std::vector<double> w = io::to_floats<double>(m.require("decoder.weight", model), model);
  w[5] = std::nan("");
  cases.push_back(
      {"NaN weight",
       put(dir, "m2.safetensors", replace(m, io::make_tensor("decoder.weight", {11, 8}, w))), batch,
       "decoder.weight"});
  // A token id >= V (V = 11).
  std::vector<int64_t> ids = io::to_ints(b.require("input", batch), batch);
  ids[7] = 11;
  cases.push_back({"token id", model,
                   put(dir, "b1.safetensors", replace(b, io::make_tensor("input", {20, 4}, ids))),
                   "'input'"});
  // h0 whose B disagrees with the batch (B = 4).
  cases.push_back({"h0 batch size", model,
                   put(dir, "b2.safetensors",
                       replace(b, io::make_tensor("h0", {3, 5, 8}, std::vector<double>(120)))),
                   "h0"});
  // Truncated and garbled files, an unknown dtype.
  const std::string bytes = slurp(model);
  std::ofstream(dir / "trunc.safetensors", std::ios::binary) << bytes.substr(0, bytes.size() / 2);
  cases.push_back({"truncated", (dir / "trunc.safetensors").string(), batch, "trunc.safetensors"});
  std::string garbled = bytes;
  garbled[12] = '#';  // inside the JSON header
  std::ofstream(dir / "garbled.safetensors", std::ios::binary) << garbled;
  cases.push_back({"garbled", (dir / "garbled.safetensors").string(), batch, "garbled"});
  std::string bf16 = bytes;
  const size_t at = bf16.find("\"F64\"");
  ASSERT_NE(at, std::string::npos);
  bf16.replace(at, 5, "\"Q64\"");
  std::ofstream(dir / "dtype.safetensors", std::ios::binary) << bf16;
  cases.push_back({"unknown dtype", (dir / "dtype.safetensors").string(), batch, "Q64"});

  for (const BadCase& bc : cases) {
    const std::string out = (dir / "out.safetensors").string();
    const CliResult r = run_cli(grad_args(bc.model, bc.batch, out));
    EXPECT_EQ(r.rc, 2) << bc.what << ": " << r.err;
    EXPECT_EQ(count_lines(r.err), 1u) << bc.what << ": " << r.err;
    EXPECT_NE(r.err.find(bc.must_name), std::string::npos) << bc.what << ": " << r.err;
    EXPECT_FALSE(std::filesystem::exists(out)) << bc.what;
    for (const auto& e : std::filesystem::directory_iterator(dir.path()))
      EXPECT_EQ(e.path().filename().string().find(".tmp"), std::string::npos) << e.path();
  }
}

// deep_long's model file with the metadata `meta` added.
std::string with_metadata(const TempDir& dir, const std::string& name,
                          const std::map<std::string, std::string>& meta) {
  io::TensorFile f = io::read_safetensors(kGolden + "deep_long/model.safetensors");
  for (const auto& [k, v] : meta) f.metadata[k] = v;
  return put(dir, name, f);
}

// The config's metadata (issue 17): a null where a string belongs and a number beyond a double
// once ended in "internal error" (exit 3); sizes far beyond the tensors once allocated first
// (bad_alloc, or seconds and gigabytes) and layer counts built a layout of that length. Each is
// now one line naming the file and the field, exit 2, before anything is allocated.
TEST(GradCli, ConfigMetadataIsCheckedAgainstTheTensorsFirst) {
  TempDir dir;
  const std::string batch = kGolden + "deep_long/batch.safetensors";
  const io::TensorFile m = io::read_safetensors(kGolden + "deep_long/model.safetensors");
  const auto& hh = m.require("rnn.weight_hh_l0", "model").shape;  // [4H, H]
  const auto& enc = m.require("encoder.weight", "model").shape;   // [V, E]
  int64_t L = 0;
  while (m.find("rnn.weight_ih_l" + std::to_string(L))) ++L;
  auto config = [&](const std::string& H, const std::string& Lk, const std::string& input) {
    return fmt::format(R"({{"input":{},"readout":"linear","V":{},"X":{},"H":{},"L":{}}})", input,
                       enc[0], enc[1], H, Lk);
  };
  const std::string H = std::to_string(hh[1]), Ls = std::to_string(L);
  std::vector<BadCase> cases = {
      {"null input",
       with_metadata(dir, "c1.safetensors", {{"lstmgrad.config", config(H, Ls, "null")}}), batch,
       "'input'"},
      {"H overflows a double",
       with_metadata(dir, "c2.safetensors",
                     {{"lstmgrad.config", config("1e999", Ls, "\"embedding\"")}}),
       batch, "'H'"},
      {"H beyond int64",
       with_metadata(dir, "c3.safetensors",
                     {{"lstmgrad.config", config("18446744073709551615", Ls, "\"embedding\"")}}),
       batch, "'H'"},
      {"absurd H",
       with_metadata(dir, "c4.safetensors",
                     {{"lstmgrad.config", config("1000000", Ls, "\"embedding\"")}}),
       batch, "H=1000000"},
      {"absurd L",
       with_metadata(dir, "c5.safetensors",
                     {{"lstmgrad.config", config(H, "1000000000", "\"embedding\"")}}),
       batch, "layers L"},
      {"L beyond the tensors",
       with_metadata(dir, "c6.safetensors",
                     {{"lstmgrad.config", config(H, "60000", "\"embedding\"")}}),
       batch, "missing tensor 'rnn.weight_ih_l" + Ls + "'"},
  };
  for (const BadCase& bc : cases) {
    const std::string out = (dir / "out.safetensors").string();
    const auto t0 = std::chrono::steady_clock::now();
    const CliResult r = run_cli(grad_args(bc.model, bc.batch, out));
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_EQ(r.rc, 2) << bc.what << ": " << r.err;
    EXPECT_EQ(count_lines(r.err), 1u) << bc.what << ": " << r.err;
    EXPECT_NE(r.err.find(bc.model), std::string::npos) << bc.what << ": " << r.err;
    EXPECT_NE(r.err.find(bc.must_name), std::string::npos) << bc.what << ": " << r.err;
    EXPECT_FALSE(std::filesystem::exists(out)) << bc.what;
    EXPECT_LT(seconds, 10.0) << bc.what;  // far more than it takes; a layout of 10^9 took minutes
  }
}

// grad, eval and sample read a model's vocabulary and level with one function: what eval and
// sample refuse, grad refuses too (once it accepted them).
TEST(GradCli, VocabularyAndLevelAreCheckedAsEvalChecksThem) {
  TempDir dir;
  const std::string batch = kGolden + "deep_long/batch.safetensors";
  const int64_t V = io::read_safetensors(kGolden + "deep_long/model.safetensors")
                        .require("decoder.bias", "model")
                        .shape[0];
  std::vector<std::string> words;
  for (int64_t k = 0; k < V; ++k) words.push_back("w" + std::to_string(k));
  const std::string good = nlohmann::json(words).dump();
  words[3] = "w1";
  const std::string repeated = nlohmann::json(words).dump();
  words[3] = "two words";
  const std::string spaced = nlohmann::json(words).dump();
  const std::vector<BadCase> cases = {
      {"unknown level",
       with_metadata(dir, "v1.safetensors", {{"lstmgrad.vocab", good}, {"lstmgrad.level", "byte"}}),
       batch, "lstmgrad.level"},
      {"repeated entry", with_metadata(dir, "v2.safetensors", {{"lstmgrad.vocab", repeated}}),
       batch, "repeats entry 1"},
      {"entry with a space", with_metadata(dir, "v3.safetensors", {{"lstmgrad.vocab", spaced}}),
       batch, "whitespace"},
      {"char level, words",
       with_metadata(dir, "v4.safetensors", {{"lstmgrad.vocab", good}, {"lstmgrad.level", "char"}}),
       batch, "not one character"},
  };
  std::ofstream(dir / "text.txt") << "w1 w2\n";
  for (const BadCase& bc : cases) {
    const std::string out = (dir / "out.safetensors").string();
    for (const std::string& cmd :
         {grad_args(bc.model, bc.batch, out),
          "eval --model '" + bc.model + "' --data '" + (dir / "text.txt").string() + "'",
          "sample --model '" + bc.model + "' --length 2"}) {
      const CliResult r = run_cli(cmd);
      EXPECT_EQ(r.rc, 2) << bc.what << ": " << cmd << ": " << r.err;
      EXPECT_EQ(count_lines(r.err), 1u) << bc.what << ": " << r.err;
      EXPECT_NE(r.err.find(bc.must_name), std::string::npos) << bc.what << ": " << r.err;
    }
    EXPECT_FALSE(std::filesystem::exists(out)) << bc.what;
  }
  // The same vocabulary, well formed, passes.
  const std::string ok = with_metadata(dir, "ok.safetensors", {{"lstmgrad.vocab", good}});
  EXPECT_EQ(run_cli(grad_args(ok, batch, (dir / "g.safetensors").string())).rc, 0);
}

TEST(GradCli, ExistingOutputIsNotTouchedOnError) {
  TempDir dir;
  const std::string c = kGolden + "tiny/", out = (dir / "keep.safetensors").string();
  std::ofstream(out) << "precious";
  const CliResult r =
      run_cli(grad_args(c + "model.safetensors", kGolden + "deep_long/batch.safetensors", out));
  EXPECT_EQ(r.rc, 2) << r.err;
  EXPECT_EQ(slurp(out), "precious");
}

}  // namespace
}  // namespace lstmgrad::test
