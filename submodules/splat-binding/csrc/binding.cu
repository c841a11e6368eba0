// Splats bound to mesh triangles: world position, scale and rotation from the local parameters
// and the per-face frames, forward and backward, one thread per splat (SPEC 5):
//   xyz      = k[f] * R[f] @ local + center[f]
//   scaling  = k[f] * exp(raw_scaling)
//   rotation = quat[f] (x) normalize(raw_rotation)        (Hamilton product, wxyz)
// Face gradients are accumulated with atomics (a face holds a few splats).
#include <torch/extension.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <vector>

namespace {

constexpr float kNormEps = 1e-12f;  // torch.nn.functional.normalize's default eps
constexpr int kThreads = 256;
constexpr int kFaceRow = 17;  // packed per-face gradient row: center (3), R (9), quat (4), k (1)

struct Quat {
    float w, x, y, z;
};

__device__ __forceinline__ Quat hamilton(const Quat& a, const Quat& b) {
    return {a.w * b.w - a.x * b.x - a.y * b.y - a.z * b.z,
            a.w * b.x + a.x * b.w + a.y * b.z - a.z * b.y,
            a.w * b.y - a.x * b.z + a.y * b.w + a.z * b.x,
            a.w * b.z + a.x * b.y - a.y * b.x + a.z * b.w};
}

__device__ __forceinline__ Quat load_quat(const float* p) { return {p[0], p[1], p[2], p[3]}; }

__global__ void forward_kernel(int n, const float* __restrict__ local, const float* __restrict__ raw_s,
                               const float* __restrict__ raw_r, const int64_t* __restrict__ binding,
                               const float* __restrict__ center, const float* __restrict__ rotmat,
                               const float* __restrict__ fquat, const float* __restrict__ fscale,
                               float* __restrict__ xyz, float* __restrict__ scaling, float* __restrict__ rotation) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const int64_t f = binding[i];
    const float k = fscale[f];
    const float* R = rotmat + 9 * f;
    const float l0 = local[3 * i], l1 = local[3 * i + 1], l2 = local[3 * i + 2];
#pragma unroll
    for (int r = 0; r < 3; ++r) {
        xyz[3 * i + r] = k * (R[3 * r] * l0 + R[3 * r + 1] * l1 + R[3 * r + 2] * l2) + center[3 * f + r];
        scaling[3 * i + r] = k * expf(raw_s[3 * i + r]);
    }
    const Quat q = load_quat(raw_r + 4 * i);
    const float inv = 1.0f / fmaxf(sqrtf(q.w * q.w + q.x * q.x + q.y * q.y + q.z * q.z), kNormEps);
    const Quat p = hamilton(load_quat(fquat + 4 * f), {q.w * inv, q.x * inv, q.y * inv, q.z * inv});
    rotation[4 * i] = p.w;
    rotation[4 * i + 1] = p.x;
    rotation[4 * i + 2] = p.y;
    rotation[4 * i + 3] = p.z;
}

__global__ void backward_kernel(int n, const float* __restrict__ local, const float* __restrict__ raw_s,
                                const float* __restrict__ raw_r, const int64_t* __restrict__ binding,
                                const float* __restrict__ rotmat, const float* __restrict__ fquat,
                                const float* __restrict__ fscale, const float* __restrict__ g_xyz,
                                const float* __restrict__ g_scaling, const float* __restrict__ g_rotation,
                                float* __restrict__ d_local, float* __restrict__ d_raw_s, float* __restrict__ d_raw_r,
                                float* __restrict__ d_face) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const int64_t f = binding[i];
    const float k = fscale[f];
    const float* R = rotmat + 9 * f;
    float* d_center = d_face + kFaceRow * f;
    float* d_rotmat = d_center + 3;
    float* d_fquat = d_center + 12;
    float* d_fscale = d_center + 16;
    const float l[3] = {local[3 * i], local[3 * i + 1], local[3 * i + 2]};
    const float gx[3] = {g_xyz[3 * i], g_xyz[3 * i + 1], g_xyz[3 * i + 2]};

    // position: xyz = k R l + c
    float dk = 0.0f;
#pragma unroll
    for (int r = 0; r < 3; ++r) {
        const float Rl = R[3 * r] * l[0] + R[3 * r + 1] * l[1] + R[3 * r + 2] * l[2];
        dk += gx[r] * Rl;
        atomicAdd(d_center + r, gx[r]);
#pragma unroll
        for (int c = 0; c < 3; ++c) atomicAdd(d_rotmat + 3 * r + c, k * gx[r] * l[c]);
    }
