// JSON text from a file (a safetensors header, its metadata, a checkpoint's run state and
// options), parsed strictly and with errors that name the place.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

namespace lstmgrad::io {

// Parses `text`; InputError, one line, starting with `where` ("model.safetensors: header"):
// "not valid JSON: ..." for a syntax error; "key 'k' appears twice" for a key repeated within an
// object (nlohmann keeps the last one silently); "key 'k': number overflow parsing '1e999'" for a
// number beyond a double (nlohmann's out_of_range, which once surfaced as an internal error).
nlohmann::json parse_json(const std::string& text, const std::string& where);

// nlohmann's message without its "[json.exception.parse_error.101] " prefix.
std::string json_message(const nlohmann::json::exception& e);

}  // namespace lstmgrad::io
