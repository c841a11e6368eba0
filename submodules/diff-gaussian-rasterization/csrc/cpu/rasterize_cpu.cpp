// CPU (OpenMP) tile rasterizer: forward and backward, bound as diff_gaussian_rasterization._cpu.
//
// Same math as diff_gaussian_rasterization/reference.py (float32).  Forward: per-splat
// preprocessing (parallel), per-tile lists sorted by (depth, splat index), per-tile front-to-back
// blending (parallel over tiles) that records each pixel's final transmittance and contributor
// count.  Backward: per tile, back to front over the same lists, recovering T from the stored final
// T; per (tile, splat) pair gradients are summed over the tile's pixels into a pair buffer, reduced
// per splat in a fixed order (deterministic for any thread count), then pushed through the
// preprocessing (splat_math.cpp, evaluated in double).
//
// Work is limited to each splat's alpha footprint: the ellipse outside which opacity * G < 1/255
// by a safe margin (see Footprint), so (tile, splat) pairs and pixels that the reference would
// skip anyway are never visited.  The blend passes use SSE4.1 (4 pixels of a row at a time) when
// the build targets it (-march=x86-64-v2), else scalar loops with the same arithmetic.
// Threads: at::get_num_threads() (torch.set_num_threads).
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <new>
#include <type_traits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef __SSE4_1__
#include <smmintrin.h>
#endif

#include "splat_math.h"

// Phase timings on stderr for development builds compiled with -DDGR_CPU_PROFILE.
#ifdef DGR_CPU_PROFILE
#include <chrono>
#include <cstdio>
#define DGR_TICK(name)                                                                          \
  do {                                                                                          \
    static auto dgr_last = std::chrono::steady_clock::now();                                    \
    (void)dgr_last;                                                                             \
    const auto dgr_now = std::chrono::steady_clock::now();                                      \
    std::fprintf(stderr, "%s %.3f ms\n", name,                                                  \
                 std::chrono::duration<double, std::milli>(dgr_now - dgr_clock).count());       \
    dgr_clock = dgr_now;                                                                        \
  } while (0)
#define DGR_CLOCK_START auto dgr_clock = std::chrono::steady_clock::now()
#else
#define DGR_TICK(name) \
  do {                 \
  } while (0)
#define DGR_CLOCK_START \
  do {                  \
  } while (0)
#endif

namespace dgr_cpu {
namespace {

static_assert(std::is_trivially_copyable_v<Projected>, "Projected is stored as raw bytes");

// Per visible splat data used by the blend: x, y, conic (3), colour (3), opacity, depth,
// footprint constants (5, see footprint_constants).
constexpr int kGeom = 15;
// Per (tile, splat) pair gradient: x, y, conic (3), opacity, colour (3).
constexpr int kPairGrad = 9;

torch::Tensor f32(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "diff_gaussian_rasterization._cpu: ", name, " must be a CPU tensor");
  return t.to(torch::kFloat32).contiguous();
}

const float* ptr_or_null(const torch::Tensor& t) { return t.numel() ? t.data_ptr<float>() : nullptr; }

int num_threads() { return std::max(1, at::get_num_threads()); }

Camera make_camera(const torch::Tensor& view, const torch::Tensor& proj, const torch::Tensor& campos,
                   const torch::Tensor& bg, int64_t width, int64_t height, double fx, double fy,
                   double lim_x0, double lim_x1, double lim_y0, double lim_y1, double scale_modifier,
                   int64_t sh_degree) {
  TORCH_CHECK(view.numel() == 16 && proj.numel() == 16, "viewmatrix / projmatrix must hold 16 values");
  TORCH_CHECK(campos.numel() == 3 && bg.numel() == 3, "campos / bg must hold 3 values");
  TORCH_CHECK(width >= 1 && height >= 1, "image size must be >= 1");
  TORCH_CHECK(sh_degree >= 0 && sh_degree <= 3, "sh_degree must be in 0..3");
  Camera cam;
  std::copy(view.data_ptr<float>(), view.data_ptr<float>() + 16, cam.view);
  std::copy(proj.data_ptr<float>(), proj.data_ptr<float>() + 16, cam.proj);
  std::copy(campos.data_ptr<float>(), campos.data_ptr<float>() + 3, cam.campos);
  std::copy(bg.data_ptr<float>(), bg.data_ptr<float>() + 3, cam.bg);
  cam.fx = static_cast<float>(fx);
  cam.fy = static_cast<float>(fy);
  cam.lim_x0 = static_cast<float>(lim_x0);
  cam.lim_x1 = static_cast<float>(lim_x1);
  cam.lim_y0 = static_cast<float>(lim_y0);
  cam.lim_y1 = static_cast<float>(lim_y1);
  cam.scale_modifier = static_cast<float>(scale_modifier);
  cam.width = static_cast<int>(width);
  cam.height = static_cast<int>(height);
  cam.grid_x = static_cast<int>((width + kTile - 1) / kTile);
  cam.grid_y = static_cast<int>((height + kTile - 1) / kTile);
  cam.sh_degree = static_cast<int>(sh_degree);
  return cam;
}

struct Inputs {
  torch::Tensor means3D, opacity, sh, colors, scales, rotations, cov3D;
  SplatInputs view;
};

Inputs make_inputs(const torch::Tensor& means3D, const torch::Tensor& opacity, const torch::Tensor& sh,
                   const torch::Tensor& colors, const torch::Tensor& scales, const torch::Tensor& rotations,
                   const torch::Tensor& cov3D, int sh_degree) {
  Inputs in;
  in.means3D = f32(means3D, "means3D");
  const int64_t n = in.means3D.numel() / 3;
  TORCH_CHECK(in.means3D.numel() == 3 * n, "means3D must have shape (N, 3)");
  in.opacity = f32(opacity, "opacities").reshape({-1});
  in.sh = f32(sh, "shs");
  in.colors = f32(colors, "colors_precomp");
  in.scales = f32(scales, "scales");
  in.rotations = f32(rotations, "rotations");
  in.cov3D = f32(cov3D, "cov3D_precomp");
  TORCH_CHECK(in.opacity.numel() == n, "opacities must hold N values");
  SplatInputs& v = in.view;
  v.n = n;
  v.means3D = in.means3D.data_ptr<float>();
  v.opacity = n ? in.opacity.data_ptr<float>() : nullptr;
  v.colors = n ? ptr_or_null(in.colors) : nullptr;
  v.cov3D = n ? ptr_or_null(in.cov3D) : nullptr;
  v.sh = nullptr;
  v.sh_k = 0;
  v.scales = v.rotations = nullptr;
  if (n && !v.colors) {
    TORCH_CHECK(in.sh.numel() > 0, "provide exactly one of shs or colors_precomp (got neither)");
    TORCH_CHECK(in.sh.numel() % (3 * n) == 0, "shs must have shape (N, K, 3)");
    v.sh_k = static_cast<int>(in.sh.numel() / (3 * n));
    TORCH_CHECK(v.sh_k >= (sh_degree + 1) * (sh_degree + 1), "shs holds ", v.sh_k,
                " coefficients per splat, sh_degree ", sh_degree, " needs ", (sh_degree + 1) * (sh_degree + 1));
    v.sh = in.sh.data_ptr<float>();
  }
  if (n && !v.cov3D) {
    TORCH_CHECK(in.scales.numel() == 3 * n && in.rotations.numel() == 4 * n,
                "provide either scales (N, 3) and rotations (N, 4), or cov3D_precomp (N, 6)");
    v.scales = in.scales.data_ptr<float>();
    v.rotations = in.rotations.data_ptr<float>();
  }
  if (v.cov3D) TORCH_CHECK(in.cov3D.numel() == 6 * n, "cov3D_precomp must have shape (N, 6)");
  if (v.colors) TORCH_CHECK(in.colors.numel() == 3 * n, "colors_precomp must have shape (N, 3)");
  return in;
}

// Pixel footprint of one splat inside one tile: the pixels that can pass alpha >= 1/255.
//
// alpha_raw = opacity exp(power) >= 1/255 needs q(d) = a dx^2 + 2 b dx dy + c dy^2 <= 2 log(255 opacity)
// (conic (a, b, c), d = pixel - mean).  The bound uses reach = L + 0.01 |L| + 1e-5 with
// L = log(255 opacity), the reference's margin (reference.build_block_lists), so a pixel outside
// the ellipse q(d) <= 2 reach fails the alpha test by far more than rounding: skipping it changes
// neither the image nor the gradients.  Per row the ellipse is an interval of columns.
enum FootprintMode { kNormal = 0, kNever = 1, kEverywhere = 2 };

// Per-splat footprint constants (stored in geom[10..14]): mode, 2 a reach, det of the conic,
// 1 / a, and the half height of the ellipse.
inline void footprint_constants(const float* conic, float opacity, float* out) {
  const float log_reach = std::log(opacity * 255.f);
  const float reach = log_reach + 0.01f * std::fabs(log_reach) + 1e-5f;
  const float a = conic[0], b = conic[1], c = conic[2];
  const float detq = a * c - b * b;
  const float q2a = 2.f * a * reach;
  const float ymax = std::sqrt(q2a / detq);
  out[0] = static_cast<float>(kNormal);
  out[1] = q2a;
  out[2] = detq;
  out[3] = 1.f / a;
  out[4] = ymax;
  if (std::isnan(reach) || reach < 0.f) {  // opacity <= 1/255 (or <= 0, NaN): alpha never passes
    out[0] = static_cast<float>(kNever);
  } else if (!(a > 0.f) || !(detq > 0.f) || !std::isfinite(q2a) || !std::isfinite(ymax) ||
             !std::isfinite(out[3])) {
    out[0] = static_cast<float>(kEverywhere);  // no usable bound: visit every pixel
  }
}

struct Footprint {
  bool none = false;  // no pixel of the tile can pass
  bool full = false;  // visit every pixel of the tile
  int r0 = 0, r1 = -1;
  float q2a = 0.f, detq = 0.f, inv_a = 0.f, b = 0.f, mx = 0.f, my = 0.f;
  int x0 = 0, w = 0, y0 = 0;

