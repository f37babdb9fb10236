// Python binding of medgen.cuda._C. Includes only torch/extension.h and (for CUDA builds) c10/cuda
// headers: the kernels themselves live behind the plain interfaces in medgen_kernels.h (CUDA) and
// cpu/cpu_kernels.h (CPU). The Python layer (medgen/cuda/*.py) validates arguments, computes the
// schedule coefficients and handles autograd; these entry points only check what the kernels
// rely on (dtype, device, contiguity, shapes) and dispatch by device.
#include <ATen/MemoryOverlap.h>
#include <torch/extension.h>

#ifdef MEDGEN_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include <optional>
#include <tuple>

#include "cpu/cpu_common.h"
#include "cpu/cpu_kernels.h"
#include "medgen_kernels.h"

namespace {

using medgen::DType;

DType to_dtype(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return DType::Float32;
    case at::kDouble:
      return DType::Float64;
    case at::kHalf:
      return DType::Float16;
    case at::kBFloat16:
      return DType::BFloat16;
    default:
      TORCH_CHECK(false, "medgen: unsupported dtype ", t.scalar_type(),
                  " (expected float16, bfloat16, float32 or float64)");
  }
  return DType::Float32;
}

at::ScalarType acc_type(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

void check_device(const at::Tensor& t, const char* name) {
#ifdef MEDGEN_WITH_CUDA
  TORCH_CHECK(t.device().is_cpu() || t.device().is_cuda(), "medgen: ", name,
              " must be a CPU or CUDA tensor, got ", t.device());
#else
  TORCH_CHECK(t.device().is_cpu(), "medgen: ", name,
              " is not on the CPU and this build has no CUDA kernels (device ", t.device(), ")");
#endif
}

void check_like(const at::Tensor& t, const at::Tensor& ref, const char* name) {
  TORCH_CHECK(t.sizes() == ref.sizes(), "medgen: ", name, " has shape ", t.sizes(),
              ", expected ", ref.sizes());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), "medgen: ", name, " has dtype ",
              t.scalar_type(), ", expected ", ref.scalar_type());
  TORCH_CHECK(t.device() == ref.device(), "medgen: ", name, " is on ", t.device(), ", expected ",
              ref.device());
}

#ifdef MEDGEN_WITH_CUDA
void* current_stream(const at::Tensor& t) {
  return static_cast<void*>(c10::cuda::getCurrentCUDAStream(t.device().index()).stream());
}
void check_cuda(int code) {
  TORCH_CHECK(code == 0, "medgen CUDA kernel failed: ", medgen::medgen_cuda_error_string(code));
}
#endif

// Spatial dims as (D, H, W) with D = 1 for 2D input.
std::tuple<int, int64_t, int64_t, int64_t> spatial(const at::Tensor& t) {
  TORCH_CHECK(t.dim() == 4 || t.dim() == 5, "medgen: haar expects a 4-D (B, C, H, W) or 5-D ",
              "(B, C, D, H, W) tensor, got ", t.dim(), "-D");
  const int nd = static_cast<int>(t.dim()) - 2;
  const int64_t D = nd == 3 ? t.size(2) : 1;
  return {nd, D, t.size(-2), t.size(-1)};
}

// The result tensor: a new one, or the caller's `out` after checking that it fits exactly and
// shares no memory with the input (the kernels assume restrict pointers).
at::Tensor result_tensor(const at::Tensor& in, const std::vector<int64_t>& shape,
                         const std::optional<at::Tensor>& out, const char* op) {
  if (!out.has_value()) return at::empty(shape, in.options());
  const at::Tensor& o = *out;
  TORCH_CHECK(o.sizes() == at::IntArrayRef(shape), "medgen: ", op, " out has shape ", o.sizes(),
              ", expected ", at::IntArrayRef(shape));
  TORCH_CHECK(o.scalar_type() == in.scalar_type() && o.device() == in.device(), "medgen: ", op,
              " out must have the input's dtype and device");
  TORCH_CHECK(o.is_contiguous(), "medgen: ", op, " out must be contiguous");
  at::assert_no_overlap(o, in);
  return o;
}

