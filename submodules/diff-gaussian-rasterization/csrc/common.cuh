// Shared definitions of the tile rasterizer (forward and backward).
//
// Conventions (see docs/SPEC.md section 6 and docs/DESIGN.md):
//  * 4x4 matrices are row-major arrays of the transposed matrix: a point p (row vector)
//    maps to [p, 1] @ M, so component j is M[0*4+j] x + M[1*4+j] y + M[2*4+j] z + M[3*4+j].
//  * Pixel centres are at integer coordinates; ndc maps to pixels through ((ndc + 1) W - 1) / 2.
//  * 16x16 pixel tiles; per-splat colour = real SH (degree <= 3) + 0.5 clamped at 0.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

#include "camera.h"

namespace gsr {

// Real spherical-harmonics constants (degree 0..3).
__device__ constexpr float kSH0 = 0.28209479177387814f;
__device__ constexpr float kSH1 = 0.4886025119029199f;
__device__ constexpr float kSH2[5] = {1.0925484305920792f, -1.0925484305920792f, 0.31539156525252005f,
                                      -1.0925484305920792f, 0.5462742152960396f};
__device__ constexpr float kSH3[7] = {-0.5900435899266435f, 2.890611442640554f, -0.4570457994644658f,
                                      0.3731763325901154f, -0.4570457994644658f, 1.445305721320277f,
                                      -0.5900435899266435f};

__device__ __forceinline__ float3 view_point(const Camera& c, float3 p) {
    float m[16];
#pragma unroll
    for (int i = 0; i < 16; ++i) m[i] = __ldg(c.view + i);
    return make_float3(m[0] * p.x + m[4] * p.y + m[8] * p.z + m[12],
                       m[1] * p.x + m[5] * p.y + m[9] * p.z + m[13],
                       m[2] * p.x + m[6] * p.y + m[10] * p.z + m[14]);
}

__device__ __forceinline__ float4 proj_point(const Camera& c, float3 p) {
    float m[16];
#pragma unroll
    for (int i = 0; i < 16; ++i) m[i] = __ldg(c.proj + i);
    return make_float4(m[0] * p.x + m[4] * p.y + m[8] * p.z + m[12],
                       m[1] * p.x + m[5] * p.y + m[9] * p.z + m[13],
                       m[2] * p.x + m[6] * p.y + m[10] * p.z + m[14],
                       m[3] * p.x + m[7] * p.y + m[11] * p.z + m[15]);
}

__device__ __forceinline__ float ndc_to_pixel(float v, int size) {
    return ((v + 1.0f) * size - 1.0f) * 0.5f;
}

// Normalised quaternion q / max(|q|, 1e-12) (as the reference); `inv_norm` receives 1 / max(|q|, 1e-12).
__device__ __forceinline__ float4 normalize_quat(float4 q, float& inv_norm) {
    const float n = sqrtf(q.x * q.x + q.y * q.y + q.z * q.z + q.w * q.w);
    inv_norm = 1.0f / fmaxf(n, 1e-12f);
    return make_float4(q.x * inv_norm, q.y * inv_norm, q.z * inv_norm, q.w * inv_norm);
}

// Rotation matrix (row-major r[3][3]) of the unit quaternion q = (w, x, y, z).
__device__ __forceinline__ void quat_to_rot(float4 q, float r[9]) {
    const float w = q.x, x = q.y, y = q.z, z = q.w;
    r[0] = 1.f - 2.f * (y * y + z * z); r[1] = 2.f * (x * y - w * z);       r[2] = 2.f * (x * z + w * y);
    r[3] = 2.f * (x * y + w * z);       r[4] = 1.f - 2.f * (x * x + z * z); r[5] = 2.f * (y * z - w * x);
    r[6] = 2.f * (x * z - w * y);       r[7] = 2.f * (y * z + w * x);       r[8] = 1.f - 2.f * (x * x + y * y);
}

// Sigma = R diag(s)^2 R^T, stored as (xx, xy, xz, yy, yz, zz).
__device__ __forceinline__ void cov3d_from_scale_rot(float3 s, float4 q, float cov[6]) {
    float r[9];
    quat_to_rot(q, r);
    float m[9];  // M = R diag(s)
#pragma unroll
    for (int i = 0; i < 3; ++i) {
        m[i * 3 + 0] = r[i * 3 + 0] * s.x;
        m[i * 3 + 1] = r[i * 3 + 1] * s.y;
        m[i * 3 + 2] = r[i * 3 + 2] * s.z;
    }
    cov[0] = m[0] * m[0] + m[1] * m[1] + m[2] * m[2];
    cov[1] = m[0] * m[3] + m[1] * m[4] + m[2] * m[5];
    cov[2] = m[0] * m[6] + m[1] * m[7] + m[2] * m[8];
    cov[3] = m[3] * m[3] + m[4] * m[4] + m[5] * m[5];
    cov[4] = m[3] * m[6] + m[4] * m[7] + m[5] * m[8];
    cov[5] = m[6] * m[6] + m[7] * m[7] + m[8] * m[8];
}

// Rows T0, T1 of T = J W (J: EWA Jacobian at the clamped mean, W: view rotation).
struct EwaJacobian {
    float t0[3], t1[3];
    float j00, j02, j11, j12;
    float tx, ty, tz;          // clamped camera-space mean used in J
    bool clamped_x, clamped_y;
};

__device__ __forceinline__ EwaJacobian ewa_jacobian(const Camera& c, float3 t) {
    EwaJacobian e;
    const float rx = t.x / t.z, ry = t.y / t.z;
    e.clamped_x = rx < c.lim_x_lo || rx > c.lim_x_hi;
    e.clamped_y = ry < c.lim_y_lo || ry > c.lim_y_hi;
    e.tz = t.z;
    e.tx = fminf(c.lim_x_hi, fmaxf(c.lim_x_lo, rx)) * t.z;
    e.ty = fminf(c.lim_y_hi, fmaxf(c.lim_y_lo, ry)) * t.z;
    const float iz = 1.0f / t.z;
    e.j00 = c.focal_x * iz;
    e.j11 = c.focal_y * iz;
    e.j02 = -c.focal_x * e.tx * iz * iz;
    e.j12 = -c.focal_y * e.ty * iz * iz;
    const float* v = c.view;  // W(j, k) = v[4k + j] (device memory, read once per splat)
#pragma unroll
    for (int k = 0; k < 3; ++k) {
        e.t0[k] = e.j00 * v[4 * k + 0] + e.j02 * v[4 * k + 2];
        e.t1[k] = e.j11 * v[4 * k + 1] + e.j12 * v[4 * k + 2];
    }
    return e;
}

__device__ __forceinline__ void sym_mul(const float s[6], const float v[3], float out[3]) {
    out[0] = s[0] * v[0] + s[1] * v[1] + s[2] * v[2];
    out[1] = s[1] * v[0] + s[3] * v[1] + s[4] * v[2];
    out[2] = s[2] * v[0] + s[4] * v[1] + s[5] * v[2];
}

// Tile rectangle [rmin, rmax) covered by a square of half-side r around p (in tile units).
__device__ __forceinline__ void tile_rect(const Camera& c, float2 p, float r, int2& rmin, int2& rmax) {
    const float gx = (float)c.tiles_x, gy = (float)c.tiles_y;
    rmin.x = (int)fminf(gx, fmaxf(0.f, (p.x - r) / kTile));
    rmin.y = (int)fminf(gy, fmaxf(0.f, (p.y - r) / kTile));
    rmax.x = (int)fminf(gx, fmaxf(0.f, (p.x + r + kTile - 1) / kTile));
    rmax.y = (int)fminf(gy, fmaxf(0.f, (p.y + r + kTile - 1) / kTile));
}

// Exact-conservative test whether a splat can reach alpha >= 1/255 at any pixel of tile (tx, ty).
// alpha = min(0.99, o exp(-q / 2)) >= 1/255  <=>  q <= tau = 2 ln(255 o), with q = d^T Conic d.
// q is minimised in closed form over the tile's box of pixel centres (clipped to the image) and
// compared with tau plus a margin 100x above the float32 rounding of both this test and the
// blending kernels, so a (tile, splat) pair that can contribute is never dropped: images are
// unchanged, tile lists get shorter.  The per-splat constants (tau, the edge ratios) are set up
// once per splat by tile_test_of.  Neither function is inlined, so that the counting pass
// (preprocess) and the emitting pass (key duplication, for rectangles too large for the tile mask)
// run the very same code on the very same inputs.
struct TileTest {
    float A, B, C;   // conic
    float tau;       // 2 ln(255 o)
    float bc, ba;    // B / C, B / A (edge minimisation)
    int verdict;     // 1: every tile (NaN opacity), 0: no tile (opacity <= 0), -1: test each tile
};

__device__ __forceinline__ float conic_q(float A, float B, float C, float dx, float dy) {
    return A * dx * dx + 2.0f * B * dx * dy + C * dy * dy;
}

static __device__ __noinline__ TileTest tile_test_of(float4 co) {
    TileTest t;
    t.A = co.x;
    t.B = co.y;
    t.C = co.z;
    const float o = co.w;
    t.verdict = isnan(o) ? 1 : (!(o > 0.0f) ? 0 : -1);  // alpha <= 0 never passes the 1/255 test
    t.tau = t.verdict < 0 ? 2.0f * logf(255.0f * o) : 0.0f;
    t.bc = t.B / t.C;
    t.ba = t.B / t.A;
    return t;
}

static __device__ __noinline__ bool tile_hit(int width, int height, float2 m, TileTest t, int tx, int ty) {
    if (t.verdict >= 0) return t.verdict > 0;
    const float x0 = (float)(tx * kTile) - m.x, x1 = (float)min(tx * kTile + kTile - 1, width - 1) - m.x;
    const float y0 = (float)(ty * kTile) - m.y, y1 = (float)min(ty * kTile + kTile - 1, height - 1) - m.y;
    const float A = t.A, B = t.B, C = t.C;
    float q;
    if (x0 <= 0.0f && x1 >= 0.0f && y0 <= 0.0f && y1 >= 0.0f) {
        q = 0.0f;
    } else {
        // convex q: the box minimum lies on its boundary; minimise along each edge in closed form
        const float ya = fminf(fmaxf(-t.bc * x0, y0), y1), yb = fminf(fmaxf(-t.bc * x1, y0), y1);
        const float xa = fminf(fmaxf(-t.ba * y0, x0), x1), xb = fminf(fmaxf(-t.ba * y1, x0), x1);
        q = fminf(fminf(conic_q(A, B, C, x0, ya), conic_q(A, B, C, x1, yb)),
                  fminf(conic_q(A, B, C, xa, y0), conic_q(A, B, C, xb, y1)));
        if (isnan(q)) return true;
    }
    // margin: |terms of q| <= 2 (A dx^2 + C dy^2) <= 2 scale; float32 rounding is ~1e-6 scale
    const float scale = fabsf(A) * fmaxf(x0 * x0, x1 * x1) + fabsf(C) * fmaxf(y0 * y0, y1 * y1);
    return q <= t.tau + 1e-4f * scale + 1e-3f;
}

// Rectangles of at most this many tiles keep the tile test's outcome as a bit mask (row-major over
// the rectangle), so that the emitting pass reads the tiles instead of testing them again.
constexpr int64_t kMaskTiles = 64;

// Exact-conservative mask of the warps of a tile block (warp w owns pixel rows 2w, 2w + 1 of the
// tile starting at row tile_y0) that a splat can reach with alpha >= 1/255.  The reachable set is the
// ellipse d^T Conic d <= tau (see tile_hit), whose half-height is sqrt(tau Sigma_yy) with
// Sigma = Conic^-1; tau gets a margin 100x above the float32 rounding of the blending kernels,
// where |terms| <= A dx^2 + C dy^2 <= 2 tau A C / det.  Warps outside the mask skip the splat
// (a warp-uniform branch): only pairs that cannot contribute are skipped.
__device__ __forceinline__ uint32_t warp_row_mask(float2 m, float4 co, int tile_y0) {
    const float o = co.w;
    if (isnan(o)) return 0xffu;
    if (!(o > 0.0f)) return 0u;
    const float A = co.x, B = co.y, C = co.z;
    const float det = A * C - B * B;
    if (!(det > 0.0f) || !(A > 0.0f) || !(C > 0.0f)) return 0xffu;
    const float tau = fmaxf(2.0f * logf(255.0f * o), 0.0f);
    const float tau_m = tau * (1.0f + 2e-4f * (A * C / det)) + 1e-3f;
    const float r = sqrtf(tau_m * (A / det)) * 1.0001f + 1e-3f;
    if (!(r < 1e7f)) return 0xffu;  // huge or NaN: no pruning
    const float lo = fmaxf(ceilf(m.y - r) - (float)tile_y0, 0.0f);
    const float hi = fminf(floorf(m.y + r) - (float)tile_y0, (float)(kTile - 1));
    if (!(lo <= hi)) return 0u;
    const int w0 = (int)lo >> 1, w1 = (int)hi >> 1;
    return ((2u << w1) - 1u) & ~((1u << w0) - 1u);
}

// SH rows: (M, 3) floats per splat, M <= 16 used coefficients. Rows are moved with 16-byte accesses
// when every row is 16-byte aligned (3 M divisible by 4 and an aligned base), else float by float.
__device__ __forceinline__ bool rows_vectorisable(const float* base, int row_floats) {
    return (row_floats % 4) == 0 && (reinterpret_cast<uintptr_t>(base) & 15) == 0;
}

// v[k] = row[k] for k < count (count <= 48; v[k] = 0 beyond).
__device__ __forceinline__ void load_row48(const float* row, int count, bool vec, float v[48]) {
#pragma unroll
    for (int k = 0; k < 48; ++k) v[k] = 0.f;
    if (vec) {
#pragma unroll
        for (int q = 0; q < 12; ++q) {
            if (4 * q < count) {
                const float4 t = __ldg(reinterpret_cast<const float4*>(row) + q);
                v[4 * q] = t.x; v[4 * q + 1] = t.y; v[4 * q + 2] = t.z; v[4 * q + 3] = t.w;
            }
        }
#pragma unroll
        for (int k = 0; k < 48; ++k)
            if (k >= count) v[k] = 0.f;
    } else {
#pragma unroll
        for (int k = 0; k < 48; ++k)
            if (k < count) v[k] = __ldg(row + k);
    }
}

// row[k] = v[k] for k < min(count, 48) and 0 for count <= k < row_floats.
__device__ __forceinline__ void store_row(float* row, int count, int row_floats, bool vec, const float v[48]) {
    if (vec) {
#pragma unroll
        for (int q = 0; q < 12; ++q) {
            if (4 * q < row_floats) {
                float4 t;
                t.x = (4 * q < count) ? v[4 * q] : 0.f;
                t.y = (4 * q + 1 < count) ? v[4 * q + 1] : 0.f;
                t.z = (4 * q + 2 < count) ? v[4 * q + 2] : 0.f;
                t.w = (4 * q + 3 < count) ? v[4 * q + 3] : 0.f;
                reinterpret_cast<float4*>(row)[q] = t;
            }
        }
        for (int k = 48; k < row_floats; ++k) row[k] = 0.f;
    } else {
#pragma unroll
        for (int k = 0; k < 48; ++k)
            if (k < row_floats) row[k] = (k < count) ? v[k] : 0.f;
        for (int k = 48; k < row_floats; ++k) row[k] = 0.f;
    }
}

// Evaluate the SH basis (up to `deg`) in direction d (unit vector): out[k] for k < (deg+1)^2.
__device__ __forceinline__ void sh_basis(int deg, float x, float y, float z, float b[16]) {
    b[0] = kSH0;
    if (deg < 1) return;
    b[1] = -kSH1 * y; b[2] = kSH1 * z; b[3] = -kSH1 * x;
    if (deg < 2) return;
    const float xx = x * x, yy = y * y, zz = z * z;
    b[4] = kSH2[0] * x * y;
    b[5] = kSH2[1] * y * z;
    b[6] = kSH2[2] * (2.f * zz - xx - yy);
    b[7] = kSH2[3] * x * z;
    b[8] = kSH2[4] * (xx - yy);
    if (deg < 3) return;
    b[9] = kSH3[0] * y * (3.f * xx - yy);
    b[10] = kSH3[1] * x * y * z;
    b[11] = kSH3[2] * y * (4.f * zz - xx - yy);
    b[12] = kSH3[3] * z * (2.f * zz - 3.f * xx - 3.f * yy);
    b[13] = kSH3[4] * x * (4.f * zz - xx - yy);
    b[14] = kSH3[5] * z * (xx - yy);
    b[15] = kSH3[6] * x * (xx - 3.f * yy);
}

}  // namespace gsr
