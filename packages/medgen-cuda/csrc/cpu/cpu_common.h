// Scalar helpers for the CPU kernels: float accumulation and saturating narrow stores.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <stdexcept>

#include "medgen_kernels.h"

namespace medgen {
namespace cpu_detail {

template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};

inline float to_acc(float v) { return v; }
inline double to_acc(double v) { return v; }
inline float to_acc(c10::Half v) { return static_cast<float>(v); }
inline float to_acc(c10::BFloat16 v) { return static_cast<float>(v); }

// Saturate to the finite range of the narrow type instead of overflowing to +-inf; comparisons
// (not std::min/max) so that NaN propagates unchanged.
inline float saturate(float v, float lim) { return v > lim ? lim : (v < -lim ? -lim : v); }

template <typename T>
inline T from_acc(typename Acc<T>::type v);
template <>
inline float from_acc<float>(float v) { return v; }
template <>
inline double from_acc<double>(double v) { return v; }
template <>
inline c10::Half from_acc<c10::Half>(float v) { return c10::Half(saturate(v, 65504.0f)); }
template <>
inline c10::BFloat16 from_acc<c10::BFloat16>(float v) {
  return c10::BFloat16(saturate(v, 3.3895313892515355e38f));
}

}  // namespace cpu_detail
}  // namespace medgen

#define MEDGEN_CPU_DISPATCH(dtype, T, ...)                         \
  switch (dtype) {                                                 \
    case ::medgen::DType::Float32: {                               \
      using T = float;                                             \
      __VA_ARGS__;                                                 \
      break;                                                       \
    }                                                              \
    case ::medgen::DType::Float64: {                               \
      using T = double;                                            \
      __VA_ARGS__;                                                 \
      break;                                                       \
    }                                                              \
    case ::medgen::DType::Float16: {                               \
      using T = c10::Half;                                         \
      __VA_ARGS__;                                                 \
      break;                                                       \
    }                                                              \
    case ::medgen::DType::BFloat16: {                              \
      using T = c10::BFloat16;                                     \
      __VA_ARGS__;                                                 \
      break;                                                       \
    }                                                              \
    default:                                                       \
      throw std::invalid_argument("medgen: unsupported dtype");    \
  }
