// Orthonormal single-level Haar DWT / IDWT (2D and 3D) on the CPU.
//
// Same arithmetic as the CUDA kernel and the PyTorch reference: butterflies (a, b) -> (a+b, a-b)
// along W, then H, then D, then one scale by 2^(-ND/2); the butterfly index is the subband index
// 4*bD + 2*bH + bW (WDM-3D order). Work is split over output rows (b, c, d2, h2); each task
// streams 2^(ND-1) input rows and 2^ND subband rows, so every byte is read and written once.
// float16 rows run the float32 row kernels on L1-sized float copies (staged_half, vectorised
// conversion); converting element by element through c10::Half was 3-5x slower than bfloat16.
#include <ATen/Parallel.h>

#include <algorithm>

#include "cpu/cpu_common.h"
#include "cpu/cpu_kernels.h"

namespace medgen {
namespace {

using cpu_detail::Acc;
using cpu_detail::from_acc;
using cpu_detail::to_acc;

// One butterfly (e, o) -> (e + o, e - o). The 2D/3D transforms apply it along W (index bit 1),
// then H (bit 2), then D (bit 4), then scale once by 2^(-ND/2): index 4*bD + 2*bH + bW is the
// WDM-3D subband index. Named scalars passed by reference (not a small array) let the compiler
// vectorize the column loops; an array version ran 3x slower (not vectorized).
template <typename A>
inline void bf(A& e, A& o) {
  const A s = e + o, d = e - o;
  e = s;
  o = d;
}

template <typename A>
inline void bfly2(A& v0, A& v1, A& v2, A& v3) {
  bf(v0, v1);
  bf(v2, v3);
  bf(v0, v2);
  bf(v1, v3);
  const A k = A(0.5);
  v0 *= k;
  v1 *= k;
  v2 *= k;
  v3 *= k;
}

template <typename A>
inline void bfly3(A& v0, A& v1, A& v2, A& v3, A& v4, A& v5, A& v6, A& v7) {
  bf(v0, v1);
  bf(v2, v3);
  bf(v4, v5);
  bf(v6, v7);
  bf(v0, v2);
  bf(v1, v3);
  bf(v4, v6);
  bf(v5, v7);
  bf(v0, v4);
  bf(v1, v5);
  bf(v2, v6);
  bf(v3, v7);
  const A k = A(0.35355339059327373);
  v0 *= k;
  v1 *= k;
  v2 *= k;
  v3 *= k;
  v4 *= k;
  v5 *= k;
  v6 *= k;
  v7 *= k;
}

// Row kernels: restrict-qualified pointers (input and output are distinct tensors).
template <typename T>
void row2_fwd(const T* __restrict__ r0, const T* __restrict__ r1, T* __restrict__ o0,
              T* __restrict__ o1, T* __restrict__ o2, T* __restrict__ o3, int64_t W2) {
  using A = typename Acc<T>::type;
  for (int64_t w = 0; w < W2; ++w) {
    A v0 = to_acc(r0[2 * w]), v1 = to_acc(r0[2 * w + 1]);
    A v2 = to_acc(r1[2 * w]), v3 = to_acc(r1[2 * w + 1]);
    bfly2(v0, v1, v2, v3);
    o0[w] = from_acc<T>(v0);
    o1[w] = from_acc<T>(v1);
    o2[w] = from_acc<T>(v2);
    o3[w] = from_acc<T>(v3);
  }
}

template <typename T>
void row2_inv(const T* __restrict__ i0, const T* __restrict__ i1, const T* __restrict__ i2,
              const T* __restrict__ i3, T* __restrict__ r0, T* __restrict__ r1, int64_t W2) {
  using A = typename Acc<T>::type;
  for (int64_t w = 0; w < W2; ++w) {
    A v0 = to_acc(i0[w]), v1 = to_acc(i1[w]), v2 = to_acc(i2[w]), v3 = to_acc(i3[w]);
    bfly2(v0, v1, v2, v3);
    r0[2 * w] = from_acc<T>(v0);
    r0[2 * w + 1] = from_acc<T>(v1);
    r1[2 * w] = from_acc<T>(v2);
    r1[2 * w + 1] = from_acc<T>(v3);
  }
}

template <typename T>
void row3_fwd(const T* __restrict__ r0, const T* __restrict__ r1, const T* __restrict__ r2,
              const T* __restrict__ r3, T* __restrict__ o0, T* __restrict__ o1,
              T* __restrict__ o2, T* __restrict__ o3, T* __restrict__ o4, T* __restrict__ o5,
              T* __restrict__ o6, T* __restrict__ o7, int64_t W2) {
  using A = typename Acc<T>::type;
  for (int64_t w = 0; w < W2; ++w) {
    A v0 = to_acc(r0[2 * w]), v1 = to_acc(r0[2 * w + 1]);
    A v2 = to_acc(r1[2 * w]), v3 = to_acc(r1[2 * w + 1]);
    A v4 = to_acc(r2[2 * w]), v5 = to_acc(r2[2 * w + 1]);
    A v6 = to_acc(r3[2 * w]), v7 = to_acc(r3[2 * w + 1]);
    bfly3(v0, v1, v2, v3, v4, v5, v6, v7);
    o0[w] = from_acc<T>(v0);
    o1[w] = from_acc<T>(v1);
    o2[w] = from_acc<T>(v2);
    o3[w] = from_acc<T>(v3);
    o4[w] = from_acc<T>(v4);
    o5[w] = from_acc<T>(v5);
    o6[w] = from_acc<T>(v6);
    o7[w] = from_acc<T>(v7);
  }
}

template <typename T>
void row3_inv(const T* __restrict__ i0, const T* __restrict__ i1, const T* __restrict__ i2,
              const T* __restrict__ i3, const T* __restrict__ i4, const T* __restrict__ i5,
              const T* __restrict__ i6, const T* __restrict__ i7, T* __restrict__ r0,
              T* __restrict__ r1, T* __restrict__ r2, T* __restrict__ r3, int64_t W2) {
  using A = typename Acc<T>::type;
  for (int64_t w = 0; w < W2; ++w) {
    A v0 = to_acc(i0[w]), v1 = to_acc(i1[w]), v2 = to_acc(i2[w]), v3 = to_acc(i3[w]);
    A v4 = to_acc(i4[w]), v5 = to_acc(i5[w]), v6 = to_acc(i6[w]), v7 = to_acc(i7[w]);
    bfly3(v0, v1, v2, v3, v4, v5, v6, v7);
    r0[2 * w] = from_acc<T>(v0);
    r0[2 * w + 1] = from_acc<T>(v1);
    r1[2 * w] = from_acc<T>(v2);
    r1[2 * w + 1] = from_acc<T>(v3);
    r2[2 * w] = from_acc<T>(v4);
    r2[2 * w + 1] = from_acc<T>(v5);
    r3[2 * w] = from_acc<T>(v6);
    r3[2 * w + 1] = from_acc<T>(v7);
  }
}

// float16: the same row kernels in float32 on staged copies (spatial rows hold 2 elements per
// output column, subband rows 1).
using cpu_detail::staged_half;
using H16 = c10::Half;

template <>
void row2_fwd<H16>(const H16* __restrict__ r0, const H16* __restrict__ r1, H16* __restrict__ o0,
                   H16* __restrict__ o1, H16* __restrict__ o2, H16* __restrict__ o3, int64_t W2) {
  const H16* const in[2] = {r0, r1};
  H16* const out[4] = {o0, o1, o2, o3};
  staged_half<2, 2, 4, 1>(in, out, W2, [](float* const* i, float* const* o, int64_t len) {
    row2_fwd<float>(i[0], i[1], o[0], o[1], o[2], o[3], len);
  });
}

template <>
void row2_inv<H16>(const H16* __restrict__ i0, const H16* __restrict__ i1,
                   const H16* __restrict__ i2, const H16* __restrict__ i3, H16* __restrict__ r0,
                   H16* __restrict__ r1, int64_t W2) {
  const H16* const in[4] = {i0, i1, i2, i3};
  H16* const out[2] = {r0, r1};
  staged_half<4, 1, 2, 2>(in, out, W2, [](float* const* i, float* const* o, int64_t len) {
    row2_inv<float>(i[0], i[1], i[2], i[3], o[0], o[1], len);
  });
}

template <>
void row3_fwd<H16>(const H16* __restrict__ r0, const H16* __restrict__ r1,
                   const H16* __restrict__ r2, const H16* __restrict__ r3, H16* __restrict__ o0,
                   H16* __restrict__ o1, H16* __restrict__ o2, H16* __restrict__ o3,
                   H16* __restrict__ o4, H16* __restrict__ o5, H16* __restrict__ o6,
                   H16* __restrict__ o7, int64_t W2) {
  const H16* const in[4] = {r0, r1, r2, r3};
  H16* const out[8] = {o0, o1, o2, o3, o4, o5, o6, o7};
  staged_half<4, 2, 8, 1>(in, out, W2, [](float* const* i, float* const* o, int64_t len) {
    row3_fwd<float>(i[0], i[1], i[2], i[3], o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7], len);
  });
}

template <>
void row3_inv<H16>(const H16* __restrict__ i0, const H16* __restrict__ i1,
                   const H16* __restrict__ i2, const H16* __restrict__ i3,
                   const H16* __restrict__ i4, const H16* __restrict__ i5,
                   const H16* __restrict__ i6, const H16* __restrict__ i7, H16* __restrict__ r0,
                   H16* __restrict__ r1, H16* __restrict__ r2, H16* __restrict__ r3, int64_t W2) {
  const H16* const in[8] = {i0, i1, i2, i3, i4, i5, i6, i7};
  H16* const out[4] = {r0, r1, r2, r3};
  staged_half<8, 1, 4, 2>(in, out, W2, [](float* const* i, float* const* o, int64_t len) {
    row3_inv<float>(i[0], i[1], i[2], i[3], i[4], i[5], i[6], i[7], o[0], o[1], o[2], o[3], len);
  });
}

template <int ND, bool FORWARD, typename T>
void haar_impl(const T* src, T* dst, int64_t B, int64_t C, int64_t D, int64_t H, int64_t W) {
  constexpr int S = 1 << ND;
  const int64_t D2 = ND == 3 ? D / 2 : 1, H2 = H / 2, W2 = W / 2;
  const int64_t plane = D2 * H2 * W2;
  const int64_t rows = B * C * D2 * H2;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(W2, 1));
  const int64_t HW = H * W, Dz = ND == 3 ? D : 1;
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    // Row r = (t, h2) with t = bc * D2 + d2; the divisions run once per plane t, not per row
    // (per row they cost as much as a short row's arithmetic).
    int64_t h2 = r0 % H2, t = r0 / H2, r = r0;
    while (r < r1) {
      const int64_t d2 = t % D2, bc = t / D2;  // bc = b * C + c
      const int64_t b = bc / C, c = bc % C;
      const int64_t sp_t = bc * Dz * HW + (ND == 3 ? 2 * d2 : 0) * HW;
      const int64_t sb_t = (b * S * C + c) * plane + d2 * H2 * W2;
      const int64_t band = C * plane;  // distance between subband planes
      const int64_t h_end = std::min(H2, h2 + (r1 - r));
      for (; h2 < h_end; ++h2, ++r) {
        // spatial rows (dz, dy) start at p + dz*HW + dy*W; subband s starts at q + s*band
        const T* ps = FORWARD ? src + sp_t + 2 * h2 * W : nullptr;
        T* pd = FORWARD ? nullptr : dst + sp_t + 2 * h2 * W;
        const int64_t q = sb_t + h2 * W2;
        if constexpr (ND == 2) {
          if (FORWARD)
            row2_fwd<T>(ps, ps + W, dst + q, dst + q + band, dst + q + 2 * band,
                        dst + q + 3 * band, W2);
          else
            row2_inv<T>(src + q, src + q + band, src + q + 2 * band, src + q + 3 * band, pd,
                        pd + W, W2);
        } else {
          if (FORWARD)
            row3_fwd<T>(ps, ps + W, ps + HW, ps + HW + W, dst + q, dst + q + band,
                        dst + q + 2 * band, dst + q + 3 * band, dst + q + 4 * band,
                        dst + q + 5 * band, dst + q + 6 * band, dst + q + 7 * band, W2);
          else
            row3_inv<T>(src + q, src + q + band, src + q + 2 * band, src + q + 3 * band,
                        src + q + 4 * band, src + q + 5 * band, src + q + 6 * band,
                        src + q + 7 * band, pd, pd + W, pd + HW, pd + HW + W, W2);
        }
      }
      h2 = 0;
      ++t;
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
