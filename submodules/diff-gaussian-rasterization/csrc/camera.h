// Camera parameters and constants of the tile rasterizer (plain C++: shared by host and device code).
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

namespace gsr {

constexpr int kTile = 16;                 // tile side in pixels
constexpr int kBlock = kTile * kTile;     // threads per tile block (= splats per shared batch)
constexpr float kNearCull = 0.2f;         // splats with view depth <= this are culled
constexpr float kDilation = 0.3f;         // px^2 added to the 2D covariance diagonal
constexpr float kMaxAlpha = 0.99f;
constexpr float kMinAlpha = 1.0f / 255.0f;
constexpr float kMinT = 1e-4f;

// Camera and frame parameters, passed by value to every kernel.
struct Camera {
    const float* view;          // (16,) device pointers (read through the read-only cache)
    const float* proj;
    const float* campos;        // (3,)
    const float* bg;            // (3,)
    float focal_x, focal_y;
    float lim_x_lo, lim_x_hi;   // clamp range of x/z for the EWA Jacobian
    float lim_y_lo, lim_y_hi;   // clamp range of y/z
    float scale_modifier;
    int width, height;
    int tiles_x, tiles_y;
    int sh_degree;              // active degree
    int sh_coeffs;              // coefficients stored per splat (M of the (N, M, 3) tensor)
    // Optional device pointer to float64 (tanfovx, tanfovy, cx, cy): when set, the kernels that
    // need the intrinsics (the preprocess steps) derive them from it, so that one captured CUDA
    // graph serves cameras with different intrinsics. Null: the fields above hold them.
    const double* intrinsics;
};

// Focal lengths and EWA clamp limits from the field of view and principal point (NaN cx / cy:
// centred). One definition for the host (make_camera) and the device (intrinsics pointer).
__host__ __device__ inline void set_intrinsics(Camera& c, double tanfovx, double tanfovy, double cx, double cy) {
    const double fx = c.width / (2.0 * tanfovx), fy = c.height / (2.0 * tanfovy);
    if (cx != cx) cx = (c.width - 1) * 0.5;
    if (cy != cy) cy = (c.height - 1) * 0.5;
    c.focal_x = (float)fx;
    c.focal_y = (float)fy;
    c.lim_x_lo = (float)(-1.3 * (cx + 0.5) / fx);
    c.lim_x_hi = (float)(1.3 * (c.width - 0.5 - cx) / fx);
    c.lim_y_lo = (float)(-1.3 * (cy + 0.5) / fy);
    c.lim_y_hi = (float)(1.3 * (c.height - 0.5 - cy) / fy);
}

#ifdef __CUDACC__
// The kernels call this first: intrinsics from the device pointer when one is set.
__device__ inline void load_intrinsics(Camera& c) {
    if (c.intrinsics != nullptr)
        set_intrinsics(c, __ldg(c.intrinsics), __ldg(c.intrinsics + 1), __ldg(c.intrinsics + 2),
                       __ldg(c.intrinsics + 3));
}
#endif

// Number of bits needed to represent v.
inline int num_bits(uint32_t v) {
    int n = 0;
    while (v) { ++n; v >>= 1; }
    return n;
}

}  // namespace gsr
