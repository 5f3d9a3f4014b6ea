// lstmgrad._core's language-model functions (models.cpp), registered by the module (core.cpp).
#pragma once
#include <pybind11/pybind11.h>

namespace lstmgrad::python {

void bind_models(pybind11::module_& m);

}  // namespace lstmgrad::python
