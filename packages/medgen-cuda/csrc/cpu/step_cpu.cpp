// Fused sampler steps on the CPU (see medgen_kernels.h for the formula, _coeffs.py for the math).
// Elements are split into chunks; within a chunk each run of one sample shares its coefficient
// row, so the inner loop is a branch-free affine combination the compiler vectorizes for float.
// Outputs are freshly allocated by the binding, so no pointer aliases another (restrict).
// float16 runs the float32 loop on L1-sized float copies (staged_half, vectorised conversion):
// converting element by element through c10::Half made it several times slower than bfloat16.
#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>

#include "cpu/cpu_common.h"
#include "cpu/cpu_kernels.h"

namespace medgen {
namespace {

using cpu_detail::Acc;
using cpu_detail::from_acc;
using cpu_detail::to_acc;

constexpr int64_t kGrain = 32768;

template <typename F>
void for_each_run(int64_t n, int64_t coef_rows, int64_t per_row, F&& body) {
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    int64_t i = begin;
    while (i < end) {
      const int64_t row = coef_rows == 1 ? 0 : i / per_row;
      const int64_t stop = coef_rows == 1 ? end : std::min(end, (row + 1) * per_row);
      body(row, i, stop);
      i = stop;
    }
  });
}

// One run [0, len) sharing the coefficients k = (a, b, p, q, s).
template <bool CLIP, bool NOISE, typename T, typename A>
inline void affine_run(const T* __restrict__ x, const T* __restrict__ m,
                       const T* __restrict__ noise, const A* k, A clip_value, int64_t len,
                       T* __restrict__ xp_out, T* __restrict__ x0_out) {
  const A a = k[0], b = k[1], p = k[2], q = k[3], s = k[4];
  for (int64_t i = 0; i < len; ++i) {
    const A xv = to_acc(x[i]);
    const A mv = to_acc(m[i]);
    const A x0 = a * xv + b * mv;
    A xp;
    if (CLIP) {
      const A x0c = x0 > clip_value ? clip_value : (x0 < -clip_value ? -clip_value : x0);
      xp = p * xv + q * x0c;
      x0_out[i] = from_acc<T>(x0c);
    } else {
      xp = p * xv + q * mv;
      x0_out[i] = from_acc<T>(x0);
    }
    if (NOISE) xp = xp + s * to_acc(noise[i]);
    xp_out[i] = from_acc<T>(xp);
  }
}

template <typename T, bool CLIP, bool NOISE>
void affine_impl(const T* __restrict__ x, const T* __restrict__ m, const T* __restrict__ noise,
                 const typename Acc<T>::type* coef, int64_t coef_rows, int64_t per_row, int64_t n,
                 typename Acc<T>::type clip_value, T* __restrict__ xp_out,
                 T* __restrict__ x0_out) {
  using A = typename Acc<T>::type;
  for_each_run(n, coef_rows, per_row, [&](int64_t row, int64_t i0, int64_t i1) {
    const A* k = coef + row * 5;
    if constexpr (std::is_same_v<T, c10::Half>) {
      using cpu_detail::staged_half;
      c10::Half* const out[2] = {xp_out + i0, x0_out + i0};
      const auto run = [&](float* const* v, float* const* o, int64_t len) {
        affine_run<CLIP, NOISE>(v[0], v[1], NOISE ? v[2] : nullptr, k, clip_value, len, o[0],
                                o[1]);
      };
      if constexpr (NOISE) {
        const c10::Half* const in[3] = {x + i0, m + i0, noise + i0};
        staged_half<3, 1, 2, 1>(in, out, i1 - i0, run);
      } else {
        const c10::Half* const in[2] = {x + i0, m + i0};
        staged_half<2, 1, 2, 1>(in, out, i1 - i0, run);
      }
    } else {
      affine_run<CLIP, NOISE>(x + i0, m + i0, NOISE ? noise + i0 : nullptr, k, clip_value,
                              i1 - i0, xp_out + i0, x0_out + i0);
    }
  });
}

template <typename T, typename A>
inline void axpy_run(const T* __restrict__ x, const T* __restrict__ v, A c, int64_t len,
                     T* __restrict__ o) {
  for (int64_t i = 0; i < len; ++i) o[i] = from_acc<T>(to_acc(x[i]) + c * to_acc(v[i]));
}

template <typename T>
void axpy_impl(const T* x, const T* v, const typename Acc<T>::type* coef, int64_t coef_rows,
               int64_t per_row, int64_t n, T* out) {
  using A = typename Acc<T>::type;
  for_each_run(n, coef_rows, per_row, [&](int64_t row, int64_t i0, int64_t i1) {
    const A c = coef[row];
    if constexpr (std::is_same_v<T, c10::Half>) {
      const c10::Half* const in[2] = {x + i0, v + i0};
      c10::Half* const o[1] = {out + i0};
      cpu_detail::staged_half<2, 1, 1, 1>(in, o, i1 - i0,
                                          [&](float* const* b, float* const* r, int64_t len) {
                                            axpy_run(b[0], b[1], c, len, r[0]);
                                          });
    } else {
      axpy_run(x + i0, v + i0, c, i1 - i0, out + i0);
    }
  });
}

}  // namespace

void cpu_affine_step(const void* x, const void* m, const void* noise, const void* coef,
                     int64_t coef_rows, int64_t per_row, int64_t n, int clip, double clip_value,
                     void* xp_out, void* x0_out, DType dtype) {
  if (n == 0) return;
  MEDGEN_CPU_DISPATCH(dtype, T, {
    using A = typename Acc<T>::type;
    const T* xt = static_cast<const T*>(x);
    const T* mt = static_cast<const T*>(m);
    const T* nt = static_cast<const T*>(noise);
    const A* ct = static_cast<const A*>(coef);
    T* xp = static_cast<T*>(xp_out);
    T* x0 = static_cast<T*>(x0_out);
    const A cv = static_cast<A>(clip_value);
    if (clip && noise)
      affine_impl<T, true, true>(xt, mt, nt, ct, coef_rows, per_row, n, cv, xp, x0);
    else if (clip)
      affine_impl<T, true, false>(xt, mt, nt, ct, coef_rows, per_row, n, cv, xp, x0);
    else if (noise)
      affine_impl<T, false, true>(xt, mt, nt, ct, coef_rows, per_row, n, cv, xp, x0);
    else
      affine_impl<T, false, false>(xt, mt, nt, ct, coef_rows, per_row, n, cv, xp, x0);
  });
}

void cpu_axpy_step(const void* x, const void* v, const void* coef, int64_t coef_rows,
                   int64_t per_row, int64_t n, void* out, DType dtype) {
  if (n == 0) return;
  MEDGEN_CPU_DISPATCH(dtype, T, {
    using A = typename Acc<T>::type;
    const T* xt = static_cast<const T*>(x);
    const T* vt = static_cast<const T*>(v);
    const A* ct = static_cast<const A*>(coef);
    axpy_impl<T>(xt, vt, ct, coef_rows, per_row, n, static_cast<T*>(out));
  });
}

}  // namespace medgen
