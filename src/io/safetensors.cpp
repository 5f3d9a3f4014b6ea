#include "lstmgrad/safetensors.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string_view>
#include <system_error>
#include <tuple>
#include <utility>

#include "io/json_text.hpp"
#include "lstmgrad/atomic_file.hpp"
#include "lstmgrad/error.hpp"

// Tensor bytes are copied to and from memory as they are: the file is little-endian.
static_assert(std::endian::native == std::endian::little, "safetensors I/O assumes little-endian");

namespace lstmgrad::io {
namespace {

using json = nlohmann::json;
constexpr uint64_t kLengthBytes = 8;          // the header-length field
constexpr uint64_t kMaxHeader = 100'000'000;  // the reference implementation's limit
constexpr std::string_view kMetadataKey = "__metadata__";

// ---- messages -------------------------------------------------------------------------------

// A name from the file, safe to print on one line (control characters as \xNN).
std::string quote_name(std::string_view s) {
  std::string out = "'";
  for (char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) {
      out += fmt::format("\\x{:02x}", static_cast<unsigned>(u));
    } else {
      out += c;
    }
  }
  return out + "'";
}

std::string shape_text(const std::vector<int64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

[[noreturn]] void bad_file(const std::string& file, std::string_view what) {
  throw InputError(fmt::format("{}: {}", file, what));
}

[[noreturn]] void bad_tensor(const std::string& file, std::string_view name,
                             std::string_view what) {
  throw InputError(fmt::format("{}: tensor {}: {}", file, quote_name(name), what));
}

// ---- the file on disk -----------------------------------------------------------------------

// A regular file opened for reading at given offsets; errors name the file.
class InFile {
 public:
  explicit InFile(const std::filesystem::path& path) : label_(path.string()) {
    // O_NONBLOCK so that a FIFO given by mistake does not hang; no effect on regular files.
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd_ < 0) bad_file(label_, "cannot open: " + std::generic_category().message(errno));
    struct stat st {};
    if (::fstat(fd_, &st) != 0) {
      const int err = errno;
      ::close(fd_);
      bad_file(label_, "cannot stat: " + std::generic_category().message(err));
    }
    if (!S_ISREG(st.st_mode)) {
      ::close(fd_);
      bad_file(label_, S_ISDIR(st.st_mode) ? "is a folder, not a file" : "not a regular file");
    }
    size_ = static_cast<uint64_t>(st.st_size);
  }
  ~InFile() { ::close(fd_); }
  InFile(const InFile&) = delete;
  InFile& operator=(const InFile&) = delete;

  const std::string& label() const { return label_; }
  uint64_t size() const { return size_; }

  void read_at(uint64_t offset, void* dst, size_t n) const {
    auto* p = static_cast<char*>(dst);
    while (n > 0) {
      const ssize_t r = ::pread(fd_, p, n, static_cast<off_t>(offset));
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) bad_file(label_, "read failed: " + std::generic_category().message(errno));
      if (r == 0)
        bad_file(label_, fmt::format("file ended at byte {} (changed while read?)", offset));
      p += r;
      offset += static_cast<uint64_t>(r);
      n -= static_cast<size_t>(r);
    }
  }

 private:
  std::string label_;
  int fd_ = -1;
  uint64_t size_ = 0;
};

uint64_t read_header_length(const InFile& in) {
  if (in.size() < kLengthBytes) {
    bad_file(in.label(), fmt::format("file is {} bytes, too short for the 8-byte header length "
                                     "(not a safetensors file?)",
                                     in.size()));
  }
  uint64_t n = 0;
  in.read_at(0, &n, sizeof n);
  if (n > kMaxHeader) {
    bad_file(in.label(), fmt::format("header length {} exceeds the limit of {} bytes "
                                     "(not a safetensors file?)",
                                     n, kMaxHeader));
  }
  if (n > in.size() - kLengthBytes) {
    bad_file(in.label(), fmt::format("header length {} exceeds the {} bytes that follow it "
                                     "(truncated file?)",
                                     n, in.size() - kLengthBytes));
  }
  return n;
}

