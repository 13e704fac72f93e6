// Fused dot-product attention for XLA's CPU backend, called from JAX through the FFI
// (bigvis/kernels/cpu_attention.py builds and registers it).
//
// Why: XLA's CPU dots on attention's many small per-head matrices ran at ~40 GFLOP/s against
// ~110 for the model's big matmuls, and folding heads into the batch cost a transpose of q, k, v
// and the output per layer (bench/results/train_step.md). Here every (image, head) pair is one
// task: its scores, softmax and products stay in cache, the small matmuls go to OpenBLAS, one
// thread per task, and the [batch, tokens, heads, dim] layout is read with strides, so nothing is
// transposed. The backward pass recomputes the probabilities from the saved log-sum-exp instead
// of keeping a [tokens, tokens] matrix per head (as flash attention does).
//
// Shapes: q [B, N, H, D], k and v [B, M, H, D], o [B, N, H, D], lse [B, H, N]; float32 only.
// Each task writes only its own (b, h) slices, so results do not depend on thread scheduling.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "cblas.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

struct Shape {
  int64_t B, N, M, H, D;
  int64_t ld() const { return H * D; }  // row stride of q, k, v, o and their gradients
};

// Runs task(i) for every i in [0, n) on the calling thread and XLA's intra-op pool, and returns
// once all have run. Helpers that start late find no work left; they only touch `state`, which
// they co-own, so the caller never waits for a helper that has not started.
void ParallelFor(ffi::ThreadPool& pool, int64_t n, std::function<void(int64_t)> task) {
  struct State {
    std::atomic<int64_t> next{0}, done{0};
    int64_t n;
    std::function<void(int64_t)> task;
    std::mutex mu;
    std::condition_variable cv;
  };
  auto state = std::make_shared<State>();
  state->n = n;
  state->task = std::move(task);
  auto work = [state] {
    for (int64_t i; (i = state->next.fetch_add(1)) < state->n;) {
      state->task(i);
      if (state->done.fetch_add(1) + 1 == state->n) {
        std::lock_guard<std::mutex> lock(state->mu);
        state->cv.notify_all();
      }
    }
  };
  int64_t helpers = std::min<int64_t>(pool.num_threads(), n - 1);
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule(decltype(work)(work));
  work();
  std::unique_lock<std::mutex> lock(state->mu);
  state->cv.wait(lock, [&] { return state->done.load() == n; });
}

// Per-thread scratch for one [N, M] matrix (two in the backward pass); reused across calls.
float* Scratch(int which, int64_t size) {
  thread_local std::vector<float> buffers[2];
  if (static_cast<int64_t>(buffers[which].size()) < size) buffers[which].resize(size);
  return buffers[which].data();
}

// s = scale * q k^T for one (b, h): [N, M].
void Scores(const Shape& s, const float* q, const float* k, float scale, float* out) {
  scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, s.N, s.M, s.D, scale, q, s.ld(),
                    k, s.ld(), 0.f, out, s.M);
}

Shape ShapeOf(ffi::Buffer<ffi::F32>& q, ffi::Buffer<ffi::F32>& k) {
  auto qd = q.dimensions(), kd = k.dimensions();
  return Shape{qd[0], qd[1], kd[1], qd[2], qd[3]};
}

