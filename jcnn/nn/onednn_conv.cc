// 2-d convolution on CPU through oneDNN, as three XLA FFI custom calls (jcnn/nn/onednn.py builds and registers them).
//
//   jcnn_onednn_conv_fwd        x [N, H, W, C], w [kh, kw, C/g, O] (HWIO, lax's grouped layout)  -> y [N, Ho, Wo, O]
//   jcnn_onednn_conv_bwd_data   dy [N, Ho, Wo, O], w                                              -> dx [N, H, W, C]
//   jcnn_onednn_conv_bwd_weights x, dy                                                            -> dw [kh, kw, C/g, O]
//
// Attributes (int64 arrays of 2): strides, pad_lo, pad_hi, dilation (lax's: 1 = dense); groups (int64).
// Activations stay NHWC (oneDNN is told their strides); weights are reordered to (and gradients from) the layout the
// primitive asks for. Primitives and their reorders are cached per shape; the reordered weights and the scratchpad
// live in the calling thread's buffers.
#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dims = dnnl::memory::dims;
using dt = dnnl::memory::data_type;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

struct Geometry {
  int64_t n, h, w, c, kh, kw, o, ho, wo, g;
  dims strides, pad_lo, pad_hi, dilation;  // dilation in oneDNN's convention: 0 = dense

  std::string Key(const char* op) const {
    std::string k(op);
    for (int64_t v : {n, h, w, c, kh, kw, o, ho, wo, g}) k += "," + std::to_string(v);
    for (const dims* d : {&strides, &pad_lo, &pad_hi, &dilation})
      for (auto v : *d) k += ";" + std::to_string(v);
    return k;
  }
  // NHWC activations: logical dims {N, C, H, W}.
  dnnl::memory::desc Src() const { return {{n, c, h, w}, dt::f32, dims{h * w * c, 1, w * c, c}}; }
  dnnl::memory::desc Dst() const { return {{n, o, ho, wo}, dt::f32, dims{ho * wo * o, 1, wo * o, o}}; }
  // HWIO weights with O = g * (O / g), group-major: logical {O, I, kh, kw} or {g, O/g, I/g, kh, kw}.
  dnnl::memory::desc UserWeights() const {
    int64_t ig = c / g, og = o / g;
    if (g == 1) return {{o, ig, kh, kw}, dt::f32, dims{1, o, kw * ig * o, ig * o}};
    return {{g, og, ig, kh, kw}, dt::f32, dims{og, 1, o, kw * ig * o, ig * o}};
  }
  dnnl::memory::desc AnyWeights() const {
    int64_t ig = c / g, og = o / g;
    if (g == 1) return {{o, ig, kh, kw}, dt::f32, dnnl::memory::format_tag::any};
    return {{g, og, ig, kh, kw}, dt::f32, dnnl::memory::format_tag::any};
  }
  dnnl::convolution_forward::primitive_desc ForwardHint() const {
    return {Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, Src(), AnyWeights(),
            Dst(), strides, dilation, pad_lo, pad_hi};
  }
};

ffi::Error ReadGeometry(ffi::AnyBuffer::Dimensions xd, ffi::AnyBuffer::Dimensions wd, ffi::AnyBuffer::Dimensions yd,
                        ffi::Span<const int64_t> strides, ffi::Span<const int64_t> pad_lo,
                        ffi::Span<const int64_t> pad_hi, ffi::Span<const int64_t> dilation, int64_t groups,
                        Geometry* g) {
  if (xd.size() != 4 || wd.size() != 4 || yd.size() != 4 || strides.size() != 2 || pad_lo.size() != 2 ||
      pad_hi.size() != 2 || dilation.size() != 2 || groups < 1)
    return ffi::Error::InvalidArgument("jcnn_onednn_conv: expected NHWC / HWIO rank-4 arrays and 2-d attributes");
  *g = Geometry{xd[0], xd[1], xd[2], xd[3], wd[0], wd[1], wd[3], yd[1], yd[2], groups,
                dims{strides[0], strides[1]}, dims{pad_lo[0], pad_lo[1]}, dims{pad_hi[0], pad_hi[1]},
                dims{dilation[0] - 1, dilation[1] - 1}};
  if (g->c % groups || g->o % groups || wd[2] != g->c / groups)
    return ffi::Error::InvalidArgument("jcnn_onednn_conv: channels do not divide into the groups");
  return ffi::Error::Success();
}