// The spec's framing around the JSON: no byte-order mark, no NUL (JSON text never holds one, and
// nlohmann's parser would stop at it, ignoring what follows), an object from the first byte, and
// only spaces (the padding writers use) after it.
void check_framing(const std::string& text, const std::string& file) {
  if (text.rfind("\xef\xbb\xbf", 0) == 0)
    bad_file(file, "header starts with a UTF-8 byte-order mark (the JSON must start at '{')");
  const size_t nul = text.find('\0');
  if (nul != std::string::npos) {
    bad_file(file, fmt::format("header holds a NUL byte at offset {} (only spaces may pad the "
                               "header)",
                               nul));
  }
}

void check_padding(const std::string& text, const std::string& file) {
  if (text.empty() || text.front() != '{')
    bad_file(file, "header must start with '{' (no leading whitespace)");
  const size_t last = text.find_last_not_of(' ');
  if (text[last] != '}') {  // last exists: text starts with '{'
    bad_file(file,
             fmt::format("header: byte 0x{:02x} at offset {} after the JSON object (only "
                         "spaces may pad the header)",
                         static_cast<unsigned>(static_cast<unsigned char>(text[last])), last));
  }
}

json parse_header(const InFile& in, uint64_t n) {
  std::string text(static_cast<size_t>(n), ' ');
  in.read_at(kLengthBytes, text.data(), text.size());
  check_framing(text, in.label());
  const json header = parse_json(text, in.label() + ": header");
  if (!header.is_object()) {
    bad_file(in.label(), fmt::format("header must be a JSON object, got {}", header.type_name()));
  }
  check_padding(text, in.label());
  return header;
}

// ---- header entries -------------------------------------------------------------------------

struct Entry {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;
  uint64_t end = 0;
};

std::map<std::string, std::string> parse_metadata(const json& v, const std::string& file) {
  if (!v.is_object()) {
    bad_file(file, fmt::format("__metadata__ must be an object of strings, got {}", v.type_name()));
  }
  std::map<std::string, std::string> out;
  for (const auto& [key, value] : v.items()) {
    if (!value.is_string()) {
      bad_file(file, fmt::format("__metadata__ field {} must be a string, got {}", quote_name(key),
                                 value.type_name()));
    }
    out.emplace(key, value.get<std::string>());
  }
  return out;
}

const json& field(const json& entry, const char* key, const std::string& file,
                  const std::string& name) {
  const auto it = entry.find(key);
  if (it == entry.end()) bad_tensor(file, name, fmt::format("missing field '{}'", key));
  return *it;
}

DType parse_dtype(const json& v, const std::string& file, const std::string& name) {
  if (!v.is_string()) {
    bad_tensor(file, name, fmt::format("field 'dtype' must be a string, got {}", v.type_name()));
  }
  const std::string s = v.get<std::string>();
  for (DType dt : {DType::F32, DType::F64, DType::I64, DType::I32}) {
    if (s == to_string(dt)) return dt;
  }
  bad_tensor(file, name,
             fmt::format("unsupported dtype {} (supported: F32, F64, I64, I32)", quote_name(s)));
}

// A JSON integer >= 0 that fits int64; nullopt for anything else.
std::optional<uint64_t> non_negative_integer(const json& v) {
  if (!v.is_number_unsigned()) return std::nullopt;  // negative ints are number_integer
  const auto u = v.get<uint64_t>();
  if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
  return u;
}

std::vector<int64_t> parse_shape(const json& v, const std::string& file, const std::string& name) {
  if (!v.is_array()) {
    bad_tensor(file, name, fmt::format("field 'shape' must be an array, got {}", v.type_name()));
  }
  std::vector<int64_t> shape;
  for (const json& d : v) {
    if (d.type() == json::value_t::number_integer && d.get<int64_t>() < 0) {
      bad_tensor(file, name, fmt::format("shape {} has a negative dimension", v.dump()));
    }
    const auto u = non_negative_integer(d);
    if (!u) {
      bad_tensor(file, name, fmt::format("shape {} must hold non-negative integers", v.dump()));
    }
    shape.push_back(static_cast<int64_t>(*u));
  }
  return shape;
}

std::pair<uint64_t, uint64_t> parse_offsets(const json& v, const std::string& file,
                                            const std::string& name) {
  std::optional<uint64_t> begin, end;
  if (v.is_array() && v.size() == 2) {
    begin = non_negative_integer(v[0]);
    end = non_negative_integer(v[1]);
  }
  if (!begin || !end) {
    bad_tensor(file, name,
               fmt::format("field 'data_offsets' must be two non-negative integers, "
                           "got {}",
                           v.dump()));
  }
  return {*begin, *end};
}

