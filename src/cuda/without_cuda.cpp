// A build without the CUDA backend (-DLSTMGRAD_WITH_CUDA=OFF, or no CUDA toolkit found): the
// declarations of lstmgrad/cuda.hpp answer that there is no GPU engine, with the reason.
#include <cstdlib>

#include "lstmgrad/cuda.hpp"
#include "lstmgrad/error.hpp"

namespace lstmgrad::cuda {

namespace {
constexpr const char* kWhy =
    "this lstmgrad was built without the CUDA backend (configure with -DLSTMGRAD_WITH_CUDA=ON "
    "where the CUDA toolkit is installed)";
}

bool available() {
  return false;
}
std::string describe() {
  return kWhy;
}
void require(const std::string& flag) {
  throw InputError(flag + ": " + kWhy);
}

struct LanguageModel::Impl {};

LanguageModel::LanguageModel(const ModelConfig&) {
  require();
}
LanguageModel::~LanguageModel() = default;
LanguageModel::LanguageModel(LanguageModel&&) noexcept = default;
LanguageModel& LanguageModel::operator=(LanguageModel&&) noexcept = default;

// Unreachable: no LanguageModel can be constructed in this build.
const ModelConfig& LanguageModel::config() const {
  require();
  std::abort();
}
void LanguageModel::set_recurrence(Recurrence) {}
std::string LanguageModel::recurrence_used() const {
  return "";
}
void LanguageModel::set_params(std::span<const float>) {}
void LanguageModel::get_params(std::span<float>) const {}
void LanguageModel::get_grad(std::span<float>) const {}
void LanguageModel::zero_grad() {}
void LanguageModel::set_dropout(double, uint64_t) {}
double LanguageModel::forward(const Batch<float>&, Reduction) {
  return 0;
}
void LanguageModel::backward(float*, float*, float*) {}
void LanguageModel::carry_state() {}
void LanguageModel::reset_state() {}
void LanguageModel::set_carried_state(std::span<const float>, std::span<const float>, int64_t) {}
void LanguageModel::get_carried_state(std::span<float>, std::span<float>) const {}
double LanguageModel::forward(std::span<const float>, const Batch<float>&, Reduction) {
  return 0;
}
void LanguageModel::backward(std::span<float>, std::span<const float>, const Batch<float>&, float*,
                             float*, float*) {}
void LanguageModel::sgd_step(double, double) {}
void LanguageModel::adam_step(double, double, int64_t) {}
double LanguageModel::last_grad_norm() const {
  return 0;
}
void LanguageModel::set_adam_moments(std::span<const float>, std::span<const float>) {}
void LanguageModel::get_adam_moments(std::span<float>, std::span<float>) const {}
std::span<const float> LanguageModel::h_n() const {
  return {};
}
std::span<const float> LanguageModel::s_n() const {
  return {};
}
std::span<const float> LanguageModel::probs() const {
  return {};
}
void LanguageModel::synchronize() const {}

double bench_ms(const CudaBenchShape&, const std::string&, int64_t, int, int, Recurrence) {
  require();
  return 0;
}
double bench_gemm_ms(int64_t, int64_t, int64_t, int, int) {
  require();
  return 0;
}

}  // namespace lstmgrad::cuda
