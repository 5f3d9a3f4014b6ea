// `lstmgrad eval` and `lstmgrad sample`: a trained model on a text file, or generating text.
#include <fmt/format.h>

#include <array>
#include <cmath>
#include <optional>
#include <random>
#include <string>
#include <type_traits>

#include "lstmgrad/cuda.hpp"
#include "lstmgrad/data.hpp"
#include "lstmgrad/error.hpp"
#include "lstmgrad/model_io.hpp"
#include "lstmgrad/precision.hpp"
#include "lstmgrad/train.hpp"
#include "train/evaluate.hpp"

namespace lstmgrad {

namespace {

// The model's vocabulary and level, from the metadata lstmgrad train writes (checked by
// model_vocabulary, which load_model has run already: grad refuses the same files).
template <class Real>
data::Vocabulary language_model_vocabulary(const Model<Real>& m, const std::string& file) {
  if (m.vocab.empty())
    throw InputError(
        fmt::format("{}: the model has no vocabulary (__metadata__ 'lstmgrad.vocab'); "
                    "was it written by lstmgrad train?",
                    file));
  if (m.cfg.input != InputKind::embedding || m.cfg.readout != Readout::linear)
    throw InputError(
        fmt::format("{}: not a language model (needs an embedding and a linear readout)", file));
  return model_vocabulary(m.metadata, m.cfg.V, file);
}

// The model and the text read with its vocabulary.
template <class Real>
struct EvalInput {
  Model<Real> model;
  std::vector<int64_t> ids;
};

template <class Real>
EvalInput<Real> read_eval_input(const EvalOptions& o) {
  EvalInput<Real> in{load_model<Real>(o.model), {}};
  in.ids = data::read_text(o.data, language_model_vocabulary(in.model, o.model.string()));
  return in;
}

EvalResult eval_result(const train::StreamLoss& s) {
  EvalResult r;
  r.loss = s.mean();
  r.ppl = std::exp(r.loss);
  r.bpc = r.loss / std::log(2.0);
  r.tokens = s.tokens;
  return r;
}

// On several processes each evaluates its share of the streams and the sums are added; a batch
// that does not split (the sequential protocol, batch 1) runs on rank 0 alone.
train::CacheOptions cache_options(const EvalOptions& o) {
  return {o.cache_window, o.cache_theta, o.cache_lambda};
}

// The continuous cache for `B` streams, or none (--cache-window 0).
template <class Real>
std::optional<train::NeuralCache<Real>> make_cache(const EvalOptions& o, const ModelConfig& cfg,
                                                   int64_t B) {
  if (o.cache_window == 0) return std::nullopt;
  return train::NeuralCache<Real>(B, cfg.H, cache_options(o));
}

template <class Real>
EvalResult evaluate_typed(const EvalOptions& o, Collective& world) {
  std::optional<EvalInput<Real>> read;
  std::optional<LanguageModel<Real>> engine;
  try {
    read.emplace(read_eval_input<Real>(o));
    engine.emplace(read->model.cfg);
    if (o.precision != "f32") {
      if (!std::is_same_v<Real, float>)
        throw InputError("--precision " + o.precision + ": with --dtype f32 only");
      engine->set_precision(parse_precision(o.precision));
    }
    data::Batcher::check(static_cast<int64_t>(read->ids.size()), o.batch, o.seq, false,
                         o.data.string());
  } catch (const InputError& e) {
    if (world.size() == 1) throw;
    agree_to_start(world, e.what());
  }
  if (world.size() > 1) agree_to_start(world, "");
  const EvalInput<Real>& in = *read;
  LanguageModel<Real>& lm = *engine;
  const int n = world.size();
  if (n == 1 || o.batch % n != 0) {
    if (world.rank() != 0) return {};
    auto cache = make_cache<Real>(o, in.model.cfg, o.batch);
    return eval_result(train::evaluate_stream<Real>(lm, in.model.params, in.ids, o.batch, o.seq,
                                                    o.data.string().c_str(), 0, 0,
                                                    cache ? &*cache : nullptr));
  }
  const int64_t part = o.batch / n;
  auto cache = make_cache<Real>(o, in.model.cfg, part);  // each stream's history is its own
  const train::StreamLoss mine = train::evaluate_stream<Real>(
      lm, in.model.params, in.ids, o.batch, o.seq, o.data.string().c_str(), world.rank() * part,
      part, cache ? &*cache : nullptr);
  std::array<double, 2> both = {mine.sum, static_cast<double>(mine.tokens)};
  world.sum(std::span<double>(both), "the evaluation");
  return eval_result({both[0], static_cast<int64_t>(both[1])});
}

EvalResult evaluate_cuda(const EvalOptions& o) {
  cuda::require();
  const EvalInput<float> in = read_eval_input<float>(o);
  cuda::LanguageModel lm(in.model.cfg);
  lm.set_params(in.model.params);
  return eval_result(train::evaluate_stream(lm, in.ids, o.batch, o.seq, o.data.string().c_str()));
}

}  // namespace

EvalResult evaluate_file(const EvalOptions& o) {
  SingleProcess alone;
  return evaluate_file(o, alone);
}

EvalResult evaluate_file(const EvalOptions& o, Collective& world) {
  try {
    if (o.batch < 1 || o.seq < 1)
      throw InputError(
          fmt::format("--batch and --seq: must be >= 1, got {} and {}", o.batch, o.seq));
    train::validate_cache(cache_options(o));
    if (o.device == "cuda" && o.dtype != "f32")
      throw InputError("--dtype " + o.dtype + ": --device cuda computes in float32 (f32)");
    if (o.device == "cuda" && o.precision != "f32")
      throw InputError("--precision " + o.precision + ": the CPU's (--device cpu)");
    if (o.device == "cuda" && o.cache_window > 0)
      throw InputError("--cache-window: the continuous cache runs on the CPU (--device cpu)");
    if (o.device == "cuda" && world.size() > 1)
      throw InputError("--device cuda: eval on several processes runs on the CPU");
  } catch (const InputError& e) {
    if (world.size() == 1) throw;
    agree_to_start(world, e.what());  // every rank stops here; rank 0 says why
  }
  if (o.device == "cuda") return evaluate_cuda(o);
  return o.dtype == "f32" ? evaluate_typed<float>(o, world) : evaluate_typed<double>(o, world);
}

namespace {

// The tokens, then one sampled token at a time, state carried; Real and Engine: double and
// LanguageModel<double> on the CPU, float and cuda::LanguageModel on the GPU.
template <class Real, class Engine>
std::vector<int64_t> sample_tokens(const SampleOptions& o, const Model<Real>& m,
                                   std::span<const int64_t> prime) {
  Engine lm(m.cfg);
  Batch<Real> b;
  b.B = 1;
  b.h0.assign(static_cast<size_t>(m.cfg.h_offset(m.cfg.L, 1)), Real(0));
  b.s0.assign(static_cast<size_t>(m.cfg.s_offset(m.cfg.L, 1)), Real(0));
  std::mt19937_64 rng(o.seed);
  std::vector<int64_t> out;
  auto feed = [&](std::span<const int64_t> tokens) {  // run the tokens; state carried
    b.T = static_cast<int64_t>(tokens.size());
    b.tokens.assign(tokens.begin(), tokens.end());
    if constexpr (requires { lm.infer(m.params, b, Reduction::sum); })
      lm.infer(m.params, b, Reduction::sum);  // the CPU engine: nothing kept for backward
    else
      lm.forward(m.params, b, Reduction::sum);
    std::copy(lm.h_n().begin(), lm.h_n().end(), b.h0.begin());
    std::copy(lm.s_n().begin(), lm.s_n().end(), b.s0.begin());
    return lm.probs().subspan(static_cast<size_t>((b.T - 1) * m.cfg.V));  // p of the last step
  };
  std::span<const Real> p = feed(prime);
  std::vector<double> w(static_cast<size_t>(m.cfg.V));
  for (int64_t k = 0; k < o.length; ++k) {
    for (size_t v = 0; v < w.size(); ++v)
      w[v] = std::pow(static_cast<double>(p[v]), 1.0 / o.temperature);
    const int64_t next = std::discrete_distribution<int64_t>(w.begin(), w.end())(rng);
    out.push_back(next);
    const int64_t one[1] = {next};
    p = feed(one);
  }
  return out;
}

}  // namespace

std::string sample_text(const SampleOptions& o) {
  if (!(o.temperature > 0))
    throw InputError(fmt::format("--temperature: must be > 0, got {}", o.temperature));
  if (o.length < 0) throw InputError(fmt::format("--length: must be >= 0, got {}", o.length));
  if (o.device == "cuda") cuda::require();
  const std::string file = o.model.string();
  const Model<double> m = load_model<double>(o.model);
  const data::Vocabulary vocab = language_model_vocabulary(m, file);
  std::vector<int64_t> prime = data::encode(o.prime, vocab, "--prime");
  if (vocab.level() == data::Level::words && !prime.empty() && prime.back() == vocab.eos())
    prime.pop_back();  // encode() ends a line with <eos>; the prime continues instead
  if (prime.empty()) prime.push_back(vocab.level() == data::Level::words ? vocab.eos() : 0);
  std::vector<int64_t> out;
  if (o.device == "cuda") {  // the same model in float32 (the file is read once)
    const Model<float> mf{m.cfg, std::vector<float>(m.params.begin(), m.params.end()), {}, {}};
    out = sample_tokens<float, cuda::LanguageModel>(o, mf, prime);
  } else {
    out = sample_tokens<double, LanguageModel<double>>(o, m, prime);
  }
  std::string text = o.prime;
  const std::string cont = data::decode(out, vocab);
  if (vocab.level() == data::Level::words && !text.empty() && !cont.empty()) text += " ";
  return text + cont;
}

}  // namespace lstmgrad
