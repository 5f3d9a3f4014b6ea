// Safetensors reading/writing and the atomic-file helper: round trips, a file as the Python
// writer produces it, every validation error, and that writes never leave partial files.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "lstmgrad/atomic_file.hpp"
#include "lstmgrad/error.hpp"
#include "lstmgrad/safetensors.hpp"
#include "temp_dir.hpp"

namespace fs = std::filesystem;
using lstmgrad::InputError;
using namespace lstmgrad::io;

using lstmgrad::test::TempDir;

namespace {

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void spit(const fs::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string le64(uint64_t n) {
  std::string s(8, '\0');
  for (int k = 0; k < 8; ++k) s[static_cast<size_t>(k)] = static_cast<char>((n >> (8 * k)) & 0xff);
  return s;
}

// 8-byte length, header, data: a safetensors file built by hand.
std::string file_bytes(const std::string& header, const std::string& data) {
  return le64(header.size()) + header + data;
}

template <class T>
std::string raw(const std::vector<T>& v) {
  std::string s(v.size() * sizeof(T), '\0');
  if (!v.empty()) std::memcpy(s.data(), v.data(), s.size());
  return s;
}

// Runs `read` and checks that it throws InputError whose message contains every `parts`.
void expect_input_error(const fs::path& p, const std::vector<std::string>& parts) {
  try {
    read_safetensors(p);
    ADD_FAILURE() << p << ": expected InputError containing '" << parts.front() << "'";
  } catch (const InputError& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "message is not one line: " << msg;
    EXPECT_NE(msg.find(p.filename().string()), std::string::npos) << "no file name in: " << msg;
    for (const std::string& part : parts) {
      EXPECT_NE(msg.find(part), std::string::npos) << "'" << part << "' missing from: " << msg;
    }
  }
}

TensorFile sample_file() {
  TensorFile f;
  f.add(make_tensor("w32", {2, 3}, std::vector<float>{1.5f, -2, 3, 4, 5, 6.25f}));
  f.add(make_tensor("w64", {3}, std::vector<double>{0.1, -1e300, 3}));
  f.add(make_tensor("ids", {2, 2}, std::vector<int64_t>{0, -7, int64_t{1} << 40, 3}));
  f.add(make_tensor("ids32", {3}, std::vector<int64_t>{5, -6, 2147483647}, DType::I32));
  f.add(make_tensor("loss", {}, std::vector<double>{2.5}));
  f.add(make_tensor("empty", {0, 4}, std::vector<float>{}));
  return f;
}

}  // namespace

TEST(Safetensors, RoundTripsAllDtypesScalarAndEmpty) {
  TempDir dir;
  const TensorFile f = sample_file();
  write_safetensors(dir / "t.safetensors", f);
  const TensorFile g = read_safetensors(dir / "t.safetensors");
  ASSERT_EQ(g.tensors.size(), f.tensors.size());
  for (const Tensor& t : f.tensors) {
    const Tensor* u = g.find(t.name);
    ASSERT_NE(u, nullptr) << t.name;
    EXPECT_EQ(u->dtype, t.dtype) << t.name;
    EXPECT_EQ(u->shape, t.shape) << t.name;
    EXPECT_EQ(u->bytes, t.bytes) << t.name;
  }
  EXPECT_EQ(g.require("loss", "t").numel(), 1);
  EXPECT_EQ(g.require("empty", "t").numel(), 0);
  EXPECT_EQ(to_floats<double>(g.require("w64", "t"), "t"), (std::vector<double>{0.1, -1e300, 3}));
  EXPECT_EQ(to_ints(g.require("ids32", "t"), "t"), (std::vector<int64_t>{5, -6, 2147483647}));
  EXPECT_TRUE(g.metadata.empty());
}

TEST(Safetensors, WritesAlignedPackedLayoutInStableOrder) {
  TempDir dir;
  write_safetensors(dir / "t.safetensors", sample_file());
  const std::string bytes = slurp(dir / "t.safetensors");
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(n % 8, 0u) << "header not padded to 8 bytes";
  const std::string header_text = bytes.substr(8, n);
  EXPECT_EQ(header_text[header_text.find_last_not_of(' ')], '}') << "padding is spaces only";
  // Largest element size first, file order kept within a size; no gaps, each start aligned.
  const TensorFile g = read_safetensors(dir / "t.safetensors");
  std::vector<std::string> names;
  for (const Tensor& t : g.tensors) names.push_back(t.name);
  EXPECT_EQ(names, (std::vector<std::string>{"w64", "ids", "loss", "w32", "ids32", "empty"}));
  const auto header = nlohmann::json::parse(header_text);
  uint64_t expected_begin = 0;
  for (const Tensor& t : g.tensors) {
    const auto offsets = header[t.name]["data_offsets"].get<std::vector<uint64_t>>();
    EXPECT_EQ(offsets[0], expected_begin) << t.name;
    EXPECT_EQ(offsets[0] % dtype_size(t.dtype), 0u) << t.name;
    expected_begin = offsets[1];
  }
  EXPECT_EQ(8 + n + expected_begin, bytes.size());
  // Writing the same content again gives the same bytes.
  write_safetensors(dir / "u.safetensors", sample_file());
  EXPECT_EQ(slurp(dir / "u.safetensors"), bytes);
}

TEST(Safetensors, RoundTripsMetadata) {
  TempDir dir;
  TensorFile f;
  f.metadata = {{"config", R"({"H": 8, "L": 2})"}, {"vocab", "a\nb\tc \"q\" \xc3\xa9"}, {"e", ""}};
  f.add(make_tensor("x", {1}, std::vector<double>{1}));
  write_safetensors(dir / "m.safetensors", f);
  const TensorFile g = read_safetensors(dir / "m.safetensors");
  EXPECT_EQ(g.metadata, f.metadata);
  ASSERT_EQ(g.tensors.size(), 1u);
}

TEST(Safetensors, RoundTripsEmptyFile) {
  TempDir dir;
  write_safetensors(dir / "e.safetensors", TensorFile{});
  const TensorFile g = read_safetensors(dir / "e.safetensors");
  EXPECT_TRUE(g.tensors.empty());
  EXPECT_TRUE(g.metadata.empty());
}

TEST(Safetensors, ReadsFileAsPythonWritesIt) {
  // safetensors.torch.save_file({"b": torch.tensor([1, 2], dtype=torch.int64),
  //   "a": torch.tensor([[0.5, -1.0]]), "s": torch.tensor(3.0, dtype=torch.float64)},
  //   metadata={"format": "pt"}): compact JSON, __metadata__ first, 8-byte dtypes first (sorted by
  // name within), header padded with spaces to a multiple of 8.
  const std::string json =
      R"({"__metadata__":{"format":"pt"},"b":{"dtype":"I64","shape":[2],"data_offsets":[0,16]},)"
      R"("s":{"dtype":"F64","shape":[],"data_offsets":[16,24]},)"
      R"("a":{"dtype":"F32","shape":[1,2],"data_offsets":[24,32]}})";
  std::string header = json;
  header.append((8 - header.size() % 8) % 8, ' ');
  ASSERT_NE(header.size(), json.size()) << "choose names so that padding is exercised";
  const std::string data = raw(std::vector<int64_t>{1, 2}) + raw(std::vector<double>{3}) +
                           raw(std::vector<float>{0.5f, -1});
  TempDir dir;
  spit(dir / "py.safetensors", file_bytes(header, data));
  const TensorFile f = read_safetensors(dir / "py.safetensors");
  EXPECT_EQ(f.metadata, (std::map<std::string, std::string>{{"format", "pt"}}));
  ASSERT_EQ(f.tensors.size(), 3u);
  EXPECT_EQ(f.tensors[0].name, "b");  // data order
  EXPECT_EQ(f.tensors[1].name, "s");
  EXPECT_EQ(f.tensors[2].name, "a");
  EXPECT_EQ(to_ints(f.require("b", "py"), "py"), (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(to_floats<double>(f.require("s", "py"), "py"), (std::vector<double>{3}));
  EXPECT_TRUE(f.require("s", "py").shape.empty());
  EXPECT_EQ(to_floats<float>(f.require("a", "py"), "py"), (std::vector<float>{0.5f, -1}));
  EXPECT_EQ(f.require("a", "py").shape, (std::vector<int64_t>{1, 2}));
}

TEST(Safetensors, ConvertsWithinDtypeKindAndRejectsAcrossKinds) {
  const Tensor f64 = make_tensor("w", {2}, std::vector<double>{0.1, 2});
  const Tensor f32 = make_tensor("v", {2}, std::vector<double>{0.1, 2}, DType::F32);
  const Tensor i32 = make_tensor("t", {2}, std::vector<int64_t>{-1, 9}, DType::I32);
  EXPECT_EQ(f32.dtype, DType::F32);
  EXPECT_EQ(to_floats<float>(f64, "m"), (std::vector<float>{0.1f, 2}));
  EXPECT_EQ(to_floats<double>(f32, "m"), (std::vector<double>{double{0.1f}, 2}));
  EXPECT_EQ(to_ints(i32, "b"), (std::vector<int64_t>{-1, 9}));
  try {
    to_ints(f64, "model.safetensors");
    ADD_FAILURE() << "to_ints accepted F64";
  } catch (const InputError& e) {
    EXPECT_STREQ(e.what(),
                 "model.safetensors: tensor 'w': expected an integer tensor (I64 or I32), got F64");
  }
  try {
    to_floats<double>(i32, "batch.safetensors");
    ADD_FAILURE() << "to_floats accepted I32";
  } catch (const InputError& e) {
    EXPECT_STREQ(e.what(),
                 "batch.safetensors: tensor 't': expected a float tensor (F32 or F64), got I32");
  }
}

TEST(Safetensors, RejectsInconsistentTensorsInTheApi) {
  EXPECT_THROW(make_tensor("x", {2, 2}, std::vector<double>{1, 2, 3}), std::invalid_argument);
  EXPECT_THROW(make_tensor("x", {-1}, std::vector<float>{}), std::invalid_argument);
  EXPECT_THROW(make_tensor("x", {1}, std::vector<double>{1}, DType::I64), std::invalid_argument);
  EXPECT_THROW(make_tensor("x", {1}, std::vector<int64_t>{int64_t{1} << 40}, DType::I32),
               std::invalid_argument);
  TensorFile f;
  f.add(make_tensor("x", {1}, std::vector<double>{1}));
  EXPECT_THROW(f.add(make_tensor("x", {1}, std::vector<double>{1})), std::invalid_argument);
  EXPECT_THROW(f.add(make_tensor("__metadata__", {1}, std::vector<double>{1})),
               std::invalid_argument);
  EXPECT_THROW(f.require("y", "f.safetensors"), InputError);
  // A tensor whose bytes do not match its shape is refused before anything is written.
  TempDir dir;
  f.tensors.push_back(Tensor{"bad", DType::F32, {3}, std::vector<std::byte>(8)});
  EXPECT_THROW(write_safetensors(dir / "bad.safetensors", f), std::invalid_argument);
  EXPECT_TRUE(dir.entries().empty());
}

TEST(Safetensors, RejectsUnreadableFiles) {
  TempDir dir;
  expect_input_error(dir / "missing.safetensors", {"cannot open"});
  fs::create_directory(dir / "folder.safetensors");
  expect_input_error(dir / "folder.safetensors", {"folder"});
  spit(dir / "short.safetensors", "abc");
  expect_input_error(dir / "short.safetensors", {"3 bytes", "too short"});
  spit(dir / "long.safetensors", le64(1000) + "{}");
  expect_input_error(dir / "long.safetensors", {"header length 1000", "exceeds"});
  spit(dir / "absurd.safetensors", le64(uint64_t{1} << 63) + "{}");
  expect_input_error(dir / "absurd.safetensors", {"limit"});
}

TEST(Safetensors, RejectsMalformedHeaders) {
  struct Case {
    std::string header;
    std::string data;
    std::vector<std::string> parts;
  };
  const std::string f32x2 = R"("dtype":"F32","shape":[2])";
  const std::vector<Case> cases = {
      {"{not json", "", {"not valid JSON"}},
      {"{\"a\xff\":1}", "", {"not valid JSON"}},
      {"[1, 2]", "", {"must be a JSON object", "array"}},
      {R"({"w":5})", "", {"tensor 'w'", "entry must be an object"}},
      {R"({"w":{"shape":[1],"data_offsets":[0,4]}})", "", {"tensor 'w'", "missing field 'dtype'"}},
      {R"({"w":{"dtype":"F32","data_offsets":[0,4]}})", "", {"tensor 'w'", "'shape'"}},
      {R"({"w":{"dtype":"F32","shape":[1]}})", "", {"tensor 'w'", "'data_offsets'"}},
      {R"({"w":{"dtype":3,"shape":[1],"data_offsets":[0,4]}})", "", {"tensor 'w'", "'dtype'"}},
      {R"({"w":{"dtype":"F32","shape":"1","data_offsets":[0,4]}})", "", {"tensor 'w'", "'shape'"}},
      {R"({"w":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", "", {"tensor 'w'", "[1.5]"}},
      {R"({"w":{"dtype":"F32","shape":[2,-1],"data_offsets":[0,4]}})",
       "",
       {"tensor 'w'", "negative dimension"}},
      {R"({"w":{)" + f32x2 + R"(,"data_offsets":[0]}})", "", {"tensor 'w'", "'data_offsets'"}},
      {R"({"w":{)" + f32x2 + R"(,"data_offsets":[0,"8"]}})", "", {"tensor 'w'", "'data_offsets'"}},
      {R"({"w":{)" + f32x2 + R"(,"data_offsets":[-1,7]}})", "", {"tensor 'w'", "non-negative"}},
      {R"({"w":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}})",
       std::string(4, '\0'),
       {"tensor 'w'", "unsupported dtype 'F16'"}},
      {R"({"w":{)" + f32x2 + R"(,"data_offsets":[8,0]}})",
       "",
       {"tensor 'w'", "begin is after end"}},
      {R"({"w":{)" + f32x2 + R"(,"data_offsets":[0,8]}})",
       std::string(4, '\0'),
       {"tensor 'w'", "outside the data area (4 bytes)"}},
      {R"({"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}})",
       "",
       {"tensor 'w'", "overflows"}},
      {R"({"a":{)" + f32x2 + R"(,"data_offsets":[0,8]},"b":{)" + f32x2 +
           R"(,"data_offsets":[4,12]}})",
       std::string(12, '\0'),
       {"tensor 'b'", "overlap tensor 'a' [0, 8]"}},
      {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],)"
       R"("data_offsets":[8,12]}})",
       std::string(12, '\0'),
       {"tensor 'b'", "bytes [4, 8)"}},
      {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
       std::string(8, '\0'),
       {"4 trailing bytes"}},
      {R"({"__metadata__":[1]})", "", {"__metadata__", "object"}},
      {R"({"__metadata__":{"k":1}})", "", {"__metadata__", "'k'", "string"}},
  };
  TempDir dir;
  for (size_t k = 0; k < cases.size(); ++k) {
    const fs::path p = dir / ("case" + std::to_string(k) + ".safetensors");
    spit(p, file_bytes(cases[k].header, cases[k].data));
    SCOPED_TRACE(cases[k].header);
    expect_input_error(p, cases[k].parts);
  }
}

