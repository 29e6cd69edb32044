// plsc's CPU training kernels (float32, contiguous), compiled on first use by cpu_kernels.py.
//
// Paddle 3.3's CPU GELU and softmax run as several Eigen passes, partly single-threaded: on a
// 2-core AMD EPYC, GELU forward + backward of [32, 197, 768] takes ~16 ms and softmax of the
// ViT-Ti scores [32, 3, 197, 197] ~8 ms, where one fused, vectorised pass over each takes a
// fraction of that. Built with -ffast-math so GCC calls glibc's vectorised erff/expf (libmvec);
// nothing here relies on IEEE corner cases beyond finite inputs (a NaN or inf input still
// gives a non-finite output, which is what the loss scaler and the skip check look for).
#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include <unistd.h>

#include "paddle/extension.h"

namespace {

constexpr float kSqrtHalf = 0.70710678118654752f;     // 1 / sqrt(2)
constexpr float kInvSqrt2Pi = 0.39894228040143268f;   // 1 / sqrt(2 pi)

void check(const paddle::Tensor& t, const char* what) {
  PD_CHECK(t.is_cpu(), what, " must be a CPU tensor");
  PD_CHECK(t.dtype() == paddle::DataType::FLOAT32, what, " must be float32");
}

int64_t last_dim(const paddle::Tensor& t) { return t.shape().back(); }

// Worker threads (OMP_NUM_THREADS - 1 of them, read at each call as Paddle's own CPU kernels
// do; tools set it) that sleep on a condition variable between calls. Not OpenMP: libgomp's
// workers keep spinning after a parallel region and take the cores from the MKL threads of the
// next matmul (measured: the ViT-Ti step 11% slower than without these kernels, unless
// GOMP_SPINCOUNT=0 was set before Paddle loaded libgomp). Not a thread per call either: at
// ViT-Ti sizes (1-3 ms per kernel) starting threads ate most of the gain.
class Pool {
 public:
  static Pool& get() {
    static Pool* pool = new Pool();  // never destroyed: the sleeping workers end with the process
    return *pool;
  }

  // The threads a call may use now, starting workers as needed; 1 in a forked child (a data
  // loader worker), which has the memory of the pool but none of its threads.
  int64_t size() {
    if (getpid() != pid_) return 1;
    const char* env = std::getenv("OMP_NUM_THREADS");
    const long v = env ? std::strtol(env, nullptr, 10) : 0;
    const int64_t want = std::min<int64_t>(64, v > 0 ? v : 1);
    std::lock_guard<std::mutex> lock(mu_);
    while (workers_ + 1 < want) {
      const int64_t id = ++workers_;
      const uint64_t seen = generation_;  // a new worker waits for the next job
      std::thread([this, id, seen] { loop(id, seen); }).detach();
    }
    return want;
  }

  // job(t) for t in [0, threads); the caller runs t = 0. threads <= size().
  void run(int64_t threads, const std::function<void(int64_t)>& job) {
    std::lock_guard<std::mutex> one_job_at_a_time(run_mu_);
    std::unique_lock<std::mutex> lock(mu_);
    job_ = &job;
    active_ = threads - 1;
    pending_ = threads - 1;
    ++generation_;
    lock.unlock();
    wake_.notify_all();
    job(0);
    lock.lock();
    done_.wait(lock, [this] { return pending_ == 0; });
    job_ = nullptr;
  }

 private:
  Pool() : pid_(getpid()) {}

  void loop(int64_t id, uint64_t seen) {
    for (;;) {
      std::unique_lock<std::mutex> lock(mu_);
      wake_.wait(lock, [&] { return generation_ != seen; });
      seen = generation_;
      if (id > active_) continue;
      const std::function<void(int64_t)>* job = job_;
      lock.unlock();
      (*job)(id);
      lock.lock();
      if (--pending_ == 0) done_.notify_one();
    }
  }

  pid_t pid_;
  int64_t workers_ = 0, active_ = 0, pending_ = 0;
  uint64_t generation_ = 0;
  const std::function<void(int64_t)>* job_ = nullptr;
  std::mutex mu_, run_mu_;
  std::condition_variable wake_, done_;
};

// fn(t, begin, end) over [0, n) in contiguous chunks, chunk t on thread t; returns the number
// of chunks.
template <typename Fn>
int64_t parallel_chunks(int64_t n, int64_t min_per_thread, Fn fn) {
  Pool& pool = Pool::get();
  const int64_t threads = std::max<int64_t>(1, std::min(pool.size(), n / min_per_thread));
  if (threads == 1) {
    fn(int64_t{0}, int64_t{0}, n);
    return 1;
  }
  const int64_t chunk = (n + threads - 1) / threads;
  pool.run(threads, [&](int64_t t) {
    const int64_t b = std::min(n, t * chunk), e = std::min(n, b + chunk);
    fn(t, b, e);
  });
  return threads;
}

template <typename Fn>
void parallel_for(int64_t n, int64_t min_per_thread, Fn fn) {
  parallel_chunks(n, min_per_thread, [&](int64_t, int64_t b, int64_t e) { fn(b, e); });
}

constexpr int64_t kMinElements = 1 << 16;  // below this a thread costs more than it saves

}  // namespace