  // Column span [c0, c1] of tile row r; false when empty.
  bool row(int r, int& c0, int& c1) const {
    if (full) {
      c0 = 0;
      c1 = w - 1;
      return true;
    }
    const float dy = static_cast<float>(y0 + r) - my;
    const float disc = q2a - dy * dy * detq;
    if (!(disc >= 0.f)) return false;
    const float root = std::sqrt(disc);
    const float lo = mx + (-b * dy - root) * inv_a - static_cast<float>(x0);
    const float hi = mx + (-b * dy + root) * inv_a - static_cast<float>(x0);
    const float flo = std::ceil(lo), fhi = std::floor(hi);
    if (!(flo <= static_cast<float>(w - 1)) || !(fhi >= 0.f)) return false;
    c0 = flo > 0.f ? static_cast<int>(flo) : 0;
    c1 = fhi < static_cast<float>(w - 1) ? static_cast<int>(fhi) : w - 1;
    return c0 <= c1;
  }
};

inline Footprint footprint(const float* geom, int x0, int y0, int w, int h) {
  Footprint f;
  f.x0 = x0;
  f.y0 = y0;
  f.w = w;
  const int mode = static_cast<int>(geom[10]);
  if (mode == kNever) {
    f.none = true;
    return f;
  }
  if (mode == kEverywhere) {
    f.full = true;
    f.r0 = 0;
    f.r1 = h - 1;
    return f;
  }
  f.q2a = geom[11];
  f.detq = geom[12];
  f.inv_a = geom[13];
  f.b = geom[3];
  f.mx = geom[0];
  f.my = geom[1];
  const float ymax = geom[14];
  const float lo = std::ceil(f.my - ymax) - static_cast<float>(y0);
  const float hi = std::floor(f.my + ymax) - static_cast<float>(y0);
  if (!(lo <= static_cast<float>(h - 1)) || !(hi >= 0.f)) {
    f.none = true;
    return f;
  }
  f.r0 = lo > 0.f ? static_cast<int>(lo) : 0;
  f.r1 = hi < static_cast<float>(h - 1) ? static_cast<int>(hi) : h - 1;
  f.none = f.r0 > f.r1;
  return f;
}

// exp(x) for the blend (x <= 0): Cody-Waite reduction x = n ln2 + r, |r| <= ln2 / 2, and a degree-6
// Taylor polynomial (relative error about 2e-7, i.e. 1-2 ulp, like a library expf); inlined so the
// pixel loops avoid a libm call.  Inputs below -87 give 0.
inline float blend_exp(float x) {
  if (x < -87.f) return 0.f;
  const float n = std::nearbyint(x * 1.44269504088896341f);
  float r = x - n * 0.693145751953125f;
  r = r - n * 1.428606765330187045e-06f;
  float p = 1.f / 720.f;
  p = p * r + 1.f / 120.f;
  p = p * r + 1.f / 24.f;
  p = p * r + 1.f / 6.f;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  const int32_t e = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &e, sizeof(scale));
  return p * scale;
}

