// `lstmgrad train`, `eval`, `sample` end to end on small text the tests make themselves.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>

#include "cli_runner.hpp"
#include "lstmgrad/model_io.hpp"
#include "lstmgrad/precision.hpp"
#include "lstmgrad/safetensors.hpp"
#include "phrases.hpp"
#include "tensor_files.hpp"

namespace lstmgrad::test {
namespace {

struct Corpus {
  TempDir dir;
  std::string train, valid;
  Corpus() {
    train = (dir / "train.txt").string(), valid = (dir / "valid.txt").string();
    std::ofstream(train) << phrases(400, 1);
    std::ofstream(valid) << phrases(60, 2);
  }
};

std::vector<nlohmann::json> metrics(const std::filesystem::path& run) {
  std::vector<nlohmann::json> out;
  std::ifstream in(run / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) out.push_back(nlohmann::json::parse(line));
  return out;
}

const std::string kShape = " --layers 1 --embed 16 --seq 20 --batch 8 --quiet";
const std::string kSmall = " --level char --hidden 24" + kShape;

TEST(TrainCli, LossFallsBelowThreshold) {
  Corpus c;
  const auto run = c.dir / "run";
  const CliResult r = run_cli("train --train " + c.train + " --valid " + c.valid + kSmall +
                              " --epochs 4 --optimizer adam --lr 0.01 --out " + run.string());
  ASSERT_EQ(r.rc, 0) << r.err;
  const auto m = metrics(run);
  ASSERT_EQ(m.size(), 4u);
  // Uniform guessing over the 19 characters costs ln 19 = 2.94 nats; the phrases are nearly
  // deterministic after their first letters, so a model that learns gets far below 1.2.
  EXPECT_LT(m.back()["valid_loss"].get<double>(), 1.2) << m.back().dump();
  EXPECT_LT(m.back()["train_loss"].get<double>(), m.front()["train_loss"].get<double>());
  for (const char* key : {"epoch", "step", "lr", "train_loss", "valid_loss", "tokens_per_s"})
    EXPECT_TRUE(m.back().contains(key)) << key;
  for (const char* f : {"model.safetensors", "best.safetensors", "checkpoint.safetensors"})
    EXPECT_TRUE(std::filesystem::exists(run / f)) << f;
  const CliResult s = run_cli("sample --model " + (run / "best.safetensors").string() +
                              " --prime 'the ' --length 40 --seed 3");
  ASSERT_EQ(s.rc, 0) << s.err;
  EXPECT_EQ(s.out.rfind("the ", 0), 0u) << s.out;
  EXPECT_GE(s.out.size(), 44u);
}

TEST(TrainCli, ResumeIsBitIdenticalToAnUninterruptedRun) {
  Corpus c;
  const std::string common = "train --train " + c.train + " --valid " + c.valid + kSmall +
                             " --epochs 3 --optimizer adam --lr 0.01 --dtype f64 --threads 1 " +
                             "--clip 1 --plateau-decay 2 --dropout 0.2";
  const auto a = c.dir / "a", b = c.dir / "b";
  ASSERT_EQ(run_cli(common + " --out " + a.string()).rc, 0);
  // Interrupted twice: mid-epoch (update 7), then inside epoch 2, then run to the end.
  const CliResult r1 = run_cli(common + " --out " + b.string() + " --max-steps 7");
  ASSERT_EQ(r1.rc, 0) << r1.err;
  const CliResult r2 = run_cli("train --resume " + b.string() + " --max-steps 60 --quiet");
  ASSERT_EQ(r2.rc, 0) << r2.err;
  const CliResult r3 = run_cli("train --resume " + b.string() + " --quiet");
  ASSERT_EQ(r3.rc, 0) << r3.err;
  EXPECT_TRUE(same_tensors(a / "model.safetensors", b / "model.safetensors"));
  EXPECT_TRUE(same_tensors(a / "checkpoint.safetensors", b / "checkpoint.safetensors"));
  const auto ma = metrics(a), mb = metrics(b);
  EXPECT_EQ(ma.back()["valid_loss"], mb.back()["valid_loss"]);
}

// One bf16 run checked: see Bf16TrainsResumesExactlyAndEvalAgrees.
void bf16_trains_resumes_and_evaluates(const Corpus& c, const std::string& common) {
  const auto a = c.dir / "a", b = c.dir / "b";
  const CliResult ra = run_cli(common + " --out " + a.string());
  ASSERT_EQ(ra.rc, 0) << ra.err;
  ASSERT_EQ(run_cli(common + " --out " + b.string() + " --max-steps 7").rc, 0);
  const CliResult rb = run_cli("train --resume " + b.string() + " --quiet");
  ASSERT_EQ(rb.rc, 0) << rb.err;
  EXPECT_TRUE(same_tensors(a / "model.safetensors", b / "model.safetensors"));
  EXPECT_TRUE(same_tensors(a / "checkpoint.safetensors", b / "checkpoint.safetensors"));
  const auto m = metrics(a);
  ASSERT_EQ(m.size(), 3u);
  EXPECT_LT(m.back()["valid_loss"].get<double>(), 1.2) << m.back().dump();  // as in float32
  const CliResult e =
      run_cli("eval --json --batch 8 --seq 20 --dtype f32 --precision bf16 " +
              std::string("--model ") + (a / "model.safetensors").string() + " --data " + c.valid);
  ASSERT_EQ(e.rc, 0) << e.err;
  const double valid = m.back()["valid_loss"].get<double>();
  EXPECT_NEAR(nlohmann::json::parse(e.out)["loss"].get<double>(), valid, 1e-6 * valid);
  const auto bad = c.dir / "bad";
  const CliResult r = run_cli(common + " --dtype f64 --out " + bad.string());
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.err.find("--precision bf16"), std::string::npos) << r.err;
  EXPECT_FALSE(std::filesystem::exists(bad));
}

// --precision bf16 through the command line: it learns, resumes to the same bits, stores the
// precision in the checkpoint, and eval in bf16 gives the run's last validation loss; refused
// with --dtype f64 before anything is written.
TEST(TrainCli, Bf16TrainsResumesExactlyAndEvalAgrees) {
  if (!bf16_supported()) GTEST_SKIP() << "this CPU has no AVX512_BF16";
  // the fused layers, and the row layer (layer norm with a projection)
  for (const std::string variant : {"", " --layer-norm --proj 12"}) {
    SCOPED_TRACE(variant);
    Corpus c;
    const std::string common = "train --train " + c.train + " --valid " + c.valid + kSmall +
                               " --epochs 3 --optimizer adam --lr 0.01 --threads 2 " +
                               "--precision bf16 --dropout 0.1" + variant;
    bf16_trains_resumes_and_evaluates(c, common);
  }
}

// The cell with peepholes through the command line: its tensors in the model file, exact resume,
// and eval reading the model back with the last validation's number.
TEST(TrainCli, PeepholeModelTrainsResumesAndReadsBack) {
  Corpus c;
  const std::string common = "train --train " + c.train + " --valid " + c.valid + kSmall +
                             " --peephole --epochs 2 --optimizer adam --lr 0.01 --dtype f64" +
                             " --threads 1";
  const auto a = c.dir / "a", b = c.dir / "b";
  ASSERT_EQ(run_cli(common + " --out " + a.string()).rc, 0);
  ASSERT_EQ(run_cli(common + " --out " + b.string() + " --max-steps 7").rc, 0);
  const CliResult r = run_cli("train --resume " + b.string() + " --quiet");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_TRUE(same_tensors(a / "model.safetensors", b / "model.safetensors"));
  const io::TensorFile f = io::read_safetensors(a / "model.safetensors");
  const io::Tensor* p = f.find("rnn.weight_peephole_l0");
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(p->shape, (std::vector<int64_t>{3, 24}));
  const auto m = metrics(a);
  EXPECT_LT(m.back()["valid_loss"].get<double>(), m.front()["train_loss"].get<double>());
  const CliResult e = run_cli("eval --json --batch 8 --seq 20 --dtype f64 --model " +
                              (a / "model.safetensors").string() + " --data " + c.valid);
  ASSERT_EQ(e.rc, 0) << e.err;
  EXPECT_NEAR(nlohmann::json::parse(e.out)["loss"].get<double>(),
              m.back()["valid_loss"].get<double>(), 1e-12);
}

TEST(TrainCli, SavedModelGivesTheSameOutputsWhenReadBack) {
  Corpus c;
  const auto run = c.dir / "run";
  ASSERT_EQ(run_cli("train --train " + c.train + " --valid " + c.valid + kSmall +
                    " --epochs 1 --optimizer adam --lr 0.01 --dtype f64 --out " + run.string())
                .rc,
            0);
  // The last validation ran on the parameters model.safetensors holds, with batch 8, seq 20.
  const CliResult e = run_cli("eval --json --batch 8 --seq 20 --dtype f64 --model " +
                              (run / "model.safetensors").string() + " --data " + c.valid);
  ASSERT_EQ(e.rc, 0) << e.err;
  const double loss = nlohmann::json::parse(e.out)["loss"].get<double>();
  EXPECT_NEAR(loss, metrics(run).back()["valid_loss"].get<double>(), 1e-12);
}

TEST(TrainCli, KillingDuringCheckpointWritesLeavesAReadableCheckpoint) {
  Corpus c;
  const auto run = c.dir / "run";
  const std::string args = "train --train " + c.train + " --level char --hidden 64" + kShape +
                           " --epochs 50 --checkpoint-every 1 --out " + run.string();
  ASSERT_EQ(run_cli(args + " --max-steps 2").rc, 0);  // a first checkpoint to protect
  for (int k = 0; k < 12; ++k) {
    const pid_t pid = fork();
    if (pid == 0) {
      const std::string cmd = std::string(LSTMGRAD_CLI_PATH) + " train --resume " + run.string() +
                              " --checkpoint-every 1 --quiet >/dev/null 2>&1";
      execl("/bin/sh", "sh", "-c", ("exec " + cmd).c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    // Wait until the process has written a checkpoint of its own (it writes one per update), so
    // that the kill lands among its writes however slow the machine is; then a varying delay.
    const auto ck = run / "checkpoint.safetensors";
    const auto before = std::filesystem::last_write_time(ck);
    for (int wait = 0; wait < 2000 && std::filesystem::last_write_time(ck) == before; ++wait)
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    std::this_thread::sleep_for(std::chrono::microseconds(700 * k));
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
    // Whatever moment the kill hit, the checkpoint and the model read back whole.
    EXPECT_NO_THROW(io::read_safetensors(run / "checkpoint.safetensors")) << "kill " << k;
    EXPECT_NO_THROW(load_model<double>(run / "model.safetensors")) << "kill " << k;
  }
  // And the run goes on from there.
  const auto state = nlohmann::json::parse(
      io::read_safetensors(run / "checkpoint.safetensors").metadata.at("lstmgrad.run_state"));
  const int64_t step = state["step"].get<int64_t>();
  EXPECT_GT(step, 2);  // the killed processes made progress between kills
  const CliResult r = run_cli("train --resume " + run.string() + " --quiet --max-steps " +
                              std::to_string(step + 3));
  EXPECT_EQ(r.rc, 0) << r.err;
}

void expect_one_line_error(const CliResult& r, const std::string& must, const std::string& what) {
  EXPECT_NE(r.rc, 0) << what;
  EXPECT_EQ(count_lines(r.err), 1u) << what << ": " << r.err;
  EXPECT_NE(r.err.find(must), std::string::npos) << what << ": " << r.err;
}

TEST(TrainCli, BadInputGetsOneLineAndOverwritesNothing) {
  Corpus c;
  std::ofstream(c.dir / "empty.txt") << "";
  std::ofstream(c.dir / "binary.txt", std::ios::binary) << std::string("ab\0cd\x01\x02", 7);
  std::ofstream(c.dir / "short.txt") << "abc";
  const std::string out = " --out " + (c.dir / "r").string();
  auto train = [&](const std::string& file, const std::string& extra = " --level char") {
    return run_cli("train --train " + (c.dir / file).string() + " --hidden 24" + kShape + extra +
                   out);
  };
  expect_one_line_error(train("empty.txt"), "empty.txt", "empty file");
  expect_one_line_error(train("binary.txt", " --level word"), "binary.txt", "binary file");
  expect_one_line_error(train("short.txt"), "short.txt", "shorter than a window");
  expect_one_line_error(train("train.txt", " --seq 0"), "--seq", "--seq 0");
  expect_one_line_error(train("nope.txt"), "nope.txt", "missing file");
  EXPECT_FALSE(std::filesystem::exists(c.dir / "r" / "model.safetensors"));

  // A run that exists is not overwritten by a new one, and a corrupt checkpoint is refused.
  const auto run = c.dir / "run";
  ASSERT_EQ(run_cli("train --train " + c.train + kSmall + " --epochs 1 --out " + run.string()).rc,
            0);
  const std::string before = slurp(run / "model.safetensors");
  expect_one_line_error(
      run_cli("train --train " + c.train + kSmall + " --epochs 1 --out " + run.string()),
      "already holds a training run", "existing run");
  std::string ck = slurp(run / "checkpoint.safetensors");
  ck.resize(ck.size() / 2);
  std::ofstream(run / "checkpoint.safetensors", std::ios::binary | std::ios::trunc) << ck;
  expect_one_line_error(run_cli("train --resume " + run.string()), "checkpoint.safetensors",
                        "corrupt checkpoint");
  EXPECT_EQ(slurp(run / "model.safetensors"), before);

  // eval with a model whose vocabulary does not fit the data.
  std::ofstream(c.dir / "other.txt") << "zebra quagga\n";
  expect_one_line_error(run_cli("eval --model " + (run / "model.safetensors").string() +
                                " --data " + (c.dir / "other.txt").string()),
                        "other.txt", "vocabulary mismatch");
}

// Every file of a folder, by name, with its bytes.
std::map<std::string, std::string> folder_bytes(const std::filesystem::path& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(dir))
    out[e.path().filename().string()] = slurp(e.path());
  return out;
}

// A checkpoint changed one way: its metadata and tensors as read, then `edit`.
struct CheckpointEdit {
  std::string what, must_name;
  std::function<void(io::TensorFile&)> edit;
};

io::Tensor& tensor(io::TensorFile& f, const std::string& name) {
  for (io::Tensor& t : f.tensors)
    if (t.name == name) return t;
  throw std::runtime_error("no tensor " + name);
}

void set_value(io::TensorFile& f, const std::string& name, size_t k, double v) {
  io::Tensor& t = tensor(f, name);
  std::vector<double> x = io::to_floats<double>(t, name);
  x[k] = v;
  t = io::make_tensor(name, t.shape, x, t.dtype);
}

void edit_json(io::TensorFile& f, const std::string& key,
               const std::function<void(nlohmann::json&)>& edit) {
  nlohmann::json j = nlohmann::json::parse(f.metadata.at(key));
  edit(j);
  f.metadata[key] = j.dump();
}

std::function<void(io::TensorFile&)> run_state(const std::string& key, nlohmann::json v) {
  return [key, v](io::TensorFile& f) {
    edit_json(f, "lstmgrad.run_state", [&](nlohmann::json& j) { j[key] = v; });
  };
}

std::function<void(io::TensorFile&)> option(const std::string& key, nlohmann::json v) {
  return [key, v](io::TensorFile& f) {
    edit_json(f, "lstmgrad.train_options", [&](nlohmann::json& j) { j[key] = v; });
  };
}

// Resume refuses a checkpoint it cannot continue exactly (issue 17), with one line naming the
// checkpoint and the field, and before anything in the run folder is written: once a carry.s of
// the wrong length trained, rewrote model.safetensors, best.safetensors and metrics.jsonl, and
// only then failed; other cases ran on NaNs or a reset random-number state, or ended in
// "internal error".
TEST(TrainCli, ResumeRefusesCheckpointsItCannotContinue) {
  Corpus c;
  const auto good = c.dir / "good";
  ASSERT_EQ(run_cli("train --train " + c.train + " --valid " + c.valid + kSmall +
                    " --epochs 2 --optimizer adam --lr 0.01 --dtype f64 --out " + good.string() +
                    " --max-steps 3")
                .rc,
            0);
  const std::vector<CheckpointEdit> cases = {
      {"NaN parameter", "decoder.bias",
       [](io::TensorFile& f) { set_value(f, "decoder.bias", 2, std::nan("")); }},
      {"infinite carried state", "carry.h",
       [](io::TensorFile& f) { set_value(f, "carry.h", 0, INFINITY); }},
      {"NaN Adam moment", "optimizer.m",
       [](io::TensorFile& f) { set_value(f, "optimizer.m", 1, std::nan("")); }},
      {"negative second moment", "optimizer.v",
       [](io::TensorFile& f) { set_value(f, "optimizer.v", 1, -1.0); }},
      {"carry.s of the wrong length", "carry.s",
       [](io::TensorFile& f) {
         tensor(f, "carry.s") = io::make_tensor("carry.s", {5}, std::vector<double>(5, 0.0));
       }},
      {"negative epoch", "'epoch'", run_state("epoch", -1)},
      {"epoch past the run", "'epoch'", run_state("epoch", 9)},
      {"window past the epoch", "'window'", run_state("window", 1000000)},
      {"negative step", "'step'", run_state("step", -5)},
      {"step that does not fit", "'step'",
       [](io::TensorFile& f) {
         run_state("step", 2)(f);
         f.metadata["lstmgrad.optimizer_steps"] = "2";
       }},
      {"overflowing loss sum", "'epoch_loss_sum'",
       [](io::TensorFile& f) {
         std::string& s = f.metadata.at("lstmgrad.run_state");
         const size_t at = s.find("\"epoch_loss_sum\":") + 17;
         s.replace(at, s.find(',', at) - at, "1e999");
       }},
      {"unparsable RNG state", "'rng'", run_state("rng", "12 34 not a state")},
      {"malformed optimizer steps", "lstmgrad.optimizer_steps",
       [](io::TensorFile& f) { f.metadata["lstmgrad.optimizer_steps"] = "3x"; }},
      {"optimizer switched to sgd", "Adam moments", option("optimizer", "sgd")},
      {"missing moments", "Adam moments",
       [](io::TensorFile& f) {
         std::erase_if(f.tensors,
                       [](const io::Tensor& t) { return t.name.rfind("optimizer.", 0) == 0; });
       }},
      // NT-ASGD's state (the average, its start, the validation history) and jitter's offset.
      {"average without its start", "'asgd_from'",
       [](io::TensorFile& f) {
         const io::Tensor& m = tensor(f, "optimizer.m");
         f.add(io::make_tensor("optimizer.ax", m.shape, io::to_floats<double>(m, "m")));
       }},
      {"average in an adam run", "holds an average",
       [](io::TensorFile& f) {
         const io::Tensor& m = tensor(f, "optimizer.m");
         f.add(io::make_tensor("optimizer.ax", m.shape, io::to_floats<double>(m, "m")));
         run_state("asgd_from", 1)(f);
       }},
      {"averaging after the last update", "'asgd_from'", run_state("asgd_from", 99)},
      {"averaging without an average", "'asgd_from'", run_state("asgd_from", 0)},
      {"bad validation history", "'valid_history'",
       run_state("valid_history", nlohmann::json::array({1.0, "x"}))},
      {"negative offset", "'offset'", run_state("offset", -1)},
      {"unknown optimizer", "key 'optimizer'", option("optimizer", "rmsprop")},
      {"bad stored option", "lstmgrad.train_options': key 'seq'", option("seq", 0)},
      {"stored option of the wrong type", "key 'dropout'", option("dropout", "high")},
      {"absurd stored batch", "carry.h", option("batch", int64_t{1} << 40)},
      {"absurd hidden size", "H=1000000",
       [](io::TensorFile& f) {
         edit_json(f, "lstmgrad.config", [](nlohmann::json& j) { j["H"] = 1000000; });
       }},
      {"null in the config", "'input'",
       [](io::TensorFile& f) {
         edit_json(f, "lstmgrad.config", [](nlohmann::json& j) { j["input"] = nullptr; });
       }},
  };
  for (const CheckpointEdit& e : cases) {
    const auto run = c.dir / "case";
    std::filesystem::remove_all(run);
    std::filesystem::copy(good, run);
    io::TensorFile f = io::read_safetensors(run / "checkpoint.safetensors");
    e.edit(f);
    io::write_safetensors(run / "checkpoint.safetensors", f);
    const auto before = folder_bytes(run);
    const CliResult r = run_cli("train --resume " + run.string() + " --quiet");
    EXPECT_EQ(r.rc, 2) << e.what << ": " << r.err;
    EXPECT_EQ(count_lines(r.err), 1u) << e.what << ": " << r.err;
    EXPECT_NE(r.err.find("checkpoint.safetensors"), std::string::npos) << e.what << ": " << r.err;
    EXPECT_NE(r.err.find(e.must_name), std::string::npos) << e.what << ": " << r.err;
    EXPECT_TRUE(folder_bytes(run) == before) << e.what << ": the run folder changed";
  }
  // The checkpoint as written still resumes.
  const CliResult r = run_cli("train --resume " + good.string() + " --quiet");
  EXPECT_EQ(r.rc, 0) << r.err;
}

// A corpus that is refused leaves no run folder behind, and one that existed as it was.
TEST(TrainCli, RejectedCorpusCreatesNoFolder) {
  Corpus c;
  std::ofstream(c.dir / "empty.txt") << "";
  std::ofstream(c.dir / "short.txt") << "abc";
  for (const char* text : {"empty.txt", "short.txt"}) {
    const auto out = c.dir / "new" / "run";
    const CliResult r =
        run_cli("train --train " + (c.dir / text).string() + kSmall + " --out " + out.string());
    EXPECT_EQ(r.rc, 2) << r.err;
    EXPECT_FALSE(std::filesystem::exists(c.dir / "new")) << text;
  }
  const auto mine = c.dir / "mine";
  std::filesystem::create_directory(mine);
  std::ofstream(mine / "notes.txt") << "keep";
  const CliResult r = run_cli("train --train " + (c.dir / "empty.txt").string() + kSmall +
                              " --out " + mine.string());
  EXPECT_EQ(r.rc, 2) << r.err;
  EXPECT_EQ(folder_bytes(mine), (std::map<std::string, std::string>{{"notes.txt", "keep"}}));
}

}  // namespace
}  // namespace lstmgrad::test
