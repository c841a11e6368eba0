// Fused SSIM kernels. One block = one tile of kTileW x kTileH output pixels of one plane:
// the tile plus a kRadius halo is loaded into shared memory (zeros outside the image, i.e.
// 'same' zero padding), filtered horizontally into shared memory, then vertically per pixel.
#include <cmath>

#include "ssim.h"

namespace gassim {
namespace {

constexpr int kTileW = 32;
constexpr int kTileH = 16;
constexpr int kBlockX = 32;
constexpr int kBlockY = 8;
constexpr int kThreads = kBlockX * kBlockY;
constexpr int kRowsPerThread = kTileH / kBlockY;
constexpr int kShW = kTileW + 2 * kRadius;
constexpr int kShH = kTileH + 2 * kRadius;
static_assert(kTileW == kBlockX, "one thread per tile column");
static_assert(kTileH % kBlockY == 0, "whole rows per thread");

// Load a (kShH, kShW) window of `src` (one plane) at (y0, x0) into `dst`, zeros outside.
__device__ __forceinline__ void load_halo(float (*dst)[kShW], const float* __restrict__ src, int H, int W, int y0,
                                          int x0, int tid) {
    for (int i = tid; i < kShH * kShW; i += kThreads) {
        const int r = i / kShW;
        const int c = i - r * kShW;
        const int gy = y0 + r;
        const int gx = x0 + c;
        const bool inside = gy >= 0 && gy < H && gx >= 0 && gx < W;
        dst[r][c] = inside ? __ldg(src + (size_t)gy * W + gx) : 0.0f;
    }
}

__global__ void __launch_bounds__(kThreads) ssim_forward_kernel(int H, int W, const float* __restrict__ x,
                                                                 const float* __restrict__ y,
                                                                 float* __restrict__ ssim_map, float* __restrict__ dm,
                                                                 float* __restrict__ d11, float* __restrict__ d12,
                                                                 int train, Taps taps) {
    __shared__ float sx[kShH][kShW];
    __shared__ float sy[kShH][kShW];
    __shared__ float hx[kShH][kTileW];
    __shared__ float hy[kShH][kTileW];
    __shared__ float hxx[kShH][kTileW];
    __shared__ float hyy[kShH][kTileW];
    __shared__ float hxy[kShH][kTileW];

    const size_t plane = (size_t)blockIdx.z * H * W;
    const int ty0 = blockIdx.y * kTileH;
    const int tx0 = blockIdx.x * kTileW;
    const int tid = threadIdx.y * kBlockX + threadIdx.x;
    load_halo(sx, x + plane, H, W, ty0 - kRadius, tx0 - kRadius, tid);
    load_halo(sy, y + plane, H, W, ty0 - kRadius, tx0 - kRadius, tid);
    __syncthreads();

    const int c = threadIdx.x;
    for (int r = threadIdx.y; r < kShH; r += kBlockY) {
        float ax = 0.f, ay = 0.f, axx = 0.f, ayy = 0.f, axy = 0.f;
#pragma unroll
        for (int k = 0; k < kWin; ++k) {
            const float a = sx[r][c + k];
            const float b = sy[r][c + k];
            const float w = taps.w[k];
            ax = fmaf(w, a, ax);
            ay = fmaf(w, b, ay);
            axx = fmaf(w, a * a, axx);
            ayy = fmaf(w, b * b, ayy);
            axy = fmaf(w, a * b, axy);
        }
        hx[r][c] = ax;
        hy[r][c] = ay;
        hxx[r][c] = axx;
        hyy[r][c] = ayy;
        hxy[r][c] = axy;
    }
    __syncthreads();

    const int gx = tx0 + c;
#pragma unroll
    for (int j = 0; j < kRowsPerThread; ++j) {
        const int r = threadIdx.y + j * kBlockY;
        const int gy = ty0 + r;
        if (gy >= H || gx >= W) continue;
        float mu1 = 0.f, mu2 = 0.f, e11 = 0.f, e22 = 0.f, e12 = 0.f;
#pragma unroll
        for (int k = 0; k < kWin; ++k) {
            const float w = taps.w[k];
            mu1 = fmaf(w, hx[r + k][c], mu1);
            mu2 = fmaf(w, hy[r + k][c], mu2);
            e11 = fmaf(w, hxx[r + k][c], e11);
            e22 = fmaf(w, hyy[r + k][c], e22);
            e12 = fmaf(w, hxy[r + k][c], e12);
        }
        const float mu1_sq = mu1 * mu1;
        const float mu2_sq = mu2 * mu2;
        const float mu12 = mu1 * mu2;
        const float s11 = e11 - mu1_sq;
        const float s22 = e22 - mu2_sq;
        const float s12 = e12 - mu12;
        const float A = 2.f * mu12 + kC1;
        const float B = 2.f * s12 + kC2;
        const float C = mu1_sq + mu2_sq + kC1;
        const float D = s11 + s22 + kC2;
        const float CD = C * D;
        const float S = (A * B) / CD;
        const size_t idx = plane + (size_t)gy * W + gx;
        ssim_map[idx] = S;
        if (train) {
            const float inv_cd = 1.f / CD;
            // S = A B / (C D), A = 2 mu1 mu2 + C1, B = 2 (E[xy] - mu1 mu2) + C2,
            // C = mu1^2 + mu2^2 + C1, D = (E[x^2] - mu1^2) + (E[y^2] - mu2^2) + C2.
            d11[idx] = -S / D;                                        // dS/dE[x^2]
            d12[idx] = 2.f * A * inv_cd;                              // dS/dE[xy]
            dm[idx] = 2.f * (mu2 * (B - A) + mu1 * S * (C - D)) * inv_cd;  // dS/dmu1
        }
    }
}

__global__ void __launch_bounds__(kThreads) ssim_backward_kernel(int H, int W, const float* __restrict__ grad_out,
                                                                  float inv_n, const float* __restrict__ x,
                                                                  const float* __restrict__ y,
                                                                  const float* __restrict__ dm,
                                                                  const float* __restrict__ d11,
                                                                  const float* __restrict__ d12,
                                                                  float* __restrict__ dx, Taps taps) {
    __shared__ float sm[kShH][kShW];
    __shared__ float s1[kShH][kShW];
    __shared__ float s2[kShH][kShW];
    __shared__ float hm[kShH][kTileW];
    __shared__ float h1[kShH][kTileW];
    __shared__ float h2[kShH][kTileW];

    const size_t plane = (size_t)blockIdx.z * H * W;
    const int ty0 = blockIdx.y * kTileH;
    const int tx0 = blockIdx.x * kTileW;
    const int tid = threadIdx.y * kBlockX + threadIdx.x;
    load_halo(sm, dm + plane, H, W, ty0 - kRadius, tx0 - kRadius, tid);
    load_halo(s1, d11 + plane, H, W, ty0 - kRadius, tx0 - kRadius, tid);
    load_halo(s2, d12 + plane, H, W, ty0 - kRadius, tx0 - kRadius, tid);
    __syncthreads();

    const int c = threadIdx.x;
    for (int r = threadIdx.y; r < kShH; r += kBlockY) {
        float am = 0.f, a1 = 0.f, a2 = 0.f;
#pragma unroll
        for (int k = 0; k < kWin; ++k) {
            const float w = taps.w[k];
            am = fmaf(w, sm[r][c + k], am);
            a1 = fmaf(w, s1[r][c + k], a1);
            a2 = fmaf(w, s2[r][c + k], a2);
        }
        hm[r][c] = am;
        h1[r][c] = a1;
        h2[r][c] = a2;
    }
    __syncthreads();

    const float scale = __ldg(grad_out) * inv_n;
    const int gx = tx0 + c;
#pragma unroll
    for (int j = 0; j < kRowsPerThread; ++j) {
        const int r = threadIdx.y + j * kBlockY;
        const int gy = ty0 + r;
        if (gy >= H || gx >= W) continue;
        float gm = 0.f, g1 = 0.f, g2 = 0.f;
#pragma unroll
        for (int k = 0; k < kWin; ++k) {
            const float w = taps.w[k];
            gm = fmaf(w, hm[r + k][c], gm);
            g1 = fmaf(w, h1[r + k][c], g1);
            g2 = fmaf(w, h2[r + k][c], g2);
        }
        const size_t idx = plane + (size_t)gy * W + gx;
        const float xv = __ldg(x + idx);
        const float yv = __ldg(y + idx);
        dx[idx] = scale * (gm + 2.f * xv * g1 + yv * g2);
    }
}

dim3 grid_for(int planes, int H, int W) {
    return dim3((unsigned)((W + kTileW - 1) / kTileW), (unsigned)((H + kTileH - 1) / kTileH), (unsigned)planes);
}

}  // namespace

Taps gaussian_taps() {
    Taps t;
    double g[kWin];
    double sum = 0.0;
    for (int i = 0; i < kWin; ++i) {
        const double d = (double)(i - kRadius);
        g[i] = std::exp(-d * d / (2.0 * 1.5 * 1.5));
        sum += g[i];
    }
    for (int i = 0; i < kWin; ++i) t.w[i] = (float)(g[i] / sum);
    return t;
}

void launch_forward(int planes, int H, int W, const float* x, const float* y, float* ssim_map, float* dm,
                    float* d11, float* d12, bool train, cudaStream_t stream) {
    ssim_forward_kernel<<<grid_for(planes, H, W), dim3(kBlockX, kBlockY), 0, stream>>>(
        H, W, x, y, ssim_map, dm, d11, d12, train ? 1 : 0, gaussian_taps());
}

void launch_backward(int planes, int H, int W, const float* grad_out, float inv_n, const float* x, const float* y,
                     const float* dm, const float* d11, const float* d12, float* dx, cudaStream_t stream) {
    ssim_backward_kernel<<<grid_for(planes, H, W), dim3(kBlockX, kBlockY), 0, stream>>>(
        H, W, grad_out, inv_n, x, y, dm, d11, d12, dx, gaussian_taps());
}

}  // namespace gassim
