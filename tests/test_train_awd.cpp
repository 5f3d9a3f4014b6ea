// AWD-LSTM's training loop through `lstmgrad train`: weight decay, --bptt-jitter, NT-ASGD with
// --nonmono and --eval-every, and --finetune (docs/cli.md, "AWD-LSTM's optimizer").
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <set>

#include "cli_runner.hpp"
#include "lstmgrad/model_io.hpp"
#include "lstmgrad/safetensors.hpp"
#include "phrases.hpp"
#include "train/bptt_jitter.hpp"

namespace lstmgrad::test {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

struct Corpus {
  TempDir dir;
  std::string train, valid;
  Corpus() {
    train = (dir / "train.txt").string(), valid = (dir / "valid.txt").string();
    std::ofstream(train) << phrases(300, 1);
    std::ofstream(valid) << phrases(40, 2);
  }
};

std::vector<json> metrics(const fs::path& run) {
  std::vector<json> out;
  std::ifstream in(run / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) out.push_back(json::parse(line));
  return out;
}

std::vector<double> tensor(const fs::path& file, const std::string& name) {
  const io::TensorFile f = io::read_safetensors(file);
  const io::Tensor* t = f.find(name);
  if (!t) throw std::runtime_error(file.string() + ": no tensor " + name);
  return io::to_floats<double>(*t, file.string());
}

// Every tensor of a model file, flat in file order.
std::vector<double> all_values(const fs::path& file) {
  std::vector<double> v;
  const io::TensorFile f = io::read_safetensors(file);
  for (const io::Tensor& t : f.tensors) {
    const auto x = io::to_floats<double>(t, file.string());
    v.insert(v.end(), x.begin(), x.end());
  }
  return v;
}

// The metrics without what depends on the clock.
std::vector<json> timeless(std::vector<json> m) {
  for (json& l : m) l.erase("tokens_per_s"), l.erase("wall_s");
  return m;
}

double eval_loss(const fs::path& model, const std::string& data) {
  const CliResult e = run_cli("eval --json --batch 8 --seq 20 --dtype f64 --model " +
                              model.string() + " --data " + data);
  EXPECT_EQ(e.rc, 0) << e.err;
  return json::parse(e.out)["loss"].get<double>();
}

// Word level, 300 lines of 5-6 words: 13 windows of 20 an epoch for batch 8.
const std::string kShape =
    " --level word --hidden 16 --embed 16 --layers 1 --batch 8 --dtype f64 --threads 1 --quiet "
    "--seed 4";
const std::string kModel = kShape + " --seq 20";
// SGD at an lr that overshoots now and then, so that validation goes up and the rule fires.
const std::string kNtAsgd =
    " --optimizer nt-asgd --lr 8 --clip 0.5 --nonmono 2 --eval-every 4 "
    "--weight-decay 1e-4";

// The switch happens, is recorded, and from it on validation, best.safetensors and
// average.safetensors are the average the checkpoint holds.
TEST(TrainAwd, NtAsgdSwitchesAndValidatesTheAverage) {
  Corpus c;
  const fs::path run = c.dir / "run";
  const CliResult r = run_cli("train --train " + c.train + " --valid " + c.valid + kModel +
                              kNtAsgd + " --epochs 4 --out " + run.string());
  ASSERT_EQ(r.rc, 0) << r.err;
  const auto m = metrics(run);
  size_t sw = m.size();
  for (size_t k = 0; k < m.size(); ++k)
    if (m[k].value("asgd_switch", false)) {
      ASSERT_EQ(sw, m.size()) << "switched twice";
      sw = k;
      EXPECT_EQ(m[k]["asgd_from_step"], m[k]["step"].get<int64_t>() + 1);
    }
  ASSERT_LT(sw + 1, m.size()) << "no switch to averaging, or none before the last validation";
  for (size_t k = 0; k < m.size(); ++k) EXPECT_EQ(m[k].value("asgd", false), k > sw) << k;
  // average.safetensors is the checkpoint's optimizer.ax, and the last validation evaluated it.
  const fs::path ck = run / "checkpoint.safetensors";
  const auto ax = tensor(ck, "optimizer.ax");
  const auto avg = load_model<double>(run / "average.safetensors").params;  // layout order
  EXPECT_EQ(avg, ax);
  EXPECT_NE(load_model<double>(run / "model.safetensors").params, avg);  // the raw ones differ
  EXPECT_NEAR(eval_loss(run / "average.safetensors", c.valid), m.back()["valid_loss"].get<double>(),
              1e-12);
  double best = 1e300;
  for (const json& l : m) best = std::min(best, l["valid_loss"].get<double>());
  EXPECT_NEAR(eval_loss(run / "best.safetensors", c.valid), best, 1e-12);
  // This run's last validation is its best: best.safetensors is the checkpoint's average.
  EXPECT_EQ(m.back()["valid_loss"].get<double>(), best);
  EXPECT_EQ(load_model<double>(run / "best.safetensors").params, ax);
  const json rs = json::parse(io::read_safetensors(ck).metadata.at("lstmgrad.run_state"));
  EXPECT_EQ(rs["asgd_from"], m[sw]["step"]);
  EXPECT_EQ(rs["asgd_steps"], rs["step"].get<int64_t>() - m[sw]["step"].get<int64_t>());
}

// Stopped before the switch, after it, and run to the end: bit for bit the uninterrupted run,
// with jitter (the lengths come from the checkpointed generator) and weight decay.
TEST(TrainAwd, ResumeAcrossTheSwitchWithJitterIsBitIdentical) {
  Corpus c;
  const std::string common = "train --train " + c.train + " --valid " + c.valid + kModel + kNtAsgd +
                             " --bptt-jitter --dropout 0.1 --epochs 4";
  const fs::path a = c.dir / "a", b = c.dir / "b";
  ASSERT_EQ(run_cli(common + " --out " + a.string()).rc, 0);
  const auto ma = metrics(a);
  int64_t switch_step = -1;
  for (const json& l : ma)
    if (l.value("asgd_switch", false)) switch_step = l["step"].get<int64_t>();
  ASSERT_GT(switch_step, 2) << "the uninterrupted run never switched";
  const CliResult r1 =
      run_cli(common + " --out " + b.string() + " --max-steps " + std::to_string(switch_step - 1));
  ASSERT_EQ(r1.rc, 0) << r1.err;
  const CliResult r2 = run_cli("train --resume " + b.string() + " --quiet --max-steps " +
                               std::to_string(switch_step + 5));
  ASSERT_EQ(r2.rc, 0) << r2.err;
  const CliResult r3 = run_cli("train --resume " + b.string() + " --quiet");
  ASSERT_EQ(r3.rc, 0) << r3.err;
  // (best.safetensors may differ: a --max-steps stop validates, and may find a new best.)
  for (const char* f : {"model.safetensors", "average.safetensors"})
    EXPECT_EQ(all_values(a / f), all_values(b / f)) << f;
  EXPECT_EQ(tensor(a / "checkpoint.safetensors", "optimizer.ax"),
            tensor(b / "checkpoint.safetensors", "optimizer.ax"));
  // b's metrics hold two more lines: the validations at each --max-steps stop.
  std::vector<json> mb;
  for (const json& l : timeless(metrics(b))) {
    const int64_t s = l["step"].get<int64_t>();
    if (s == switch_step - 1 || s == switch_step + 5) {
      bool scheduled = false;
      for (const json& x : ma) scheduled |= x["step"] == s;
      if (!scheduled) continue;
    }
    mb.push_back(l);
  }
  EXPECT_EQ(timeless(ma), mb);
}

// AWD-LSTM's recipe with everything at once (3 layers, tied weights, every dropout, weight drop,
// AR, TAR, weight decay, jitter, NT-ASGD), in float64 and float32: a run stopped at updates 5
// and 23 and resumed each time ends with the same bits as one that ran through, the switch to
// averaging included.
TEST(TrainAwd, TheWholeRecipeResumesBitIdentically) {
  for (const char* dtype : {"f64", "f32"}) {
    SCOPED_TRACE(dtype);
    Corpus c;
    const std::string common =
        "train --train " + c.train + " --valid " + c.valid +
        " --level word --hidden 16 --embed 16 --layers 3 --batch 8 --seq 20 --threads 1 --quiet "
        "--seed 4 --tie-weights --dropout-in 0.2 --dropout-hid 0.2 --dropout-out 0.3 "
        "--dropout-emb 0.1 --weight-drop 0.5 --ar 2 --tar 1 --bptt-jitter --epochs 4 --dtype " +
        std::string(dtype) + kNtAsgd;
    const fs::path a = c.dir / "a", b = c.dir / "b";
    ASSERT_EQ(run_cli(common + " --out " + a.string()).rc, 0);
    const CliResult r1 = run_cli(common + " --out " + b.string() + " --max-steps 5");
    ASSERT_EQ(r1.rc, 0) << r1.err;
    const CliResult r2 = run_cli("train --resume " + b.string() + " --quiet --max-steps 23");
    ASSERT_EQ(r2.rc, 0) << r2.err;
    const CliResult r3 = run_cli("train --resume " + b.string() + " --quiet");
    ASSERT_EQ(r3.rc, 0) << r3.err;
    bool switched = false;
    for (const json& l : metrics(a)) switched |= l.value("asgd_switch", false);
    EXPECT_TRUE(switched) << "the recipe never switched to averaging: the test checks less";
    EXPECT_EQ(all_values(a / "model.safetensors"), all_values(b / "model.safetensors"));
    if (switched) {
      EXPECT_EQ(all_values(a / "average.safetensors"), all_values(b / "average.safetensors"));
    }
  }
}

// Jitter's lengths: in [5, 2 seq], AWD-LSTM's distribution (mean 0.95 seq + 0.05 seq/2, less
// about a half for the truncation; about 5% from the half-length base), and a function of the
// generator's state alone.
TEST(TrainAwd, JitterLengthsAreBoundedDistributedAndReplayable) {
  std::mt19937_64 g1(7), g2(7);
  const int64_t seq = 70;
  const int n = 40000;
  double sum = 0;
  int short_ones = 0;
  for (int k = 0; k < n; ++k) {
    const int64_t len = train::draw_bptt_length(g1, seq);
    ASSERT_GE(len, 5);
    ASSERT_LE(len, 140);
    ASSERT_EQ(len, train::draw_bptt_length(g2, seq)) << k;
    sum += static_cast<double>(len);
    short_ones += len < 52;  // 3.6 standard deviations from either base
  }
  const double mean = sum / n, expect = 0.95 * 70 + 0.05 * 35 - 0.5;
  EXPECT_NEAR(mean, expect, 0.2);
  EXPECT_NEAR(static_cast<double>(short_ones) / n, 0.05, 0.005);
  // Short --seq: the floor of 5 and the cap.
  for (int k = 0; k < 1000; ++k) {
    const int64_t len = train::draw_bptt_length(g1, 3);
    ASSERT_GE(len, 5);
    ASSERT_LE(len, 6);
  }
}

// With --bptt-jitter an epoch still covers every position once: its updates differ from the
// fixed windows' count, and a run is the same from run to run.
TEST(TrainAwd, JitterWalksTheWholeEpochDeterministically) {
  Corpus c;
  const std::string common = "train --train " + c.train + " --valid " + c.valid + kShape +
                             " --optimizer sgd --lr 1 --epochs 2 --bptt-jitter --seq 10";
  const fs::path a = c.dir / "a", b = c.dir / "b", f = c.dir / "f";
  ASSERT_EQ(run_cli(common + " --out " + a.string()).rc, 0);
  ASSERT_EQ(run_cli(common + " --out " + b.string()).rc, 0);
  EXPECT_EQ(timeless(metrics(a)), timeless(metrics(b)));
  EXPECT_EQ(all_values(a / "model.safetensors"), all_values(b / "model.safetensors"));
  const std::string fixed = "train --train " + c.train + " --valid " + c.valid + kShape +
                            " --optimizer sgd --lr 1 --epochs 1 --seq 10";
  ASSERT_EQ(run_cli(fixed + " --out " + f.string()).rc, 0);
  const int64_t windows = metrics(f)[0]["step"].get<int64_t>();  // ceil(positions / 10)
  const int64_t jittered = metrics(a)[0]["step"].get<int64_t>();
  // Lengths are 5 to 20, mostly near 10 (the floor of 5 lifts the half-length base).
  EXPECT_GE(jittered, (windows * 10) / 20);
  EXPECT_LE(jittered, windows * 2 + 1);
  EXPECT_NE(jittered, windows);
}

// Validation lines at every 5th update except where an epoch ends, and at the epoch ends.
TEST(TrainAwd, EvalEveryValidatesAtTheRightSteps) {
  Corpus c;
  const fs::path run = c.dir / "run";
  const CliResult r =
      run_cli("train --train " + c.train + " --valid " + c.valid + kModel +
              " --optimizer sgd --lr 1 --epochs 2 --eval-every 5 --out " + run.string());
  ASSERT_EQ(r.rc, 0) << r.err;
  const auto m = metrics(run);
  // The windows per epoch: from a run without --eval-every.
  const fs::path plain = c.dir / "plain";
  ASSERT_EQ(run_cli("train --train " + c.train + " --valid " + c.valid + kModel +
                    " --optimizer sgd --lr 1 --epochs 1 --out " + plain.string())
                .rc,
            0);
  const int64_t n = metrics(plain)[0]["step"].get<int64_t>();
  std::vector<int64_t> want;
  for (int64_t s = 1; s <= 2 * n; ++s)
    if ((s % 5 == 0 && s % n != 0) || s % n == 0) want.push_back(s);
  std::vector<int64_t> got;
  for (const json& l : m) got.push_back(l["step"].get<int64_t>());
  EXPECT_EQ(got, want);
  // The epoch-end validations are the plain run's (the extra ones change nothing).
  EXPECT_EQ(m[want.size() / 2 - 1]["step"], n);
}

// Every file of a folder, by name, with its bytes.
std::map<std::string, std::string> folder_bytes(const fs::path& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::directory_iterator(dir))
    out[e.path().filename().string()] = slurp(e.path());
  return out;
}

