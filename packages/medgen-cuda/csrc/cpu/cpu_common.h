// Helpers for the CPU kernels: float accumulation, saturating narrow stores, and the staging of
// float16 data through float32 blocks (vectorised conversion, see half_cpu.cpp).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
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

// float16 <-> float32 for n elements: F16C (8 lanes per instruction) when the CPU has it, chosen
// once at run time, else the scalar c10::Half conversion. float_to_half saturates like
// from_acc<c10::Half> (+-65504, NaN unchanged) and rounds to nearest even, as c10::Half does.
// c10::Half itself converts one element at a time in software unless the whole extension is built
// with -mf16c, and that loop does not vectorise (bfloat16's bit shifts do).
void half_to_float(const c10::Half* src, float* dst, int64_t n);
void float_to_half(const float* src, c10::Half* dst, int64_t n);
bool half_f16c();  // whether the F16C path is in use (for tests and the bench)

// Elements per staged block: a few KiB per stream, so every buffer stays in L1.
constexpr int64_t kHalfStage = 512;

// Runs body(in, out, len) on float32 copies of float16 streams, kHalfStage / max(FI, FO) units
// at a time: input stream r holds FI * units elements from in[r], output stream r FO * units
// elements stored (saturated) to out[r]. body sees `float* const*` buffers of that block and
// computes in float32 exactly as the float instantiation of the kernel would.
template <int NI, int FI, int NO, int FO, typename F>
inline void staged_half(const c10::Half* const (&in)[NI], c10::Half* const (&out)[NO],
                        int64_t units, F&& body) {
  constexpr int64_t kUnits = kHalfStage / (FI > FO ? FI : FO);
  alignas(64) float ibuf[NI][FI * kUnits];
  alignas(64) float obuf[NO][FO * kUnits];
  float* ip[NI];
  float* op[NO];
  for (int r = 0; r < NI; ++r) ip[r] = ibuf[r];
  for (int r = 0; r < NO; ++r) op[r] = obuf[r];
  for (int64_t u0 = 0; u0 < units; u0 += kUnits) {
    const int64_t len = std::min(kUnits, units - u0);
    for (int r = 0; r < NI; ++r) half_to_float(in[r] + FI * u0, ip[r], FI * len);
    body(static_cast<float* const*>(ip), static_cast<float* const*>(op), len);
    for (int r = 0; r < NO; ++r) float_to_half(op[r], out[r] + FO * u0, FO * len);
  }
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
