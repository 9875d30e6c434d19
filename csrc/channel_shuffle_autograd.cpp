// Autograd of channel_shuffle, registered in C++ for every device the native
// kernels run on. Its backward is a single shuffle, and on activation-sized
// tensors a Python autograd kernel would cost more than the copy itself; the
// other ops keep their autograd in shufflenet_ops/ops.py.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace shufflenet_ops {
namespace {

at::Tensor call_channel_shuffle(const at::Tensor& x, int64_t groups) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("shufflenet_ops::channel_shuffle", "")
                             .typed<at::Tensor(const at::Tensor&, int64_t)>();
  return op.call(x, groups);
}

class ChannelShuffle : public torch::autograd::Function<ChannelShuffle> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            int64_t groups) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->saved_data["groups"] = groups;
    return call_channel_shuffle(x, groups);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const at::Tensor& grad = grads[0];
    // The inverse of a shuffle with g groups is the shuffle with C / g groups.
    // Dispatched from the top, so the backward is itself differentiable.
    return {call_channel_shuffle(grad, grad.size(1) / ctx->saved_data["groups"].toInt()),
            at::Tensor()};
  }
};

at::Tensor channel_shuffle_autograd(const at::Tensor& x, int64_t groups) {
  if (!(at::GradMode::is_enabled() && x.requires_grad())) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return call_channel_shuffle(x, groups);
  }
  return ChannelShuffle::apply(x, groups);
}

}  // namespace

TORCH_LIBRARY_IMPL(shufflenet_ops, Autograd, m) {
  m.impl("channel_shuffle", &channel_shuffle_autograd);
}

}  // namespace shufflenet_ops
