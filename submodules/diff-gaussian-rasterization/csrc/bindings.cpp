// Torch bindings of the tile rasterizer: buffer management (caching allocator), checks, launches.
#include <torch/extension.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include <cmath>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "rasterizer.h"

namespace {

using torch::Tensor;

void check_launch(bool debug, const char* what) {
    if (!debug) return;
    cudaError_t err = cudaDeviceSynchronize();
    if (err == cudaSuccess) err = cudaGetLastError();
    TORCH_CHECK(err == cudaSuccess, "diff_gaussian_rasterization: CUDA error after ", what, ": ",
                cudaGetErrorString(err));
}

bool present(const Tensor& t) { return t.defined() && t.numel() > 0; }

void check_tensor(const Tensor& t, const char* name, int64_t n, int64_t cols) {
    TORCH_CHECK(t.is_cuda(), "diff_gaussian_rasterization: ", name, " must be a CUDA tensor");
    TORCH_CHECK(t.scalar_type() == torch::kFloat32, "diff_gaussian_rasterization: ", name, " must be float32");
    TORCH_CHECK(t.is_contiguous(), "diff_gaussian_rasterization: ", name, " must be contiguous");
    TORCH_CHECK(t.numel() == n * cols, "diff_gaussian_rasterization: ", name, " has ", t.numel(),
                " elements, expected ", n, " x ", cols);
}

gsr::Camera make_camera(const Tensor& bg, const Tensor& view, const Tensor& proj, const Tensor& campos,
                        double scale_modifier, double tanfovx, double tanfovy, int64_t H, int64_t W,
                        int64_t degree, int64_t sh_coeffs, double cx, double cy) {
    TORCH_CHECK(H > 0 && W > 0, "diff_gaussian_rasterization: image size must be positive, got ", W, "x", H);
    TORCH_CHECK(tanfovx > 0 && tanfovy > 0, "diff_gaussian_rasterization: tanfovx/tanfovy must be positive");
    TORCH_CHECK(degree >= 0 && degree <= 3, "diff_gaussian_rasterization: sh_degree must be in 0..3, got ", degree);
    check_tensor(bg, "bg", 1, 3);
    check_tensor(view, "viewmatrix", 1, 16);
    check_tensor(proj, "projmatrix", 1, 16);
    check_tensor(campos, "campos", 1, 3);
    gsr::Camera c;
    c.view = view.data_ptr<float>();
    c.proj = proj.data_ptr<float>();
    c.campos = campos.data_ptr<float>();
    c.bg = bg.data_ptr<float>();
    c.width = (int)W;
    c.height = (int)H;
    c.tiles_x = (int)((W + gsr::kTile - 1) / gsr::kTile);
    c.tiles_y = (int)((H + gsr::kTile - 1) / gsr::kTile);
    const double fx = W / (2.0 * tanfovx), fy = H / (2.0 * tanfovy);
    c.focal_x = (float)fx;
    c.focal_y = (float)fy;
    // NaN cx / cy: centred principal point.
    if (std::isnan(cx)) cx = (W - 1) * 0.5;
    if (std::isnan(cy)) cy = (H - 1) * 0.5;
    c.lim_x_lo = (float)(-1.3 * (cx + 0.5) / fx);
    c.lim_x_hi = (float)(1.3 * (W - 0.5 - cx) / fx);
    c.lim_y_lo = (float)(-1.3 * (cy + 0.5) / fy);
    c.lim_y_hi = (float)(1.3 * (H - 0.5 - cy) / fy);
    c.scale_modifier = (float)scale_modifier;
    c.sh_degree = (int)degree;
    c.sh_coeffs = (int)sh_coeffs;
    return c;
}

// Validates the per-splat inputs and fills the launcher's view of them.
gsr::SplatInputs make_inputs(const Tensor& means3D, const Tensor& colors, const Tensor& opacity,
                             const Tensor& scales, const Tensor& rotations, const Tensor& cov3D,
                             const Tensor& sh, int64_t degree, int64_t& sh_coeffs) {
    const int64_t n = means3D.size(0);
    TORCH_CHECK(n < INT32_MAX, "diff_gaussian_rasterization: too many splats (", n, ")");
    check_tensor(means3D, "means3D", n, 3);
    check_tensor(opacity, "opacities", n, 1);
    gsr::SplatInputs in;
    in.n = (int)n;
    in.means = means3D.data_ptr<float>();
    in.opacities = opacity.data_ptr<float>();
    in.cov3D = nullptr; in.scales = nullptr; in.rotations = nullptr; in.shs = nullptr; in.colors = nullptr;
    sh_coeffs = 0;
    if (present(cov3D)) {
        check_tensor(cov3D, "cov3D_precomp", n, 6);
        in.cov3D = cov3D.data_ptr<float>();
    } else if (n > 0) {
        TORCH_CHECK(present(scales) && present(rotations),
                    "diff_gaussian_rasterization: give either cov3D_precomp or scales and rotations");
        check_tensor(scales, "scales", n, 3);
        check_tensor(rotations, "rotations", n, 4);
        in.scales = scales.data_ptr<float>();
        in.rotations = rotations.data_ptr<float>();
    }
    if (present(colors)) {
        check_tensor(colors, "colors_precomp", n, 3);
        in.colors = colors.data_ptr<float>();
    } else if (n > 0) {
        TORCH_CHECK(present(sh), "diff_gaussian_rasterization: give either colors_precomp or shs");
        TORCH_CHECK(sh.numel() % (3 * n) == 0, "diff_gaussian_rasterization: shs must have shape (N, M, 3)");
        sh_coeffs = sh.numel() / (3 * n);
        TORCH_CHECK(sh_coeffs >= (degree + 1) * (degree + 1), "diff_gaussian_rasterization: shs holds ", sh_coeffs,
                    " coefficients per splat, sh_degree ", degree, " needs ", (degree + 1) * (degree + 1));
        check_tensor(sh, "shs", n, 3 * sh_coeffs);
        in.shs = sh.data_ptr<float>();
    }
    return in;
}

struct Buffers {
    Tensor xy, depth, conic_opacity, rgb, radii, tiles;
    gsr::SplatState state() {
        gsr::SplatState s;
        s.xy = reinterpret_cast<float2*>(xy.data_ptr<float>());
        s.depth = depth.data_ptr<float>();
        s.conic_opacity = reinterpret_cast<float4*>(conic_opacity.data_ptr<float>());
        s.rgb = rgb.data_ptr<float>();
        s.radii = radii.data_ptr<int>();
        s.tiles_touched = tiles.data_ptr<int64_t>();
        return s;
    }
};

// Returns (color, radii, xy, conic_opacity, rgb, point_list, ranges, final_T, n_contrib, num_rendered).
std::vector<Tensor> rasterize_forward(const Tensor& bg, const Tensor& means3D, const Tensor& colors,
                                      const Tensor& opacity, const Tensor& scales, const Tensor& rotations,
                                      double scale_modifier, const Tensor& cov3D, const Tensor& viewmatrix,
                                      const Tensor& projmatrix, double tanfovx, double tanfovy, int64_t H, int64_t W,
                                      const Tensor& sh, int64_t degree, const Tensor& campos, bool debug, double cx,
                                      double cy) {
    TORCH_CHECK(means3D.dim() == 2 && means3D.size(1) == 3, "diff_gaussian_rasterization: means3D must be (N, 3)");
    const c10::cuda::CUDAGuard guard(means3D.device());
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
    int64_t sh_coeffs = 0;
    const gsr::SplatInputs in = make_inputs(means3D, colors, opacity, scales, rotations, cov3D, sh, degree, sh_coeffs);
    const gsr::Camera cam = make_camera(bg, viewmatrix, projmatrix, campos, scale_modifier, tanfovx, tanfovy, H, W,
                                        degree, sh_coeffs, cx, cy);
    const int64_t n = in.n;
    auto fopt = means3D.options();
    auto iopt = fopt.dtype(torch::kInt32);
    auto lopt = fopt.dtype(torch::kInt64);

    Buffers b;
    b.xy = torch::empty({n, 2}, fopt);
    b.depth = torch::empty({n}, fopt);
    b.conic_opacity = torch::empty({n, 4}, fopt);
    b.rgb = torch::empty({n, 3}, fopt);
    b.radii = torch::empty({n}, iopt);
    b.tiles = torch::empty({n}, lopt);
    gsr::SplatState st = b.state();
    gsr::launch_preprocess(cam, in, st, stream);
    check_launch(debug, "preprocess");

    int64_t num_rendered = 0;
    Tensor offsets = torch::empty({n}, lopt);
    if (n > 0) {
        const size_t scan_bytes = gsr::scan_temp_bytes((int)n);
        Tensor scan_tmp = torch::empty({(int64_t)scan_bytes + 1}, fopt.dtype(torch::kUInt8));
        gsr::inclusive_scan(scan_tmp.data_ptr(), scan_bytes, st.tiles_touched, offsets.data_ptr<int64_t>(), (int)n,
                            stream);
        check_launch(debug, "prefix sum");
        num_rendered = offsets[n - 1].item<int64_t>();
    }

    const int num_tiles = cam.tiles_x * cam.tiles_y;
    Tensor ranges = torch::zeros({(int64_t)num_tiles, 2}, lopt);
    Tensor point_list = torch::empty({num_rendered}, iopt);
    if (num_rendered > 0) {
        Tensor keys_unsorted = torch::empty({num_rendered}, lopt);
        Tensor keys_sorted = torch::empty({num_rendered}, lopt);
        Tensor vals_unsorted = torch::empty({num_rendered}, iopt);
        auto* ku = reinterpret_cast<uint64_t*>(keys_unsorted.data_ptr<int64_t>());
        auto* ks = reinterpret_cast<uint64_t*>(keys_sorted.data_ptr<int64_t>());
        gsr::launch_duplicate(cam, (int)n, st, offsets.data_ptr<int64_t>(), ku, vals_unsorted.data_ptr<int32_t>(),
                              stream);
        check_launch(debug, "key duplication");
        const int end_bit = 32 + gsr::num_bits((uint32_t)num_tiles);
        const size_t sort_bytes = gsr::sort_temp_bytes(num_rendered, end_bit);
        Tensor sort_tmp = torch::empty({(int64_t)sort_bytes + 1}, fopt.dtype(torch::kUInt8));
        gsr::radix_sort(sort_tmp.data_ptr(), sort_bytes, ku, ks, vals_unsorted.data_ptr<int32_t>(),
                        point_list.data_ptr<int32_t>(), num_rendered, end_bit, stream);
        check_launch(debug, "radix sort");
        gsr::launch_tile_ranges(num_rendered, ks, ranges.data_ptr<int64_t>(), stream);
        check_launch(debug, "tile ranges");
    }

    Tensor color = torch::empty({3, H, W}, fopt);
    Tensor final_T = torch::empty({H, W}, fopt);
    Tensor n_contrib = torch::empty({H, W}, iopt);
    gsr::launch_render_forward(cam, ranges.data_ptr<int64_t>(), point_list.data_ptr<int32_t>(), st,
                               color.data_ptr<float>(), final_T.data_ptr<float>(), n_contrib.data_ptr<int32_t>(),
                               stream);
    check_launch(debug, "render");
    Tensor nr = torch::full({1}, num_rendered, torch::TensorOptions().dtype(torch::kInt64));
    return {color, b.radii, b.xy, b.conic_opacity, b.rgb, point_list, ranges, final_T, n_contrib, nr};
}

// Returns (dmeans2D, dcolors, dopacity, dmeans3D, dcov3D, dsh, dscales, drotations); absent inputs get
// empty gradients.
std::vector<Tensor> rasterize_backward(const Tensor& bg, const Tensor& means3D, const Tensor& radii,
                                       const Tensor& colors, const Tensor& opacity, const Tensor& scales,
                                       const Tensor& rotations, double scale_modifier, const Tensor& cov3D,
                                       const Tensor& viewmatrix, const Tensor& projmatrix, double tanfovx,
                                       double tanfovy, const Tensor& dL_dout, const Tensor& sh, int64_t degree,
                                       const Tensor& campos, const Tensor& xy, const Tensor& conic_opacity,
                                       const Tensor& rgb, const Tensor& point_list, const Tensor& ranges,
                                       const Tensor& final_T, const Tensor& n_contrib, bool debug, double cx,
                                       double cy) {
    const c10::cuda::CUDAGuard guard(means3D.device());
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
    int64_t sh_coeffs = 0;
    const gsr::SplatInputs in = make_inputs(means3D, colors, opacity, scales, rotations, cov3D, sh, degree, sh_coeffs);
    const int64_t H = final_T.size(0), W = final_T.size(1);
    const gsr::Camera cam = make_camera(bg, viewmatrix, projmatrix, campos, scale_modifier, tanfovx, tanfovy, H, W,
                                        degree, sh_coeffs, cx, cy);
    const int64_t n = in.n;
    auto fopt = means3D.options();
    Tensor grad = dL_dout.contiguous();
    TORCH_CHECK(grad.numel() == 3 * H * W, "diff_gaussian_rasterization: image gradient must be (3, H, W)");

    Tensor accum = torch::zeros({n, 12}, fopt);
    gsr::SplatState st;
    st.xy = reinterpret_cast<float2*>(xy.data_ptr<float>());
    st.conic_opacity = reinterpret_cast<float4*>(conic_opacity.data_ptr<float>());
    st.rgb = rgb.data_ptr<float>();
    st.radii = radii.data_ptr<int>();
    st.depth = nullptr;
    st.tiles_touched = nullptr;
    if (n > 0) {
        gsr::launch_render_backward(cam, ranges.data_ptr<int64_t>(), point_list.data_ptr<int32_t>(), st,
                                    final_T.data_ptr<float>(), n_contrib.data_ptr<int32_t>(), grad.data_ptr<float>(),
                                    reinterpret_cast<float4*>(accum.data_ptr<float>()), stream);
        check_launch(debug, "render backward");
    }

    Tensor dmeans3D = torch::empty({n, 3}, fopt);
    Tensor dmeans2D = torch::empty({n, 3}, fopt);
    Tensor dopacity = torch::empty({n, 1}, fopt);
    Tensor dcolors = in.colors ? torch::empty({n, 3}, fopt) : torch::empty({0}, fopt);
    Tensor dcov3D = in.cov3D ? torch::empty({n, 6}, fopt) : torch::empty({0}, fopt);
    Tensor dsh = in.shs ? torch::empty({n, sh_coeffs, 3}, fopt) : torch::empty({0}, fopt);
    Tensor dscales = in.scales ? torch::empty({n, 3}, fopt) : torch::empty({0}, fopt);
    Tensor drot = in.rotations ? torch::empty({n, 4}, fopt) : torch::empty({0}, fopt);
    gsr::SplatGrads g;
    g.means3D = dmeans3D.data_ptr<float>();
    g.means2D = dmeans2D.data_ptr<float>();
    g.opacities = dopacity.data_ptr<float>();
    g.colors = in.colors ? dcolors.data_ptr<float>() : nullptr;
    g.cov3D = in.cov3D ? dcov3D.data_ptr<float>() : nullptr;
    g.shs = in.shs ? dsh.data_ptr<float>() : nullptr;
    g.scales = in.scales ? dscales.data_ptr<float>() : nullptr;
    g.rotations = in.rotations ? drot.data_ptr<float>() : nullptr;
    gsr::launch_preprocess_backward(cam, in, radii.data_ptr<int>(), reinterpret_cast<float4*>(accum.data_ptr<float>()),
                                    g, stream);
    check_launch(debug, "preprocess backward");
    return {dmeans2D, dcolors, dopacity, dmeans3D, dcov3D, dsh, dscales, drot};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "Tile-based Gaussian splatting rasterizer (forward and backward).";
    m.def("rasterize_forward", &rasterize_forward, "Forward pass of the tile rasterizer");
    m.def("rasterize_backward", &rasterize_backward, "Backward pass of the tile rasterizer");
}
