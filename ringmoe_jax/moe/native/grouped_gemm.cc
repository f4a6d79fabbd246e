// Grouped matmuls for the dropless MoE on CPU, as XLA FFI custom calls (see moe/native.py).
//
// Rows of x are sorted by group (expert): rows [offset_e, offset_e + sizes[e]) belong to group
// e, rows past sum(sizes) are padding. Each group is one BLAS sgemm that reads its rows and its
// expert's weights where they lie (leading dimensions instead of copies) and writes its result
// straight into the output: no per-expert weight copy and no per-expert gradient accumulator,
// which is what XLA ops (dynamic_slice / dynamic_update_slice in a loop) cost on CPU.
//
// The sgemm is the CBLAS one of a private copy of the OpenBLAS that numpy ships (native.py
// loads it and sets it to one thread, once); its address is handed over by ringmoe_set_blas,
// so this library links against nothing.
//
// Threads: the work is cut into independent tasks (an expert's block of output rows), run on
// XLA's own CPU thread pool (ffi::ThreadPool) with a single-threaded sgemm each. OpenBLAS's
// own threads would compete with XLA's for the same cores, and they synchronise after every
// small per-expert call. Each output element is computed by one task in a fixed order, so the
// result does not depend on the number of threads.
//
// Nothing here changes a BLAS thread count: in numpy's (pthreads) OpenBLAS,
// openblas_set_num_threads_local sets the process-wide count, so setting and restoring it
// around each call from many threads raced with every sgemm in flight, numpy's included
// (docs/MEASUREMENTS.md, 2026-12-07).
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// CBLAS, 64-bit integer interface (numpy's scipy_openblas64_).
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;
using Sgemm = void (*)(int order, int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
                       float alpha, const float* a, int64_t lda, const float* b, int64_t ldb,
                       float beta, float* c, int64_t ldc);
Sgemm g_sgemm = nullptr;

// Rows per task of a grouped matmul. Each task packs its expert's whole weight matrix, so
// fewer, bigger tasks move less memory (4 experts x 4096 rows: one task per expert would pack
// 16 MB, 512-row tasks 128 MB); but each of T threads needs several tasks to balance uneven
// experts. So: total rows / (4 T), at least kMinTaskRows (below that the sgemm loses speed).
constexpr int64_t kMinTaskRows = 256;
// Rows of the (K, M) weight gradient per task (each contracts over all its expert's rows).
constexpr int64_t kGradTaskRows = 512;

int64_t TaskRows(int64_t total_rows, int64_t threads) {
  const int64_t tasks = 4 * std::max<int64_t>(threads, 1);
  return std::max(kMinTaskRows, (total_rows + tasks - 1) / tasks);
}

// One sgemm on the calling thread (the private OpenBLAS runs one thread: the caller).
void SgemmHere(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, const float* a,
               int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc) {
  g_sgemm(kRowMajor, trans_a, trans_b, m, n, k, 1.0f, a, lda, b, ldb, 0.0f, c, ldc);
}

// Runs task(i) for i in [0, n) on the pool and the calling thread; returns when all are done.
// A pool thread that starts late finds no task left and never touches `task`, which lives on
// the caller's stack: only a claimed index (< n) makes a thread call it, and the caller waits
// for every claimed index to finish.
template <typename Task>
void ParallelFor(ffi::ThreadPool& pool, int64_t n, const Task& task) {
  struct State {
    std::atomic<int64_t> next{0}, done{0};
    std::mutex mu;
    std::condition_variable cv;
  };
  auto state = std::make_shared<State>();
  auto work = [state, n, &task] {
    for (int64_t i; (i = state->next.fetch_add(1)) < n;) {
      task(i);
      if (state->done.fetch_add(1) + 1 == n) {
        std::lock_guard<std::mutex> lock(state->mu);
        state->cv.notify_all();
      }
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), n - 1);
  for (int64_t h = 0; h < helpers; ++h) pool.Schedule(decltype(work)(work));  // a copy each
  work();
  std::unique_lock<std::mutex> lock(state->mu);
  state->cv.wait(lock, [&] { return state->done.load() == n; });
}

// Checks sizes (E,) against N rows; returns the total, or -1 with `why` filled in.
int64_t RowsInGroups(ffi::Buffer<ffi::S32>& sizes, int64_t n, const char** why) {
  int64_t total = 0;
  for (int64_t e = 0; e < static_cast<int64_t>(sizes.element_count()); ++e) {
    const int32_t s = sizes.typed_data()[e];
    if (s < 0) {
      *why = "grouped matmul: a group size is negative";
      return -1;
    }
    total += s;
  }
  if (total > n) {
    *why = "grouped matmul: group sizes add up to more rows than x has";
    return -1;
  }
  return total;
}

}  // namespace

extern "C" void ringmoe_set_blas(void* sgemm) { g_sgemm = reinterpret_cast<Sgemm>(sgemm); }

