// Fused SSIM (11x11 Gaussian window, sigma 1.5, C1 = 0.01^2, C2 = 0.03^2, zero padding 5) on
// float32 planes laid out (planes, H, W), each plane an independent image channel.
#pragma once

#include <cuda_runtime.h>

namespace gassim {

constexpr int kRadius = 5;                  // window 11 = 2 * kRadius + 1
constexpr int kWin = 2 * kRadius + 1;
constexpr float kC1 = 0.01f * 0.01f;
constexpr float kC2 = 0.03f * 0.03f;

// The normalised 1D Gaussian, passed to the kernels by value.
struct Taps {
    float w[kWin];
};

Taps gaussian_taps();

// Forward: ssim_map (always), and when `train` the three coefficient maps of backward:
// dm = dS/dmu1 (with E[x^2], E[xy] held), d11 = dS/dsigma1^2, d12 = dS/dsigma12.
void launch_forward(int planes, int H, int W, const float* x, const float* y, float* ssim_map, float* dm,
                    float* d11, float* d12, bool train, cudaStream_t stream);

// Backward: dx = grad_out[0] * inv_n * (G*dm + 2 x G*d11 + y G*d12); grad_out is a device scalar.
void launch_backward(int planes, int H, int W, const float* grad_out, float inv_n, const float* x, const float* y,
                     const float* dm, const float* d11, const float* d12, float* dx, cudaStream_t stream);

}  // namespace gassim
