#include "io/json_text.hpp"

#include <fmt/format.h>

#include <functional>
#include <set>
#include <vector>

#include "data/scan.hpp"
#include "lstmgrad/error.hpp"

namespace lstmgrad::io {

namespace {

using nlohmann::json;

// Refuses a key that repeats within one object, and remembers the last key seen, to name it when
// a value cannot be read.
class KeyChecker {
 public:
  explicit KeyChecker(const std::string& where) : where_(where) {}

  bool operator()(int /*depth*/, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::object_start) {
      keys_.emplace_back();
    } else if (event == json::parse_event_t::object_end) {
      keys_.pop_back();
    } else if (event == json::parse_event_t::key) {
      last_key_ = parsed.get<std::string>();
      if (!keys_.back().insert(last_key_).second)
        throw InputError(fmt::format("{}: key '{}' appears twice", where_, printable_key()));
    }
    return true;
  }
  std::string printable_key() const { return data::scan::printable(last_key_); }

 private:
  const std::string& where_;
  std::vector<std::set<std::string>> keys_;
  std::string last_key_;
};

}  // namespace

std::string json_message(const json::exception& e) {
  std::string what = e.what();
  const size_t cut = what.find("] ");
  return cut == std::string::npos ? what : what.substr(cut + 2);
}

json parse_json(const std::string& text, const std::string& where) {
  KeyChecker keys(where);
  try {
    return json::parse(text, std::ref(keys));
  } catch (const json::parse_error& e) {
    throw InputError(fmt::format("{}: not valid JSON: {}", where, json_message(e)));
  } catch (const json::exception& e) {  // out_of_range: a number beyond a double's range
    throw InputError(fmt::format("{}: key '{}': {}", where, keys.printable_key(), json_message(e)));
  }
}

}  // namespace lstmgrad::io