at::Tensor haar_dwt(const at::Tensor& x_in, const std::optional<at::Tensor>& out) {
  check_device(x_in, "x");
  const at::Tensor x = x_in.contiguous();
  auto [nd, D, H, W] = spatial(x);
  TORCH_CHECK((nd == 2 || D % 2 == 0) && H % 2 == 0 && W % 2 == 0,
              "medgen: haar_dwt needs even spatial sizes, got ", x.sizes());
  const int64_t B = x.size(0), C = x.size(1), S = int64_t(1) << nd;
  std::vector<int64_t> out_shape{B, S * C};
  if (nd == 3) out_shape.push_back(D / 2);
  out_shape.push_back(H / 2);
  out_shape.push_back(W / 2);
  at::Tensor y = result_tensor(x, out_shape, out, "haar_dwt");
  const DType dt = to_dtype(x);
  if (x.device().is_cpu()) {
    medgen::cpu_haar_dwt(x.data_ptr(), y.data_ptr(), dt, nd, B, C, D, H, W);
  } else {
#ifdef MEDGEN_WITH_CUDA
    const c10::cuda::CUDAGuard guard(x.device());
    check_cuda(medgen::launch_haar_dwt(x.data_ptr(), y.data_ptr(), dt, nd, B, C, D, H, W,
                                       current_stream(x)));
#endif
  }
  return y;
}

at::Tensor haar_idwt(const at::Tensor& w_in, const std::optional<at::Tensor>& out) {
  check_device(w_in, "w");
  const at::Tensor w = w_in.contiguous();
  auto [nd, D2, H2, W2] = spatial(w);
  const int64_t S = int64_t(1) << nd;
  TORCH_CHECK(w.size(1) % S == 0, "medgen: haar_idwt expects ", S, "*C channels, got ", w.size(1));
  const int64_t B = w.size(0), C = w.size(1) / S;
  const int64_t D = nd == 3 ? 2 * D2 : 1, H = 2 * H2, W = 2 * W2;
  std::vector<int64_t> out_shape{B, C};
  if (nd == 3) out_shape.push_back(D);
  out_shape.push_back(H);
  out_shape.push_back(W);
  at::Tensor x = result_tensor(w, out_shape, out, "haar_idwt");
  const DType dt = to_dtype(w);
  if (w.device().is_cpu()) {
    medgen::cpu_haar_idwt(w.data_ptr(), x.data_ptr(), dt, nd, B, C, D, H, W);
  } else {
#ifdef MEDGEN_WITH_CUDA
    const c10::cuda::CUDAGuard guard(w.device());
    check_cuda(medgen::launch_haar_idwt(w.data_ptr(), x.data_ptr(), dt, nd, B, C, D, H, W,
                                        current_stream(w)));
#endif
  }
  return x;
}

// coef: (R, 5) rows (a, b, p, q, s) in float32 (float64 for double inputs), R == 1 or R == B.
std::tuple<at::Tensor, at::Tensor> affine_step(const at::Tensor& x_in, const at::Tensor& m_in,
                                               const std::optional<at::Tensor>& noise_in,
                                               const at::Tensor& coef_in,
                                               std::optional<double> clip_value) {
  check_device(x_in, "x_t");
  const at::Tensor x = x_in.contiguous();
  check_like(m_in, x, "model_output");
  const at::Tensor m = m_in.contiguous();
  at::Tensor noise;
  if (noise_in.has_value() && noise_in->defined()) {
    check_like(*noise_in, x, "noise");
    noise = noise_in->contiguous();
  }
  TORCH_CHECK(x.dim() >= 1, "medgen: x_t must have a batch dimension");
  const at::Tensor coef = coef_in.to(x.device(), acc_type(x)).contiguous();
  TORCH_CHECK(coef.dim() == 2 && coef.size(1) == 5, "medgen: coef must be (R, 5)");
  const int64_t n = x.numel(), B = x.size(0), R = coef.size(0);
  TORCH_CHECK(R == 1 || R == B, "medgen: coef has ", R, " rows for batch ", B);
  const int64_t per_row = B > 0 ? n / B : 1;
  at::Tensor xp = at::empty_like(x);
  at::Tensor x0 = at::empty_like(x);
  const int clip = clip_value.has_value() ? 1 : 0;
  const double cv = clip_value.value_or(0.0);
  const void* np = noise.defined() ? noise.data_ptr() : nullptr;
  const DType dt = to_dtype(x);
  if (x.device().is_cpu()) {
    medgen::cpu_affine_step(x.data_ptr(), m.data_ptr(), np, coef.data_ptr(), R,
                            std::max<int64_t>(per_row, 1), n, clip, cv, xp.data_ptr(),
                            x0.data_ptr(), dt);
  } else {
#ifdef MEDGEN_WITH_CUDA
    const c10::cuda::CUDAGuard guard(x.device());
    check_cuda(medgen::launch_affine_step(x.data_ptr(), m.data_ptr(), np, coef.data_ptr(), R,
                                          std::max<int64_t>(per_row, 1), n, clip, cv,
                                          xp.data_ptr(), x0.data_ptr(), dt, current_stream(x)));
#endif
  }
  return {xp, x0};
}

