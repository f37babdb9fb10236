// Orthonormal single-level Haar DWT / IDWT (2D and 3D) on the CPU.
//
// Same arithmetic as the CUDA kernel and the PyTorch reference: butterflies (a, b) -> (a+b, a-b)
// along W, then H, then D, then one scale by 2^(-ND/2); the butterfly index is the subband index
// 4*bD + 2*bH + bW (WDM-3D order). Work is split over output rows (b, c, d2, h2); each task
// streams 2^(ND-1) input rows and 2^ND subband rows, so every byte is read and written once.
// `omp simd` + restrict pointers vectorize the column loops (input and output are distinct
// tensors, so the rows never alias).
#include <ATen/Parallel.h>

#include <algorithm>

#include "cpu/cpu_common.h"
#include "cpu/cpu_kernels.h"

namespace medgen {
namespace {

using cpu_detail::Acc;
using cpu_detail::from_acc;
using cpu_detail::to_acc;

template <int ND, typename A>
inline void butterfly(A* v) {
  constexpr int S = 1 << ND;
  for (int bit = 1; bit < S; bit <<= 1) {
    for (int i = 0; i < S; ++i) {
      if (!(i & bit)) {
        const A e = v[i];
        const A o = v[i | bit];
        v[i] = e + o;
        v[i | bit] = e - o;
      }
    }
  }
  const A scale = ND == 3 ? A(0.35355339059327373) : A(0.5);
  for (int i = 0; i < S; ++i) v[i] = v[i] * scale;
}

// Row kernels with restrict-qualified named pointers so the compiler vectorizes the column loop
// (the generic butterfly<ND> above documents the arithmetic; these unroll it in the same order).
template <typename T>
void row2_fwd(const T* __restrict__ r0, const T* __restrict__ r1, T* __restrict__ o0,
              T* __restrict__ o1, T* __restrict__ o2, T* __restrict__ o3, int64_t W2) {
  using A = typename Acc<T>::type;
#pragma omp simd
  for (int64_t w = 0; w < W2; ++w) {
    A v[4] = {to_acc(r0[2 * w]), to_acc(r0[2 * w + 1]), to_acc(r1[2 * w]), to_acc(r1[2 * w + 1])};
    butterfly<2>(v);
    o0[w] = from_acc<T>(v[0]);
    o1[w] = from_acc<T>(v[1]);
    o2[w] = from_acc<T>(v[2]);
    o3[w] = from_acc<T>(v[3]);
  }
}

template <typename T>
void row2_inv(const T* __restrict__ i0, const T* __restrict__ i1, const T* __restrict__ i2,
              const T* __restrict__ i3, T* __restrict__ r0, T* __restrict__ r1, int64_t W2) {
  using A = typename Acc<T>::type;
#pragma omp simd
  for (int64_t w = 0; w < W2; ++w) {
    A v[4] = {to_acc(i0[w]), to_acc(i1[w]), to_acc(i2[w]), to_acc(i3[w])};
    butterfly<2>(v);
    r0[2 * w] = from_acc<T>(v[0]);
    r0[2 * w + 1] = from_acc<T>(v[1]);
    r1[2 * w] = from_acc<T>(v[2]);
    r1[2 * w + 1] = from_acc<T>(v[3]);
  }
}

template <typename T>
void row3_fwd(const T* __restrict__ r0, const T* __restrict__ r1, const T* __restrict__ r2,
              const T* __restrict__ r3, T* __restrict__ o0, T* __restrict__ o1,
              T* __restrict__ o2, T* __restrict__ o3, T* __restrict__ o4, T* __restrict__ o5,
              T* __restrict__ o6, T* __restrict__ o7, int64_t W2) {
  using A = typename Acc<T>::type;
#pragma omp simd
  for (int64_t w = 0; w < W2; ++w) {
    A v[8] = {to_acc(r0[2 * w]), to_acc(r0[2 * w + 1]), to_acc(r1[2 * w]), to_acc(r1[2 * w + 1]),
              to_acc(r2[2 * w]), to_acc(r2[2 * w + 1]), to_acc(r3[2 * w]), to_acc(r3[2 * w + 1])};
    butterfly<3>(v);
    o0[w] = from_acc<T>(v[0]);
    o1[w] = from_acc<T>(v[1]);
    o2[w] = from_acc<T>(v[2]);
    o3[w] = from_acc<T>(v[3]);
    o4[w] = from_acc<T>(v[4]);
    o5[w] = from_acc<T>(v[5]);
    o6[w] = from_acc<T>(v[6]);
    o7[w] = from_acc<T>(v[7]);
  }
}

template <typename T>
void row3_inv(const T* __restrict__ i0, const T* __restrict__ i1, const T* __restrict__ i2,
              const T* __restrict__ i3, const T* __restrict__ i4, const T* __restrict__ i5,
              const T* __restrict__ i6, const T* __restrict__ i7, T* __restrict__ r0,
              T* __restrict__ r1, T* __restrict__ r2, T* __restrict__ r3, int64_t W2) {
  using A = typename Acc<T>::type;
#pragma omp simd
  for (int64_t w = 0; w < W2; ++w) {
    A v[8] = {to_acc(i0[w]), to_acc(i1[w]), to_acc(i2[w]), to_acc(i3[w]),
              to_acc(i4[w]), to_acc(i5[w]), to_acc(i6[w]), to_acc(i7[w])};
    butterfly<3>(v);
    r0[2 * w] = from_acc<T>(v[0]);
    r0[2 * w + 1] = from_acc<T>(v[1]);
    r1[2 * w] = from_acc<T>(v[2]);
    r1[2 * w + 1] = from_acc<T>(v[3]);
    r2[2 * w] = from_acc<T>(v[4]);
    r2[2 * w + 1] = from_acc<T>(v[5]);
    r3[2 * w] = from_acc<T>(v[6]);
    r3[2 * w + 1] = from_acc<T>(v[7]);
  }
}

template <int ND, bool FORWARD, typename T>
void haar_impl(const T* src, T* dst, int64_t B, int64_t C, int64_t D, int64_t H, int64_t W) {
  constexpr int S = 1 << ND;
  const int64_t D2 = ND == 3 ? D / 2 : 1, H2 = H / 2, W2 = W / 2;
  const int64_t plane = D2 * H2 * W2;
  const int64_t rows = B * C * D2 * H2;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(W2, 1));
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t h2 = r % H2;
      const int64_t t = r / H2;
      const int64_t d2 = t % D2;
      const int64_t bc = t / D2;  // b * C + c
      const int64_t b = bc / C, c = bc % C;
      // spatial row j = 2*dz + dy starts at sp[j]; subband plane s starts at sb[s]
      const int64_t sp0 = bc * (ND == 3 ? D : 1) * H * W + (ND == 3 ? 2 * d2 : 0) * H * W +
                          2 * h2 * W;
      const int64_t sb0 = (b * S * C + c) * plane + (d2 * H2 + h2) * W2;
      const int64_t sp[4] = {sp0, sp0 + W, sp0 + H * W, sp0 + H * W + W};
      int64_t sb[8];
      for (int s = 0; s < S; ++s) sb[s] = sb0 + s * C * plane;
      if constexpr (ND == 2) {
        if (FORWARD)
          row2_fwd<T>(src + sp[0], src + sp[1], dst + sb[0], dst + sb[1], dst + sb[2], dst + sb[3],
                      W2);
        else
          row2_inv<T>(src + sb[0], src + sb[1], src + sb[2], src + sb[3], dst + sp[0], dst + sp[1],
                      W2);
      } else {
        if (FORWARD)
          row3_fwd<T>(src + sp[0], src + sp[1], src + sp[2], src + sp[3], dst + sb[0], dst + sb[1],
                      dst + sb[2], dst + sb[3], dst + sb[4], dst + sb[5], dst + sb[6], dst + sb[7],
                      W2);
        else
          row3_inv<T>(src + sb[0], src + sb[1], src + sb[2], src + sb[3], src + sb[4], src + sb[5],
                      src + sb[6], src + sb[7], dst + sp[0], dst + sp[1], dst + sp[2], dst + sp[3],
                      W2);
      }
    }
  });
}

template <bool FORWARD>
void haar_dispatch(const void* src, void* dst, DType dtype, int nd, int64_t B, int64_t C, int64_t D,
                   int64_t H, int64_t W) {
  if (nd != 2 && nd != 3) throw std::invalid_argument("medgen: haar nd must be 2 or 3");
  MEDGEN_CPU_DISPATCH(dtype, T, {
    if (nd == 3)
      haar_impl<3, FORWARD, T>(static_cast<const T*>(src), static_cast<T*>(dst), B, C, D, H, W);
    else
      haar_impl<2, FORWARD, T>(static_cast<const T*>(src), static_cast<T*>(dst), B, C, D, H, W);
  });
}

}  // namespace

void cpu_haar_dwt(const void* x, void* y, DType dtype, int nd, int64_t B, int64_t C, int64_t D,
                  int64_t H, int64_t W) {
  haar_dispatch<true>(x, y, dtype, nd, B, C, D, H, W);
}

void cpu_haar_idwt(const void* y, void* x, DType dtype, int nd, int64_t B, int64_t C, int64_t D,
                   int64_t H, int64_t W) {
  haar_dispatch<false>(y, x, dtype, nd, B, C, D, H, W);
}

}  // namespace medgen