#pragma unroll
    for (int c = 0; c < 3; ++c)
        d_local[3 * i + c] = k * (R[c] * gx[0] + R[3 + c] * gx[1] + R[6 + c] * gx[2]);

    // scale: s = k exp(raw)
#pragma unroll
    for (int c = 0; c < 3; ++c) {
        const float e = expf(raw_s[3 * i + c]);
        const float g = g_scaling[3 * i + c];
        dk += g * e;
        d_raw_s[3 * i + c] = g * e * k;
    }
    atomicAdd(d_fscale, dk);

    // rotation: p = a (x) u, u = q / max(|q|, eps)
    const Quat a = load_quat(fquat + 4 * f);
    const Quat q = load_quat(raw_r + 4 * i);
    const float norm = sqrtf(q.w * q.w + q.x * q.x + q.y * q.y + q.z * q.z);
    const float inv = 1.0f / fmaxf(norm, kNormEps);
    const Quat u = {q.w * inv, q.x * inv, q.y * inv, q.z * inv};
    const Quat g = load_quat(g_rotation + 4 * i);
    // dL/da (p is linear in a for fixed u)
    atomicAdd(d_fquat + 0, g.w * u.w + g.x * u.x + g.y * u.y + g.z * u.z);
    atomicAdd(d_fquat + 1, -g.w * u.x + g.x * u.w - g.y * u.z + g.z * u.y);
    atomicAdd(d_fquat + 2, -g.w * u.y + g.x * u.z + g.y * u.w - g.z * u.x);
    atomicAdd(d_fquat + 3, -g.w * u.z - g.x * u.y + g.y * u.x + g.z * u.w);
    // dL/du
    const Quat du = {g.w * a.w + g.x * a.x + g.y * a.y + g.z * a.z,
                     -g.w * a.x + g.x * a.w + g.y * a.z - g.z * a.y,
                     -g.w * a.y - g.x * a.z + g.y * a.w + g.z * a.x,
                     -g.w * a.z + g.x * a.y - g.y * a.x + g.z * a.w};
    if (norm > kNormEps) {  // d(q/|q|) = (du - u (u . du)) / |q|
        const float dot = u.w * du.w + u.x * du.x + u.y * du.y + u.z * du.z;
        d_raw_r[4 * i] = (du.w - u.w * dot) * inv;
        d_raw_r[4 * i + 1] = (du.x - u.x * dot) * inv;
        d_raw_r[4 * i + 2] = (du.y - u.y * dot) * inv;
        d_raw_r[4 * i + 3] = (du.z - u.z * dot) * inv;
    } else {  // q / eps: linear
        d_raw_r[4 * i] = du.w * inv;
        d_raw_r[4 * i + 1] = du.x * inv;
        d_raw_r[4 * i + 2] = du.y * inv;
        d_raw_r[4 * i + 3] = du.z * inv;
    }
}

void check(const torch::Tensor& t, const char* name, torch::ScalarType type, std::vector<int64_t> shape) {
    TORCH_CHECK(t.is_cuda(), "splat_binding: ", name, " must be a CUDA tensor");
    TORCH_CHECK(t.scalar_type() == type, "splat_binding: ", name, " must be ", type, ", got ", t.scalar_type());
    TORCH_CHECK(t.is_contiguous(), "splat_binding: ", name, " must be contiguous");
    TORCH_CHECK(t.dim() == (int64_t)shape.size(), "splat_binding: ", name, " has shape ", t.sizes());
    for (size_t d = 0; d < shape.size(); ++d)
        TORCH_CHECK(shape[d] < 0 || t.size(d) == shape[d], "splat_binding: ", name, " has shape ", t.sizes());
}

struct Sizes {
    int64_t n, faces;
};

Sizes check_inputs(const torch::Tensor& local, const torch::Tensor& raw_s, const torch::Tensor& raw_r,
                   const torch::Tensor& binding, const torch::Tensor& center, const torch::Tensor& rotmat,
                   const torch::Tensor& fquat, const torch::Tensor& fscale) {
    const int64_t n = local.size(0), nf = center.size(0);
    check(local, "local_xyz", torch::kFloat32, {n, 3});
    check(raw_s, "raw_scaling", torch::kFloat32, {n, 3});
    check(raw_r, "raw_rotation", torch::kFloat32, {n, 4});
    check(binding, "binding", torch::kInt64, {n});
    check(center, "face_center", torch::kFloat32, {nf, 3});
    check(rotmat, "face_rotation", torch::kFloat32, {nf, 3, 3});
    check(fquat, "face_quaternion", torch::kFloat32, {nf, 4});
    check(fscale, "face_scaling", torch::kFloat32, {nf, 1});
    TORCH_CHECK(n < (int64_t)1 << 31, "splat_binding: too many splats: ", n);
    return {n, nf};
}

