// `--device cuda` on every command that takes it. Without a GPU (or in a build without the CUDA
// backend): exit 2, one line naming the flag and the reason, nothing written. With one: `grad`
// reproduces PyTorch's golden gradients like the CPU's float32 path does.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "cli_runner.hpp"
#include "compare.hpp"
#include "lstmgrad/cuda.hpp"
#include "lstmgrad/safetensors.hpp"

namespace lstmgrad::test {
namespace {

const std::string kGolden = std::string(LSTMGRAD_TEST_DATA) + "/golden/";

TEST(DeviceCli, WithoutAGpuEveryCommandSaysSoAndWritesNothing) {
  if (cuda::available()) GTEST_SKIP() << "a GPU is present: " << cuda::describe();
  TempDir dir;
  const std::string c = kGolden + "tiny/";
  { std::ofstream(dir / "text.txt") << "a b c a b c\na b\n"; }
  const std::string text = (dir / "text.txt").string(), run = (dir / "run").string();
  const std::string commands[] = {
      "grad --model '" + c + "model.safetensors' --batch '" + c + "batch.safetensors' --out '" +
          (dir / "g.safetensors").string() + "' --device cuda",
      "check --device cuda",
      "train --train '" + text + "' --out '" + run + "' --device cuda --quiet",
      "bench --device cuda --preset zaremba-small",
      "eval --model '" + c + "model.safetensors' --data '" + text + "' --device cuda",
      "sample --model '" + c + "model.safetensors' --device cuda",
  };
  for (const std::string& args : commands) {
    const CliResult r = run_cli(args);
    EXPECT_EQ(r.rc, 2) << args << "\n" << r.err;
    EXPECT_EQ(r.err.rfind("lstmgrad: error: --device cuda: ", 0), 0u) << args << "\n" << r.err;
    EXPECT_EQ(count_lines(r.err), 1u) << args << "\n" << r.err;
    EXPECT_TRUE(r.out.empty()) << args << "\n" << r.out;
  }
  EXPECT_FALSE(std::filesystem::exists(dir / "g.safetensors"));
  EXPECT_FALSE(std::filesystem::exists(run));
}

TEST(DeviceCli, CudaComputesInFloat32Only) {
  TempDir dir;
  const std::string c = kGolden + "tiny/";
  const CliResult r =
      run_cli("grad --model '" + c + "model.safetensors' --batch '" + c + "batch.safetensors' " +
              "--out '" + (dir / "g.safetensors").string() + "' --device cuda --dtype f64");
  EXPECT_EQ(r.rc, 2) << r.err;
  EXPECT_NE(r.err.find("--dtype f64: --device cuda computes in float32"), std::string::npos)
      << r.err;
  EXPECT_FALSE(std::filesystem::exists(dir / "g.safetensors"));
}

// PyTorch's numbers (tests/data/golden) through `grad --device cuda`, at the float32 tolerance of
// test_golden.cpp.
TEST(DeviceCli, GradOnTheGpuGivesPyTorchsGradients) {
  if (!cuda::available()) GTEST_SKIP() << "no GPU: " << cuda::describe();
  TempDir dir;
  for (const char* name : {"tiny", "deep_long", "embed_soft", "identity_class", "zaremba_scale"}) {
    const std::string c = kGolden + name + "/", out = (dir / "g.safetensors").string();
    std::filesystem::remove(out);
    const io::TensorFile want = io::read_safetensors(c + "expected.safetensors");
    const CliResult r = run_cli("grad --model '" + c + "model.safetensors' --batch '" + c +
                                "batch.safetensors' --out '" + out +
                                "' --device cuda --reduction " + want.metadata.at("reduction"));
    ASSERT_EQ(r.rc, 0) << name << ": " << r.err;
    const io::TensorFile got = io::read_safetensors(out);
    for (const io::Tensor& t : want.tensors) {
      const io::Tensor* g = got.find(t.name);
      ASSERT_NE(g, nullptr) << name << ": " << t.name;
      EXPECT_TRUE(close(t.name, io::to_floats<double>(*g, out), io::to_floats<double>(t, c), 1e-4))
          << name;
    }
  }
}

}  // namespace
}  // namespace lstmgrad::test
