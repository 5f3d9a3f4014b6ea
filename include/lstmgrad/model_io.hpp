// lstmgrad: model, batch and gradient files (safetensors; formats in docs/cli.md, "File formats").
#pragma once
#include <filesystem>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "lstmgrad/batch.hpp"
#include "lstmgrad/data.hpp"
#include "lstmgrad/model.hpp"

namespace lstmgrad {

namespace io {
struct TensorFile;
}

// The "lstmgrad.config" metadata: {"input", "readout", "V", "X", "H", "L"} as JSON text, and
// back (InputError naming `file` for malformed text).
std::string config_to_json(const ModelConfig& cfg);
ModelConfig config_from_json(const std::string& text, const std::string& file);

template <class Real>
struct Model {
  ModelConfig cfg;
  std::vector<Real> params;                     // flat, parameter_layout(cfg) order
  std::map<std::string, std::string> metadata;  // everything in __metadata__
  std::vector<std::string> vocab;               // "lstmgrad.vocab" when present, else empty
};

// Reads a model file. The configuration comes from __metadata__["lstmgrad.config"] when present
// and is otherwise inferred from the tensors' shapes (a file written from PyTorch's state_dict
// needs no metadata). Every tensor of parameter_layout must be present with its exact shape, none
// other, all finite (read_parameters), and the vocabulary and level valid (model_vocabulary).
// Errors (InputError) name the file and the tensor or field.
template <class Real>
Model<Real> load_model(const std::filesystem::path& path);

// The parameters of `cfg` from the tensors of `f`, flat in parameter_layout order: every tensor
// of the layout present with its exact shape, all values finite (other tensors are the caller's
// business). The config is validated and every shape compared before anything is allocated, so
// sizes that claim more than the file holds cost nothing. InputError naming `file` and the tensor.
template <class Real>
std::vector<Real> read_parameters(const io::TensorFile& f, const ModelConfig& cfg,
                                  const std::string& file);

// The vocabulary a model file carries: "lstmgrad.vocab" (a JSON list of V strings) at the level
// "lstmgrad.level" names (word when absent), each entry checked by data::Vocabulary::from_words;
// empty when the file has none. load_model runs it, so that grad, eval and sample refuse the same
// files. InputError naming `file` and the field.
data::Vocabulary model_vocabulary(const std::map<std::string, std::string>& metadata, int64_t V,
                                  const std::string& file);

// Writes atomically; `metadata` is added to the config (and vocabulary, when given).
template <class Real>
void save_model(const std::filesystem::path& path, const ModelConfig& cfg,
                std::span<const Real> params, const std::vector<std::string>& vocab = {},
                const std::map<std::string, std::string>& metadata = {});

// Reads a batch file for `cfg` and validates it (validate_batch).
template <class Real>
Batch<Real> load_batch(const std::filesystem::path& path, const ModelConfig& cfg);

template <class Real>
void save_batch(const std::filesystem::path& path, const ModelConfig& cfg, const Batch<Real>& b);

// Everything `lstmgrad grad` writes: one tensor per parameter gradient (under the parameter's
// name), loss (F64 []), h_n and s_n [L,B,H]; grad.input [T,B,X] for dense input; grad.h0 and
// grad.s0 [L,B,H] when the batch gives h0/s0.
template <class Real>
struct GradientResult {
  double loss = 0;
  std::vector<Real> grad;      // flat, parameter_layout order
  std::vector<Real> h_n, s_n;  // [L,B,H]
  std::vector<Real> dinput;    // [T,B,X] or empty
  std::vector<Real> dh0, ds0;  // [L,B,H] or empty
};

template <class Real>
void save_gradients(const std::filesystem::path& path, const ModelConfig& cfg, int64_t T, int64_t B,
                    const GradientResult<Real>& g, Reduction red);

}  // namespace lstmgrad