// dtype size x product(shape) in bytes; nullopt on 64-bit overflow.
std::optional<uint64_t> byte_count(DType dt, const std::vector<int64_t>& shape) {
  uint64_t n = dtype_size(dt);
  for (int64_t d : shape) {
    const auto u = static_cast<uint64_t>(d);
    if (u != 0 && n > std::numeric_limits<uint64_t>::max() / u) return std::nullopt;
    n *= u;
  }
  return n;
}

void check_extent(const Entry& e, uint64_t data_size, const std::string& file) {
  const std::string offsets = fmt::format("data_offsets [{}, {}]", e.begin, e.end);
  if (e.begin > e.end) bad_tensor(file, e.name, offsets + ": begin is after end");
  const auto bytes = byte_count(e.dtype, e.shape);
  const std::string declared =
      fmt::format("dtype {} x shape {}", to_string(e.dtype), shape_text(e.shape));
  if (!bytes) bad_tensor(file, e.name, declared + " overflows a 64-bit byte count");
  if (e.end - e.begin != *bytes) {
    bad_tensor(file, e.name,
               fmt::format("{} do not match {} ({} bytes)", offsets, declared, *bytes));
  }
  if (e.end > data_size) {
    bad_tensor(file, e.name,
               fmt::format("{} lie outside the data area ({} bytes)", offsets, data_size));
  }
}

Entry parse_entry(const std::string& name, const json& v, uint64_t data_size,
                  const std::string& file) {
  if (!v.is_object()) {
    bad_tensor(file, name, fmt::format("entry must be an object, got {}", v.type_name()));
  }
  for (const auto& [key, value] : v.items()) {
    if (key != "dtype" && key != "shape" && key != "data_offsets")
      bad_tensor(file, name,
                 fmt::format("unknown field {} (an entry holds dtype, shape and data_offsets)",
                             quote_name(key)));
  }
  Entry e;
  e.name = name;
  e.dtype = parse_dtype(field(v, "dtype", file, name), file, name);
  e.shape = parse_shape(field(v, "shape", file, name), file, name);
  std::tie(e.begin, e.end) = parse_offsets(field(v, "data_offsets", file, name), file, name);
  check_extent(e, data_size, file);
  return e;
}

// Sorts by offset and checks that the tensors tile the data area exactly, as the reference
// implementation requires: no overlaps, no gaps, nothing after the last tensor.
void check_tiling(std::vector<Entry>& entries, uint64_t data_size, const std::string& file) {
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return std::tie(a.begin, a.end, a.name) < std::tie(b.begin, b.end, b.name);
  });
  uint64_t covered = 0;
  const Entry* last = nullptr;  // the tensor that ends at `covered`
  for (const Entry& e : entries) {
    if (e.begin < covered) {
      bad_tensor(file, e.name,
                 fmt::format("data_offsets [{}, {}] overlap tensor {} [{}, {}]", e.begin, e.end,
                             quote_name(last->name), last->begin, last->end));
    }
    if (e.begin > covered) {
      bad_tensor(file, e.name,
                 fmt::format("data_offsets [{}, {}] leave bytes [{}, {}) of the data area unused",
                             e.begin, e.end, covered, e.begin));
    }
    covered = e.end;
    last = &e;
  }
  if (covered != data_size) {
    bad_file(file, fmt::format("the tensors end at byte {} of the {}-byte data area "
                               "({} trailing bytes)",
                               covered, data_size, data_size - covered));
  }
}

Tensor read_tensor(const InFile& in, uint64_t data_start, const Entry& e) {
  Tensor t{e.name, e.dtype, e.shape, {}};
  t.bytes.resize(static_cast<size_t>(e.end - e.begin));
  in.read_at(data_start + e.begin, t.bytes.data(), t.bytes.size());
  return t;
}

// ---- writing --------------------------------------------------------------------------------

void check_consistent(const Tensor& t, const std::string& where) {
  for (int64_t d : t.shape) {
    if (d < 0) {
      throw std::invalid_argument(fmt::format("{}: tensor {}: negative dimension in shape {}",
                                              where, quote_name(t.name), shape_text(t.shape)));
    }
  }
  const auto bytes = byte_count(t.dtype, t.shape);
  if (!bytes || *bytes != t.bytes.size()) {
    throw std::invalid_argument(fmt::format("{}: tensor {}: {} bytes for dtype {} x shape {}",
                                            where, quote_name(t.name), t.bytes.size(),
                                            to_string(t.dtype), shape_text(t.shape)));
  }
}