struct TileBox {
  int x0, y0, w, h;
};

inline TileBox tile_box(const Camera& cam, int64_t tile) {
  TileBox b;
  b.x0 = static_cast<int>(tile % cam.grid_x) * kTile;
  b.y0 = static_cast<int>(tile / cam.grid_x) * kTile;
  b.w = std::min(kTile, cam.width - b.x0);
  b.h = std::min(kTile, cam.height - b.y0);
  return b;
}

[[maybe_unused]] void blend_tile(const Camera& cam, int64_t tile, const int32_t* ids, int64_t begin, int64_t end,
                const float* geom, float* image, float* final_t, int32_t* n_contrib) {
  const TileBox box = tile_box(cam, tile);
  const int npix = box.w * box.h;
  float T[kTile * kTile], C[kTile * kTile * 3];
  int32_t last[kTile * kTile];
  bool done[kTile * kTile];
  for (int p = 0; p < npix; ++p) {
    T[p] = 1.f;
    C[3 * p] = C[3 * p + 1] = C[3 * p + 2] = 0.f;
    last[p] = 0;
    done[p] = false;
  }
  int ndone = 0;
  for (int64_t j = begin; j < end && ndone < npix; ++j) {
    const int32_t id = ids[j];
    const float* g = geom + static_cast<int64_t>(id) * kGeom;
    const float o = g[8];
    const Footprint fp = footprint(g, box.x0, box.y0, box.w, box.h);
    if (fp.none) continue;
    const float mx = g[0], my = g[1];
    const float ha = -0.5f * g[2], nb = -g[3], hc = -0.5f * g[4];
    const float cr = g[5], cg = g[6], cb = g[7];
    const int32_t rank = static_cast<int32_t>(j - begin) + 1;
    for (int r = fp.r0; r <= fp.r1; ++r) {
      int c0, c1;
      if (!fp.row(r, c0, c1)) continue;
      const float py = static_cast<float>(box.y0 + r);
      const float dy = py - my;
      const float qy = hc * dy * dy;
      const float by = nb * dy;
      for (int c = c0; c <= c1; ++c) {
        const int p = r * box.w + c;
        if (done[p]) continue;
        const float dx = static_cast<float>(box.x0 + c) - mx;
        const float power = (qy + ha * dx * dx) + by * dx;
        if (power > 0.f) continue;
        const float alpha_raw = o * blend_exp(power);
        if (!(alpha_raw >= kAlphaMin)) continue;
        const float alpha = std::min(kAlphaMax, alpha_raw);
        const float test_t = T[p] * (1.f - alpha);
        if (test_t < kTMin) {
          done[p] = true;
          ++ndone;
          continue;
        }
        const float w = alpha * T[p];
        C[3 * p] += cr * w;
        C[3 * p + 1] += cg * w;
        C[3 * p + 2] += cb * w;
        T[p] = test_t;
        last[p] = rank;
      }
    }
  }
  const int64_t hw = static_cast<int64_t>(cam.width) * cam.height;
  for (int r = 0; r < box.h; ++r)
    for (int c = 0; c < box.w; ++c) {
      const int p = r * box.w + c;
      const int64_t pix = static_cast<int64_t>(box.y0 + r) * cam.width + box.x0 + c;
      for (int ch = 0; ch < 3; ++ch) image[ch * hw + pix] = C[3 * p + ch] + T[p] * cam.bg[ch];
      final_t[pix] = T[p];
      n_contrib[pix] = last[p];
    }
}

[[maybe_unused]] void blend_tile_backward(const Camera& cam, int64_t tile, const int32_t* ids, int64_t begin, int64_t end,
                         const float* geom, const float* final_t,
                         const int32_t* n_contrib, const float* grad_image, float* pair_grads) {
  const TileBox box = tile_box(cam, tile);
  const int npix = box.w * box.h;
  const int64_t hw = static_cast<int64_t>(cam.width) * cam.height;
  float T[kTile * kTile], behind[kTile * kTile * 3], dpix[kTile * kTile * 3];
  int32_t nc[kTile * kTile];
  int32_t max_nc = 0;
  for (int r = 0; r < box.h; ++r)
    for (int c = 0; c < box.w; ++c) {
      const int p = r * box.w + c;
      const int64_t pix = static_cast<int64_t>(box.y0 + r) * cam.width + box.x0 + c;
      T[p] = final_t[pix];
      nc[p] = n_contrib[pix];
      max_nc = std::max(max_nc, nc[p]);
      for (int ch = 0; ch < 3; ++ch) {
        behind[3 * p + ch] = cam.bg[ch];
        dpix[3 * p + ch] = grad_image[ch * hw + pix];
      }
    }
  (void)npix;
  std::fill(pair_grads + begin * kPairGrad, pair_grads + end * kPairGrad, 0.f);
  for (int32_t k = max_nc - 1; k >= 0; --k) {
    const int64_t j = begin + k;
    const int32_t id = ids[j];
    const float* g = geom + static_cast<int64_t>(id) * kGeom;
    const float o = g[8];
    const Footprint fp = footprint(g, box.x0, box.y0, box.w, box.h);
    if (fp.none) continue;
    const float mx = g[0], my = g[1];
    const float ca = g[2], cb_ = g[3], cc = g[4];
    const float ha = -0.5f * ca, nb = -cb_, hc = -0.5f * cc;
    const float col[3] = {g[5], g[6], g[7]};
    float acc[kPairGrad] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    for (int r = fp.r0; r <= fp.r1; ++r) {
      int c0, c1;
      if (!fp.row(r, c0, c1)) continue;
      const float py = static_cast<float>(box.y0 + r);
      const float dy = py - my;
      const float qy = hc * dy * dy;
      const float by = nb * dy;
      for (int c = c0; c <= c1; ++c) {
        const int p = r * box.w + c;
        if (k >= nc[p]) continue;
        const float dx = static_cast<float>(box.x0 + c) - mx;
        const float power = (qy + ha * dx * dx) + by * dx;
        if (power > 0.f) continue;
        const float gauss = blend_exp(power);
        const float alpha_raw = o * gauss;
        if (!(alpha_raw >= kAlphaMin)) continue;
        const float alpha = std::min(kAlphaMax, alpha_raw);
        const float t_before = T[p] / (1.f - alpha);
        T[p] = t_before;
        const float w = alpha * t_before;
        float* bh = behind + 3 * p;
        const float* dl = dpix + 3 * p;
        float dalpha = 0.f;
        for (int ch = 0; ch < 3; ++ch) {
          acc[6 + ch] += w * dl[ch];
          dalpha += (col[ch] - bh[ch]) * dl[ch];
          bh[ch] = alpha * col[ch] + (1.f - alpha) * bh[ch];
        }
        dalpha *= t_before;
        acc[5] += gauss * dalpha;
        const float dpow = dalpha * alpha_raw;
        // power = -0.5 a dx^2 - b dx dy - 0.5 c dy^2 with dx = px - x: d/dx = a dx + b dy
        acc[0] += dpow * (ca * dx + cb_ * dy);
        acc[1] += dpow * (cc * dy + cb_ * dx);
        acc[2] += dpow * (-0.5f * dx * dx);
        acc[3] += dpow * (-dx * dy);
        acc[4] += dpow * (-0.5f * dy * dy);
      }
    }
    float* out = pair_grads + j * kPairGrad;
    for (int q = 0; q < kPairGrad; ++q) out[q] = acc[q];
  }
}

