// Per-splat math of the CPU rasterizer (float32), forward and backward.
//
// The formulas and their evaluation order follow diff_gaussian_rasterization/reference.py, which
// defines the package's math (SPEC section 6); see the comments there for the conventions:
// depth cull at 0.2, EWA with the 1.3x frustum clamp (clamped coordinate = constant), 0.3 px^2
// dilation, radius from the floored eigenvalue, SH colour clamped at 0 (zero gradient when clamped).
#pragma once

#include <cmath>
#include <cstdint>

namespace dgr_cpu {

constexpr int kTile = 16;
constexpr float kNearCull = 0.2f;
constexpr float kDilation = 0.3f;
constexpr float kAlphaMax = 0.99f;
constexpr float kAlphaMin = 1.0f / 255.0f;
constexpr float kTMin = 1e-4f;
constexpr float kProjEps = 1e-7f;
constexpr float kEigFloor = 0.1f;
constexpr float kQuatEps = 1e-12f;
constexpr double kMaxRadius = 1073741824.0;  // 2^30

constexpr float kC0 = 0.28209479177387814f;
constexpr float kC1 = 0.4886025119029199f;
constexpr float kC2[5] = {1.0925484305920792f, -1.0925484305920792f, 0.31539156525252005f,
                          -1.0925484305920792f, 0.5462742152960396f};
constexpr float kC3[7] = {-0.5900435899266435f, 2.890611442640554f, -0.4570457994644658f,
                          0.3731763325901154f,  -0.4570457994644658f, 1.445305721320277f,
                          -0.5900435899266435f};

// Camera and render settings as the kernels use them (matrices row-major, transposed storage:
// p_view = [p, 1] @ view).
struct Camera {
  float view[16];
  float proj[16];
  float campos[3];
  float bg[3];
  float fx, fy;
  float lim_x0, lim_x1, lim_y0, lim_y1;  // EWA clamp of t_x / t_z and t_y / t_z
  float scale_modifier;
  int width, height;
  int grid_x, grid_y;
  int sh_degree;
};

// Splat inputs (pointers into contiguous float32 tensors; absent ones are null).
struct SplatInputs {
  const float* means3D;   // (N, 3)
  const float* opacity;   // (N,)
  const float* sh;        // (N, K, 3) or null
  int sh_k;               // K
  const float* colors;    // (N, 3) or null
  const float* scales;    // (N, 3) or null
  const float* rotations; // (N, 4) or null
  const float* cov3D;     // (N, 6) or null
  int64_t n;
};

// Everything the forward pass derives for one splat; the backward pass recomputes it.
struct Projected {
  bool visible = false;
  float t[3];          // view-space mean
  float hom[4];        // [p, 1] @ proj
  float inv_w;         // 1 / (hom_w + eps)
  float xy[2];         // pixel-space mean
  float rot[9];        // rotation of the normalised quaternion (row-major)
  float qnorm;         // |q|
  float qn[4];         // normalised quaternion
  float scale[3];      // scale * modifier
  float sigma[9];      // 3D covariance
  float m[6];          // J @ Rv (2 x 3, row-major)
  float tx_c, ty_c;    // (clamped) coordinates used in J
  bool clamp_x, clamp_y;
  float a, b, c;       // dilated 2D covariance entries (00, 01, 11)
  float det;
  float conic[3];
  float lam;           // floored largest eigenvalue
  float radius;
  int rect[4];         // tile rectangle (x0, y0, x1, y1), half-open
  float color[3];
  bool color_clamped[3];
  float dir[3];        // normalize(mean - campos)
  float dir_len;
};

inline float vdot4(const float* m, int col, float x, float y, float z) {
  // ([x, y, z, 1] @ M)[col] with M row-major 4x4
  return x * m[0 * 4 + col] + y * m[1 * 4 + col] + z * m[2 * 4 + col] + m[3 * 4 + col];
}

inline int tile_floor(float v, int limit) {
  // min(limit, max(0, floor(v))), non-finite: nan -> 0, +inf -> limit, -inf -> 0
  if (std::isnan(v)) return 0;
  if (std::isinf(v)) return v > 0 ? limit : 0;
  float f = std::floor(v);
  if (f < 0.f) return 0;
  if (f > static_cast<float>(limit)) return limit;
  return static_cast<int>(f);
}

// SH basis values (16) of a unit direction, in the 3DGS order and signs.
inline void sh_basis(const float* d, int degree, float* basis) {
  const float x = d[0], y = d[1], z = d[2];
  basis[0] = kC0;
  if (degree < 1) return;
  basis[1] = -kC1 * y;
  basis[2] = kC1 * z;
  basis[3] = -kC1 * x;
  if (degree < 2) return;
  const float xx = x * x, yy = y * y, zz = z * z, xy = x * y, yz = y * z, xz = x * z;
  basis[4] = kC2[0] * xy;
  basis[5] = kC2[1] * yz;
  basis[6] = kC2[2] * (2.f * zz - xx - yy);
  basis[7] = kC2[3] * xz;
  basis[8] = kC2[4] * (xx - yy);
  if (degree < 3) return;
  basis[9] = kC3[0] * y * (3.f * xx - yy);
  basis[10] = kC3[1] * xy * z;
  basis[11] = kC3[2] * y * (4.f * zz - xx - yy);
  basis[12] = kC3[3] * z * (2.f * zz - 3.f * xx - 3.f * yy);
  basis[13] = kC3[4] * x * (4.f * zz - xx - yy);
  basis[14] = kC3[5] * z * (xx - yy);
  basis[15] = kC3[6] * x * (xx - 3.f * yy);
}

// Partial derivatives of the SH basis w.r.t. the (unnormalised-free) direction components.
inline void sh_basis_grad(const float* d, int degree, float* gx, float* gy, float* gz) {
  const float x = d[0], y = d[1], z = d[2];
  for (int k = 0; k < 16; ++k) gx[k] = gy[k] = gz[k] = 0.f;
  if (degree < 1) return;
  gy[1] = -kC1;
  gz[2] = kC1;
  gx[3] = -kC1;
  if (degree < 2) return;
  const float xx = x * x, yy = y * y, zz = z * z;
  gx[4] = kC2[0] * y;            gy[4] = kC2[0] * x;
  gy[5] = kC2[1] * z;            gz[5] = kC2[1] * y;
  gx[6] = -2.f * kC2[2] * x;     gy[6] = -2.f * kC2[2] * y;     gz[6] = 4.f * kC2[2] * z;
  gx[7] = kC2[3] * z;            gz[7] = kC2[3] * x;
  gx[8] = 2.f * kC2[4] * x;      gy[8] = -2.f * kC2[4] * y;
  if (degree < 3) return;
  gx[9] = kC3[0] * 6.f * x * y;  gy[9] = kC3[0] * (3.f * xx - 3.f * yy);
  gx[10] = kC3[1] * y * z;       gy[10] = kC3[1] * x * z;       gz[10] = kC3[1] * x * y;
  gx[11] = kC3[2] * (-2.f * x * y);
  gy[11] = kC3[2] * (4.f * zz - xx - 3.f * yy);
  gz[11] = kC3[2] * 8.f * y * z;
  gx[12] = kC3[3] * (-6.f * x * z);
  gy[12] = kC3[3] * (-6.f * y * z);
  gz[12] = kC3[3] * (6.f * zz - 3.f * xx - 3.f * yy);
  gx[13] = kC3[4] * (4.f * zz - 3.f * xx - yy);
  gy[13] = kC3[4] * (-2.f * x * y);
  gz[13] = kC3[4] * 8.f * x * z;
  gx[14] = kC3[5] * 2.f * x * z;
  gy[14] = kC3[5] * (-2.f * y * z);
  gz[14] = kC3[5] * (xx - yy);
  gx[15] = kC3[6] * (3.f * xx - 3.f * yy);
  gy[15] = kC3[6] * (-6.f * x * y);
}

// Forward preprocessing of splat i (step 1 of reference.py's pipeline).
void project_splat(const Camera& cam, const SplatInputs& in, int64_t i, Projected& out);

// Gradients of one visible splat's preprocessing.  Inputs: dL/d pixel mean (2), dL/d conic (3),
// dL/d colour (3).  Outputs (accumulated / written; null pointers are skipped):
// means3D (3), means2D (2, dL/d ndc), sh (K*3), colors (3), scales (3), rotations (4), cov3D (6).
struct SplatGrads {
  float* means3D;
  float* means2D;
  float* sh;
  float* colors;
  float* scales;
  float* rotations;
  float* cov3D;
};
void project_splat_backward(const Camera& cam, const SplatInputs& in, int64_t i, const Projected& p,
                            const float* d_xy, const float* d_conic, const float* d_color,
                            const SplatGrads& g);

}  // namespace dgr_cpu
