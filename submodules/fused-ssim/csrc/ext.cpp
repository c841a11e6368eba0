// Torch binding of the fused SSIM kernels.
//   forward(img1, img2, train) -> [ssim_map, dm, d11, d12]  (the three maps are empty when !train)
//   backward(grad_out (0-d), img1, img2, dm, d11, d12) -> dL/dimg1
//   training_terms_forward / training_terms_backward: the training loss of utils/training_loss.py
//     (L1, SSIM and the bound splats' position and scale regularisers) as ATen calls made from
//     C++ around the SSIM kernels: the Python implementation's math without its per-operator
//     Python overhead (the training loop is host-bound). Absent inputs are empty tensors.
// Images: float32 CUDA, (C, H, W) or (B, C, H, W); every channel of every image is one plane.
#include <torch/extension.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "ssim.h"

namespace {

void check_image(const torch::Tensor& t, const char* name) {
    TORCH_CHECK(t.is_cuda(), "ga_ssim: ", name, " must be a CUDA tensor");
    TORCH_CHECK(t.scalar_type() == torch::kFloat32, "ga_ssim: ", name, " must be float32, got ", t.scalar_type());
    TORCH_CHECK(t.dim() == 3 || t.dim() == 4, "ga_ssim: ", name, " must be (C,H,W) or (B,C,H,W), got ", t.sizes());
    TORCH_CHECK(t.size(-1) > 0 && t.size(-2) > 0, "ga_ssim: ", name, " has an empty image: ", t.sizes());
}

struct Geometry {
    int planes, H, W;
};

Geometry geometry(const torch::Tensor& img1, const torch::Tensor& img2) {
    check_image(img1, "img1");
    check_image(img2, "img2");
    TORCH_CHECK(img1.sizes() == img2.sizes(), "ga_ssim: image shapes differ: ", img1.sizes(), " vs ", img2.sizes());
    TORCH_CHECK(img1.device() == img2.device(), "ga_ssim: images are on different devices");
    const int64_t H = img1.size(-2), W = img1.size(-1);
    const int64_t planes = img1.numel() / (H * W);
    TORCH_CHECK(H < (1 << 20) && W < (1 << 20) && planes > 0 && planes < 65536,
                "ga_ssim: unsupported image size ", img1.sizes());
    return {(int)planes, (int)H, (int)W};
}

void check_launch(const char* what) {
    const cudaError_t err = cudaGetLastError();
    TORCH_CHECK(err == cudaSuccess, "ga_ssim.", what, ": CUDA error: ", cudaGetErrorString(err));
}

std::vector<torch::Tensor> ssim_forward(const torch::Tensor& img1_in, const torch::Tensor& img2_in, bool train) {
    const Geometry g = geometry(img1_in, img2_in);
    const c10::cuda::CUDAGuard guard(img1_in.device());
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
    const torch::Tensor img1 = img1_in.contiguous();
    const torch::Tensor img2 = img2_in.contiguous();
    torch::Tensor ssim_map = torch::empty_like(img1);
    torch::Tensor dm, d11, d12;
    if (train) {
        dm = torch::empty_like(img1);
        d11 = torch::empty_like(img1);
        d12 = torch::empty_like(img1);
    } else {
        dm = d11 = d12 = torch::empty({0}, img1.options());
    }
    gassim::launch_forward(g.planes, g.H, g.W, img1.data_ptr<float>(), img2.data_ptr<float>(),
                           ssim_map.data_ptr<float>(), train ? dm.data_ptr<float>() : nullptr,
                           train ? d11.data_ptr<float>() : nullptr, train ? d12.data_ptr<float>() : nullptr, train,
                           stream);
    check_launch("forward");
    return {ssim_map, dm, d11, d12};
}

torch::Tensor ssim_backward(const torch::Tensor& grad_out, const torch::Tensor& img1_in, const torch::Tensor& img2_in,
                            const torch::Tensor& dm_in, const torch::Tensor& d11_in, const torch::Tensor& d12_in) {
    const Geometry g = geometry(img1_in, img2_in);
    TORCH_CHECK(grad_out.numel() == 1, "ga_ssim.backward: grad_out must be a scalar");
    for (const torch::Tensor* t : {&dm_in, &d11_in, &d12_in}) {
        TORCH_CHECK(t->sizes() == img1_in.sizes() && t->is_cuda() && t->scalar_type() == torch::kFloat32,
                    "ga_ssim.backward: coefficient maps must match img1 (forward run with train=True?)");
    }
    const c10::cuda::CUDAGuard guard(img1_in.device());
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
    const torch::Tensor go = grad_out.to(img1_in.device(), torch::kFloat32).reshape({1}).contiguous();
    const torch::Tensor img1 = img1_in.contiguous();
    const torch::Tensor img2 = img2_in.contiguous();
    const torch::Tensor dm = dm_in.contiguous();
    const torch::Tensor d11 = d11_in.contiguous();
    const torch::Tensor d12 = d12_in.contiguous();
    torch::Tensor dx = torch::empty_like(img1);
    const float inv_n = (float)(1.0 / (double)img1.numel());
    gassim::launch_backward(g.planes, g.H, g.W, go.data_ptr<float>(), inv_n, img1.data_ptr<float>(),
                            img2.data_ptr<float>(), dm.data_ptr<float>(), d11.data_ptr<float>(),
                            d12.data_ptr<float>(), dx.data_ptr<float>(), stream);
    check_launch("backward");
    return dx;
}

// ---------------------------------------------------------------------------------- training loss

bool present(const torch::Tensor& t) { return t.defined() && t.numel() > 0; }

// terms = offset + scale * [L1, mean SSIM, visible mean relu(|mu| - t_xyz), visible mean
// |relu(exp(s) - t_scale)|]; returns [terms, then what backward needs: diff, x, y, dm, d11, d12,
// norm, excess, exp_s, excess_s, norm_s, mean_w] (empty tensors for terms not computed).
std::vector<torch::Tensor> training_terms_forward(const torch::Tensor& image, const torch::Tensor& gt,
                                                  const torch::Tensor& xyz, const torch::Tensor& scaling,
                                                  const torch::Tensor& mask, const torch::Tensor& scale_vec,
                                                  const torch::Tensor& offset_vec, double w_l1, double w_ssim,
                                                  double w_xyz, double t_xyz, double w_scale, double t_scale) {
    const Geometry g = geometry(image, gt);
    const c10::cuda::CUDAGuard guard(image.device());
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
    const torch::Tensor x = image.contiguous();
    const torch::Tensor y = gt.contiguous();
    const torch::Tensor empty = torch::empty({0}, x.options());
    const bool use_xyz = present(xyz) && w_xyz != 0.0;
    const bool use_scale = present(scaling) && w_scale != 0.0;
    for (const torch::Tensor* t : {&xyz, &scaling}) {
        TORCH_CHECK(!present(*t) || (t->is_cuda() && t->scalar_type() == torch::kFloat32 && t->dim() == 2 &&
                                     t->size(1) == 3),
                    "ga_ssim.training_terms_forward: xyz / scaling must be float32 CUDA (N, 3)");
    }
    torch::Tensor zero;
    if (w_l1 == 0.0 || w_ssim == 0.0 || !use_xyz || !use_scale) zero = torch::zeros({}, x.options());

    torch::Tensor diff = empty, l1 = zero;
    if (w_l1 != 0.0) {
        diff = x - y;
        l1 = at::linalg_vector_norm(diff, 1.0, c10::nullopt, false, c10::nullopt).div_((double)diff.numel());
    }
    torch::Tensor dm = empty, d11 = empty, d12 = empty, s_mean = zero;
    if (w_ssim != 0.0) {
        torch::Tensor smap = torch::empty_like(x);
        dm = torch::empty_like(x);
        d11 = torch::empty_like(x);
        d12 = torch::empty_like(x);
        gassim::launch_forward(g.planes, g.H, g.W, x.data_ptr<float>(), y.data_ptr<float>(), smap.data_ptr<float>(),
                               dm.data_ptr<float>(), d11.data_ptr<float>(), d12.data_ptr<float>(), true, stream);
        check_launch("training_terms_forward");
        s_mean = smap.mean();
    }
    torch::Tensor mean_w = empty;
    if (use_xyz || use_scale) {
        const int64_t n = (use_xyz ? xyz : scaling).size(0);
        if (present(mask)) {
            TORCH_CHECK(mask.numel() == n, "ga_ssim.training_terms_forward: mask has ", mask.numel(),
                        " entries for ", n, " splats");
            const torch::Tensor w = mask.reshape({-1}).to(x.scalar_type());
            mean_w = w / w.sum().clamp_min(1.0);
        } else {
            mean_w = torch::full({n}, 1.0 / (double)std::max<int64_t>(n, 1), x.options());
        }
    }
    torch::Tensor norm = empty, excess = empty, x_mean = zero;
    if (use_xyz) {
        norm = at::linalg_vector_norm(xyz, 2.0, {1}, false, c10::nullopt);
        excess = torch::relu(norm - t_xyz);
        x_mean = torch::dot(excess, mean_w);
    }
    torch::Tensor exp_s = empty, excess_s = empty, norm_s = empty, s_reg = zero;
    if (use_scale) {
        exp_s = torch::exp(scaling);
        excess_s = torch::relu(exp_s - t_scale);
        norm_s = at::linalg_vector_norm(excess_s, 2.0, {1}, false, c10::nullopt);
        s_reg = torch::dot(norm_s, mean_w);
    }
    const torch::Tensor terms = torch::addcmul(offset_vec, torch::stack({l1, s_mean, x_mean, s_reg}), scale_vec);
    return {terms, diff, x, y, dm, d11, d12, norm, excess, exp_s, excess_s, norm_s, mean_w};
}

// Gradients [image, xyz, scaling] (empty where not needed or not computed) for the upstream
// gradient of the four terms; the saved tensors are those training_terms_forward returned.
std::vector<torch::Tensor> training_terms_backward(const torch::Tensor& grad_terms, const torch::Tensor& scale_vec,
                                                   const torch::Tensor& diff, const torch::Tensor& x,
                                                   const torch::Tensor& y, const torch::Tensor& dm,
                                                   const torch::Tensor& d11, const torch::Tensor& d12,
                                                   const torch::Tensor& xyz, const torch::Tensor& norm,
                                                   const torch::Tensor& excess, const torch::Tensor& exp_s,
                                                   const torch::Tensor& excess_s, const torch::Tensor& norm_s,
                                                   const torch::Tensor& mean_w, bool need_image, bool need_xyz,
                                                   bool need_scaling) {
    const c10::cuda::CUDAGuard guard(x.device());
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
    const torch::Tensor empty = torch::empty({0}, x.options());
    // upstream gradient times each term's weight (and sign)
    const torch::Tensor c = grad_terms.to(scale_vec.scalar_type()).reshape({4}) * scale_vec;
    const double tiny = (double)std::numeric_limits<float>::min();
    torch::Tensor grad_image = empty, grad_xyz = empty, grad_scaling = empty;
    if (need_image) {
        if (present(dm)) {
            const Geometry g = geometry(x, y);
            grad_image = torch::empty_like(x);
            const torch::Tensor go = c.select(0, 1).contiguous();
            gassim::launch_backward(g.planes, g.H, g.W, go.data_ptr<float>(), (float)(1.0 / (double)x.numel()),
                                    x.data_ptr<float>(), y.data_ptr<float>(), dm.data_ptr<float>(),
                                    d11.data_ptr<float>(), d12.data_ptr<float>(), grad_image.data_ptr<float>(),
                                    stream);
            check_launch("training_terms_backward");
        }
        if (present(diff)) {
            const torch::Tensor coef = c.select(0, 0) / (double)diff.numel();
            if (present(grad_image)) {
                grad_image.addcmul_(torch::sign(diff), coef);
            } else {
                grad_image = torch::sign(diff).mul_(coef);
            }
        }
    }
    if (need_xyz && present(norm)) {
        // d/dmu relu(|mu| - t) = [|mu| > t] mu / |mu|   (relu'(0) = 0, as autograd)
        const torch::Tensor q = torch::where(excess > 0, mean_w * c.select(0, 2), 0.0) / norm.clamp_min(tiny);
        grad_xyz = xyz * q.unsqueeze(1);
    }
    if (need_scaling && present(norm_s)) {
        // d/ds |relu(exp(s) - t)| = relu(exp(s) - t) exp(s) / |relu(exp(s) - t)|
        const torch::Tensor r = (mean_w * c.select(0, 3)) / norm_s.clamp_min(tiny);
        grad_scaling = (excess_s * exp_s) * r.unsqueeze(1);
    }
    return {grad_image, grad_xyz, grad_scaling};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "Fused SSIM: one CUDA kernel forward (map + backward coefficients), one backward.";
    m.def("forward", &ssim_forward, "SSIM map and backward coefficient maps",
          pybind11::arg("img1"), pybind11::arg("img2"), pybind11::arg("train"));
    m.def("backward", &ssim_backward, "dL/dimg1 of L = mean SSIM, scaled by grad_out",
          pybind11::arg("grad_out"), pybind11::arg("img1"), pybind11::arg("img2"), pybind11::arg("dm"),
          pybind11::arg("d11"), pybind11::arg("d12"));
    m.def("training_terms_forward", &training_terms_forward,
          "The four weighted training-loss terms and the tensors their backward needs");
    m.def("training_terms_backward", &training_terms_backward,
          "Gradients (image, xyz, scaling) of the training-loss terms");
}