// What the spec leaves no room for and the reader once let through (issue 17): bytes hidden
// behind a NUL, a byte-order mark, padding other than spaces, keys that repeat (the parser kept the
// last), unknown entry fields, and numbers beyond a double (once an internal error).
TEST(Safetensors, RejectsWhatTheSpecDoesNotAllow) {
  struct Case {
    std::string header;
    std::string data;
    std::vector<std::string> parts;
  };
  const std::string w = R"("w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]})";
  const std::string four(4, '\0');
  const std::vector<Case> cases = {
      {"{" + w + "}" + std::string("\0garbage", 8), four, {"NUL byte at offset 54"}},
      {"{" + w + std::string("}\0\0\0", 4), four, {"NUL byte"}},
      {"\xef\xbb\xbf{" + w + "}", four, {"byte-order mark"}},
      {" {" + w + "}", four, {"must start with '{'"}},
      {"{" + w + "}\n", four, {"byte 0x0a", "only spaces"}},
      {"{" + w + "," + w + "}", four, {"key 'w' appears twice"}},
      {R"({"w":{"dtype":"F32","dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
       four,
       {"key 'dtype' appears twice"}},
      {R"({"__metadata__":{"a":"1","a":"2"}})", "", {"key 'a' appears twice"}},
      {R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"grad":true}})",
       four,
       {"tensor 'w'", "unknown field 'grad'"}},
      {R"({"w":{"dtype":"F32","shape":[1e999],"data_offsets":[0,4]}})",
       four,
       {"key 'shape'", "overflow"}},
      {R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,-1e400]}})",
       four,
       {"key 'data_offsets'", "overflow"}},
  };
  TempDir dir;
  for (size_t k = 0; k < cases.size(); ++k) {
    const fs::path p = dir / ("case" + std::to_string(k) + ".safetensors");
    spit(p, file_bytes(cases[k].header, cases[k].data));
    SCOPED_TRACE(k);
    expect_input_error(p, cases[k].parts);
  }
  // Spaces after the JSON are the padding writers use, and stay accepted.
  spit(dir / "padded.safetensors", file_bytes("{" + w + "}   ", four));
  EXPECT_EQ(read_safetensors(dir / "padded.safetensors").tensors.size(), 1u);
}

