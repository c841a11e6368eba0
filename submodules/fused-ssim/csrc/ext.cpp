// Torch binding of the fused SSIM kernels.
//   forward(img1, img2, train) -> [ssim_map, dm, d11, d12]  (the three maps are empty when !train)
//   backward(grad_out (0-d), img1, img2, dm, d11, d12) -> dL/dimg1
// Images: float32 CUDA, (C, H, W) or (B, C, H, W); every channel of every image is one plane.
#include <torch/extension.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

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

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "Fused SSIM: one CUDA kernel forward (map + backward coefficients), one backward.";
    m.def("forward", &ssim_forward, "SSIM map and backward coefficient maps",
          pybind11::arg("img1"), pybind11::arg("img2"), pybind11::arg("train"));
    m.def("backward", &ssim_backward, "dL/dimg1 of L = mean SSIM, scaled by grad_out",
          pybind11::arg("grad_out"), pybind11::arg("img1"), pybind11::arg("img2"), pybind11::arg("dm"),
          pybind11::arg("d11"), pybind11::arg("d12"));
}
