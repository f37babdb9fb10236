// Fused sampler-step kernels (DDIM / DDPM affine step, rectified-flow Euler). No torch headers.
//
// The host (medgen/cuda/_coeffs.py) folds the schedule into per-sample coefficients computed in
// float64; the kernel only evaluates short affine combinations in float32 (float64 for double
// inputs), so one pass reads x, m (and noise) once and writes x_prev and x0 once. See
// medgen_kernels.h for the exact formula and _coeffs.py for why it cannot overflow.
#include "common.cuh"

namespace medgen {
namespace {

using cuda_detail::Acc;
using cuda_detail::from_acc;
using cuda_detail::to_acc;

template <typename T, bool CLIP, bool NOISE>
__global__ void affine_step_kernel(const T* __restrict__ x, const T* __restrict__ m,
                                   const T* __restrict__ noise,
                                   const typename Acc<T>::type* __restrict__ coef,
                                   int64_t coef_rows, int64_t per_row, int64_t n,
                                   typename Acc<T>::type clip_value, T* __restrict__ xp_out,
                                   T* __restrict__ x0_out) {
  using A = typename Acc<T>::type;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    const A* k = coef + (coef_rows == 1 ? 0 : (i / per_row)) * 5;
    const A xv = to_acc(x[i]);
    const A mv = to_acc(m[i]);
    const A x0 = k[0] * xv + k[1] * mv;
    A xp;
    if (CLIP) {
      const A x0c = x0 > clip_value ? clip_value : (x0 < -clip_value ? -clip_value : x0);
      xp = k[2] * xv + k[3] * x0c;
      x0_out[i] = from_acc<T>(x0c);
    } else {
      xp = k[2] * xv + k[3] * mv;
      x0_out[i] = from_acc<T>(x0);
    }
    if (NOISE) xp = xp + k[4] * to_acc(noise[i]);
    xp_out[i] = from_acc<T>(xp);
  }
}

template <typename T>
__global__ void axpy_step_kernel(const T* __restrict__ x, const T* __restrict__ v,
                                 const typename Acc<T>::type* __restrict__ coef, int64_t coef_rows,
                                 int64_t per_row, int64_t n, T* __restrict__ out) {
  using A = typename Acc<T>::type;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    const A c = coef[coef_rows == 1 ? 0 : i / per_row];
    out[i] = from_acc<T>(to_acc(x[i]) + c * to_acc(v[i]));
  }
}

}  // namespace

int launch_affine_step(const void* x, const void* m, const void* noise, const void* coef,
                       int64_t coef_rows, int64_t per_row, int64_t n, int clip, double clip_value,
                       void* xp_out, void* x0_out, DType dtype, void* stream) {
  if (n == 0) return 0;
  if (per_row <= 0) return static_cast<int>(cudaErrorInvalidValue);
  const int threads = 256;
  const unsigned int grid = cuda_detail::grid_for(n, threads);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  MEDGEN_DISPATCH(dtype, T, {
    using A = typename Acc<T>::type;
    const T* xt = static_cast<const T*>(x);
    const T* mt = static_cast<const T*>(m);
    const T* nt = static_cast<const T*>(noise);
    const A* ct = static_cast<const A*>(coef);
    T* xp = static_cast<T*>(xp_out);
    T* x0 = static_cast<T*>(x0_out);
    const A cv = static_cast<A>(clip_value);
    if (clip && noise)
      affine_step_kernel<T, true, true><<<grid, threads, 0, s>>>(xt, mt, nt, ct, coef_rows, per_row, n, cv, xp, x0);
    else if (clip)
      affine_step_kernel<T, true, false><<<grid, threads, 0, s>>>(xt, mt, nt, ct, coef_rows, per_row, n, cv, xp, x0);
    else if (noise)
      affine_step_kernel<T, false, true><<<grid, threads, 0, s>>>(xt, mt, nt, ct, coef_rows, per_row, n, cv, xp, x0);
    else
      affine_step_kernel<T, false, false><<<grid, threads, 0, s>>>(xt, mt, nt, ct, coef_rows, per_row, n, cv, xp, x0);
  });
  return static_cast<int>(cudaGetLastError());
}

int launch_axpy_step(const void* x, const void* v, const void* coef, int64_t coef_rows,
                     int64_t per_row, int64_t n, void* out, DType dtype, void* stream) {
  if (n == 0) return 0;
  if (per_row <= 0) return static_cast<int>(cudaErrorInvalidValue);
  const int threads = 256;
  const unsigned int grid = cuda_detail::grid_for(n, threads);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  MEDGEN_DISPATCH(dtype, T, {
    using A = typename Acc<T>::type;
    axpy_step_kernel<T><<<grid, threads, 0, s>>>(
        static_cast<const T*>(x), static_cast<const T*>(v), static_cast<const A*>(coef), coef_rows,
        per_row, n, static_cast<T*>(out));
  });
  return static_cast<int>(cudaGetLastError());
}

}  // namespace medgen