#ifdef __SSE4_1__
// SSE4.1 versions of the two blend passes: 4 adjacent pixels of a row at a time, over whole
// aligned groups of 4 columns around each row span (the extra pixels get the full alpha test, so
// the result is that of visiting them one by one).  Same arithmetic, in the same order, as the
// scalar passes above (which serve builds without SSE4.1).

// blend_exp on 4 lanes (lanes with NaN input give a finite value; callers mask them out).
inline __m128 blend_exp4(__m128 x) {
  const __m128 tiny = _mm_cmplt_ps(x, _mm_set1_ps(-87.f));
  x = _mm_max_ps(x, _mm_set1_ps(-87.f));
  const __m128 n = _mm_round_ps(_mm_mul_ps(x, _mm_set1_ps(1.44269504088896341f)),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m128 r = _mm_sub_ps(x, _mm_mul_ps(n, _mm_set1_ps(0.693145751953125f)));
  r = _mm_sub_ps(r, _mm_mul_ps(n, _mm_set1_ps(1.428606765330187045e-06f)));
  __m128 p = _mm_set1_ps(1.f / 720.f);
  p = _mm_add_ps(_mm_mul_ps(p, r), _mm_set1_ps(1.f / 120.f));
  p = _mm_add_ps(_mm_mul_ps(p, r), _mm_set1_ps(1.f / 24.f));
  p = _mm_add_ps(_mm_mul_ps(p, r), _mm_set1_ps(1.f / 6.f));
  p = _mm_add_ps(_mm_mul_ps(p, r), _mm_set1_ps(0.5f));
  p = _mm_add_ps(_mm_mul_ps(p, r), _mm_set1_ps(1.f));
  p = _mm_add_ps(_mm_mul_ps(p, r), _mm_set1_ps(1.f));
  // clamp the exponent so that masked-out lanes (large positive x) stay finite
  __m128i e = _mm_cvtps_epi32(_mm_min_ps(n, _mm_set1_ps(127.f)));
  e = _mm_slli_epi32(_mm_add_epi32(e, _mm_set1_epi32(127)), 23);
  return _mm_andnot_ps(tiny, _mm_mul_ps(p, _mm_castsi128_ps(e)));
}

inline float hsum4(__m128 v) {
  alignas(16) float t[4];
  _mm_store_ps(t, v);
  return (t[0] + t[1]) + (t[2] + t[3]);
}

void blend_tile_sse(const Camera& cam, int64_t tile, const int32_t* ids, int64_t begin, int64_t end,
                    const float* geom, float* image, float* final_t, int32_t* n_contrib) {
  const TileBox box = tile_box(cam, tile);
  const int npix = box.w * box.h;
  alignas(16) float T[kTile * kTile], C0[kTile * kTile], C1[kTile * kTile], C2[kTile * kTile];
  alignas(16) int32_t last[kTile * kTile], done[kTile * kTile];
  for (int p = 0; p < kTile * kTile; ++p) {
    T[p] = 1.f;
    C0[p] = C1[p] = C2[p] = 0.f;
    last[p] = 0;
    done[p] = (p / kTile < box.h && p % kTile < box.w) ? 0 : -1;  // outside the image: never blended
  }
  int ndone = 0;
  const __m128 lane = _mm_set_ps(3.f, 2.f, 1.f, 0.f);
  const __m128 zero = _mm_setzero_ps(), one = _mm_set1_ps(1.f);
  const __m128 amin = _mm_set1_ps(kAlphaMin), amax = _mm_set1_ps(kAlphaMax), tmin = _mm_set1_ps(kTMin);
  for (int64_t j = begin; j < end && ndone < npix; ++j) {
    const int32_t id = ids[j];
    const float* g = geom + static_cast<int64_t>(id) * kGeom;
    const Footprint fp = footprint(g, box.x0, box.y0, box.w, box.h);
    if (fp.none) continue;
    const float my = g[1];
    const float hc = -0.5f * g[4], nb = -g[3];
    const __m128 vo = _mm_set1_ps(g[8]), vmx = _mm_set1_ps(g[0]), vha = _mm_set1_ps(-0.5f * g[2]);
    const __m128 vcr = _mm_set1_ps(g[5]), vcg = _mm_set1_ps(g[6]), vcb = _mm_set1_ps(g[7]);
    const __m128i vrank = _mm_set1_epi32(static_cast<int32_t>(j - begin) + 1);
    for (int r = fp.r0; r <= fp.r1; ++r) {
      int c0, c1;
      if (!fp.row(r, c0, c1)) continue;
      const float dy = static_cast<float>(box.y0 + r) - my;
      const __m128 vqy = _mm_set1_ps(hc * dy * dy), vby = _mm_set1_ps(nb * dy);
      for (int c = c0 & ~3; c <= c1; c += 4) {
        const int p = r * kTile + c;
        const __m128 px = _mm_add_ps(_mm_set1_ps(static_cast<float>(box.x0 + c)), lane);
        const __m128 dx = _mm_sub_ps(px, vmx);
        const __m128 power = _mm_add_ps(_mm_add_ps(vqy, _mm_mul_ps(_mm_mul_ps(vha, dx), dx)), _mm_mul_ps(vby, dx));
        const __m128 alpha_raw = _mm_mul_ps(vo, blend_exp4(power));
        const __m128 vdone = _mm_castsi128_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(done + p)));
        const __m128 pass = _mm_andnot_ps(vdone, _mm_and_ps(_mm_cmple_ps(power, zero), _mm_cmpge_ps(alpha_raw, amin)));
        if (_mm_movemask_ps(pass) == 0) continue;
        const __m128 alpha = _mm_min_ps(alpha_raw, amax);
        const __m128 t_old = _mm_load_ps(T + p);
        const __m128 test_t = _mm_mul_ps(t_old, _mm_sub_ps(one, alpha));
        const __m128 stop = _mm_and_ps(pass, _mm_cmplt_ps(test_t, tmin));
        const __m128 contrib = _mm_andnot_ps(stop, pass);
        const __m128 w = _mm_and_ps(contrib, _mm_mul_ps(alpha, t_old));
        _mm_store_ps(C0 + p, _mm_add_ps(_mm_load_ps(C0 + p), _mm_mul_ps(vcr, w)));
        _mm_store_ps(C1 + p, _mm_add_ps(_mm_load_ps(C1 + p), _mm_mul_ps(vcg, w)));
        _mm_store_ps(C2 + p, _mm_add_ps(_mm_load_ps(C2 + p), _mm_mul_ps(vcb, w)));
        _mm_store_ps(T + p, _mm_blendv_ps(t_old, test_t, contrib));
        const __m128 vlast = _mm_castsi128_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(last + p)));
        _mm_store_si128(reinterpret_cast<__m128i*>(last + p),
                        _mm_castps_si128(_mm_blendv_ps(vlast, _mm_castsi128_ps(vrank), contrib)));
        _mm_store_si128(reinterpret_cast<__m128i*>(done + p), _mm_castps_si128(_mm_or_ps(vdone, stop)));
        ndone += __builtin_popcount(static_cast<unsigned>(_mm_movemask_ps(stop)));
      }
    }
  }
  const int64_t hw = static_cast<int64_t>(cam.width) * cam.height;
  for (int r = 0; r < box.h; ++r)
    for (int c = 0; c < box.w; ++c) {
      const int p = r * kTile + c;
      const int64_t pix = static_cast<int64_t>(box.y0 + r) * cam.width + box.x0 + c;
      image[pix] = C0[p] + T[p] * cam.bg[0];
      image[hw + pix] = C1[p] + T[p] * cam.bg[1];
      image[2 * hw + pix] = C2[p] + T[p] * cam.bg[2];
      final_t[pix] = T[p];
      n_contrib[pix] = last[p];
    }
}

