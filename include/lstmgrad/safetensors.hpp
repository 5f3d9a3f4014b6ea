// lstmgrad: reading and writing safetensors files (Hugging Face's format; models, batches and
// gradients are stored in it, see docs/cli.md, "File formats").
//
// Layout: 8 bytes little-endian uint64 N, then N bytes of UTF-8 JSON (possibly padded with
// spaces), then the data area. The JSON maps each tensor name to {"dtype", "shape",
// "data_offsets": [begin, end]} with offsets relative to the start of the data area, plus an
// optional "__metadata__" object of string -> string.
//
// Reading is strict and every problem is an InputError whose one-line message names the file, the
// tensor when one is involved, and what is wrong. As in the reference implementation the tensors
// must cover the data area exactly: no overlaps, no gaps, no trailing bytes. Duplicate names in
// the JSON are not detected (the JSON parser keeps the last one).
//
// Writing is atomic (see atomic_file.hpp) and produces what the reference writer produces: the
// header padded with spaces to a multiple of 8 bytes, tensors packed without gaps, ordered by
// element size (largest first, stable within a size) so that every tensor starts at a multiple
// of its element size (8-byte dtypes at multiples of 8).
#pragma once
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace lstmgrad::io {

enum class DType { F32, F64, I64, I32 };

// "F32", "F64", "I64", "I32" (the strings used in the file).
std::string to_string(DType dt);
// Bytes per element: 4 or 8.
size_t dtype_size(DType dt);
bool is_float(DType dt);

// One tensor: raw little-endian bytes, row-major. bytes.size() == numel() * dtype_size(dtype).
struct Tensor {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;  // [] for a scalar
  std::vector<std::byte> bytes;

  int64_t numel() const;  // product of shape (1 for a scalar)
};

struct TensorFile {
  std::map<std::string, std::string> metadata;  // "__metadata__"
  std::vector<Tensor> tensors;                  // read: in data order (ascending offsets)

  // nullptr when absent.
  const Tensor* find(const std::string& name) const;
  // Throws InputError "<file>: missing tensor '<name>'" when absent.
  const Tensor& require(const std::string& name, const std::string& file) const;
  // Appends; throws std::invalid_argument on a duplicate name, "__metadata__", or bytes that do
  // not match dtype x shape.
  void add(Tensor t);
};

TensorFile read_safetensors(const std::filesystem::path& path);
// Atomic: temporary file in the same folder, fsync, rename. Throws InputError if the file cannot
// be written (and leaves nothing behind), std::invalid_argument if `f` is inconsistent.
void write_safetensors(const std::filesystem::path& path, const TensorFile& f);

// Values of a float tensor (F32 or F64) as Real (float or double), converting as needed. Throws
// InputError "<file>: tensor '<name>': expected a float tensor (F32 or F64), got I64".
template <class Real>
std::vector<Real> to_floats(const Tensor& t, const std::string& file);
// Values of an integer tensor (I64 or I32) as int64. Throws InputError on a float tensor.
std::vector<int64_t> to_ints(const Tensor& t, const std::string& file);

// Build tensors from values; throw std::invalid_argument if v.size() != product(shape) or a
// negative dimension. `dt` must be F64 or F32 (double values are rounded to float for F32).
Tensor make_tensor(std::string name, std::vector<int64_t> shape, const std::vector<double>& v,
                   DType dt = DType::F64);
Tensor make_tensor(std::string name, std::vector<int64_t> shape, const std::vector<float>& v);
// `dt` must be I64 or I32 (values out of int32 range throw std::invalid_argument).
Tensor make_tensor(std::string name, std::vector<int64_t> shape, const std::vector<int64_t>& v,
                   DType dt = DType::I64);

}  // namespace lstmgrad::io
