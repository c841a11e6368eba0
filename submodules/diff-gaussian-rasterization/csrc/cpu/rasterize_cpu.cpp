// CPU (OpenMP) tile rasterizer: forward and backward, bound as diff_gaussian_rasterization._cpu.
//
// Same math as diff_gaussian_rasterization/reference.py.  Forward: per-splat preprocessing
// (parallel), per-tile lists sorted by (depth, splat index), per-tile front-to-back blending
// (parallel over tiles) that records each pixel's final transmittance and contributor count.
// Backward: per tile, back to front over the same lists, recovering T from the stored final T;
// per (tile, splat) pair gradients are summed over the tile's pixels into a pair buffer, reduced
// per splat in a fixed order (deterministic), then pushed through the preprocessing.
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "splat_math.h"

namespace dgr_cpu {
namespace {

// Per visible splat data used by the blend: x, y, conic (3), colour (3), lam, depth.
constexpr int kGeom = 10;
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

// Reach of a splat: pixels at squared distance d2 from the mean with 0.5 d2 / lam > reach cannot
// reach alpha >= 1/255 (as reference.build_block_lists, with the same 1% margin).
inline float splat_reach(float opacity) {
  const float log_reach = std::log(opacity * 255.f);
  return log_reach + 0.01f * std::fabs(log_reach) + 1e-5f;
}

// Whether the splat can reach alpha >= 1/255 anywhere in [x0, x1] x [y0, y1] (pixel centres).
inline bool can_reach(const float* geom, float reach, float x0, float x1, float y0, float y1) {
  const float dx = geom[0] - std::min(std::max(geom[0], x0), x1);
  const float dy = geom[1] - std::min(std::max(geom[1], y0), y1);
  const float v = 0.5f * (dx * dx + dy * dy) / geom[8];
  return !(v > reach);
}

// Squared pixel distance from the mean beyond which alpha < 1/255 (a slightly widened
// 2 reach lam); NaN or negative when the splat reaches no pixel.
inline float reach_d2(const float* geom, float reach) { return 2.f * reach * geom[8] * 1.0001f + 1e-4f; }

// Columns [c0, c1] of a tile row (pixel y = py) that the splat may reach; false when none.  The
// span is widened by one pixel on each side, so it only drops pixels that fail alpha >= 1/255.
inline bool row_span(const float* geom, float d2, float py, int x0, int w, int& c0, int& c1) {
  const float dy = py - geom[1];
  const float rem = d2 - dy * dy;
  if (!(rem >= 0.f)) return false;
  const float half = std::sqrt(rem);
  const float lo = std::floor(geom[0] - half) - static_cast<float>(x0) - 1.f;
  const float hi = std::ceil(geom[0] + half) - static_cast<float>(x0) + 1.f;
  if (!(lo <= static_cast<float>(w - 1)) || !(hi >= 0.f)) return false;
  c0 = lo > 0.f ? static_cast<int>(lo) : 0;
  c1 = hi < static_cast<float>(w - 1) ? static_cast<int>(hi) : w - 1;
  return c0 <= c1;
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

void blend_tile(const Camera& cam, int64_t tile, const int32_t* ids, int64_t begin, int64_t end,
                const float* geom, const float* opacity, float* image, float* final_t, int32_t* n_contrib) {
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
  const float fx0 = static_cast<float>(box.x0), fx1 = static_cast<float>(box.x0 + box.w - 1);
  const float fy0 = static_cast<float>(box.y0), fy1 = static_cast<float>(box.y0 + box.h - 1);
  for (int64_t j = begin; j < end && ndone < npix; ++j) {
    const int32_t id = ids[j];
    const float* g = geom + static_cast<int64_t>(id) * kGeom;
    const float o = opacity[id];
    const float reach = splat_reach(o);
    if (!can_reach(g, reach, fx0, fx1, fy0, fy1)) continue;
    const float mx = g[0], my = g[1];
    const float ha = -0.5f * g[2], nb = -g[3], hc = -0.5f * g[4];
    const float cr = g[5], cg = g[6], cb = g[7];
    const int32_t rank = static_cast<int32_t>(j - begin) + 1;
    const float d2 = reach_d2(g, reach);
    for (int r = 0; r < box.h; ++r) {
      const float py = static_cast<float>(box.y0 + r);
      int c0, c1;
      if (!row_span(g, d2, py, box.x0, box.w, c0, c1)) continue;
      const float dy = py - my;
      const float qy = hc * dy * dy;
      const float by = nb * dy;
      for (int c = c0; c <= c1; ++c) {
        const int p = r * box.w + c;
        if (done[p]) continue;
        const float dx = static_cast<float>(box.x0 + c) - mx;
        const float power = (qy + ha * dx * dx) + by * dx;
        if (power > 0.f) continue;
        const float alpha_raw = o * std::exp(power);
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

void blend_tile_backward(const Camera& cam, int64_t tile, const int32_t* ids, int64_t begin, int64_t end,
                         const float* geom, const float* opacity, const float* final_t,
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
  const float fx0 = static_cast<float>(box.x0), fx1 = static_cast<float>(box.x0 + box.w - 1);
  const float fy0 = static_cast<float>(box.y0), fy1 = static_cast<float>(box.y0 + box.h - 1);
  for (int32_t k = max_nc - 1; k >= 0; --k) {
    const int64_t j = begin + k;
    const int32_t id = ids[j];
    const float* g = geom + static_cast<int64_t>(id) * kGeom;
    const float o = opacity[id];
    const float reach = splat_reach(o);
    if (!can_reach(g, reach, fx0, fx1, fy0, fy1)) continue;
    const float mx = g[0], my = g[1];
    const float ca = g[2], cb_ = g[3], cc = g[4];
    const float ha = -0.5f * ca, nb = -cb_, hc = -0.5f * cc;
    const float col[3] = {g[5], g[6], g[7]};
    double acc[kPairGrad] = {0, 0, 0, 0, 0, 0, 0, 0, 0};
    const float d2 = reach_d2(g, reach);
    for (int r = 0; r < box.h; ++r) {
      const float py = static_cast<float>(box.y0 + r);
      int c0, c1;
      if (!row_span(g, d2, py, box.x0, box.w, c0, c1)) continue;
      const float dy = py - my;
      const float qy = hc * dy * dy;
      const float by = nb * dy;
      for (int c = c0; c <= c1; ++c) {
        const int p = r * box.w + c;
        if (k >= nc[p]) continue;
        const float dx = static_cast<float>(box.x0 + c) - mx;
        const float power = (qy + ha * dx * dx) + by * dx;
        if (power > 0.f) continue;
        const float gauss = std::exp(power);
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
    for (int q = 0; q < kPairGrad; ++q) out[q] = static_cast<float>(acc[q]);
  }
}

}  // namespace

// Forward.  Returns (color (3, H, W), radii (N,) int32, geom (N, 10), tile_offsets (tiles + 1)
// int64, tile_ids (pairs,) int32, final_T (H, W), n_contrib (H, W) int32).
std::vector<torch::Tensor> rasterize_forward(
    const torch::Tensor& means3D, const torch::Tensor& opacities, const torch::Tensor& sh,
    const torch::Tensor& colors, const torch::Tensor& scales, const torch::Tensor& rotations,
    const torch::Tensor& cov3D, const torch::Tensor& viewmatrix, const torch::Tensor& projmatrix,
    const torch::Tensor& campos, const torch::Tensor& bg, int64_t width, int64_t height, double fx, double fy,
    double lim_x0, double lim_x1, double lim_y0, double lim_y1, double scale_modifier, int64_t sh_degree) {
  const Camera cam = make_camera(f32(viewmatrix, "viewmatrix"), f32(projmatrix, "projmatrix"),
                                 f32(campos, "campos"), f32(bg, "bg"), width, height, fx, fy, lim_x0,
                                 lim_x1, lim_y0, lim_y1, scale_modifier, sh_degree);
  const Inputs in = make_inputs(means3D, opacities, sh, colors, scales, rotations, cov3D, cam.sh_degree);
  const int64_t n = in.view.n;
  const int nt = num_threads();
  const int64_t num_tiles = static_cast<int64_t>(cam.grid_x) * cam.grid_y;

  auto f32opts = torch::TensorOptions().dtype(torch::kFloat32);
  torch::Tensor geom_t = torch::zeros({n, kGeom}, f32opts);
  torch::Tensor radii_t = torch::zeros({n}, torch::TensorOptions().dtype(torch::kInt32));
  std::vector<int32_t> rects(static_cast<size_t>(4 * n), 0);
  float* geom = geom_t.data_ptr<float>();
  int32_t* radii = radii_t.data_ptr<int32_t>();

#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t i = 0; i < n; ++i) {
    Projected p;
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
    g[8] = p.lam;
    g[9] = p.t[2];
    radii[i] = static_cast<int32_t>(std::min(static_cast<double>(p.radius), kMaxRadius));
    for (int k = 0; k < 4; ++k) rects[4 * i + k] = p.rect[k];
  }

  // Tile lists: counts, offsets, fill in splat order, then sort each tile by depth (stable).
  torch::Tensor offsets_t = torch::zeros({num_tiles + 1}, torch::TensorOptions().dtype(torch::kInt64));
  int64_t* offsets = offsets_t.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    if (radii[i] <= 0) continue;
    const int32_t* r = rects.data() + 4 * i;
    for (int y = r[1]; y < r[3]; ++y)
      for (int x = r[0]; x < r[2]; ++x) ++offsets[static_cast<int64_t>(y) * cam.grid_x + x + 1];
  }
  for (int64_t t = 0; t < num_tiles; ++t) offsets[t + 1] += offsets[t];
  const int64_t pairs = offsets[num_tiles];
  torch::Tensor ids_t = torch::empty({pairs}, torch::TensorOptions().dtype(torch::kInt32));
  int32_t* ids = ids_t.data_ptr<int32_t>();
  {
    std::vector<int64_t> cursor(offsets, offsets + num_tiles);
    for (int64_t i = 0; i < n; ++i) {
      if (radii[i] <= 0) continue;
      const int32_t* r = rects.data() + 4 * i;
      for (int y = r[1]; y < r[3]; ++y)
        for (int x = r[0]; x < r[2]; ++x) ids[cursor[static_cast<int64_t>(y) * cam.grid_x + x]++] = static_cast<int32_t>(i);
    }
  }
#pragma omp parallel for schedule(dynamic, 4) num_threads(nt)
  for (int64_t t = 0; t < num_tiles; ++t) {
    std::stable_sort(ids + offsets[t], ids + offsets[t + 1], [geom](int32_t a, int32_t b) {
      return geom[static_cast<int64_t>(a) * kGeom + 9] < geom[static_cast<int64_t>(b) * kGeom + 9];
    });
  }

  torch::Tensor image_t = torch::empty({3, height, width}, f32opts);
  torch::Tensor final_t = torch::empty({height, width}, f32opts);
  torch::Tensor contrib_t = torch::empty({height, width}, torch::TensorOptions().dtype(torch::kInt32));
  float* image = image_t.data_ptr<float>();
  float* ft = final_t.data_ptr<float>();
  int32_t* nc = contrib_t.data_ptr<int32_t>();
  const float* opac = in.view.opacity;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (int64_t t = 0; t < num_tiles; ++t)
    blend_tile(cam, t, ids, offsets[t], offsets[t + 1], geom, opac, image, ft, nc);
  return {image_t, radii_t, geom_t, offsets_t, ids_t, final_t, contrib_t};
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
    const torch::Tensor& contrib_t) {
  const Camera cam = make_camera(f32(viewmatrix, "viewmatrix"), f32(projmatrix, "projmatrix"),
                                 f32(campos, "campos"), f32(bg, "bg"), width, height, fx, fy, lim_x0,
                                 lim_x1, lim_y0, lim_y1, scale_modifier, sh_degree);
  const Inputs in = make_inputs(means3D, opacities, sh, colors, scales, rotations, cov3D, cam.sh_degree);
  const int64_t n = in.view.n;
  const int nt = num_threads();
  const int64_t num_tiles = static_cast<int64_t>(cam.grid_x) * cam.grid_y;
  TORCH_CHECK(grad_image.numel() == 3 * width * height, "grad of the image must have shape (3, H, W)");
  TORCH_CHECK(offsets_t.numel() == num_tiles + 1 && geom_t.numel() == n * kGeom && radii_t.numel() == n,
              "saved forward state does not match the inputs");
  const torch::Tensor gimg = f32(grad_image, "grad_image");
  const float* geom = geom_t.data_ptr<float>();
  const int64_t* offsets = offsets_t.data_ptr<int64_t>();
  const int32_t* ids = ids_t.data_ptr<int32_t>();
  const int32_t* radii = radii_t.data_ptr<int32_t>();
  const int64_t pairs = offsets[num_tiles];

  // 1. Blend backward per tile into the pair buffer.
  std::vector<float> pair_grads(static_cast<size_t>(pairs * kPairGrad));
  const float* opac = in.view.opacity;
  const float* gptr = gimg.data_ptr<float>();
  const float* ft = final_t.data_ptr<float>();
  const int32_t* nc = contrib_t.data_ptr<int32_t>();
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (int64_t t = 0; t < num_tiles; ++t)
    blend_tile_backward(cam, t, ids, offsets[t], offsets[t + 1], geom, opac, ft, nc, gptr, pair_grads.data());

  // 2. Reduce per splat in a fixed order (tile order): deterministic.
  std::vector<float> splat_grads(static_cast<size_t>(n * kPairGrad), 0.f);
  for (int64_t j = 0; j < pairs; ++j) {
    float* dst = splat_grads.data() + static_cast<int64_t>(ids[j]) * kPairGrad;
    const float* src = pair_grads.data() + j * kPairGrad;
    for (int q = 0; q < kPairGrad; ++q) dst[q] += src[q];
  }

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
    Projected p;
    project_splat(cam, in.view, i, p);
    if (!p.visible) continue;
    const float* sg = splat_grads.data() + i * kPairGrad;
    dop[i] = sg[5];
    project_splat_backward(cam, in.view, i, p, sg, sg + 2, sg + 6, out);
  }
  return {d_means3D, d_means2D, d_sh, d_colors, d_opac, d_scales, d_rot, d_cov};
}

}  // namespace dgr_cpu

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "CPU (OpenMP) tile rasterizer of diff_gaussian_rasterization (forward and backward)";
  m.def("rasterize_forward", &dgr_cpu::rasterize_forward, "CPU rasterizer forward");
  m.def("rasterize_backward", &dgr_cpu::rasterize_backward, "CPU rasterizer backward");
}