void blend_tile_backward_sse(const Camera& cam, int64_t tile, const int32_t* ids, int64_t begin, int64_t end,
                             const float* geom, const float* final_t, const int32_t* n_contrib,
                             const float* grad_image, float* pair_grads) {
  const TileBox box = tile_box(cam, tile);
  const int64_t hw = static_cast<int64_t>(cam.width) * cam.height;
  alignas(16) float T[kTile * kTile], B0[kTile * kTile], B1[kTile * kTile], B2[kTile * kTile];
  alignas(16) float D0[kTile * kTile], D1[kTile * kTile], D2[kTile * kTile];
  alignas(16) int32_t nc[kTile * kTile];
  for (int p = 0; p < kTile * kTile; ++p) {
    T[p] = 1.f;
    B0[p] = cam.bg[0];
    B1[p] = cam.bg[1];
    B2[p] = cam.bg[2];
    D0[p] = D1[p] = D2[p] = 0.f;
    nc[p] = 0;  // pixels outside the image never pass
  }
  int32_t max_nc = 0;
  for (int r = 0; r < box.h; ++r)
    for (int c = 0; c < box.w; ++c) {
      const int p = r * kTile + c;
      const int64_t pix = static_cast<int64_t>(box.y0 + r) * cam.width + box.x0 + c;
      T[p] = final_t[pix];
      nc[p] = n_contrib[pix];
      max_nc = std::max(max_nc, nc[p]);
      D0[p] = grad_image[pix];
      D1[p] = grad_image[hw + pix];
      D2[p] = grad_image[2 * hw + pix];
    }
  std::fill(pair_grads + begin * kPairGrad, pair_grads + end * kPairGrad, 0.f);
  const __m128 lane = _mm_set_ps(3.f, 2.f, 1.f, 0.f);
  const __m128 zero = _mm_setzero_ps(), one = _mm_set1_ps(1.f), mhalf = _mm_set1_ps(-0.5f);
  const __m128 amin = _mm_set1_ps(kAlphaMin), amax = _mm_set1_ps(kAlphaMax);
  const __m128 sign = _mm_set1_ps(-0.f);
  for (int32_t k = max_nc - 1; k >= 0; --k) {
    const int64_t j = begin + k;
    const int32_t id = ids[j];
    const float* g = geom + static_cast<int64_t>(id) * kGeom;
    const Footprint fp = footprint(g, box.x0, box.y0, box.w, box.h);
    if (fp.none) continue;
    const float my = g[1];
    const float hc = -0.5f * g[4], nb = -g[3];
    const __m128 vo = _mm_set1_ps(g[8]), vmx = _mm_set1_ps(g[0]), vha = _mm_set1_ps(-0.5f * g[2]);
    const __m128 vca = _mm_set1_ps(g[2]), vcb_ = _mm_set1_ps(g[3]), vcc = _mm_set1_ps(g[4]);
    const __m128 vcr = _mm_set1_ps(g[5]), vcg = _mm_set1_ps(g[6]), vcb = _mm_set1_ps(g[7]);
    const __m128i vk = _mm_set1_epi32(k);
    __m128 a_x = zero, a_y = zero, a_ca = zero, a_cb = zero, a_cc = zero, a_o = zero, a_r = zero, a_g = zero,
           a_b = zero;
    for (int r = fp.r0; r <= fp.r1; ++r) {
      int c0, c1;
      if (!fp.row(r, c0, c1)) continue;
      const float dys = static_cast<float>(box.y0 + r) - my;
      const __m128 dy = _mm_set1_ps(dys);
      const __m128 vqy = _mm_set1_ps(hc * dys * dys), vby = _mm_set1_ps(nb * dys);
      for (int c = c0 & ~3; c <= c1; c += 4) {
        const int p = r * kTile + c;
        const __m128 px = _mm_add_ps(_mm_set1_ps(static_cast<float>(box.x0 + c)), lane);
        const __m128 dx = _mm_sub_ps(px, vmx);
        const __m128 power = _mm_add_ps(_mm_add_ps(vqy, _mm_mul_ps(_mm_mul_ps(vha, dx), dx)), _mm_mul_ps(vby, dx));
        const __m128 gauss = blend_exp4(power);
        const __m128 alpha_raw = _mm_mul_ps(vo, gauss);
        const __m128 live = _mm_castsi128_ps(
            _mm_cmpgt_epi32(_mm_load_si128(reinterpret_cast<const __m128i*>(nc + p)), vk));
        const __m128 pass = _mm_and_ps(live, _mm_and_ps(_mm_cmple_ps(power, zero), _mm_cmpge_ps(alpha_raw, amin)));
        if (_mm_movemask_ps(pass) == 0) continue;
        const __m128 alpha = _mm_min_ps(alpha_raw, amax);
        const __m128 one_m = _mm_sub_ps(one, alpha);
        const __m128 t_after = _mm_load_ps(T + p);
        const __m128 t_before = _mm_blendv_ps(t_after, _mm_div_ps(t_after, one_m), pass);
        _mm_store_ps(T + p, t_before);
        const __m128 w = _mm_and_ps(pass, _mm_mul_ps(alpha, t_before));
        const __m128 b0 = _mm_load_ps(B0 + p), b1 = _mm_load_ps(B1 + p), b2 = _mm_load_ps(B2 + p);
        const __m128 d0 = _mm_load_ps(D0 + p), d1 = _mm_load_ps(D1 + p), d2 = _mm_load_ps(D2 + p);
        a_r = _mm_add_ps(a_r, _mm_mul_ps(w, d0));
        a_g = _mm_add_ps(a_g, _mm_mul_ps(w, d1));
        a_b = _mm_add_ps(a_b, _mm_mul_ps(w, d2));
        __m128 dalpha = _mm_mul_ps(_mm_sub_ps(vcr, b0), d0);
        dalpha = _mm_add_ps(dalpha, _mm_mul_ps(_mm_sub_ps(vcg, b1), d1));
        dalpha = _mm_add_ps(dalpha, _mm_mul_ps(_mm_sub_ps(vcb, b2), d2));
        dalpha = _mm_and_ps(pass, _mm_mul_ps(dalpha, t_before));
        _mm_store_ps(B0 + p, _mm_blendv_ps(b0, _mm_add_ps(_mm_mul_ps(alpha, vcr), _mm_mul_ps(one_m, b0)), pass));
        _mm_store_ps(B1 + p, _mm_blendv_ps(b1, _mm_add_ps(_mm_mul_ps(alpha, vcg), _mm_mul_ps(one_m, b1)), pass));
        _mm_store_ps(B2 + p, _mm_blendv_ps(b2, _mm_add_ps(_mm_mul_ps(alpha, vcb), _mm_mul_ps(one_m, b2)), pass));
        a_o = _mm_add_ps(a_o, _mm_and_ps(pass, _mm_mul_ps(gauss, dalpha)));
        const __m128 dpow = _mm_and_ps(pass, _mm_mul_ps(dalpha, alpha_raw));
        // power = -0.5 a dx^2 - b dx dy - 0.5 c dy^2 with dx = px - x: d/dx = a dx + b dy
        a_x = _mm_add_ps(a_x, _mm_mul_ps(dpow, _mm_add_ps(_mm_mul_ps(vca, dx), _mm_mul_ps(vcb_, dy))));
        a_y = _mm_add_ps(a_y, _mm_mul_ps(dpow, _mm_add_ps(_mm_mul_ps(vcc, dy), _mm_mul_ps(vcb_, dx))));
        a_ca = _mm_add_ps(a_ca, _mm_mul_ps(dpow, _mm_mul_ps(_mm_mul_ps(mhalf, dx), dx)));
        a_cb = _mm_add_ps(a_cb, _mm_mul_ps(dpow, _mm_mul_ps(_mm_xor_ps(dx, sign), dy)));
        a_cc = _mm_add_ps(a_cc, _mm_mul_ps(dpow, _mm_mul_ps(_mm_mul_ps(mhalf, dy), dy)));
      }
    }
    float* out = pair_grads + j * kPairGrad;
    out[0] = hsum4(a_x);
    out[1] = hsum4(a_y);
    out[2] = hsum4(a_ca);
    out[3] = hsum4(a_cb);
    out[4] = hsum4(a_cc);
    out[5] = hsum4(a_o);
    out[6] = hsum4(a_r);
    out[7] = hsum4(a_g);
    out[8] = hsum4(a_b);
  }
}
#endif  // __SSE4_1__