void check_for_writing(const TensorFile& f, const std::string& file) {
  std::vector<std::string_view> names;
  for (const Tensor& t : f.tensors) {
    check_consistent(t, file);
    if (t.name == kMetadataKey) {
      throw std::invalid_argument(fmt::format("{}: '__metadata__' is not a tensor name", file));
    }
    names.push_back(t.name);
  }
  std::sort(names.begin(), names.end());
  const auto dup = std::adjacent_find(names.begin(), names.end());
  if (dup != names.end()) {
    throw std::invalid_argument(fmt::format("{}: tensor {} appears twice", file, quote_name(*dup)));
  }
}

// Largest element size first (stable otherwise): packed without gaps, every tensor then starts at
// a multiple of its own element size, as the reference writer arranges.
std::vector<const Tensor*> write_order(const TensorFile& f) {
  std::vector<const Tensor*> order;
  for (const Tensor& t : f.tensors) order.push_back(&t);
  std::stable_sort(order.begin(), order.end(), [](const Tensor* a, const Tensor* b) {
    return dtype_size(a->dtype) > dtype_size(b->dtype);
  });
  return order;
}

// The JSON header, padded with spaces to a multiple of 8 bytes so that the data area is aligned.
std::string header_text(const std::vector<const Tensor*>& order,
                        const std::map<std::string, std::string>& metadata,
                        const std::string& file) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header[std::string(kMetadataKey)] = metadata;
  uint64_t offset = 0;
  for (const Tensor* t : order) {
    const uint64_t end = offset + t->bytes.size();
    header[t->name] = {
        {"dtype", to_string(t->dtype)}, {"shape", t->shape}, {"data_offsets", {offset, end}}};
    offset = end;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const json::type_error&) {
    bad_file(file, "tensor names and metadata must be valid UTF-8");
  }
  text.append((kLengthBytes - text.size() % kLengthBytes) % kLengthBytes, ' ');
  return text;
}

// ---- conversions ----------------------------------------------------------------------------

template <class From, class To>
std::vector<To> convert(const std::vector<std::byte>& bytes) {
  std::vector<To> out(bytes.size() / sizeof(From));
  for (size_t k = 0; k < out.size(); ++k) {
    From x;
    std::memcpy(&x, bytes.data() + k * sizeof(From), sizeof(From));
    out[k] = static_cast<To>(x);
  }
  return out;
}

template <class T>
std::vector<std::byte> raw_bytes(const std::vector<T>& v) {
  std::vector<std::byte> out(v.size() * sizeof(T));
  if (!v.empty()) std::memcpy(out.data(), v.data(), out.size());
  return out;
}

void check_value_count(const std::string& name, const std::vector<int64_t>& shape, size_t count) {
  for (int64_t d : shape) {
    if (d < 0) {
      throw std::invalid_argument(fmt::format("make_tensor {}: negative dimension in {}",
                                              quote_name(name), shape_text(shape)));
    }
  }
  const auto bytes = byte_count(DType::I32, shape);  // element size 4: any overflow shows here
  if (!bytes || *bytes / 4 != count) {
    throw std::invalid_argument(fmt::format("make_tensor {}: {} values for shape {}",
                                            quote_name(name), count, shape_text(shape)));
  }
}

}  // namespace

// ---- public ---------------------------------------------------------------------------------

std::string to_string(DType dt) {
  switch (dt) {
    case DType::F32:
      return "F32";
    case DType::F64:
      return "F64";
    case DType::I64:
      return "I64";
    case DType::I32:
      return "I32";
  }
  return "?";
}

size_t dtype_size(DType dt) {
  return dt == DType::F64 || dt == DType::I64 ? 8 : 4;
}

bool is_float(DType dt) {
  return dt == DType::F32 || dt == DType::F64;
}

int64_t Tensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