// --finetune: a new folder, starting from the run's best model (validated first), averaging from
// the first update, the run itself untouched.
TEST(TrainAwd, FinetuneWritesANewFolderAndLeavesTheRunAsItWas) {
  Corpus c;
  const fs::path run = c.dir / "run", fine = c.dir / "fine";
  ASSERT_EQ(run_cli("train --train " + c.train + " --valid " + c.valid + kModel + kNtAsgd +
                    " --epochs 3 --out " + run.string())
                .rc,
            0);
  const auto before = folder_bytes(run);
  // An lr high enough that the average's validation rises again before 3 epochs end.
  const CliResult r = run_cli("train --finetune " + run.string() + " --epochs 3 --lr 40 " +
                              "--eval-every 2 --nonmono 1 --quiet --out " + fine.string());
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(folder_bytes(run), before);
  const auto m = metrics(fine);
  ASSERT_GE(m.size(), 2u);
  EXPECT_EQ(m[0]["step"], 0);  // the model it starts from
  const auto mr = metrics(run);
  double best = 1e300;
  for (const json& l : mr) best = std::min(best, l["valid_loss"].get<double>());
  EXPECT_NEAR(m[0]["valid_loss"].get<double>(), best, 1e-12);
  for (size_t k = 1; k < m.size(); ++k) {
    EXPECT_TRUE(m[k].value("asgd", false)) << k;
    EXPECT_EQ(m[k]["asgd_from_step"], 1);
    EXPECT_EQ(m[k]["lr"], 40.0);
  }
  for (size_t k = 0; k + 1 < m.size(); ++k) EXPECT_FALSE(m[k].value("finetune_done", false));
  EXPECT_TRUE(fs::exists(fine / "results.json"));
  const json opts = json::parse(
      io::read_safetensors(fine / "checkpoint.safetensors").metadata.at("lstmgrad.train_options"));
  EXPECT_EQ(opts["optimizer"], "asgd");
  EXPECT_EQ(opts["hidden"], 16);          // the run's
  EXPECT_EQ(opts["weight_decay"], 1e-4);  // the run's, not given here
  EXPECT_EQ(opts["finetune"], run.string());
  // The rule that ends it: more than 1 check, the last above the best before it.
  const bool done = m.back().value("finetune_done", false);
  EXPECT_TRUE(done);
  const json res = json::parse(slurp(fine / "results.json"));
  EXPECT_LT(res["updates"].get<int64_t>(), 3 * 13);  // before --epochs 3 ended
  std::vector<double> h;
  for (size_t k = 1; k < m.size(); ++k) h.push_back(m[k]["valid_loss"].get<double>());
  const bool rule = h.size() >= 3 && h.back() > *std::min_element(h.begin(), h.end() - 2);
  EXPECT_EQ(done, rule);
  // Stopped after 5 updates and resumed: the same run, bit for bit.
  const fs::path part = c.dir / "part";
  const CliResult p1 =
      run_cli("train --finetune " + run.string() + " --epochs 3 --lr 40 " +
              "--eval-every 2 --nonmono 1 --quiet --max-steps 5 --out " + part.string());
  ASSERT_EQ(p1.rc, 0) << p1.err;
  const CliResult p2 = run_cli("train --resume " + part.string() + " --quiet");
  ASSERT_EQ(p2.rc, 0) << p2.err;
  for (const char* f : {"model.safetensors", "average.safetensors"})
    EXPECT_EQ(all_values(fine / f), all_values(part / f)) << f;
  EXPECT_EQ(json::parse(slurp(part / "results.json"))["updates"], res["updates"]);
}