// Dispatch to the SSE4.1 passes where the build targets them (setup.py: -march=x86-64-v2).
void blend_tile_any(const Camera& cam, int64_t tile, const int32_t* ids, int64_t begin, int64_t end,
                    const float* geom, float* image, float* final_t, int32_t* n_contrib) {
#ifdef __SSE4_1__
  blend_tile_sse(cam, tile, ids, begin, end, geom, image, final_t, n_contrib);
#else
  blend_tile(cam, tile, ids, begin, end, geom, image, final_t, n_contrib);
#endif
}

void blend_tile_backward_any(const Camera& cam, int64_t tile, const int32_t* ids, int64_t begin, int64_t end,
                             const float* geom, const float* final_t, const int32_t* n_contrib,
                             const float* grad_image, float* pair_grads) {
#ifdef __SSE4_1__
  blend_tile_backward_sse(cam, tile, ids, begin, end, geom, final_t, n_contrib, grad_image, pair_grads);
#else
  blend_tile_backward(cam, tile, ids, begin, end, geom, final_t, n_contrib, grad_image, pair_grads);
#endif
}

}  // namespace

// Forward.  Returns (color (3, H, W), radii (N,) int32, geom (N, kGeom), tile_offsets (tiles + 1)
// int64, tile_ids (pairs,) int32, final_T (H, W), n_contrib (H, W) int32, projected (N, bytes)
// uint8); everything after radii is state for rasterize_backward.
std::vector<torch::Tensor> rasterize_forward(
    const torch::Tensor& means3D, const torch::Tensor& opacities, const torch::Tensor& sh,
    const torch::Tensor& colors, const torch::Tensor& scales, const torch::Tensor& rotations,
    const torch::Tensor& cov3D, const torch::Tensor& viewmatrix, const torch::Tensor& projmatrix,
    const torch::Tensor& campos, const torch::Tensor& bg, int64_t width, int64_t height, double fx, double fy,
    double lim_x0, double lim_x1, double lim_y0, double lim_y1, double scale_modifier, int64_t sh_degree) {
  const Camera cam = make_camera(f32(viewmatrix, "viewmatrix"), f32(projmatrix, "projmatrix"),
                                 f32(campos, "campos"), f32(bg, "bg"), width, height, fx, fy, lim_x0,
                                 lim_x1, lim_y0, lim_y1, scale_modifier, sh_degree);
  DGR_CLOCK_START;
  const Inputs in = make_inputs(means3D, opacities, sh, colors, scales, rotations, cov3D, cam.sh_degree);
  const int64_t n = in.view.n;
  const int nt = num_threads();
  (void)nt;  // unused without OpenMP
  const int64_t num_tiles = static_cast<int64_t>(cam.grid_x) * cam.grid_y;

  auto f32opts = torch::TensorOptions().dtype(torch::kFloat32);
  torch::Tensor geom_t = torch::zeros({n, kGeom}, f32opts);
  torch::Tensor radii_t = torch::zeros({n}, torch::TensorOptions().dtype(torch::kInt32));
  std::vector<int32_t> rects(static_cast<size_t>(4 * n), 0);
  float* geom = geom_t.data_ptr<float>();
  int32_t* radii = radii_t.data_ptr<int32_t>();
  // The preprocessing intermediates of every splat, kept for the backward pass (raw bytes).
  torch::Tensor proj_t = torch::empty({n, static_cast<int64_t>(sizeof(Projected))},
                                      torch::TensorOptions().dtype(torch::kUInt8));
  Projected* projected = reinterpret_cast<Projected*>(proj_t.data_ptr<uint8_t>());

#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t i = 0; i < n; ++i) {
    Projected& p = *new (projected + i) Projected;
    project_splat(cam, in.view, i, p);
    if (!p.visible) continue;
    float* g = geom + i * kGeom;
    g[0] = p.xy[0];
    g[1] = p.xy[1];
    g[2] = p.conic[0];
    g[3] = p.conic[1];
    g[4] = p.conic[2];
    g[5] = p.color[0];
    g[6] = p.color[1];
    g[7] = p.color[2];
    g[8] = in.view.opacity[i];
    footprint_constants(p.conic, g[8], g + 10);
    g[9] = p.t[2];
    radii[i] = static_cast<int32_t>(std::min(static_cast<double>(p.radius), kMaxRadius));
    for (int k = 0; k < 4; ++k) rects[4 * i + k] = p.rect[k];
  }

  DGR_TICK("fwd preprocess");
  // Tile lists.  A (tile, splat) pair of the splat's tile rectangle is listed only when the
  // splat's footprint reaches a pixel of that tile (elsewhere every pixel skips it anyway).
  // Each tile's list is sorted by (depth, splat index), as the reference's stable depth sort.
  auto live = [&](int64_t i, int x, int y) {
    const TileBox b = tile_box(cam, static_cast<int64_t>(y) * cam.grid_x + x);
    return !footprint(geom + i * kGeom, b.x0, b.y0, b.w, b.h).none;
  };
  std::vector<int64_t> splat_start(static_cast<size_t>(n + 1), 0);