// out (N, M) = x (N, K) @ w[e] (K, M) for the rows of group e; w (E, K, M), or (E, M, K) used
// transposed when transpose_w. Padding rows of out are zero.
static ffi::Error GroupedMatmul(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                                ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::S32> sizes,
                                ffi::ResultBuffer<ffi::F32> out, bool transpose_w) {
  if (g_sgemm == nullptr) return ffi::Error::Internal("grouped matmul: no BLAS registered");
  const auto xd = x.dimensions();
  const auto wd = w.dimensions();
  if (xd.size() != 2 || wd.size() != 3 || static_cast<int64_t>(sizes.element_count()) != wd[0]) {
    return ffi::Error::InvalidArgument("grouped matmul: expected x (N, K), w (E, ., .), sizes (E,)");
  }
  const int64_t n = xd[0], k = xd[1];
  const int64_t m = transpose_w ? wd[1] : wd[2];
  if ((transpose_w ? wd[2] : wd[1]) != k) {
    return ffi::Error::InvalidArgument("grouped matmul: x and w disagree on the contracted size");
  }
  const char* why = nullptr;
  const int64_t total = RowsInGroups(sizes, n, &why);
  if (total < 0) return ffi::Error::InvalidArgument(why);
  const float* xp = x.typed_data();
  const float* wp = w.typed_data();
  float* op = out->typed_data();
  // Tasks: (expert, block of up to task_rows of its rows).
  struct Block { int64_t expert, row, rows; };
  std::vector<Block> blocks;
  const int64_t task_rows = TaskRows(total, pool.num_threads());
  int64_t offset = 0;
  for (int64_t e = 0; e < wd[0]; ++e) {
    const int64_t size = sizes.typed_data()[e];
    for (int64_t r = 0; r < size; r += task_rows) {
      blocks.push_back({e, offset + r, std::min(task_rows, size - r)});
    }
    offset += size;
  }
  ParallelFor(pool, static_cast<int64_t>(blocks.size()), [&](int64_t i) {
    const Block& b = blocks[i];
    SgemmHere(kNoTrans, transpose_w ? kTrans : kNoTrans, b.rows, m, k, xp + b.row * k, k,
              wp + b.expert * k * m, transpose_w ? k : m, op + b.row * m, m);
  });
  std::memset(op + total * m, 0, sizeof(float) * (n - total) * m);
  return ffi::Error::Success();
}

// out (E, K, M): out[e] = x[rows of e]^T (K, rows) @ dy[rows of e] (rows, M), zero for an empty
// group: the weight gradient of GroupedMatmul, written once per expert.
static ffi::Error GroupedWeightGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                                    ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::S32> sizes,
                                    ffi::ResultBuffer<ffi::F32> out) {
  if (g_sgemm == nullptr) return ffi::Error::Internal("grouped matmul: no BLAS registered");
  const auto xd = x.dimensions();
  const auto dd = dy.dimensions();
  const auto od = out->dimensions();
  if (xd.size() != 2 || dd.size() != 2 || xd[0] != dd[0] || od.size() != 3 ||
      od[0] != static_cast<int64_t>(sizes.element_count()) || od[1] != xd[1] || od[2] != dd[1]) {
    return ffi::Error::InvalidArgument(
        "grouped weight gradient: expected x (N, K), dy (N, M), sizes (E,), out (E, K, M)");
  }
  const int64_t n = xd[0], k = xd[1], m = dd[1];
  const char* why = nullptr;
  if (RowsInGroups(sizes, n, &why) < 0) return ffi::Error::InvalidArgument(why);
  const float* xp = x.typed_data();
  const float* dp = dy.typed_data();
  float* op = out->typed_data();
  // Tasks: (expert, block of up to kGradTaskRows rows of its (K, M) gradient), each contracting
  // over all of the expert's rows (x's columns [k0, k0 + rows) are a strided slice: lda = K).
  struct Block { int64_t expert, offset, size, k0, rows; };
  std::vector<Block> blocks;
  int64_t offset = 0;
  for (int64_t e = 0; e < od[0]; ++e) {
    const int64_t size = sizes.typed_data()[e];
    for (int64_t k0 = 0; k0 < k; k0 += kGradTaskRows) {
      blocks.push_back({e, offset, size, k0, std::min(kGradTaskRows, k - k0)});
    }
    offset += size;
  }
  ParallelFor(pool, static_cast<int64_t>(blocks.size()), [&](int64_t i) {
    const Block& b = blocks[i];
    float* o = op + b.expert * k * m + b.k0 * m;
    if (b.size == 0) {
      std::memset(o, 0, sizeof(float) * b.rows * m);
    } else {
      SgemmHere(kTrans, kNoTrans, b.rows, m, b.size, xp + b.offset * k + b.k0, k,
                dp + b.offset * m, m, o, m);
    }
  });
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(RingmoeGroupedMatmul, GroupedMatmul,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<bool>("transpose_w"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(RingmoeGroupedWeightGrad, GroupedWeightGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
