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
};

// Number of bits needed to represent v.
inline int num_bits(uint32_t v) {
    int n = 0;
    while (v) { ++n; v >>= 1; }
    return n;
}

}  // namespace gsr