// out = x + c * v, coef: (R,) in the compute type, R == 1 or R == B.
at::Tensor axpy_step(const at::Tensor& x_in, const at::Tensor& v_in, const at::Tensor& coef_in) {
  check_device(x_in, "x");
  const at::Tensor x = x_in.contiguous();
  check_like(v_in, x, "v");
  const at::Tensor v = v_in.contiguous();
  TORCH_CHECK(x.dim() >= 1, "medgen: x must have a batch dimension");
  const at::Tensor coef = coef_in.to(x.device(), acc_type(x)).contiguous().view({-1});
  const int64_t n = x.numel(), B = x.size(0), R = coef.numel();
  TORCH_CHECK(R == 1 || R == B, "medgen: coef has ", R, " entries for batch ", B);
  const int64_t per_row = std::max<int64_t>(B > 0 ? n / B : 1, 1);
  at::Tensor out = at::empty_like(x);
  const DType dt = to_dtype(x);
  if (x.device().is_cpu()) {
    medgen::cpu_axpy_step(x.data_ptr(), v.data_ptr(), coef.data_ptr(), R, per_row, n,
                          out.data_ptr(), dt);
  } else {
#ifdef MEDGEN_WITH_CUDA
    const c10::cuda::CUDAGuard guard(x.device());
    check_cuda(medgen::launch_axpy_step(x.data_ptr(), v.data_ptr(), coef.data_ptr(), R, per_row,
                                        n, out.data_ptr(), dt, current_stream(x)));
#endif
  }
  return out;
}

bool cuda_compiled() {
#ifdef MEDGEN_WITH_CUDA
  return true;
#else
  return false;
#endif
}

bool cpu_f16c() { return medgen::cpu_detail::half_f16c(); }

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "medgen.cuda compiled kernels (CPU/OpenMP, optionally CUDA)";
  m.def("haar_dwt", &haar_dwt, "single-level orthonormal Haar DWT (2D for 4-D, 3D for 5-D input)",
        py::arg("x"), py::arg("out") = py::none());
  m.def("haar_idwt", &haar_idwt, "inverse of haar_dwt", py::arg("w"), py::arg("out") = py::none());
  m.def("affine_step", &affine_step, "fused DDIM/DDPM step from per-sample coefficients",
        py::arg("x"), py::arg("m"), py::arg("noise"), py::arg("coef"), py::arg("clip_value"));
  m.def("axpy_step", &axpy_step, "x + c * v with per-sample c", py::arg("x"), py::arg("v"),
        py::arg("coef"));
  m.def("cuda_compiled", &cuda_compiled, "whether the CUDA kernels were compiled in");
  m.def("cpu_f16c", &cpu_f16c,
        "whether the CPU kernels convert float16 with F16C (else scalar; "
        "MEDGEN_CUDA_CPU_NO_F16C=1 at import forces scalar)");
}
