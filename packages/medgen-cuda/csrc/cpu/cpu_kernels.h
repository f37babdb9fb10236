// CPU counterparts of the launchers in medgen_kernels.h (same arguments, minus the stream).
// Implemented in C++ with OpenMP through ATen's parallel_for, so torch.set_num_threads governs
// the extension's threads as well.
#pragma once

#include <cstdint>

#include "medgen_kernels.h"

namespace medgen {

void cpu_haar_dwt(const void* x, void* y, DType dtype, int nd, int64_t B, int64_t C, int64_t D,
                  int64_t H, int64_t W);
void cpu_haar_idwt(const void* y, void* x, DType dtype, int nd, int64_t B, int64_t C, int64_t D,
                   int64_t H, int64_t W);
void cpu_affine_step(const void* x, const void* m, const void* noise, const void* coef,
                     int64_t coef_rows, int64_t per_row, int64_t n, int clip, double clip_value,
                     void* xp_out, void* x0_out, DType dtype);
void cpu_axpy_step(const void* x, const void* v, const void* coef, int64_t coef_rows,
                   int64_t per_row, int64_t n, void* out, DType dtype);

}  // namespace medgen
