// `lstmgrad exercise --values FILE.json`: the quantities of Exercise 2 under other numbers.
#include <fmt/format.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "lstmgrad/error.hpp"
#include "lstmgrad/exercise.hpp"

namespace lstmgrad {

namespace {

using nlohmann::json;

double number_at(const json& j, const std::string& file, const std::string& key) {
  const json& v = j.at(key);
  if (!v.is_number())
    throw InputError(fmt::format("{}: key '{}': expected a number, got {}", file, key, v.dump()));
  const double d = v.get<double>();
  if (!std::isfinite(d))
    throw InputError(fmt::format("{}: key '{}': expected a finite number", file, key));
  return d;
}

std::vector<double> vector_at(const json& j, const std::string& file, const std::string& key) {
  const json& v = j.at(key);
  if (!v.is_array() || v.empty())
    throw InputError(fmt::format("{}: key '{}': expected a non-empty list of numbers, got {}", file,
                                 key, v.dump()));
  std::vector<double> out;
  for (size_t k = 0; k < v.size(); ++k) {
    if (!v[k].is_number() || !std::isfinite(v[k].get<double>()))
      throw InputError(fmt::format("{}: key '{}': entry {} is not a finite number ({})", file, key,
                                   k, v[k].dump()));
    out.push_back(v[k].get<double>());
  }
  return out;
}

void expect_same_length(const std::string& file, const HandoutValues& v) {
  if (v.Va1.size() != v.x.size())
    throw InputError(fmt::format("{}: key 'Va1': has {} entries but 'x' has {}; they must agree",
                                 file, v.Va1.size(), v.x.size()));
  if (v.Ua1.size() != v.h0.size())
    throw InputError(fmt::format("{}: key 'Ua1': has {} entries but 'h0' has {}; they must agree",
                                 file, v.Ua1.size(), v.h0.size()));
}

// The key whose value starts near byte `pos`: the last "name": before it.
std::string key_before(const std::string& text, size_t pos) {
  const size_t colon = text.rfind(':', std::min(pos, text.size()));
  if (colon == std::string::npos) return "";
  const size_t close = text.rfind('"', colon);
  if (close == std::string::npos || close == 0) return "";
  const size_t open = text.rfind('"', close - 1);
  return open == std::string::npos ? "" : text.substr(open + 1, close - open - 1);
}

json parse_file(const std::filesystem::path& path) {
  const std::string file = path.string();
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(fmt::format("{}: cannot open the file", file));
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::string last_key;  // to name the key of a number that overflows a double
  const json::parser_callback_t remember_key = [&](int, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::key) last_key = parsed.get<std::string>();
    return true;
  };
  try {
    json j = json::parse(text, remember_key, true, /*ignore_comments=*/true);
    if (!j.is_object()) throw InputError(fmt::format("{}: expected a JSON object", file));
    return j;
  } catch (const json::out_of_range&) {  // 1e999: nlohmann refuses what a double cannot hold
    throw InputError(
        fmt::format("{}: key '{}': a number beyond the range of a double", file, last_key));
  } catch (const json::parse_error& e) {
    // JSON has no NaN or Infinity; Python's json module writes them anyway.
    const size_t at = e.byte > 0 ? e.byte - 1 : 0;
    const size_t word = text.find_first_not_of(" \t\r\n:", text.rfind(':', at) + 1);
    const std::string tail = word < text.size() ? text.substr(word, 9) : "";
    if (tail.rfind("NaN", 0) == 0 || tail.rfind("Infinity", 0) == 0 ||
        tail.rfind("-Infinity", 0) == 0)
      throw InputError(fmt::format("{}: key '{}': expected a finite number, got {}", file,
                                   key_before(text, word),
                                   tail.substr(0, tail.find_first_of(",}] \n"))));
    throw InputError(fmt::format("{}: malformed JSON at byte {}", file, e.byte));
  }
}

}  // namespace

HandoutValues read_handout_values(const std::filesystem::path& path) {
  const std::string file = path.string();
  const json j = parse_file(path);
  HandoutValues v;
  const std::set<std::string> scalars{"p1", "y1", "o1",           "i1",          "f1",
                                      "s0", "b1", "hint_tanh2_q", "hint_tanh2_s"};
  const std::set<std::string> vectors{"Va1", "Ua1", "x", "h0"};
  for (const auto& [key, value] : j.items()) {
    if (!scalars.count(key) && !vectors.count(key))
      throw InputError(
          fmt::format("{}: unknown key '{}' (known: p1 y1 o1 i1 f1 s0 b1 Va1 Ua1 x h0 hint_tanh2_q "
                      "hint_tanh2_s)",
                      file, key));
  }
  for (const char* key : {"p1", "y1", "o1", "i1", "s0", "b1", "Va1", "Ua1", "x", "h0"})
    if (!j.contains(key))
      throw InputError(
          fmt::format("{}: missing key '{}' (required: p1 y1 o1 i1 s0 b1 Va1 Ua1 "
                      "x h0; optional: f1 hint_tanh2_q hint_tanh2_s)",
                      file, key));
  auto scalar = [&](const char* key, double& dst) {
    if (j.contains(key)) dst = number_at(j, file, key);
  };
  scalar("p1", v.p1), scalar("y1", v.y1), scalar("o1", v.o1), scalar("i1", v.i1);
  scalar("f1", v.f1), scalar("s0", v.s0), scalar("b1", v.b1);
  auto vec = [&](const char* key, std::vector<double>& dst) { dst = vector_at(j, file, key); };
  vec("Va1", v.Va1), vec("Ua1", v.Ua1), vec("x", v.x), vec("h0", v.h0);
  expect_same_length(file, v);
  // Hints default to tanh^2 rounded to 4 decimals unless the file gives them.
  v.hint_tanh2_q.reset();
  v.hint_tanh2_s.reset();
  if (j.contains("hint_tanh2_q")) v.hint_tanh2_q = number_at(j, file, "hint_tanh2_q");
  if (j.contains("hint_tanh2_s")) v.hint_tanh2_s = number_at(j, file, "hint_tanh2_s");
  return v;
}

}  // namespace lstmgrad
