// What happens to long training runs, each proving that nothing is lost: SIGINT and SIGTERM
// (a checkpoint, exit 130 / 143, an exact resume), a write that fails for want of space (the
// previous checkpoint intact), a non-finite loss (stop, or skip and count), two trainings on one
// folder (the lock), a model too large for memory (refused before allocating).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/file.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "cli_runner.hpp"
#include "lstmgrad/safetensors.hpp"
#include "sanitizers.hpp"
#include "temp_dir.hpp"
#include "tensor_files.hpp"

namespace lstmgrad::test {
namespace {

namespace fs = std::filesystem;

struct Text {
  TempDir dir;
  std::string train;
  Text() {
    train = (dir / "train.txt").string();
    std::ofstream out(train);
    const char* lines[] = {"the cat sat on the mat", "a dog ran in the park",
                           "the bird sang at dawn", "a fox hid by the river"};
    unsigned seed = 7;
    for (int k = 0; k < 600; ++k) {
      seed = seed * 1103515245u + 12345u;
      out << lines[(seed >> 16) % 4] << "\n";
    }
  }
};

// Float64 (the same bits on every run), one thread, small enough to take a few ms per update.
const std::string kRun =
    " --level char --layers 1 --hidden 24 --embed 16 --seq 20 --batch 8 --quiet --dtype f64"
    " --threads 1 --optimizer adam --lr 0.01";

// `script` run by sh with $LSTMGRAD set to the command's path; its exit code and stderr.
CliResult shell(const std::string& script) {
  TempDir tmp;
  const fs::path file = tmp / "script.sh";
  std::ofstream(file) << "LSTMGRAD=" << LSTMGRAD_CLI_PATH << "\n" << script << "\n";
  return run_shell("sh " + file.string());
}

std::string bytes(const fs::path& p) {
  return slurp(p);
}

class StopSignal : public ::testing::TestWithParam<int> {};

// The signal arrives mid-run (after the first checkpoint appears); the run writes a checkpoint and
// exits 128 + signal; --resume then ends where an uninterrupted run ends, bit for bit.
TEST_P(StopSignal, CheckpointsExitsAndResumesExactly) {
  const int sig = GetParam();
  Text t;
  const std::string common = "train --train " + t.train + kRun + " --epochs 30";
  const fs::path a = t.dir / "a", b = t.dir / "b";
  ASSERT_EQ(run_cli(common + " --out " + a.string()).rc, 0);
  const CliResult r = shell("\"$LSTMGRAD\" " + common + " --checkpoint-every 1 --out " +
                            b.string() + " &\npid=$!\nwhile [ ! -f " + b.string() +
                            "/checkpoint.safetensors ]; do sleep 0.01; done\nkill -" +
                            std::to_string(sig) + " $pid\nwait $pid");
  ASSERT_EQ(r.rc, 128 + sig) << r.err;
  EXPECT_NE(r.err.find(sig == SIGINT ? "SIGINT after update" : "SIGTERM after update"),
            std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("--resume " + b.string()), std::string::npos) << r.err;
  const CliResult resumed = run_cli("train --resume " + b.string() + " --quiet");
  ASSERT_EQ(resumed.rc, 0) << resumed.err;
  EXPECT_TRUE(same_tensors(a / "model.safetensors", b / "model.safetensors"));
  EXPECT_TRUE(same_tensors(a / "checkpoint.safetensors", b / "checkpoint.safetensors"));
}

INSTANTIATE_TEST_SUITE_P(Signals, StopSignal, ::testing::Values(SIGINT, SIGTERM),
                         [](const auto& p) { return p.param == SIGINT ? "Int" : "Term"; });

// Writes that fail for want of space (a file-size limit: the writer sees EFBIG, the path a full
// disk's ENOSPC takes): one line naming the file, exit 2, the previous checkpoint untouched and
// no temporary file left; the run then resumes without the limit to the uninterrupted result.
TEST(TrainFaults, FailedWritesKeepThePreviousCheckpoint) {
  if (kThreadSanitizer)
    GTEST_SKIP() << "under a file-size limit ThreadSanitizer's own runtime faults (SIGBUS) before "
                    "lstmgrad runs; the ASan and plain builds run this test";
  Text t;
  const std::string common = "train --train " + t.train + kRun + " --epochs 2";
  const fs::path a = t.dir / "a", b = t.dir / "b";
  ASSERT_EQ(run_cli(common + " --out " + a.string()).rc, 0);
  ASSERT_EQ(run_cli(common + " --out " + b.string() + " --max-steps 5").rc, 0);
  const std::string before = bytes(b / "checkpoint.safetensors");
  const size_t files_before = std::distance(fs::directory_iterator(b), fs::directory_iterator());
  // 16 blocks of 512 bytes: metrics.jsonl fits, a model or checkpoint file does not.
  const CliResult r = shell("ulimit -f 16\n\"$LSTMGRAD\" train --resume " + b.string() +
                            " --quiet --checkpoint-every 3");
  EXPECT_EQ(r.rc, 2) << r.err;
  EXPECT_EQ(count_lines(r.err), 1u) << r.err;
  EXPECT_NE(r.err.find("write failed"), std::string::npos) << r.err;
  EXPECT_EQ(bytes(b / "checkpoint.safetensors"), before);
  EXPECT_EQ(std::distance(fs::directory_iterator(b), fs::directory_iterator()),
            static_cast<std::ptrdiff_t>(files_before))
      << "a temporary file was left behind";
  const CliResult resumed = run_cli("train --resume " + b.string() + " --quiet");
  ASSERT_EQ(resumed.rc, 0) << resumed.err;
  EXPECT_TRUE(same_tensors(a / "model.safetensors", b / "model.safetensors"));
}

// A learning rate that sends the parameters to infinity within a few updates.
const std::string kDiverging =
    " --level char --layers 1 --hidden 24 --embed 16 --seq 20 --batch 8 --quiet --lr 1e35";

TEST(TrainFaults, NonFiniteLossStopsAndKeepsTheLastCheckpoint) {
  Text t;
  const fs::path run = t.dir / "run";
  const CliResult r = run_cli("train --train " + t.train + kDiverging +
                              " --checkpoint-every 1 --out " + run.string());
  EXPECT_EQ(r.rc, 1) << r.err;
  EXPECT_EQ(count_lines(r.err), 1u) << r.err;
  EXPECT_NE(r.err.find("training stopped"), std::string::npos) << r.err;
  // The last checkpoint holds finite parameters from the update before, and resumes (to stop
  // again at the same update: the arithmetic is the same).
  ASSERT_TRUE(fs::exists(run / "checkpoint.safetensors"));
  const CliResult again =
      run_cli("train --resume " + run.string() + " --checkpoint-every 1 --quiet");
  EXPECT_EQ(again.rc, 1) << again.err;
  EXPECT_EQ(again.err.substr(0, again.err.find(';')), r.err.substr(0, r.err.find(';')));
}

// Parameters so large (but finite in float32) that every forward overflows (products of two of
// them are inf; the logits +-inf, the loss NaN): each update has a non-finite loss and leaves the
// parameters as they are.
const std::string kOverflowing =
    " --level char --layers 1 --hidden 24 --embed 16 --seq 20 --batch 8 --quiet --init 3e38";

TEST(TrainFaults, NonFiniteUpdatesCanBeSkippedAndCounted) {
  Text t;
  const CliResult stop =
      run_cli("train --train " + t.train + kOverflowing + " --out " + (t.dir / "a").string());
  EXPECT_EQ(stop.rc, 1) << stop.err;
  EXPECT_NE(stop.err.find("update 1 (epoch 1, window 1)"), std::string::npos) << stop.err;
  const fs::path run = t.dir / "run";
  const CliResult r = run_cli("train --train " + t.train + kOverflowing +
                              " --epochs 1 --on-nonfinite skip --out " + run.string());
  ASSERT_EQ(r.rc, 0) << r.err;
  std::ifstream in(run / "metrics.jsonl");
  std::string line;
  std::getline(in, line);
  const nlohmann::json m = nlohmann::json::parse(line);
  ASSERT_TRUE(m.contains("skipped_nonfinite")) << line;
  EXPECT_GT(m["skipped_nonfinite"].get<int64_t>(), 0);
  EXPECT_EQ(m["skipped_nonfinite"].get<int64_t>(), m["step"].get<int64_t>());
  // Nothing was applied: the model is the initial one (the same seed's --init draw).
  const CliResult again =
      run_cli("train --train " + t.train + kOverflowing +
              " --epochs 1 --on-nonfinite skip --max-steps 1 --out " + (t.dir / "one").string());
  ASSERT_EQ(again.rc, 0) << again.err;
  EXPECT_TRUE(same_tensors(run / "model.safetensors", t.dir / "one" / "model.safetensors"));
}

TEST(TrainFaults, SecondTrainingOnTheSameFolderIsRefused) {
  Text t;
  const fs::path run = t.dir / "run";
  const std::string common = "train --train " + t.train + kRun + " --epochs 1";
  ASSERT_EQ(run_cli(common + " --out " + run.string() + " --max-steps 3").rc, 0);
  // This process holds the lock, as a running training would.
  const int fd = ::open((run / ".lstmgrad.lock").c_str(), O_RDWR | O_CREAT, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::flock(fd, LOCK_EX | LOCK_NB), 0);
  const std::string before = bytes(run / "checkpoint.safetensors");
  const CliResult r = run_cli("train --resume " + run.string() + " --quiet");
  EXPECT_EQ(r.rc, 2) << r.err;
  EXPECT_EQ(count_lines(r.err), 1u) << r.err;
  EXPECT_NE(r.err.find("another lstmgrad train is using this run folder"), std::string::npos)
      << r.err;
  EXPECT_EQ(bytes(run / "checkpoint.safetensors"), before);
  ::close(fd);  // released: the run continues
  const CliResult ok = run_cli("train --resume " + run.string() + " --quiet");
  EXPECT_EQ(ok.rc, 0) << ok.err;
}

TEST(TrainFaults, ModelTooLargeForMemoryIsRefusedBeforeAllocating) {
  Text t;
  const fs::path run = t.dir / "run";
  const CliResult r =
      run_cli("train --train " + t.train +
              " --level char --layers 4 --hidden 200000 --embed 16 --quiet --out " + run.string());
  EXPECT_EQ(r.rc, 2) << r.err;
  EXPECT_EQ(count_lines(r.err), 1u) << r.err;
  EXPECT_NE(r.err.find("needs about"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace lstmgrad::test