TEST(Safetensors, NamesTheMismatchedTensorSize) {
  TempDir dir;
  const std::string header =
      R"({"rnn.weight_hh_l0":{"dtype":"F32","shape":[8,2],"data_offsets":[0,100]}})";
  spit(dir / "model.safetensors", file_bytes(header, std::string(100, '\0')));
  try {
    read_safetensors(dir / "model.safetensors");
    ADD_FAILURE() << "accepted a size mismatch";
  } catch (const InputError& e) {
    EXPECT_EQ(std::string(e.what()),
              (dir / "model.safetensors").string() +
                  ": tensor 'rnn.weight_hh_l0': data_offsets [0, 100] do not match dtype F32 x "
                  "shape [8, 2] (64 bytes)");
  }
}

TEST(Safetensors, OverwritesExistingFileWithoutLeavingTemp) {
  TempDir dir;
  spit(dir / "out.safetensors", "old content that is not safetensors");
  write_safetensors(dir / "out.safetensors", sample_file());
  EXPECT_EQ(read_safetensors(dir / "out.safetensors").tensors.size(), sample_file().tensors.size());
  EXPECT_EQ(dir.entries(), (std::vector<std::string>{"out.safetensors"}));
}

TEST(Safetensors, FailedWriteThrowsAndLeavesNothing) {
  TempDir dir;
  EXPECT_THROW(write_safetensors(dir / "no_such_dir" / "x.safetensors", sample_file()), InputError);
  EXPECT_FALSE(fs::exists(dir / "no_such_dir"));
  // Renaming over a folder fails after the data is written: the temp file must go too.
  fs::create_directory(dir / "taken.safetensors");
  try {
    write_safetensors(dir / "taken.safetensors", sample_file());
    ADD_FAILURE() << "wrote over a folder";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("taken.safetensors"), std::string::npos) << e.what();
  }
  EXPECT_EQ(dir.entries(), (std::vector<std::string>{"taken.safetensors"}));
  EXPECT_TRUE(fs::is_empty(dir / "taken.safetensors"));
}

TEST(AtomicFile, WritesTextAndCleansUpUncommittedFiles) {
  TempDir dir;
  write_text_atomic(dir / "a.txt", "first\n");
  write_text_atomic(dir / "a.txt", "second\n");
  EXPECT_EQ(slurp(dir / "a.txt"), "second\n");
  {
    AtomicFile f(dir / "b.txt");
    f.write(std::string_view("partial"));
    EXPECT_TRUE(fs::exists(f.temp_path()));
    EXPECT_EQ(f.temp_path().parent_path(), dir.path());
    EXPECT_EQ(f.temp_path().filename().string().rfind(".b.txt.tmp.", 0), 0u);
  }  // destroyed without commit
  EXPECT_EQ(dir.entries(), (std::vector<std::string>{"a.txt"}));
  {
    AtomicFile f(dir / "a.txt");
    f.write(std::string_view("third"));
    f.commit();
    EXPECT_THROW(f.write(std::string_view("more")), InputError);
  }
  EXPECT_EQ(slurp(dir / "a.txt"), "third");
  EXPECT_EQ(dir.entries(), (std::vector<std::string>{"a.txt"}));
}