// ------------------------------------------------------------------- GELU, erf form

std::vector<paddle::Tensor> GeluForward(const paddle::Tensor& x) {
  check(x, "plsc_gelu input");
  auto out = paddle::empty_like(x);
  const float* xp = x.data<float>();
  float* op = out.data<float>();
  parallel_for(x.numel(), kMinElements, [=](int64_t b, int64_t e) {
#pragma omp simd
    for (int64_t i = b; i < e; ++i) {
      const float v = xp[i];
      op[i] = 0.5f * v * (1.0f + std::erf(v * kSqrtHalf));
    }
  });
  return {out};
}

std::vector<paddle::Tensor> GeluBackward(const paddle::Tensor& x, const paddle::Tensor& dout) {
  check(dout, "plsc_gelu gradient");
  auto dx = paddle::empty_like(x);
  const float* xp = x.data<float>();
  const float* gp = dout.data<float>();
  float* dp = dx.data<float>();
  parallel_for(x.numel(), kMinElements, [=](int64_t b, int64_t e) {
#pragma omp simd
    for (int64_t i = b; i < e; ++i) {
      const float v = xp[i];
      const float cdf = 0.5f * (1.0f + std::erf(v * kSqrtHalf));
      const float pdf = kInvSqrt2Pi * std::exp(-0.5f * v * v);
      dp[i] = gp[i] * (cdf + v * pdf);
    }
  });
  return {dx};
}

PD_BUILD_OP(plsc_gelu)
    .Inputs({"X"})
    .Outputs({"Out"})
    .SetKernelFn(PD_KERNEL(GeluForward));

