// Shared device helpers: loads/stores with float accumulation and saturating narrow stores.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "medgen_kernels.h"

namespace medgen {
namespace cuda_detail {

template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

// Saturate to the finite range of the narrow type instead of overflowing to +-inf.
// Written with comparisons (not fminf/fmaxf) so that NaN propagates unchanged.
__device__ __forceinline__ float saturate(float v, float lim) {
  return v > lim ? lim : (v < -lim ? -lim : v);
}

template <typename T>
__device__ __forceinline__ T from_acc(typename Acc<T>::type v);
template <>
__device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <>
__device__ __forceinline__ double from_acc<double>(double v) { return v; }
template <>
__device__ __forceinline__ __half from_acc<__half>(float v) {
  return __float2half_rn(saturate(v, 65504.0f));
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(saturate(v, 3.3895313892515355e38f));
}

inline unsigned int grid_for(int64_t n, int threads) {
  int64_t blocks = (n + threads - 1) / threads;
  if (blocks > 65535LL * 32) blocks = 65535LL * 32;  // grid-stride loops cover the rest
  if (blocks < 1) blocks = 1;
  return static_cast<unsigned int>(blocks);
}

}  // namespace cuda_detail
}  // namespace medgen

// Dispatch a templated launch over the four supported dtypes.
#define MEDGEN_DISPATCH(dtype, T, ...)                        \
  switch (dtype) {                                            \
    case ::medgen::DType::Float32: {                          \
      using T = float;                                        \
      __VA_ARGS__;                                            \
      break;                                                  \
    }                                                         \
    case ::medgen::DType::Float64: {                          \
      using T = double;                                       \
      __VA_ARGS__;                                            \
      break;                                                  \
    }                                                         \
    case ::medgen::DType::Float16: {                          \
      using T = __half;                                       \
      __VA_ARGS__;                                            \
      break;                                                  \
    }                                                         \
    case ::medgen::DType::BFloat16: {                         \
      using T = __nv_bfloat16;                                \
      __VA_ARGS__;                                            \
      break;                                                  \
    }                                                         \
    default:                                                  \
      return static_cast<int>(cudaErrorInvalidValue);         \
  }
