// Vectorised float16 <-> float32 conversion for the CPU kernels (declared in cpu_common.h).
//
// The F16C versions are compiled for that instruction set through function attributes and chosen
// at run time, so the extension itself keeps the compiler's default target and still imports on
// a CPU without F16C (it then converts with c10::Half, one element at a time). The choice is made
// on first use; MEDGEN_CUDA_CPU_NO_F16C=1 forces the scalar path (the tests compare the two).
#include <cstdlib>

#include "cpu/cpu_common.h"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define MEDGEN_HAVE_F16C_PATH 1
#endif

namespace medgen {
namespace cpu_detail {
namespace {

constexpr float kHalfMax = 65504.0f;

void half_to_float_scalar(const c10::Half* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

void float_to_half_scalar(const float* src, c10::Half* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = from_acc<c10::Half>(src[i]);
}

#ifdef MEDGEN_HAVE_F16C_PATH
__attribute__((target("avx,f16c"))) void half_to_float_f16c(const c10::Half* src, float* dst,
                                                            int64_t n) {
  const auto* s = reinterpret_cast<const uint16_t*>(src);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m128i h0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i));
    const __m128i h1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i + 8));
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h0));
    _mm256_storeu_ps(dst + i + 8, _mm256_cvtph_ps(h1));
  }
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i,
                     _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i))));
  for (; i < n; ++i) dst[i] = _cvtsh_ss(s[i]);
}

// Saturate with min/max ordered so that NaN passes through: (v)minps(a, b) returns b when either
// operand is NaN, so the data goes second. +-inf saturate to +-65504 as in from_acc.
__attribute__((target("avx,f16c"))) inline __m128i sat_cvt8(__m256 v) {
  v = _mm256_min_ps(_mm256_set1_ps(kHalfMax), v);
  v = _mm256_max_ps(_mm256_set1_ps(-kHalfMax), v);
  return _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

__attribute__((target("avx,f16c"))) void float_to_half_f16c(const float* src, c10::Half* dst,
                                                            int64_t n) {
  auto* d = reinterpret_cast<uint16_t*>(dst);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + i), sat_cvt8(_mm256_loadu_ps(src + i)));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + i + 8), sat_cvt8(_mm256_loadu_ps(src + i + 8)));
  }
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + i), sat_cvt8(_mm256_loadu_ps(src + i)));
  for (; i < n; ++i)
    d[i] = _cvtss_sh(saturate(src[i], kHalfMax), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

bool detect_f16c() {
  const char* off = std::getenv("MEDGEN_CUDA_CPU_NO_F16C");  // forces the scalar path (tests)
  if (off != nullptr && off[0] != '\0' && off[0] != '0') return false;
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c");
}
#endif

}  // namespace

bool half_f16c() {
#ifdef MEDGEN_HAVE_F16C_PATH
  static const bool has = detect_f16c();
  return has;
#else
  return false;
#endif
}

void half_to_float(const c10::Half* src, float* dst, int64_t n) {
#ifdef MEDGEN_HAVE_F16C_PATH
  if (half_f16c()) return half_to_float_f16c(src, dst, n);
#endif
  half_to_float_scalar(src, dst, n);
}

void float_to_half(const float* src, c10::Half* dst, int64_t n) {
#ifdef MEDGEN_HAVE_F16C_PATH
  if (half_f16c()) return float_to_half_f16c(src, dst, n);
#endif
  float_to_half_scalar(src, dst, n);
}

}  // namespace cpu_detail
}  // namespace medgen
