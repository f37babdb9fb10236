// Orthonormal single-level Haar DWT / IDWT (2D and 3D) as CUDA kernels. No torch headers.
//
// One thread owns one 2x2 (2D) or 2x2x2 (3D) input block: it loads the 2^ND values, applies the
// butterfly (a, b) -> (a + b, a - b) along W, then H, then D, and scales by 2^(-ND/2). The
// butterfly index of the result is the subband index 4*bD + 2*bH + bW (b = 1: high band), which is
// the WDM-3D order LLL, LLH, LHL, LHH, HLL, HLH, HHL, HHH. The orthonormal Haar matrix per axis,
// [[1, 1], [1, -1]] / sqrt(2), is symmetric and its own inverse, so the inverse transform is the
// same butterfly applied to the 2^ND subband values of one position. Adjacent threads handle
// adjacent output columns, so subband-plane stores are coalesced; input loads are pairs.
#include "common.cuh"

namespace medgen {
namespace {

using cuda_detail::Acc;
using cuda_detail::from_acc;
using cuda_detail::to_acc;

template <int ND, typename A>
__device__ __forceinline__ void butterfly(A* v) {
  constexpr int S = 1 << ND;
#pragma unroll
  for (int bit = 1; bit < S; bit <<= 1) {
#pragma unroll
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
#pragma unroll
  for (int i = 0; i < S; ++i) v[i] = v[i] * scale;
}

// FORWARD: src = spatial (B, C, D, H, W), dst = subbands (B, S*C, D2, H2, W2); inverse swaps roles.
template <int ND, bool FORWARD, typename T>
__global__ void haar_kernel(const T* __restrict__ src, T* __restrict__ dst, int64_t B, int64_t C,
                            int64_t D, int64_t H, int64_t W) {
  using A = typename Acc<T>::type;
  constexpr int S = 1 << ND;
  const int64_t D2 = ND == 3 ? D / 2 : 1, H2 = H / 2, W2 = W / 2;
  const int64_t plane = D2 * H2 * W2;  // one subband plane of one channel
  const int64_t total = B * C * plane;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t w2 = i % W2;
    int64_t t = i / W2;
    const int64_t h2 = t % H2;
    t /= H2;
    const int64_t d2 = t % D2;
    t /= D2;
    const int64_t c = t % C;
    const int64_t b = t / C;
    const int64_t sp_base = (b * C + c) * (ND == 3 ? D : 1) * H * W +
                            (ND == 3 ? 2 * d2 : 0) * H * W + 2 * h2 * W + 2 * w2;
    const int64_t sb_base = (b * S * C + c) * plane + (d2 * H2 + h2) * W2 + w2;
    A v[S];
    if (FORWARD) {
#pragma unroll
      for (int k = 0; k < S; ++k) {
        const int dx = k & 1, dy = (k >> 1) & 1, dz = (k >> 2) & 1;
        v[k] = to_acc(src[sp_base + dz * H * W + dy * W + dx]);
      }
    } else {
#pragma unroll
      for (int k = 0; k < S; ++k) v[k] = to_acc(src[sb_base + k * C * plane]);
    }
    butterfly<ND>(v);
    if (FORWARD) {
#pragma unroll
      for (int k = 0; k < S; ++k) dst[sb_base + k * C * plane] = from_acc<T>(v[k]);
    } else {
#pragma unroll
      for (int k = 0; k < S; ++k) {
        const int dx = k & 1, dy = (k >> 1) & 1, dz = (k >> 2) & 1;
        dst[sp_base + dz * H * W + dy * W + dx] = from_acc<T>(v[k]);
      }
    }
  }
}

template <bool FORWARD>
int launch_haar(const void* src, void* dst, DType dtype, int nd, int64_t B, int64_t C, int64_t D,
                int64_t H, int64_t W, void* stream) {
  if (nd != 2 && nd != 3) return static_cast<int>(cudaErrorInvalidValue);
  const int64_t blocks_total = B * C * (nd == 3 ? D / 2 : 1) * (H / 2) * (W / 2);
  if (blocks_total == 0) return 0;
  const int threads = 256;
  const unsigned int grid = cuda_detail::grid_for(blocks_total, threads);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  MEDGEN_DISPATCH(dtype, T, {
    if (nd == 3)
      haar_kernel<3, FORWARD, T><<<grid, threads, 0, s>>>(static_cast<const T*>(src),
                                                          static_cast<T*>(dst), B, C, D, H, W);
    else
      haar_kernel<2, FORWARD, T><<<grid, threads, 0, s>>>(static_cast<const T*>(src),
                                                          static_cast<T*>(dst), B, C, D, H, W);
  });
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

int launch_haar_dwt(const void* x, void* y, DType dtype, int nd, int64_t B, int64_t C, int64_t D,
                    int64_t H, int64_t W, void* stream) {
  return launch_haar<true>(x, y, dtype, nd, B, C, D, H, W, stream);
}

int launch_haar_idwt(const void* y, void* x, DType dtype, int nd, int64_t B, int64_t C, int64_t D,
                     int64_t H, int64_t W, void* stream) {
  return launch_haar<false>(y, x, dtype, nd, B, C, D, H, W, stream);
}

const char* medgen_cuda_error_string(int code) {
  return cudaGetErrorString(static_cast<cudaError_t>(code));
}

}  // namespace medgen