PD_BUILD_GRAD_OP(plsc_gelu)
    .Inputs({"X", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X")})
    .SetKernelFn(PD_KERNEL(GeluBackward));

// ------------------------------------------------------------------- softmax(scale * x), last axis

std::vector<paddle::Tensor> ScaledSoftmaxForward(const paddle::Tensor& x, float scale) {
  check(x, "plsc_scaled_softmax input");
  PD_CHECK(scale > 0.0f, "plsc_scaled_softmax scale must be positive");
  auto out = paddle::empty_like(x);
  const int64_t d = last_dim(x);
  const int64_t rows = x.numel() / d;
  const float* xp = x.data<float>();
  float* op = out.data<float>();
  parallel_for(rows, std::max<int64_t>(1, kMinElements / d), [=](int64_t rb, int64_t re) {
  for (int64_t r = rb; r < re; ++r) {
    const float* xr = xp + r * d;
    float* orow = op + r * d;
    float m = xr[0];
    for (int64_t j = 1; j < d; ++j) m = xr[j] > m ? xr[j] : m;
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < d; ++j) {
      const float e = std::exp(scale * (xr[j] - m));
      orow[j] = e;
      sum += e;
    }
    const float inv = 1.0f / sum;
#pragma omp simd
    for (int64_t j = 0; j < d; ++j) orow[j] *= inv;
  }
  });
  return {out};
}

std::vector<paddle::Tensor> ScaledSoftmaxBackward(const paddle::Tensor& out,
                                                  const paddle::Tensor& dout, float scale) {
  check(dout, "plsc_scaled_softmax gradient");
  auto dx = paddle::empty_like(out);
  const int64_t d = last_dim(out);
  const int64_t rows = out.numel() / d;
  const float* yp = out.data<float>();
  const float* gp = dout.data<float>();
  float* dp = dx.data<float>();
  parallel_for(rows, std::max<int64_t>(1, kMinElements / d), [=](int64_t rb, int64_t re) {
  for (int64_t r = rb; r < re; ++r) {
    const float* y = yp + r * d;
    const float* g = gp + r * d;
    float* o = dp + r * d;
    float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
    for (int64_t j = 0; j < d; ++j) dot += y[j] * g[j];
#pragma omp simd
    for (int64_t j = 0; j < d; ++j) o[j] = scale * y[j] * (g[j] - dot);
  }
  });
  return {dx};
}

PD_BUILD_OP(plsc_scaled_softmax)
    .Inputs({"X"})
    .Outputs({"Out"})
    .Attrs({"scale: float"})
    .SetKernelFn(PD_KERNEL(ScaledSoftmaxForward));

PD_BUILD_GRAD_OP(plsc_scaled_softmax)
    .Inputs({"Out", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X")})
    .Attrs({"scale: float"})
    .SetKernelFn(PD_KERNEL(ScaledSoftmaxBackward));

// ------------------------------------------------------------------- LayerNorm over the last axis
// The forward output is Paddle's own kernel's (cpu_ops.py); these give the row statistics it
// keeps for the backward and the backward itself, in one pass over each row:
//   dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)),  dxhat = dy * w,
//   dw = sum over rows of dy * xhat,  db = sum over rows of dy  (per-thread partial sums).

std::vector<paddle::Tensor> LayerNormStats(const paddle::Tensor& x, float epsilon) {
  check(x, "plsc_layer_norm_stats input");
  const int64_t d = last_dim(x);
  const int64_t rows = x.numel() / d;
  auto mean = paddle::empty({rows}, paddle::DataType::FLOAT32, paddle::CPUPlace());
  auto rstd = paddle::empty({rows}, paddle::DataType::FLOAT32, paddle::CPUPlace());
  const float* xp = x.data<float>();
  float* mp = mean.data<float>();
  float* rp = rstd.data<float>();
  parallel_for(rows, std::max<int64_t>(1, kMinElements / d), [=](int64_t rb, int64_t re) {
    for (int64_t r = rb; r < re; ++r) {
      const float* xr = xp + r * d;
      float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
      for (int64_t j = 0; j < d; ++j) sum += xr[j];
      const float m = sum / d;
      float sq = 0.0f;
#pragma omp simd reduction(+ : sq)
      for (int64_t j = 0; j < d; ++j) sq += (xr[j] - m) * (xr[j] - m);
      mp[r] = m;
      rp[r] = 1.0f / std::sqrt(sq / d + epsilon);
    }
  });
  return {mean, rstd};
}

PD_BUILD_OP(plsc_layer_norm_stats)
    .Inputs({"X"})
    .Outputs({"Mean", "Rstd"})
    .Attrs({"epsilon: float"})
    .SetKernelFn(PD_KERNEL(LayerNormStats));

std::vector<paddle::Tensor> LayerNormGrad(const paddle::Tensor& x, const paddle::Tensor& weight,
                                          const paddle::Tensor& mean, const paddle::Tensor& rstd,
                                          const paddle::Tensor& dy) {
  check(x, "plsc_layer_norm_backward input");
  check(dy, "plsc_layer_norm_backward gradient");
  const int64_t d = last_dim(x);
  const int64_t rows = x.numel() / d;
  auto dx = paddle::empty_like(x);
  auto dw = paddle::empty({d}, paddle::DataType::FLOAT32, paddle::CPUPlace());
  auto db = paddle::empty({d}, paddle::DataType::FLOAT32, paddle::CPUPlace());
  const float* xp = x.data<float>();
  const float* wp = weight.data<float>();
  const float* mp = mean.data<float>();
  const float* rp = rstd.data<float>();
  const float* gp = dy.data<float>();
  float* dxp = dx.data<float>();
  // [thread][dw | db][d], in double: a thread may sum tens of thousands of rows
  std::vector<double> partial(64 * 2 * d, 0.0);
  double* pp = partial.data();
  const int64_t chunks = parallel_chunks(
      rows, std::max<int64_t>(1, kMinElements / d), [=](int64_t t, int64_t rb, int64_t re) {
        double* pw = pp + t * 2 * d;
        double* pb = pw + d;
        std::vector<float> xhat(d), dxhat(d);
        for (int64_t r = rb; r < re; ++r) {
          const float* xr = xp + r * d;
          const float* g = gp + r * d;
          const float m = mp[r], s = rp[r];
          float a = 0.0f, c = 0.0f;
#pragma omp simd reduction(+ : a, c)
          for (int64_t j = 0; j < d; ++j) {
            const float xh = (xr[j] - m) * s;
            const float dh = g[j] * wp[j];
            xhat[j] = xh;
            dxhat[j] = dh;
            a += dh;
            c += dh * xh;
            pw[j] += g[j] * xh;
            pb[j] += g[j];
          }
          a /= d;
          c /= d;
          float* o = dxp + r * d;
#pragma omp simd
          for (int64_t j = 0; j < d; ++j) o[j] = s * (dxhat[j] - a - xhat[j] * c);
        }
      });
  float* dwp = dw.data<float>();
  float* dbp = db.data<float>();
  for (int64_t j = 0; j < d; ++j) {
    double w = 0.0, b = 0.0;
    for (int64_t t = 0; t < chunks; ++t) {
      w += pp[t * 2 * d + j];
      b += pp[t * 2 * d + d + j];
    }
    dwp[j] = static_cast<float>(w);
    dbp[j] = static_cast<float>(b);
  }
  return {dx, dw, db};
}

PD_BUILD_OP(plsc_layer_norm_backward)  // not "_grad": Paddle reads that as a grad op
    .Inputs({"X", "Weight", "Mean", "Rstd", "DOut"})
    .Outputs({"DX", "DWeight", "DBias"})
    .SetKernelFn(PD_KERNEL(LayerNormGrad));