// One cached primitive with the weight layout it wants and the reorder between that and the user's HWIO.
struct Plan {
  dnnl::primitive prim;
  dnnl::memory::desc weights;        // the primitive's weight layout
  bool reorder;                      // weights differ from HWIO
  dnnl::reorder to_prim, to_user;    // HWIO -> primitive (fwd, bwd data); primitive -> HWIO (bwd weights)
  dnnl::memory::desc scratch;        // the primitive's own scratchpad (user-managed, so concurrent calls are safe)
};

std::mutex cache_mutex;
std::unordered_map<std::string, std::shared_ptr<Plan>> cache;

template <typename Make>
std::shared_ptr<Plan> Cached(const std::string& key, Make make) {
  std::lock_guard<std::mutex> lock(cache_mutex);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  auto plan = std::make_shared<Plan>(make());
  cache.emplace(key, plan);
  return plan;
}

dnnl::primitive_attr Attr() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

template <typename PD>
Plan MakePlan(const PD& pd, const Geometry& g, bool from_prim) {
  Plan p;
  p.prim = dnnl::primitive(pd);
  p.weights = from_prim ? pd.diff_weights_desc() : pd.weights_desc();
  p.scratch = pd.scratchpad_desc();
  p.reorder = p.weights != g.UserWeights();
  if (p.reorder) {
    if (from_prim)
      p.to_user = dnnl::reorder(dnnl::reorder::primitive_desc(Engine(), p.weights, Engine(), g.UserWeights()));
    else
      p.to_prim = dnnl::reorder(dnnl::reorder::primitive_desc(Engine(), g.UserWeights(), Engine(), p.weights));
  }
  return p;
}

// The reordered weights of one call live in a thread-local buffer, as does the scratchpad.
float* Scratch(int slot, size_t bytes) {
  thread_local std::array<std::unique_ptr<char[]>, 2> buffers;
  thread_local std::array<size_t, 2> sizes{0, 0};
  if (sizes[slot] < bytes) {
    buffers[slot].reset(new char[bytes + 64]);
    sizes[slot] = bytes;
  }
  return reinterpret_cast<float*>(buffers[slot].get());
}

template <typename F>
ffi::Error Guarded(F f) {
  try {
    f();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("jcnn_onednn_conv: oneDNN: ") + e.what());
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string("jcnn_onednn_conv: ") + e.what());
  }
  return ffi::Error::Success();
}

// Runs a plan with the weights argument bound to `w` (the user's HWIO buffer), reordered in (`out` false) or out
// (`out` true: a gradient the primitive writes) where the primitive wants another layout; the scratchpad and the
// reordered weights live in the calling thread's buffers.
void Run(const Plan& plan, const Geometry& g, int weights_arg, float* w, bool out,
         std::unordered_map<int, dnnl::memory> args) {
  thread_local dnnl::stream s(Engine());
  dnnl::memory user_w(g.UserWeights(), Engine(), w);
  dnnl::memory prim_w =
      plan.reorder ? dnnl::memory(plan.weights, Engine(), Scratch(0, plan.weights.get_size())) : user_w;
  if (plan.reorder && !out) plan.to_prim.execute(s, user_w, prim_w);
  args[weights_arg] = prim_w;
  args[DNNL_ARG_SCRATCHPAD] = dnnl::memory(plan.scratch, Engine(), Scratch(1, plan.scratch.get_size()));
  plan.prim.execute(s, args);
  if (plan.reorder && out) plan.to_user.execute(s, prim_w, user_w);
  s.wait();
}

