// cuBLAS, opened at its first use (cuda/device.hpp, cublas()).
#include <dlfcn.h>

#include <string>

#include "cuda/device.hpp"
#include "lstmgrad/error.hpp"

namespace lstmgrad::cuda {

namespace {

struct Loaded {
  Cublas api{};
  std::string error;  // why it could not be opened; "" when it was
};

template <class F>
void bind(void* lib, const char* name, F& f, std::string& error) {
  if (!error.empty()) return;
  f = reinterpret_cast<F>(dlsym(lib, name));
  if (!f) error = std::string("cuBLAS (" LSTMGRAD_CUBLAS_SONAME ") has no ") + name;
}

// The library by its name (the loader's paths: LD_LIBRARY_PATH, ld.so.conf), else where this
// build found it. Never closed: the handles made with it live as long as the models.
Loaded open_cublas() {
  Loaded l;
  void* lib = dlopen(LSTMGRAD_CUBLAS_SONAME, RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    const char* first = dlerror();
    const std::string why = first ? first : "not found";
    lib = dlopen(LSTMGRAD_CUBLAS_PATH, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
      l.error = "cuBLAS could not be loaded (" + why + ")";
      return l;
    }
  }
  bind(lib, "cublasCreate_v2", l.api.create, l.error);
  bind(lib, "cublasDestroy_v2", l.api.destroy, l.error);
  bind(lib, "cublasSetStream_v2", l.api.set_stream, l.error);
  bind(lib, "cublasSetMathMode", l.api.set_math_mode, l.error);
  bind(lib, "cublasSgemm_v2", l.api.sgemm, l.error);
  bind(lib, "cublasSgemv_v2", l.api.sgemv, l.error);
  bind(lib, "cublasGetStatusString", l.api.status_string, l.error);
  return l;
}

const Loaded& loaded() {
  static const Loaded l = open_cublas();
  return l;
}

}  // namespace

std::string cublas_error() {
  return loaded().error;
}

const Cublas& cublas() {
  const Loaded& l = loaded();
  if (!l.error.empty()) throw InputError(l.error);
  return l.api;
}

}  // namespace lstmgrad::cuda
