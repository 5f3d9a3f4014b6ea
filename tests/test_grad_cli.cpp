// `lstmgrad grad` end to end: PyTorch's golden numbers through the command, and bad input (one
// line naming the file and tensor, exit code 2, no output file).
#include <gtest/gtest.h>

#include <fstream>

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
