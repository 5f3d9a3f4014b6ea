// lstmgrad: errors raised at the boundary (files, flags, user values).
#pragma once
#include <stdexcept>
#include <string>

namespace lstmgrad {

// Bad input from a user: a file, a field, a flag. The command-line front end prints what() on
// one line and exits with code 2. Messages name the file and the field ("model.safetensors:
// rnn.weight_hh_l0: expected shape [8, 2], got [8, 3]").
class InputError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace lstmgrad