void expect_refused(const CliResult& r, const std::string& must, const fs::path& out) {
  EXPECT_EQ(r.rc, 2) << must << ": " << r.err;
  EXPECT_EQ(count_lines(r.err), 1u) << must << ": " << r.err;
  EXPECT_NE(r.err.find(must), std::string::npos) << must << ": " << r.err;
  EXPECT_FALSE(fs::exists(out)) << must;
}

TEST(TrainAwd, BadValuesGetOneLineExitTwoAndWriteNothing) {
  Corpus c;
  const fs::path out = c.dir / "out";
  const std::string base = "train --train " + c.train + " --valid " + c.valid + kModel +
                           " --epochs 1 --out " + out.string();
  expect_refused(run_cli(base + " --weight-decay -1"), "--weight-decay: must be >= 0", out);
  expect_refused(run_cli(base + " --weight-decay nan"), "--weight-decay", out);
  expect_refused(run_cli(base + " --optimizer nt-asgd --nonmono 0"), "--nonmono: must be >= 1",
                 out);
  expect_refused(run_cli(base + " --eval-every -3"), "--eval-every: must be >= 0", out);
  expect_refused(
      run_cli("train --train " + c.train + kModel + " --optimizer nt-asgd --out " + out.string()),
      "needs a validation text", out);
  expect_refused(
      run_cli("train --finetune " + (c.dir / "nope").string() + " --out " + out.string()),
      "--finetune " + (c.dir / "nope").string() + ": not a folder", out);
  expect_refused(run_cli("train --finetune " + c.dir.path().string() + " --out " + out.string()),
                 "no checkpoint.safetensors there", out);
  // A real run to finetune, then the combinations it refuses.
  const fs::path run = c.dir / "run";
  ASSERT_EQ(run_cli(base.substr(0, base.find(" --out ")) + " --out " + run.string()).rc, 0);
  const auto before = folder_bytes(run);
  expect_refused(run_cli("train --finetune " + run.string() + " --resume " + run.string() +
                         " --out " + out.string()),
                 "not with --resume", out);
  expect_refused(run_cli("train --finetune " + run.string() + " --hidden 32 --out " + out.string()),
                 "--hidden 32: --finetune keeps the model of", out);
  expect_refused(
      run_cli("train --finetune " + run.string() + " --optimizer sgd --out " + out.string()),
      "--finetune trains with asgd", out);
  expect_refused(run_cli("train --finetune " + run.string() + " --nonmono 0 --out " + out.string()),
                 "--nonmono: must be >= 1", out);
  const CliResult same = run_cli("train --finetune " + run.string() + " --out " + run.string());
  EXPECT_EQ(same.rc, 2);
  EXPECT_NE(same.err.find("already holds a training run"), std::string::npos) << same.err;
  EXPECT_EQ(folder_bytes(run), before);
}

}  // namespace
}  // namespace lstmgrad::test
