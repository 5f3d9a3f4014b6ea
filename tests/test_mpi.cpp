// Data-parallel training under mpirun (docs/scaling.md): N processes train the model one process
// trains, the same bits on every run with the same N, one message and no files when a rank's
// input is wrong, and a job that ends, naming the rank, when one rank dies or stops. Skipped where
// lstmgrad was built without MPI (LSTMGRAD_WITH_MPI=OFF).
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "cli_runner.hpp"
#include "lstmgrad/safetensors.hpp"
#include "temp_dir.hpp"
#include "tensor_files.hpp"

namespace lstmgrad::test {
namespace {

namespace fs = std::filesystem;

#ifdef LSTMGRAD_MPIEXEC
constexpr const char* kMpiexec = LSTMGRAD_MPIEXEC;
#else
constexpr const char* kMpiexec = nullptr;
#endif

// mpirun as CI runs it (as root, in a container, on 2 cores with up to 3 processes); quiet: without
// mpirun's own reports (a job that ends non-zero), so that what remains is lstmgrad's.
std::string mpirun(int n, bool quiet = true) {
  return "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 " + std::string(kMpiexec) +
         (quiet ? " -q" : "") + " --oversubscribe -np " + std::to_string(n) + " ";
}

#define REQUIRE_MPI() \
  if (!kMpiexec) GTEST_SKIP() << "built without MPI (LSTMGRAD_WITH_MPI=OFF)"

// A small word corpus: 12 words, train / valid / test.
struct Corpus {
  TempDir dir;
  explicit Corpus(int train_lines = 60) {
    const char* words[] = {"the", "cat", "sat", "on", "mat", "a", "dog", "ran", "in", "park"};
    unsigned seed = 11;
    for (auto [name, lines] :
         {std::pair{"train", train_lines}, std::pair{"valid", 12}, std::pair{"test", 12}}) {
      std::ofstream out(dir / (std::string(name) + ".txt"));
      for (int k = 0; k < lines; ++k) {
        for (int w = 0; w < 8; ++w) {
          seed = seed * 1103515245u + 12345u;
          out << (w ? " " : "") << words[(seed >> 16) % 10];
        }
        out << "\n";
      }
    }
  }
  std::string data() const { return " --data " + dir.path().string(); }
};

// float64 with every kind of dropout the trainer has, two layers, clipping; 540 training tokens in
// 6 streams of 10-step windows: 9 updates an epoch.
const std::string kModel =
    " --layers 2 --hidden 12 --embed 8 --seq 10 --batch 6 --dropout 0.3 --clip 0.5 --quiet"
    " --threads 1";
const std::string kF64 = kModel + " --dtype f64";

std::vector<nlohmann::json> metrics(const fs::path& run) {
  std::vector<nlohmann::json> lines;
  std::ifstream in(run / "metrics.jsonl");
  for (std::string l; std::getline(in, l);) lines.push_back(nlohmann::json::parse(l));
  return lines;
}

double relative(double a, double b) {
  return std::abs(a - b) / std::max(std::abs(b), 1e-300);
}

// The largest relative difference between the tensors of two files (float64).
double tensor_difference(const fs::path& a, const fs::path& b) {
  const io::TensorFile fa = io::read_safetensors(a), fb = io::read_safetensors(b);
  EXPECT_EQ(fa.tensors.size(), fb.tensors.size());
  double worst = 0;
  for (const io::Tensor& t : fa.tensors) {
    const io::Tensor* u = fb.find(t.name);
    if (!u) {
      ADD_FAILURE() << t.name << " missing from " << b;
      continue;
    }
    if (!io::is_float(t.dtype)) {
      EXPECT_EQ(t.bytes, u->bytes) << t.name;
      continue;
    }
    const std::vector<double> x = io::to_floats<double>(t, a.string()),
                              y = io::to_floats<double>(*u, b.string());
    EXPECT_EQ(x.size(), y.size()) << t.name;
    double scale = 0;
    for (double v : y) scale = std::max(scale, std::abs(v));
    for (size_t k = 0; k < std::min(x.size(), y.size()); ++k)
      worst = std::max(worst, std::abs(x[k] - y[k]) / std::max(scale, 1e-300));
  }
  return worst;
}

// The same run on 1, 2 and 3 processes (B = 6 splits 6, 3+3, 2+2+2): every metrics line and the
// final model and checkpoint agree within 1e-10 relative. The sums differ only in the order of
// float64 additions (each rank's share of the loss, then their sum), about 1e-16 per update;
// 1e-10 leaves room for 50 updates to compound it and would catch any real difference (a wrong
// shard, a mask that depends on N, a missing 1/N) by orders of magnitude.
TEST(Mpi, RanksTrainTheModelOneProcessTrains) {
  REQUIRE_MPI();
  Corpus c;
  const std::string run = "train" + c.data() + kF64 + " --epochs 6";  // 54 updates
  const fs::path one = c.dir / "one";
  ASSERT_EQ(run_cli(run + " --out " + one.string()).rc, 0);
  for (int n : {2, 3}) {
    SCOPED_TRACE("np " + std::to_string(n));
    const fs::path many = c.dir / ("np" + std::to_string(n));
    const CliResult r =
        run_shell(mpirun(n) + LSTMGRAD_CLI_PATH + " " + run + " --out " + many.string());
    ASSERT_EQ(r.rc, 0) << r.err;
    const auto a = metrics(one), b = metrics(many);
    ASSERT_EQ(a.size(), 6u);
    ASSERT_EQ(b.size(), a.size());
    for (size_t k = 0; k < a.size(); ++k) {
      EXPECT_EQ(b[k]["step"], a[k]["step"]);
      EXPECT_EQ(b[k]["world_size"], n);
      EXPECT_LT(relative(b[k]["train_loss"], a[k]["train_loss"]), 1e-10) << k;
      EXPECT_LT(relative(b[k]["valid_loss"], a[k]["valid_loss"]), 1e-10) << k;
    }
    EXPECT_LT(tensor_difference(many / "model.safetensors", one / "model.safetensors"), 1e-10);
    EXPECT_LT(tensor_difference(many / "checkpoint.safetensors", one / "checkpoint.safetensors"),
              1e-10);
    const auto ra = nlohmann::json::parse(slurp(one / "results.json")),
               rb = nlohmann::json::parse(slurp(many / "results.json"));
    EXPECT_EQ(rb["world_size"], n);
    EXPECT_LT(relative(rb["test_loss"], ra["test_loss"]), 1e-10);
  }
}

// AWD-LSTM's regularisers (locked masks drawn per stream, embedding and weight masks the same on
// every rank, AR and TAR as means over each rank's share, tied weights): 1, 2 and 3 processes
// train the same model, within 1e-10 as above.
TEST(Mpi, RanksTrainTheRegularisedModelOneProcessTrains) {
  REQUIRE_MPI();
  Corpus c;
  const std::string run =
      "train" + c.data() +
      " --layers 2 --hidden 12,8 --embed 8 --seq 10 --batch 6 --clip 0.5 --quiet --threads 1"
      " --dtype f64 --epochs 2 --dropout-in 0.3 --dropout-hid 0.3 --dropout-out 0.3"
      " --dropout-emb 0.1 --weight-drop 0.5 --dropout-rec 0.3 --zoneout-h 0.2 --zoneout-s 0.1"
      " --ar 2 --tar 1 --tie-weights";
  const fs::path one = c.dir / "one";
  ASSERT_EQ(run_cli(run + " --out " + one.string()).rc, 0);
  for (int n : {2, 3}) {
    SCOPED_TRACE("np " + std::to_string(n));
    const fs::path many = c.dir / ("np" + std::to_string(n));
    const CliResult r =
        run_shell(mpirun(n) + LSTMGRAD_CLI_PATH + " " + run + " --out " + many.string());
    ASSERT_EQ(r.rc, 0) << r.err;
    const auto a = metrics(one), b = metrics(many);
    ASSERT_EQ(b.size(), a.size());
    for (size_t k = 0; k < a.size(); ++k) {
      EXPECT_LT(relative(b[k]["train_loss"], a[k]["train_loss"]), 1e-10) << k;
      EXPECT_LT(relative(b[k]["valid_loss"], a[k]["valid_loss"]), 1e-10) << k;
    }
    EXPECT_LT(tensor_difference(many / "model.safetensors", one / "model.safetensors"), 1e-10);
  }
}

// Two runs on 2 processes: the same bits (the fixed-order sums), in float32 too.
TEST(Mpi, RepeatedRunsAreBitIdentical) {
  REQUIRE_MPI();
  Corpus c;
  for (const char* dtype : {"f64", "f32"}) {
    SCOPED_TRACE(dtype);
    const std::string run =
        "train" + c.data() + kModel + " --epochs 2 --dtype " + std::string(dtype);
    const fs::path a = c.dir / (std::string("a") + dtype), b = c.dir / (std::string("b") + dtype);
    for (const fs::path& out : {a, b}) {
      const CliResult r =
          run_shell(mpirun(2) + LSTMGRAD_CLI_PATH + " " + run + " --out " + out.string());
      ASSERT_EQ(r.rc, 0) << r.err;
    }
    EXPECT_TRUE(same_tensors(a / "model.safetensors", b / "model.safetensors"));
    EXPECT_TRUE(same_tensors(a / "checkpoint.safetensors", b / "checkpoint.safetensors"));
  }
}

// --comm-overlap (the default: each piece of the gradient's sum starts as soon as the backward
// has made it final) against off (every piece after the backward), and a job whose rank 0 overlaps
// and rank 1 does not: the same pieces in the same order, so the same bits, float32 and float64.
// The untied readout (its own piece) with dropout; the tied AWD model with weight drop (applied
// layer by layer, before the layer's piece starts) on the row-split layer (layer norm); 2 and 3
// processes.
TEST(Mpi, OverlappedSumsGiveTheSameBits) {
  REQUIRE_MPI();
  Corpus c;
  const std::string awd =
      " --layers 2 --hidden 12,8 --embed 8 --seq 10 --batch 6 --clip 0.5 --quiet --threads 1"
      " --dropout-in 0.3 --dropout-hid 0.3 --dropout-out 0.3 --weight-drop 0.5 --ar 2 --tar 1"
      " --tie-weights --layer-norm";
  const std::string bin = std::string(LSTMGRAD_CLI_PATH) + " train";
  for (const auto& [model, n] : {std::pair{kModel, 2}, std::pair{awd, 3}})
    for (const char* dtype : {"f32", "f64"}) {
      SCOPED_TRACE(std::string(dtype) + " np " + std::to_string(n) + model);
      const std::string run = c.data() + model + " --epochs 2 --dtype " + dtype;
      auto out = [&](const char* name) { return " --out " + (c.dir / name).string(); };
      const std::string on = mpirun(n) + bin + run + out("on"),
                        off = mpirun(n) + bin + run + " --comm-overlap off" + out("off"),
                        mixed = mpirun(1) + bin + run + out("mixed") + " : -np " +
                                std::to_string(n - 1) + " " + bin + run + " --comm-overlap off" +
                                out("mixed");
      for (const std::string& command : {on, off, mixed}) {
        const CliResult r = run_shell(command);
        ASSERT_EQ(r.rc, 0) << command << "\n" << r.err;
      }
      for (const char* other : {"off", "mixed"}) {
        EXPECT_TRUE(
            same_tensors(c.dir / "on" / "model.safetensors", c.dir / other / "model.safetensors"))
            << other;
        EXPECT_TRUE(same_tensors(c.dir / "on" / "checkpoint.safetensors",
                                 c.dir / other / "checkpoint.safetensors"))
            << other;
      }
      for (const char* name : {"on", "off", "mixed"}) fs::remove_all(c.dir / name);
    }
}

// AWD-LSTM's loop on 2 processes: the jitter draws, the NT-ASGD switch and the average are the
// same as on one process (every rank draws from the same generator and applies the same update),
// within the same 1e-10 as above.
TEST(Mpi, NtAsgdWithJitterMatchesOneProcess) {
  REQUIRE_MPI();
  Corpus c;
  const std::string run = "train" + c.data() + kF64 +
                          " --epochs 6 --optimizer nt-asgd --lr 8 --nonmono 1 --eval-every 3"
                          " --bptt-jitter --weight-decay 1e-3";
  const fs::path one = c.dir / "one", two = c.dir / "two";
  ASSERT_EQ(run_cli(run + " --out " + one.string()).rc, 0);
  const CliResult r =
      run_shell(mpirun(2) + LSTMGRAD_CLI_PATH + " " + run + " --out " + two.string());
  ASSERT_EQ(r.rc, 0) << r.err;
  const auto a = metrics(one), b = metrics(two);
  ASSERT_EQ(b.size(), a.size());
  bool switched = false;
  for (size_t k = 0; k < a.size(); ++k) {
    EXPECT_EQ(b[k]["step"], a[k]["step"]) << k;
    EXPECT_EQ(b[k].value("asgd_switch", false), a[k].value("asgd_switch", false)) << k;
    switched |= a[k].value("asgd_switch", false);
    EXPECT_LT(relative(b[k]["valid_loss"], a[k]["valid_loss"]), 1e-10) << k;
  }
  EXPECT_TRUE(switched);
  for (const char* f : {"model.safetensors", "average.safetensors", "checkpoint.safetensors"})
    EXPECT_LT(tensor_difference(two / f, one / f), 1e-10) << f;
}

// A run stopped by --max-steps resumes on the same number of processes bit for bit, and on
// another number from the same data position (within the tolerance of the first test).
TEST(Mpi, ResumesOnTheSameOrAnotherNumberOfProcesses) {
  REQUIRE_MPI();
  Corpus c;
  const std::string run = "train" + c.data() + kF64 + " --epochs 3";
  const fs::path whole = c.dir / "whole";
  ASSERT_EQ(run_shell(mpirun(2) + LSTMGRAD_CLI_PATH + " " + run + " --out " + whole.string()).rc,
            0);
  for (int n : {2, 1, 3}) {
    SCOPED_TRACE("resumed on np " + std::to_string(n));
    const fs::path part = c.dir / ("part" + std::to_string(n));
    const CliResult first = run_shell(mpirun(2) + LSTMGRAD_CLI_PATH + " " + run +
                                      " --max-steps 13 --out " + part.string());
    ASSERT_EQ(first.rc, 0) << first.err;
    const CliResult rest =
        run_shell(mpirun(n) + LSTMGRAD_CLI_PATH + " train --quiet --resume " + part.string());
    ASSERT_EQ(rest.rc, 0) << rest.err;
    if (n == 2) {
      EXPECT_TRUE(same_tensors(part / "model.safetensors", whole / "model.safetensors"));
    } else {
      EXPECT_LT(tensor_difference(part / "model.safetensors", whole / "model.safetensors"), 1e-10);
    }
    EXPECT_EQ(metrics(part).back()["world_size"], n);
  }
}

// eval splits its streams among the processes and prints one result, the one process's within
// float64 rounding, with and without the cache; batch 1 (the sequential protocol) runs on rank 0
// alone, to the same bits.
TEST(Mpi, EvalSplitsTheStreamsAndPrintsOnce) {
  REQUIRE_MPI();
  Corpus c;
  const fs::path run = c.dir / "run";
  ASSERT_EQ(run_cli("train" + c.data() + kF64 + " --epochs 1 --out " + run.string()).rc, 0);
  // With the continuous cache each stream keeps its own history, so splitting the streams
  // changes nothing either.
  for (const std::string cache : {"", " --cache-window 30 --cache-theta 0.5 --cache-lambda 0.2"})
    for (int batch : {1, 4}) {
      SCOPED_TRACE("batch " + std::to_string(batch) + cache);
      const std::string eval =
          "eval --json --dtype f64 --model " + (run / "best.safetensors").string() + " --data " +
          (c.dir / "test.txt").string() + " --batch " + std::to_string(batch) + cache;
      const CliResult one = run_cli(eval);
      const CliResult two = run_shell(mpirun(2) + LSTMGRAD_CLI_PATH + " " + eval);
      ASSERT_EQ(one.rc, 0) << one.err;
      ASSERT_EQ(two.rc, 0) << two.err;
      ASSERT_EQ(count_lines(two.out), 1u) << two.out;
      const auto a = nlohmann::json::parse(one.out), b = nlohmann::json::parse(two.out);
      EXPECT_EQ(b["tokens"], a["tokens"]);
      EXPECT_LT(relative(b["loss"], a["loss"]), 1e-12);
      if (batch == 1) {
        EXPECT_EQ(b["loss"], a["loss"]);  // rank 0 alone: the same computation
      }
    }
}

// eval with wrong input on any rank (each reads its own files): one line from rank 0 naming the
// rank, a non-zero exit, and no result.
TEST(Mpi, EvalBadInputOnAnyRankGivesOneMessage) {
  REQUIRE_MPI();
  Corpus c;
  const fs::path run = c.dir / "run";
  ASSERT_EQ(run_cli("train" + c.data() + kF64 + " --epochs 1 --out " + run.string()).rc, 0);
  const std::string bin = std::string(LSTMGRAD_CLI_PATH) + " eval --json --dtype f64";
  const std::string model = " --model " + (run / "best.safetensors").string();
  const std::string text = " --data " + (c.dir / "test.txt").string();
  const std::string missing = (c.dir / "nowhere.safetensors").string();
  auto pair = [&](const std::string& rank1) {
    return mpirun(1) + bin + model + text + " : -np 1 " + bin + rank1;
  };
  struct Case {
    std::string command, expect;
  };
  const Case cases[] = {
      {mpirun(3) + bin + " --model " + missing + text, "rank 0: " + missing},
      {mpirun(3) + bin + model + text + " --batch 600", "rank 0: "},
      {mpirun(2) + bin + model + text + " --cache-window -1", "rank 0: --cache-window"},
      {mpirun(2) + bin + model + text + " --device cuda", "rank 0: --dtype f64: --device cuda"},
      {pair(model + text + " --device cuda"), "rank 1: --dtype f64: --device cuda"},
      {pair(" --model " + missing + text), "rank 1: " + missing},
      {pair(model + " --data " + (c.dir / "nowhere.txt").string()), "rank 1: "},
  };
  for (const Case& k : cases) {
    SCOPED_TRACE(k.command);
    const CliResult r = run_shell(k.command);
    EXPECT_NE(r.rc, 0);
    EXPECT_EQ(r.out, "");
    EXPECT_NE(r.err.find(k.expect), std::string::npos) << r.err;
    EXPECT_EQ(count_lines(r.err), 1u) << r.err;
  }
}

// Wrong input on any rank: one line from rank 0, every rank exits non-zero, nothing written.
TEST(Mpi, BadInputOnAnyRankStopsEveryRankWithOneMessage) {
  REQUIRE_MPI();
  Corpus c;
  const std::string bin = std::string(LSTMGRAD_CLI_PATH) + " train";
  const fs::path out = c.dir / "out";
  const std::string base = kF64 + " --epochs 1 --out " + out.string();
  const std::string data = c.data(), train = " --train " + (c.dir / "train.txt").string();
  const std::string missing = (c.dir / "nowhere.txt").string();
  // Rank 0 as given; rank 1 (MPMD: "A : B") with one thing changed.
  auto pair = [&](const std::string& rank1) {
    return mpirun(1) + bin + data + base + " : -np 1 " + bin + rank1;
  };
  struct Case {
    std::string command, expect;
  };
  const Case cases[] = {
      {mpirun(4) + bin + data + base, "must be a multiple of the 4 processes"},
      {pair(data + base + " --seed 5"), "rank 1: the options: not the same as rank 0's"},
      {pair(data + base + " --lr 0.5"), "rank 1: the options: not the same as rank 0's"},
      {pair(train + " --valid " + (c.dir / "test.txt").string() + base),
       "rank 1: the validation text: not the same"},
      {pair(" --train " + missing + base), "rank 1: " + missing},
      {pair(data + base + " --lr -1"), "rank 1: --lr: must be > 0"},
      {pair(base), "rank 1: train: give --train FILE or --data DIR"},
  };
  for (const Case& k : cases) {
    SCOPED_TRACE(k.command);
    const CliResult r = run_shell(k.command);
    EXPECT_NE(r.rc, 0);
    EXPECT_NE(r.err.find(k.expect), std::string::npos) << r.err;
    EXPECT_EQ(count_lines(r.err), 1u) << r.err;
    EXPECT_FALSE(fs::exists(out)) << "a rejected job left its run folder";
    fs::remove_all(out);
  }
}

// A rank that stops (SIGSTOP) or dies (SIGKILL) mid-run: the job ends, non-zero, within the
// --comm-timeout (3 s here; 60 by default) plus mpirun's own teardown, naming the rank; the last
// checkpoint is whole and --resume finishes the run where an uninterrupted run ends.
class MpiFault : public ::testing::TestWithParam<const char*> {};

TEST_P(MpiFault, EndsTheJobAndResumeFinishesIt) {
  REQUIRE_MPI();
  const std::string sig = GetParam();
  Corpus c(600);  // 90 updates an epoch
  const std::string run = "train" + c.data() + kF64 + " --epochs 2";
  const fs::path whole = c.dir / "whole", hurt = c.dir / "hurt";
  ASSERT_EQ(run_shell(mpirun(2) + LSTMGRAD_CLI_PATH + " " + run + " --out " + whole.string()).rc,
            0);
  // Rank 1's pid: the process of the job whose environment says so.
  const std::string script =
      mpirun(2, /*quiet=*/false) + LSTMGRAD_CLI_PATH + " " + run +
      " --comm-timeout 3 --checkpoint-every 5" + " --out " + hurt.string() + " &\njob=$!\n" +
      "while [ ! -f " + hurt.string() + "/checkpoint.safetensors ]; do sleep 0.01; done\n" +
      "for p in $(pgrep -f 'out " + hurt.string() + "'); do\n" +
      "  tr '\\0' '\\n' </proc/$p/environ 2>/dev/null | grep -qx OMPI_COMM_WORLD_RANK=1 && "
      "rank1=$p\ndone\n" +
      "kill -" + sig + " $rank1\nstart=$(date +%s%N)\nwait $job\nrc=$?\n" +
      "kill -KILL $rank1 2>/dev/null\n" + "echo $(( ($(date +%s%N) - start) / 1000000 )) >" +
      (c.dir / "took_ms").string() + "\nexit $rc\n";
  const fs::path file = c.dir / "fault.sh";
  std::ofstream(file) << script;
  const CliResult r = run_shell("bash " + file.string());
  EXPECT_NE(r.rc, 0) << r.err;
  const double took_s = std::stod(slurp(c.dir / "took_ms")) / 1000;
  EXPECT_LT(took_s, 30) << "the job did not end in time";
  if (sig == "STOP") {
    EXPECT_NE(r.err.find("no answer from rank 1"), std::string::npos) << r.err;
  } else {
    EXPECT_NE(r.err.find("process rank 1"), std::string::npos) << r.err;  // mpirun's report
  }
  const CliResult rest =
      run_shell(mpirun(2) + LSTMGRAD_CLI_PATH + " train --quiet --resume " + hurt.string());
  ASSERT_EQ(rest.rc, 0) << rest.err;
  EXPECT_TRUE(same_tensors(hurt / "model.safetensors", whole / "model.safetensors"));
}

INSTANTIATE_TEST_SUITE_P(Signals, MpiFault, ::testing::Values("STOP", "KILL"), [](const auto& p) {
  return std::string(p.param) == "STOP" ? "Stop" : "Kill";
});

}  // namespace
}  // namespace lstmgrad::test