#pragma omp parallel for schedule(dynamic, 256) num_threads(nt)
  for (int64_t i = 0; i < n; ++i) {
    int64_t count = 0;
    if (radii[i] > 0) {
      const int32_t* r = rects.data() + 4 * i;
      for (int y = r[1]; y < r[3]; ++y)
        for (int x = r[0]; x < r[2]; ++x) count += live(i, x, y) ? 1 : 0;
    }
    splat_start[i + 1] = count;
  }
  for (int64_t i = 0; i < n; ++i) splat_start[i + 1] += splat_start[i];
  const int64_t pairs = splat_start[n];
  std::vector<int32_t> pair_tile(static_cast<size_t>(pairs));
#pragma omp parallel for schedule(dynamic, 256) num_threads(nt)
  for (int64_t i = 0; i < n; ++i) {
    if (radii[i] <= 0) continue;
    int64_t k = splat_start[i];
    const int32_t* r = rects.data() + 4 * i;
    for (int y = r[1]; y < r[3]; ++y)
      for (int x = r[0]; x < r[2]; ++x)
        if (live(i, x, y)) pair_tile[k++] = y * cam.grid_x + x;
  }
  torch::Tensor offsets_t = torch::zeros({num_tiles + 1}, torch::TensorOptions().dtype(torch::kInt64));
  int64_t* offsets = offsets_t.data_ptr<int64_t>();
  for (int64_t k = 0; k < pairs; ++k) ++offsets[pair_tile[k] + 1];
  for (int64_t t = 0; t < num_tiles; ++t) offsets[t + 1] += offsets[t];
  DGR_TICK("fwd lists");
  // Listed splats in (depth, index) order: stable LSD radix sort of the depth bits (depth > 0.2,
  // so its IEEE bits order as unsigned integers) over the splats in index order.  Filling the
  // tile lists in that order leaves every list sorted as the reference's stable depth sort.
  std::vector<int32_t> order;
  order.reserve(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i)
    if (splat_start[i + 1] > splat_start[i]) order.push_back(static_cast<int32_t>(i));
  {
    std::vector<uint32_t> bits(static_cast<size_t>(n), 0u);
    for (const int32_t i : order) std::memcpy(&bits[i], geom + static_cast<int64_t>(i) * kGeom + 9, sizeof(uint32_t));
    std::vector<int32_t> tmp(order.size());
    for (int shift = 0; shift < 32; shift += 8) {
      size_t count[257] = {0};
      for (const int32_t i : order) ++count[((bits[i] >> shift) & 0xffu) + 1];
      for (int d = 0; d < 256; ++d) count[d + 1] += count[d];
      for (const int32_t i : order) tmp[count[(bits[i] >> shift) & 0xffu]++] = i;
      order.swap(tmp);
    }
  }
  torch::Tensor ids_t = torch::empty({pairs}, torch::TensorOptions().dtype(torch::kInt32));
  int32_t* ids = ids_t.data_ptr<int32_t>();
  {
    std::vector<int64_t> cursor(offsets, offsets + num_tiles);
    for (const int32_t i : order)
      for (int64_t k = splat_start[i]; k < splat_start[i + 1]; ++k) ids[cursor[pair_tile[k]]++] = i;
  }

  DGR_TICK("fwd sort");
  torch::Tensor image_t = torch::empty({3, height, width}, f32opts);
  torch::Tensor final_t = torch::empty({height, width}, f32opts);
  torch::Tensor contrib_t = torch::empty({height, width}, torch::TensorOptions().dtype(torch::kInt32));
  float* image = image_t.data_ptr<float>();
  float* ft = final_t.data_ptr<float>();
  int32_t* nc = contrib_t.data_ptr<int32_t>();
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (int64_t t = 0; t < num_tiles; ++t)
    blend_tile_any(cam, t, ids, offsets[t], offsets[t + 1], geom, image, ft, nc);
  DGR_TICK("fwd blend");
  return {image_t, radii_t, geom_t, offsets_t, ids_t, final_t, contrib_t, proj_t};
}

