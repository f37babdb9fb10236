// Plain C++ interface of the medgen CUDA kernels. Deliberately free of torch and CUDA headers:
// the .cu files include only this header plus the CUDA runtime, so nvcc compiles them in seconds
// and CI can compile them with plain nvcc (no torch) for every target architecture.
//
// All tensors are dense, contiguous, row-major, on the current device. Streams are passed as
// opaque `void*` (a cudaStream_t). Every launcher returns 0 on success or a cudaError_t code;
// medgen_cuda_error_string() turns the code into a message.
#pragma once

#include <cstdint>

namespace medgen {

enum class DType : int { Float32 = 0, Float64 = 1, Float16 = 2, BFloat16 = 3 };

// Single-level orthonormal Haar transform over the last `nd` (2 or 3) axes.
// Forward: x (B, C, [D,] H, W) -> y (B, 2^nd * C, [D/2,] H/2, W/2), subband-major channels
// (channel = subband * C + c), subband = 4*bD + 2*bH + bW (b = 1 for the high band; 2D: 2*bH + bW).
// For nd == 2 pass D = 1. Inverse: the exact adjoint (= inverse), same shapes reversed.
int launch_haar_dwt(const void* x, void* y, DType dtype, int nd, int64_t B, int64_t C, int64_t D,
                    int64_t H, int64_t W, void* stream);
int launch_haar_idwt(const void* y, void* x, DType dtype, int nd, int64_t B, int64_t C, int64_t D,
                     int64_t H, int64_t W, void* stream);

// Fused affine sampler step (DDIM and DDPM are both of this form, see _coeffs.py):
//   x0  = a*x + b*m                                   (written to x0_out)
//   x0c = clip ? clamp(x0, -clip_value, clip_value) : x0
//   xp  = p*x + q*(clip ? x0c : m) + s*noise          (written to xp_out; noise may be null)
// `coef` holds rows of 5 values (a, b, p, q, s) in the compute type (double for Float64 inputs,
// float otherwise); row r applies to elements [r*per_row, (r+1)*per_row), or to all elements
// when coef_rows == 1. Half/bfloat16 outputs saturate to the finite range of the type.
int launch_affine_step(const void* x, const void* m, const void* noise, const void* coef,
                       int64_t coef_rows, int64_t per_row, int64_t n, int clip, double clip_value,
                       void* xp_out, void* x0_out, DType dtype, void* stream);

// out = x + c*v with one coefficient per row (rectified-flow Euler step, c = t_next - t).
int launch_axpy_step(const void* x, const void* v, const void* coef, int64_t coef_rows,
                     int64_t per_row, int64_t n, void* out, DType dtype, void* stream);

const char* medgen_cuda_error_string(int code);

}  // namespace medgen