ffi::Error ConvFwd(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> y,
                   ffi::Span<const int64_t> strides, ffi::Span<const int64_t> pad_lo, ffi::Span<const int64_t> pad_hi,
                   ffi::Span<const int64_t> dilation, int64_t groups) {
  Geometry g;
  if (auto e = ReadGeometry(x.dimensions(), w.dimensions(), y->dimensions(), strides, pad_lo, pad_hi, dilation, groups,
                            &g);
      e.failure())
    return e;
  return Guarded([&] {
    auto plan = Cached(g.Key("fwd"), [&] {
      dnnl::convolution_forward::primitive_desc pd(Engine(), dnnl::prop_kind::forward_training,
                                                   dnnl::algorithm::convolution_direct, g.Src(), g.AnyWeights(),
                                                   g.Dst(), g.strides, g.dilation, g.pad_lo, g.pad_hi, Attr());
      return MakePlan(pd, g, false);
    });
    Run(*plan, g, DNNL_ARG_WEIGHTS, w.typed_data(), false,
        {{DNNL_ARG_SRC, dnnl::memory(g.Src(), Engine(), x.typed_data())},
         {DNNL_ARG_DST, dnnl::memory(g.Dst(), Engine(), y->typed_data())}});
  });
}

ffi::Error ConvBwdData(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> dx,
                       ffi::Span<const int64_t> strides, ffi::Span<const int64_t> pad_lo,
                       ffi::Span<const int64_t> pad_hi, ffi::Span<const int64_t> dilation, int64_t groups) {
  Geometry g;
  if (auto e = ReadGeometry(dx->dimensions(), w.dimensions(), dy.dimensions(), strides, pad_lo, pad_hi, dilation,
                            groups, &g);
      e.failure())
    return e;
  return Guarded([&] {
    auto plan = Cached(g.Key("bwd_data"), [&] {
      dnnl::convolution_backward_data::primitive_desc pd(Engine(), dnnl::algorithm::convolution_direct, g.Src(),
                                                         g.AnyWeights(), g.Dst(), g.strides, g.dilation, g.pad_lo,
                                                         g.pad_hi, g.ForwardHint(), Attr());
      return MakePlan(pd, g, false);
    });
    Run(*plan, g, DNNL_ARG_WEIGHTS, w.typed_data(), false,
        {{DNNL_ARG_DIFF_DST, dnnl::memory(g.Dst(), Engine(), dy.typed_data())},
         {DNNL_ARG_DIFF_SRC, dnnl::memory(g.Src(), Engine(), dx->typed_data())}});
  });
}

ffi::Error ConvBwdWeights(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dw,
                          ffi::Span<const int64_t> strides, ffi::Span<const int64_t> pad_lo,
                          ffi::Span<const int64_t> pad_hi, ffi::Span<const int64_t> dilation, int64_t groups) {
  Geometry g;
  if (auto e = ReadGeometry(x.dimensions(), dw->dimensions(), dy.dimensions(), strides, pad_lo, pad_hi, dilation,
                            groups, &g);
      e.failure())
    return e;
  return Guarded([&] {
    auto plan = Cached(g.Key("bwd_weights"), [&] {
      dnnl::convolution_backward_weights::primitive_desc pd(Engine(), dnnl::algorithm::convolution_direct, g.Src(),
                                                            g.AnyWeights(), g.Dst(), g.strides, g.dilation, g.pad_lo,
                                                            g.pad_hi, g.ForwardHint(), Attr());
      return MakePlan(pd, g, true);
    });
    Run(*plan, g, DNNL_ARG_DIFF_WEIGHTS, dw->typed_data(), true,
        {{DNNL_ARG_SRC, dnnl::memory(g.Src(), Engine(), x.typed_data())},
         {DNNL_ARG_DIFF_DST, dnnl::memory(g.Dst(), Engine(), dy.typed_data())}});
  });
}

}  // namespace

#define JCNN_CONV_ATTRS                               \
  .Attr<ffi::Span<const int64_t>>("strides")          \
      .Attr<ffi::Span<const int64_t>>("pad_lo")       \
      .Attr<ffi::Span<const int64_t>>("pad_hi")       \
      .Attr<ffi::Span<const int64_t>>("dilation")     \
      .Attr<int64_t>("groups")

XLA_FFI_DEFINE_HANDLER_SYMBOL(JcnnOnednnConvFwd, ConvFwd,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() JCNN_CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(JcnnOnednnConvBwdData, ConvBwdData,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() JCNN_CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(JcnnOnednnConvBwdWeights, ConvBwdWeights,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() JCNN_CONV_ATTRS);