ffi::Error CheckShapes(ffi::Buffer<ffi::F32>& q, ffi::Buffer<ffi::F32>& k,
                       ffi::Buffer<ffi::F32>& v) {
  auto qd = q.dimensions(), kd = k.dimensions(), vd = v.dimensions();
  if (qd.size() != 4 || kd.size() != 4 || vd.size() != 4)
    return ffi::Error::InvalidArgument("bigvis attention: q, k, v must be [batch, tokens, heads, dim]");
  if (kd[0] != qd[0] || kd[2] != qd[2] || kd[3] != qd[3] ||
      vd[0] != kd[0] || vd[1] != kd[1] || vd[2] != kd[2] || vd[3] != kd[3])
    return ffi::Error::InvalidArgument("bigvis attention: q, k, v shapes disagree");
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                   ffi::Buffer<ffi::F32> v, float scale, ffi::ResultBuffer<ffi::F32> o,
                   ffi::ResultBuffer<ffi::F32> lse) {
  if (auto err = CheckShapes(q, k, v); err.failure()) return err;
  const Shape s = ShapeOf(q, k);
  const float *Q = q.typed_data(), *K = k.typed_data(), *V = v.typed_data();
  float *O = o->typed_data(), *L = lse->typed_data();
  ParallelFor(pool, s.B * s.H, [=](int64_t task) {
    const int64_t b = task / s.H, h = task % s.H;
    const int64_t qo = (b * s.N * s.H + h) * s.D, ko = (b * s.M * s.H + h) * s.D;
    float* p = Scratch(0, s.N * s.M);
    Scores(s, Q + qo, K + ko, scale, p);
    for (int64_t i = 0; i < s.N; ++i) {  // softmax in place; keep log(sum(exp(s))) per row
      float* row = p + i * s.M;
      const float mx = *std::max_element(row, row + s.M);
      float sum = 0.f;
      for (int64_t j = 0; j < s.M; ++j) sum += (row[j] = std::exp(row[j] - mx));
      const float inv = 1.f / sum;
      for (int64_t j = 0; j < s.M; ++j) row[j] *= inv;
      L[task * s.N + i] = mx + std::log(sum);
    }
    scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, s.N, s.D, s.M, 1.f, p, s.M,
                      V + ko, s.ld(), 0.f, O + qo, s.ld());
  });
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                    ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::F32> o, ffi::Buffer<ffi::F32> lse,
                    ffi::Buffer<ffi::F32> dout, float scale, ffi::ResultBuffer<ffi::F32> dq,
                    ffi::ResultBuffer<ffi::F32> dk, ffi::ResultBuffer<ffi::F32> dv) {
  if (auto err = CheckShapes(q, k, v); err.failure()) return err;
  const Shape s = ShapeOf(q, k);
  const float *Q = q.typed_data(), *K = k.typed_data(), *V = v.typed_data();
  const float *O = o.typed_data(), *L = lse.typed_data(), *dO = dout.typed_data();
  float *dQ = dq->typed_data(), *dK = dk->typed_data(), *dV = dv->typed_data();
  ParallelFor(pool, s.B * s.H, [=](int64_t task) {
    const int64_t b = task / s.H, h = task % s.H;
    const int64_t qo = (b * s.N * s.H + h) * s.D, ko = (b * s.M * s.H + h) * s.D;
    const int64_t ld = s.ld();
    float *p = Scratch(0, s.N * s.M), *ds = Scratch(1, s.N * s.M);
    Scores(s, Q + qo, K + ko, scale, p);
    // ds = dO v^T for now; below it becomes p * (dO v^T - rowsum(dO * o)).
    scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, s.N, s.M, s.D, 1.f, dO + qo, ld,
                      V + ko, ld, 0.f, ds, s.M);
    for (int64_t i = 0; i < s.N; ++i) {
      const float* go = dO + qo + i * ld;
      const float* out = O + qo + i * ld;
      float delta = 0.f;
      for (int64_t d = 0; d < s.D; ++d) delta += go[d] * out[d];
      const float l = L[task * s.N + i];
      float *prow = p + i * s.M, *drow = ds + i * s.M;
      for (int64_t j = 0; j < s.M; ++j) {
        prow[j] = std::exp(prow[j] - l);
        drow[j] = prow[j] * (drow[j] - delta);
      }
    }
    scipy_cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, s.M, s.D, s.N, 1.f, p, s.M,
                      dO + qo, ld, 0.f, dV + ko, ld);
    scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, s.N, s.D, s.M, scale, ds, s.M,
                      K + ko, ld, 0.f, dQ + qo, ld);
    scipy_cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, s.M, s.D, s.N, scale, ds, s.M,
                      Q + qo, ld, 0.f, dK + ko, ld);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(BigvisAttentionForward, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("scale")
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(BigvisAttentionBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("scale")
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

// OpenBLAS must not start threads of its own inside our per-task calls.
extern "C" void BigvisAttentionInit() { scipy_openblas_set_num_threads(1); }