std::vector<torch::Tensor> forward(const torch::Tensor& local, const torch::Tensor& raw_s, const torch::Tensor& raw_r,
                                   const torch::Tensor& binding, const torch::Tensor& center,
                                   const torch::Tensor& rotmat, const torch::Tensor& fquat,
                                   const torch::Tensor& fscale) {
    const Sizes s = check_inputs(local, raw_s, raw_r, binding, center, rotmat, fquat, fscale);
    const c10::cuda::CUDAGuard guard(local.device());
    auto xyz = torch::empty({s.n, 3}, local.options());
    auto scaling = torch::empty({s.n, 3}, local.options());
    auto rotation = torch::empty({s.n, 4}, local.options());
    if (s.n > 0) {
        const int blocks = (int)((s.n + kThreads - 1) / kThreads);
        forward_kernel<<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream().stream()>>>(
            (int)s.n, local.data_ptr<float>(), raw_s.data_ptr<float>(), raw_r.data_ptr<float>(),
            binding.data_ptr<int64_t>(), center.data_ptr<float>(), rotmat.data_ptr<float>(), fquat.data_ptr<float>(),
            fscale.data_ptr<float>(), xyz.data_ptr<float>(), scaling.data_ptr<float>(), rotation.data_ptr<float>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    return {xyz, scaling, rotation};
}

std::vector<torch::Tensor> backward(const torch::Tensor& local, const torch::Tensor& raw_s, const torch::Tensor& raw_r,
                                    const torch::Tensor& binding, const torch::Tensor& center,
                                    const torch::Tensor& rotmat, const torch::Tensor& fquat,
                                    const torch::Tensor& fscale, const torch::Tensor& g_xyz,
                                    const torch::Tensor& g_scaling, const torch::Tensor& g_rotation) {
    const Sizes s = check_inputs(local, raw_s, raw_r, binding, center, rotmat, fquat, fscale);
    check(g_xyz, "grad of xyz", torch::kFloat32, {s.n, 3});
    check(g_scaling, "grad of scaling", torch::kFloat32, {s.n, 3});
    check(g_rotation, "grad of rotation", torch::kFloat32, {s.n, 4});
    const c10::cuda::CUDAGuard guard(local.device());
    auto d_local = torch::empty_like(local);
    auto d_raw_s = torch::empty_like(raw_s);
    auto d_raw_r = torch::empty_like(raw_r);
    // every face gradient in one zeroed (F, 17) buffer (one memset): center 0-2, R 3-11, quat 12-15, k 16
    auto face = torch::zeros({s.faces, kFaceRow}, local.options());
    if (s.n > 0) {
        const int blocks = (int)((s.n + kThreads - 1) / kThreads);
        backward_kernel<<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream().stream()>>>(
            (int)s.n, local.data_ptr<float>(), raw_s.data_ptr<float>(), raw_r.data_ptr<float>(),
            binding.data_ptr<int64_t>(), rotmat.data_ptr<float>(), fquat.data_ptr<float>(), fscale.data_ptr<float>(),
            g_xyz.data_ptr<float>(), g_scaling.data_ptr<float>(), g_rotation.data_ptr<float>(),
            d_local.data_ptr<float>(), d_raw_s.data_ptr<float>(), d_raw_r.data_ptr<float>(), face.data_ptr<float>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    const int64_t F = s.faces;
    return {d_local, d_raw_s, d_raw_r,
            face.as_strided({F, 3}, {kFaceRow, 1}, face.storage_offset() + 0),
            face.as_strided({F, 3, 3}, {kFaceRow, 3, 1}, face.storage_offset() + 3),
            face.as_strided({F, 4}, {kFaceRow, 1}, face.storage_offset() + 12),
            face.as_strided({F, 1}, {kFaceRow, 1}, face.storage_offset() + 16)};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "Splats bound to mesh triangles: world position/scale/rotation, forward and backward";
    m.def("forward", &forward, "(local, raw_scaling, raw_rotation, binding, center, R, quat, k) -> [xyz, scaling, rotation]");
    m.def("backward", &backward, "(inputs..., grad_xyz, grad_scaling, grad_rotation) -> input gradients");
}