const Tensor* TensorFile::find(const std::string& name) const {
  for (const Tensor& t : tensors) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

const Tensor& TensorFile::require(const std::string& name, const std::string& file) const {
  const Tensor* t = find(name);
  if (t == nullptr) bad_file(file, fmt::format("missing tensor {}", quote_name(name)));
  return *t;
}

void TensorFile::add(Tensor t) {
  check_consistent(t, "TensorFile::add");
  if (t.name == kMetadataKey || find(t.name) != nullptr) {
    throw std::invalid_argument(
        fmt::format("TensorFile::add: tensor {} already present or reserved", quote_name(t.name)));
  }
  tensors.push_back(std::move(t));
}

TensorFile read_safetensors(const std::filesystem::path& path) {
  const InFile in(path);
  const uint64_t n = read_header_length(in);
  const json header = parse_header(in, n);
  const uint64_t data_size = in.size() - kLengthBytes - n;
  TensorFile out;
  std::vector<Entry> entries;
  for (const auto& [key, value] : header.items()) {
    if (key == kMetadataKey) {
      out.metadata = parse_metadata(value, in.label());
    } else {
      entries.push_back(parse_entry(key, value, data_size, in.label()));
    }
  }
  check_tiling(entries, data_size, in.label());
  for (const Entry& e : entries) out.tensors.push_back(read_tensor(in, kLengthBytes + n, e));
  return out;
}

void write_safetensors(const std::filesystem::path& path, const TensorFile& f) {
  const std::string file = path.string();
  check_for_writing(f, file);
  const std::vector<const Tensor*> order = write_order(f);
  const std::string header = header_text(order, f.metadata, file);
  const uint64_t n = header.size();
  AtomicFile out(path);
  out.write(std::as_bytes(std::span(&n, 1)));
  out.write(header);
  for (const Tensor* t : order) out.write(t->bytes);
  out.commit();
}

template <class Real>
std::vector<Real> to_floats(const Tensor& t, const std::string& file) {
  if (!is_float(t.dtype)) {
    bad_tensor(file, t.name,
               fmt::format("expected a float tensor (F32 or F64), got {}", to_string(t.dtype)));
  }
  check_consistent(t, file);
  if (t.dtype == DType::F64) return convert<double, Real>(t.bytes);
  return convert<float, Real>(t.bytes);
}
template std::vector<float> to_floats<float>(const Tensor&, const std::string&);
template std::vector<double> to_floats<double>(const Tensor&, const std::string&);

std::vector<int64_t> to_ints(const Tensor& t, const std::string& file) {
  if (is_float(t.dtype)) {
    bad_tensor(file, t.name,
               fmt::format("expected an integer tensor (I64 or I32), got {}", to_string(t.dtype)));
  }
  check_consistent(t, file);
  if (t.dtype == DType::I64) return convert<int64_t, int64_t>(t.bytes);
  return convert<int32_t, int64_t>(t.bytes);
}

Tensor make_tensor(std::string name, std::vector<int64_t> shape, const std::vector<double>& v,
                   DType dt) {
  check_value_count(name, shape, v.size());
  if (dt == DType::F64) return {std::move(name), dt, std::move(shape), raw_bytes(v)};
  if (dt != DType::F32) {
    throw std::invalid_argument(fmt::format("make_tensor {}: double values need F64 or F32, got {}",
                                            quote_name(name), to_string(dt)));
  }
  return make_tensor(std::move(name), std::move(shape), std::vector<float>(v.begin(), v.end()));
}

Tensor make_tensor(std::string name, std::vector<int64_t> shape, const std::vector<float>& v) {
  check_value_count(name, shape, v.size());
  return {std::move(name), DType::F32, std::move(shape), raw_bytes(v)};
}

Tensor make_tensor(std::string name, std::vector<int64_t> shape, const std::vector<int64_t>& v,
                   DType dt) {
  check_value_count(name, shape, v.size());
  if (dt == DType::I64) return {std::move(name), dt, std::move(shape), raw_bytes(v)};
  if (dt != DType::I32) {
    throw std::invalid_argument(fmt::format("make_tensor {}: int64 values need I64 or I32, got {}",
                                            quote_name(name), to_string(dt)));
  }
  std::vector<int32_t> narrow(v.size());
  for (size_t k = 0; k < v.size(); ++k) {
    if (v[k] < std::numeric_limits<int32_t>::min() || v[k] > std::numeric_limits<int32_t>::max()) {
      throw std::invalid_argument(
          fmt::format("make_tensor {}: value {} does not fit I32", quote_name(name), v[k]));
    }
    narrow[k] = static_cast<int32_t>(v[k]);
  }
  return {std::move(name), dt, std::move(shape), raw_bytes(narrow)};
}

}  // namespace lstmgrad::io
