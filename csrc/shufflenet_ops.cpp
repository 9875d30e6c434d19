// The operator schemas, defined once. Each backend registers its kernels for
// these names in its own TORCH_LIBRARY_IMPL; csrc/autograd.cpp adds their
// autograd and shufflenet_ops/ops.py their fake (meta) kernels.
#include <Python.h>
#include <torch/library.h>

#include <string>

#include "op_families.h"

// Importing shufflenet_ops._C loads this library and so runs the
// registrations below; the module itself exposes nothing.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}

namespace shufflenet_ops {
namespace {

void define_family(torch::Library& m, const std::string& prefix) {
  const auto def = [&](const std::string& schema) { m.def((prefix + schema).c_str()); };
  def("channel_shuffle(Tensor x, int groups) -> Tensor");
  // A shuffle group count of 1 means "no shuffle". The residual, of the
  // output's shape, is added after the output shuffle and before the ReLU.
  def("pointwise_group_conv(Tensor x, Tensor weight, Tensor? bias, int groups, "
      "int input_shuffle, int output_shuffle, bool relu, Tensor? residual=None) -> Tensor");
  // Backward ops. grad_out is the gradient at the op's (shuffled) output with
  // the ReLU mask, if any, already applied.
  def("pointwise_group_conv_grad_input(Tensor grad_out, Tensor weight, int groups, "
      "int input_shuffle, int output_shuffle) -> Tensor");
  def("pointwise_group_conv_grad_weight(Tensor grad_out, Tensor x, int groups, "
      "int input_shuffle, int output_shuffle) -> Tensor");
  def("pointwise_group_conv_grad_bias(Tensor grad_out, int output_shuffle) -> Tensor");
}

}  // namespace
}  // namespace shufflenet_ops

TORCH_LIBRARY(shufflenet_ops, m) {
  shufflenet_ops::define_family(m, shufflenet_ops::NativeFamily::prefix);
  shufflenet_ops::define_family(m, shufflenet_ops::TritonFamily::prefix);
  // Per-channel 3x3 convolution, padding 1, stride 1 or 2; weight [C, 1, 3, 3].
  m.def("depthwise_conv3x3(Tensor x, Tensor weight, Tensor? bias, int stride, bool relu) -> Tensor");
  // Per-channel 3x3 pooling, padding 1, stride 1 or 2: max (padding never wins)
  // or, with `average`, the window sum over 9 (padding counts as zero).
  m.def("pool3x3(Tensor x, int stride, bool average) -> Tensor");
  // The network stem: max_pool3x3(relu(conv3x3(x, weight) + bias)), both with
  // stride 2 and padding 1; weight [C_out, C_in, 3, 3].
  m.def("stem_conv3x3_maxpool(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
}