// Backward.  Returns (dmeans3D (N, 3), dmeans2D (N, 2), dsh (N, K, 3) or empty, dcolors (N, 3) or
// empty, dopacities (N,), dscales (N, 3) or empty, drotations (N, 4) or empty, dcov3D (N, 6) or empty).
std::vector<torch::Tensor> rasterize_backward(
    const torch::Tensor& grad_image, const torch::Tensor& means3D, const torch::Tensor& opacities,
    const torch::Tensor& sh, const torch::Tensor& colors, const torch::Tensor& scales,
    const torch::Tensor& rotations, const torch::Tensor& cov3D, const torch::Tensor& viewmatrix,
    const torch::Tensor& projmatrix, const torch::Tensor& campos, const torch::Tensor& bg, int64_t width,
    int64_t height, double fx, double fy, double lim_x0, double lim_x1, double lim_y0, double lim_y1,
    double scale_modifier, int64_t sh_degree, const torch::Tensor& radii_t, const torch::Tensor& geom_t,
    const torch::Tensor& offsets_t, const torch::Tensor& ids_t, const torch::Tensor& final_t,
    const torch::Tensor& contrib_t, const torch::Tensor& proj_t) {
  const Camera cam = make_camera(f32(viewmatrix, "viewmatrix"), f32(projmatrix, "projmatrix"),
                                 f32(campos, "campos"), f32(bg, "bg"), width, height, fx, fy, lim_x0,
                                 lim_x1, lim_y0, lim_y1, scale_modifier, sh_degree);
  DGR_CLOCK_START;
  const Inputs in = make_inputs(means3D, opacities, sh, colors, scales, rotations, cov3D, cam.sh_degree);
  const int64_t n = in.view.n;
  const int nt = num_threads();
  (void)nt;  // unused without OpenMP
  const int64_t num_tiles = static_cast<int64_t>(cam.grid_x) * cam.grid_y;
  TORCH_CHECK(grad_image.numel() == 3 * width * height, "grad of the image must have shape (3, H, W)");
  TORCH_CHECK(offsets_t.numel() == num_tiles + 1 && geom_t.numel() == n * kGeom && radii_t.numel() == n,
              "saved forward state does not match the inputs");
  const torch::Tensor gimg = f32(grad_image, "grad_image");
  const float* geom = geom_t.data_ptr<float>();
  const int64_t* offsets = offsets_t.data_ptr<int64_t>();
  const int32_t* ids = ids_t.data_ptr<int32_t>();
  const int32_t* radii = radii_t.data_ptr<int32_t>();
  TORCH_CHECK(proj_t.numel() == n * static_cast<int64_t>(sizeof(Projected)) && proj_t.dtype() == torch::kUInt8,
              "saved preprocessing state does not match the inputs");
  const Projected* projected = reinterpret_cast<const Projected*>(proj_t.data_ptr<uint8_t>());
  const int64_t pairs = offsets[num_tiles];

  // 1. Blend backward per tile into the pair buffer.
  std::vector<float> pair_grads(static_cast<size_t>(pairs * kPairGrad));
  const float* gptr = gimg.data_ptr<float>();
  const float* ft = final_t.data_ptr<float>();
  const int32_t* nc = contrib_t.data_ptr<int32_t>();
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (int64_t t = 0; t < num_tiles; ++t)
    blend_tile_backward_any(cam, t, ids, offsets[t], offsets[t + 1], geom, ft, nc, gptr, pair_grads.data());

  DGR_TICK("bwd blend");
  // 2. Reduce per splat in a fixed order (tile order): deterministic.
  std::vector<float> splat_grads(static_cast<size_t>(n * kPairGrad), 0.f);
  for (int64_t j = 0; j < pairs; ++j) {
    float* dst = splat_grads.data() + static_cast<int64_t>(ids[j]) * kPairGrad;
    const float* src = pair_grads.data() + j * kPairGrad;
    for (int q = 0; q < kPairGrad; ++q) dst[q] += src[q];
  }

  DGR_TICK("bwd reduce");
  // 3. Preprocessing backward per splat.
  auto f32opts = torch::TensorOptions().dtype(torch::kFloat32);
  torch::Tensor d_means3D = torch::zeros({n, 3}, f32opts);
  torch::Tensor d_means2D = torch::zeros({n, 2}, f32opts);
  torch::Tensor d_opac = torch::zeros({n}, f32opts);
  const bool use_colors = in.view.colors != nullptr;
  const bool use_cov = in.view.cov3D != nullptr;
  torch::Tensor d_sh = (!use_colors && n) ? torch::zeros({n, in.view.sh_k, 3}, f32opts) : torch::empty({0}, f32opts);
  torch::Tensor d_colors = use_colors ? torch::zeros({n, 3}, f32opts) : torch::empty({0}, f32opts);
  torch::Tensor d_scales = (!use_cov && n) ? torch::zeros({n, 3}, f32opts) : torch::empty({0}, f32opts);
  torch::Tensor d_rot = (!use_cov && n) ? torch::zeros({n, 4}, f32opts) : torch::empty({0}, f32opts);
  torch::Tensor d_cov = use_cov ? torch::zeros({n, 6}, f32opts) : torch::empty({0}, f32opts);
  SplatGrads out;
  out.means3D = d_means3D.data_ptr<float>();
  out.means2D = d_means2D.data_ptr<float>();
  out.sh = d_sh.numel() ? d_sh.data_ptr<float>() : nullptr;
  out.colors = d_colors.numel() ? d_colors.data_ptr<float>() : nullptr;
  out.scales = d_scales.numel() ? d_scales.data_ptr<float>() : nullptr;
  out.rotations = d_rot.numel() ? d_rot.data_ptr<float>() : nullptr;
  out.cov3D = d_cov.numel() ? d_cov.data_ptr<float>() : nullptr;
  float* dop = d_opac.data_ptr<float>();
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t i = 0; i < n; ++i) {
    if (radii[i] <= 0) continue;
    const Projected& p = projected[i];
    if (!p.visible) continue;
    const float* sg = splat_grads.data() + i * kPairGrad;
    dop[i] = sg[5];
    project_splat_backward(cam, in.view, i, p, sg, sg + 2, sg + 6, out);
  }
  DGR_TICK("bwd preprocess");
  return {d_means3D, d_means2D, d_sh, d_colors, d_opac, d_scales, d_rot, d_cov};
}

}  // namespace dgr_cpu

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "CPU (OpenMP) tile rasterizer of diff_gaussian_rasterization (forward and backward)";
  m.def("rasterize_forward", &dgr_cpu::rasterize_forward, "CPU rasterizer forward");
  m.def("rasterize_backward", &dgr_cpu::rasterize_backward, "CPU rasterizer backward");
}
