// Torch bindings of the tile rasterizer: buffer management (caching allocator), checks, launches.
#include <torch/extension.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "carver.h"
#include "rasterizer.h"
#include "workspace.h"

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

// Experiment knob, read at every forward call (the backward pass follows its forward's choice):
// GSR_TILE_ORDER=0 launches the blending passes' tile blocks in raster order instead of by
// decreasing list length (see launch_tile_order).
bool tile_order_enabled() {
    const char* v = std::getenv("GSR_TILE_ORDER");
    return v == nullptr || v[0] != '0';
}

void check_tensor(const Tensor& t, const char* name, int64_t n, int64_t cols, const c10::Device& dev) {
    TORCH_CHECK(t.is_cuda(), "diff_gaussian_rasterization: ", name, " must be a CUDA tensor");
    TORCH_CHECK(t.device() == dev, "diff_gaussian_rasterization: ", name, " is on ", t.device(),
                ", means3D on ", dev);
    TORCH_CHECK(t.scalar_type() == torch::kFloat32, "diff_gaussian_rasterization: ", name, " must be float32");
    TORCH_CHECK(t.is_contiguous(), "diff_gaussian_rasterization: ", name, " must be contiguous");
    TORCH_CHECK(t.numel() == n * cols, "diff_gaussian_rasterization: ", name, " has ", t.numel(),
                " elements, expected ", n, " x ", cols);
}

gsr::Camera make_camera(const c10::Device& dev, const Tensor& bg, const Tensor& view, const Tensor& proj,
                        const Tensor& campos,
                        double scale_modifier, double tanfovx, double tanfovy, int64_t H, int64_t W,
                        int64_t degree, int64_t sh_coeffs, double cx, double cy, const Tensor& intrinsics) {
    TORCH_CHECK(H > 0 && W > 0, "diff_gaussian_rasterization: image size must be positive, got ", W, "x", H);
    TORCH_CHECK(tanfovx > 0 && tanfovy > 0, "diff_gaussian_rasterization: tanfovx/tanfovy must be positive");
    TORCH_CHECK(degree >= 0 && degree <= 3, "diff_gaussian_rasterization: sh_degree must be in 0..3, got ", degree);
    check_tensor(bg, "bg", 1, 3, dev);
    check_tensor(view, "viewmatrix", 1, 16, dev);
    check_tensor(proj, "projmatrix", 1, 16, dev);
    check_tensor(campos, "campos", 1, 3, dev);
    gsr::Camera c;
    c.view = view.data_ptr<float>();
    c.proj = proj.data_ptr<float>();
    c.campos = campos.data_ptr<float>();
    c.bg = bg.data_ptr<float>();
    c.width = (int)W;
    c.height = (int)H;
    c.tiles_x = (int)((W + gsr::kTile - 1) / gsr::kTile);
    c.tiles_y = (int)((H + gsr::kTile - 1) / gsr::kTile);
    gsr::set_intrinsics(c, tanfovx, tanfovy, cx, cy);  // NaN cx / cy: centred principal point
    c.intrinsics = nullptr;
    if (present(intrinsics)) {
        TORCH_CHECK(intrinsics.is_cuda() && intrinsics.device() == dev && intrinsics.scalar_type() == torch::kFloat64 &&
                        intrinsics.is_contiguous() && intrinsics.numel() == 4,
                    "diff_gaussian_rasterization: intrinsics must be a contiguous float64 CUDA tensor of 4 values "
                    "(tanfovx, tanfovy, cx, cy) on ", dev);
        c.intrinsics = intrinsics.data_ptr<double>();
    }
    c.scale_modifier = (float)scale_modifier;
    c.sh_degree = (int)degree;
    c.sh_coeffs = (int)sh_coeffs;
    return c;
}

// Validates the per-splat inputs and fills the launcher's view of them.
gsr::SplatInputs make_inputs(const c10::Device& dev, const Tensor& means3D, const Tensor& colors,
                             const Tensor& opacity,
                             const Tensor& scales, const Tensor& rotations, const Tensor& cov3D,
                             const Tensor& sh, int64_t degree, int64_t& sh_coeffs) {
    const int64_t n = means3D.size(0);
    TORCH_CHECK(n < INT32_MAX, "diff_gaussian_rasterization: too many splats (", n, ")");
    check_tensor(means3D, "means3D", n, 3, dev);
    check_tensor(opacity, "opacities", n, 1, dev);
    gsr::SplatInputs in;
    in.n = (int)n;
    in.means = means3D.data_ptr<float>();
    in.opacities = opacity.data_ptr<float>();
    in.cov3D = nullptr; in.scales = nullptr; in.rotations = nullptr; in.shs = nullptr; in.colors = nullptr;
    sh_coeffs = 0;
    if (present(cov3D)) {
        check_tensor(cov3D, "cov3D_precomp", n, 6, dev);
        in.cov3D = cov3D.data_ptr<float>();
    } else if (n > 0) {
        TORCH_CHECK(present(scales) && present(rotations),
                    "diff_gaussian_rasterization: give either cov3D_precomp or scales and rotations");
        check_tensor(scales, "scales", n, 3, dev);
        check_tensor(rotations, "rotations", n, 4, dev);
        in.scales = scales.data_ptr<float>();
        in.rotations = rotations.data_ptr<float>();
    }
    if (present(colors)) {
        check_tensor(colors, "colors_precomp", n, 3, dev);
        in.colors = colors.data_ptr<float>();
    } else if (n > 0) {
        TORCH_CHECK(present(sh), "diff_gaussian_rasterization: give either colors_precomp or shs");
        TORCH_CHECK(sh.numel() % (3 * n) == 0, "diff_gaussian_rasterization: shs must have shape (N, M, 3)");
        sh_coeffs = sh.numel() / (3 * n);
        TORCH_CHECK(sh_coeffs >= (degree + 1) * (degree + 1), "diff_gaussian_rasterization: shs holds ", sh_coeffs,
                    " coefficients per splat, sh_degree ", degree, " needs ", (degree + 1) * (degree + 1));
        check_tensor(sh, "shs", n, 3 * sh_coeffs, dev);
        in.shs = sh.data_ptr<float>();
    }
    return in;
}

// Image part of the per-call state: pair count and tile ranges (zeroed together), final
// transmittance, last contributor, launch order of the tiles.
struct ImageLayout {
    unsigned long long* total;
    unsigned long long* pairs_acc;  // the preprocess's block counters, used when the call has no
    unsigned int* blocks_done;      // workspace (stream capture); zeroed with total and ranges
    int64_t* ranges;
    float* final_T;
    int32_t* n_contrib;
    int32_t* tile_order;
    size_t zeroed_bytes;  // from `total` to the end of `ranges`
};

// The per-call state of a forward pass in one byte buffer (radii live in their own tensor: they are
// returned to the caller). First what the backward pass reads: the splats' screen state (xy,
// conic_opacity, rgb) and the image part. Behind it, only when the depth order cannot use the
// stream's workspace (a stream under capture), the depth-order scratch.
struct StateLayout {
    gsr::SplatState st;
    ImageLayout im;
    gsr::DepthOrder ord;
    void* sort_tmp;
    size_t sort_bytes;
    void* scan_tmp;
    size_t scan_bytes;
};

StateLayout carve_state(void* base, int64_t n, int64_t num_tiles, int64_t pixels, bool with_order,
                        size_t sort_bytes, size_t scan_bytes, size_t& bytes) {
    gsr::Carver c(base);
    StateLayout l{};
    l.st.xy = c.take<float2>(n);
    l.st.conic_opacity = c.take<float4>(n);
    l.st.rgb = c.take<float>(3 * n);
    l.im.total = c.take<unsigned long long>(1);
    l.im.pairs_acc = c.take<unsigned long long>(1);
    l.im.blocks_done = c.take<unsigned int>(1);
    l.im.ranges = c.take<int64_t>(2 * num_tiles);
    l.im.zeroed_bytes = reinterpret_cast<char*>(l.im.ranges + 2 * num_tiles) - reinterpret_cast<char*>(l.im.total);
    l.im.final_T = c.take<float>(pixels);
    l.im.n_contrib = c.take<int32_t>(pixels);
    l.im.tile_order = c.take<int32_t>(num_tiles);
    if (with_order) {
        l.st.tiles_touched = c.take<int64_t>(n);
        l.ord.keys = c.take<uint32_t>(n);
        l.ord.keys_sorted = c.take<uint32_t>(n);
        l.ord.index = c.take<int32_t>(n);
        l.ord.order = c.take<int32_t>(n);
        l.ord.offsets = c.take<int64_t>(n);
        l.ord.tile_mask = c.take<uint64_t>(n);
        l.sort_bytes = sort_bytes;
        l.sort_tmp = c.take<char>((int64_t)sort_bytes);
        l.scan_bytes = scan_bytes;
        l.scan_tmp = c.take<char>((int64_t)scan_bytes);
    }
    l.ord.total = l.im.total;
    l.ord.pairs_acc = l.im.pairs_acc;
    l.ord.blocks_done = l.im.blocks_done;
    l.ord.ranges = l.im.ranges;
    l.ord.num_ranges = (int)(2 * num_tiles);
    bytes = c.size();
    return l;
}

bool stream_is_capturing(cudaStream_t stream) {
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    const cudaError_t err = cudaStreamIsCapturing(stream, &status);
    TORCH_CHECK(err == cudaSuccess, "diff_gaussian_rasterization: cudaStreamIsCapturing failed: ",
                cudaGetErrorString(err));
    return status != cudaStreamCaptureStatusNone;
}

// Per-pair buffers; point_list comes first so that the backward pass finds it at offset 0.
// Keys are tile indices of `key_bytes` (2 or 4) bytes.
struct BinLayout {
    int32_t* point_list;
    int32_t* vals_unsorted;
    void* keys_unsorted;
    void* keys_sorted;
    void* sort_tmp;
    size_t sort_bytes;
};

BinLayout carve_bins(void* base, int64_t pairs, int key_bytes, size_t sort_bytes, size_t& bytes) {
    gsr::Carver c(base);
    BinLayout b;
    b.point_list = c.take<int32_t>(pairs);
    b.vals_unsorted = c.take<int32_t>(pairs);
    b.keys_unsorted = c.take<char>(pairs * key_bytes);
    b.keys_sorted = c.take<char>(pairs * key_bytes);
    b.sort_bytes = sort_bytes;
    b.sort_tmp = c.take<char>((int64_t)b.sort_bytes);
    bytes = c.size();
    return b;
}

Tensor byte_buffer(size_t bytes, const torch::TensorOptions& opt) {
    return torch::empty({(int64_t)bytes}, opt.dtype(torch::kUInt8));
}

// Key duplication (front to back), padding of a fixed-size buffer, the stable sort by tile and the
// tile ranges.
template <typename Key>
void emit_and_sort_pairs(const gsr::Camera& cam, int n, const StateLayout& g, const ImageLayout& im, const BinLayout& b,
                         int64_t num_rendered, bool fixed_size, int tile_bits, bool debug, Key* keys_unsorted,
                         Key* keys_sorted, cudaStream_t stream) {
    const int num_tiles = cam.tiles_x * cam.tiles_y;
    gsr::launch_duplicate(cam, n, g.st, g.ord, num_rendered, keys_unsorted, b.vals_unsorted, stream);
    check_launch(debug, "key duplication");
    if (fixed_size) {
        gsr::launch_pad_pairs(num_rendered, im.total, num_tiles, keys_unsorted, b.vals_unsorted, stream);
        check_launch(debug, "pair padding");
    }
    gsr::radix_sort(b.sort_tmp, b.sort_bytes, keys_unsorted, keys_sorted, b.vals_unsorted, b.point_list, num_rendered,
                    tile_bits, stream);
    check_launch(debug, "radix sort");
    gsr::launch_tile_ranges(num_rendered, num_tiles, keys_sorted, im.ranges, stream);
    check_launch(debug, "tile ranges");
}

// Returns (color (3, H, W), radii (N,), state, bins) - the last two are opaque byte buffers kept by
// the autograd function for the backward pass.
std::vector<Tensor> rasterize_forward(const Tensor& bg, const Tensor& means3D, const Tensor& colors,
                                      const Tensor& opacity, const Tensor& scales, const Tensor& rotations,
                                      double scale_modifier, const Tensor& cov3D, const Tensor& viewmatrix,
                                      const Tensor& projmatrix, double tanfovx, double tanfovy, int64_t H, int64_t W,
                                      const Tensor& sh, int64_t degree, const Tensor& campos, bool debug, double cx,
                                      double cy, const Tensor& intrinsics, int64_t pair_capacity,
                                      const Tensor& pair_count, bool tile_order) {
    TORCH_CHECK(means3D.dim() == 2 && means3D.size(1) == 3, "diff_gaussian_rasterization: means3D must be (N, 3)");
    TORCH_CHECK(pair_capacity >= 0, "diff_gaussian_rasterization: pair_capacity must be >= 0, got ", pair_capacity);
    if (present(pair_count))
        TORCH_CHECK(pair_count.is_cuda() && pair_count.device() == means3D.device() &&
                        pair_count.scalar_type() == torch::kInt64 && pair_count.numel() >= 1,
                    "diff_gaussian_rasterization: pair_count must be an int64 CUDA tensor on ", means3D.device());
    const c10::cuda::CUDAGuard guard(means3D.device());
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
    int64_t sh_coeffs = 0;
    const gsr::SplatInputs in =
        make_inputs(means3D.device(), means3D, colors, opacity, scales, rotations, cov3D, sh, degree, sh_coeffs);
    const gsr::Camera cam = make_camera(means3D.device(), bg, viewmatrix, projmatrix, campos, scale_modifier, tanfovx,
                                        tanfovy, H, W, degree, sh_coeffs, cx, cy, intrinsics);
    const int64_t n = in.n;
    const auto& fopt = means3D.options();
    const int64_t num_tiles = (int64_t)cam.tiles_x * cam.tiles_y;
    TORCH_CHECK(2 * num_tiles < (int64_t)INT32_MAX, "diff_gaussian_rasterization: image too large");

    // The depth order lives in the stream's workspace (its sort and scan replayed as a graph),
    // except while the stream is being captured: a caller's graph must own every buffer it uses.
    gsr::DepthWorkspace* ws =
        (n > 0 && !stream_is_capturing(stream)) ? &gsr::depth_workspace(means3D.device().index(), stream) : nullptr;
    const bool order_here = n > 0 && ws == nullptr;
    const size_t depth_sort_bytes = order_here ? gsr::depth_sort_temp_bytes((int)n) : 0;
    const size_t scan_bytes = order_here ? gsr::scan_temp_bytes((int)n) : 0;
    size_t state_bytes = 0;
    carve_state(nullptr, n, num_tiles, H * W, order_here, depth_sort_bytes, scan_bytes, state_bytes);
    Tensor state = byte_buffer(state_bytes, fopt);
    StateLayout g =
        carve_state(state.data_ptr(), n, num_tiles, H * W, order_here, depth_sort_bytes, scan_bytes, state_bytes);
    const ImageLayout& im = g.im;
    Tensor radii = torch::empty({n}, fopt.dtype(torch::kInt32));
    g.st.radii = radii.data_ptr<int>();
    if (ws != nullptr) {  // the workspace's block counters reset themselves: no memset before the preprocess
        ws->prepare((int)n, &g.st.tiles_touched, &g.ord);
        g.ord.total = im.total;
        g.ord.ranges = im.ranges;
        g.ord.num_ranges = (int)(2 * num_tiles);
    } else {
        TORCH_CHECK(cudaMemsetAsync(im.total, 0, im.zeroed_bytes, stream) == cudaSuccess,
                    "diff_gaussian_rasterization: cudaMemsetAsync failed");
    }
    gsr::launch_preprocess(cam, in, g.st, g.ord, stream);
    check_launch(debug, "preprocess");
    if (present(pair_count))
        TORCH_CHECK(cudaMemcpyAsync(pair_count.data_ptr<int64_t>(), im.total, sizeof(int64_t),
                                    cudaMemcpyDeviceToDevice, stream) == cudaSuccess,
                    "diff_gaussian_rasterization: copying the pair count failed");
    // Pair buffer size: the exact number of (tile, splat) pairs, read back with the one host
    // synchronisation of the pass (the depth sort is queued before the host waits, so the GPU stays
    // busy meanwhile), or a fixed pair_capacity (no synchronisation: pairs beyond it are dropped,
    // and pair_count tells the caller that the image is incomplete). Exact sizes need the
    // workspace's pinned slot: under stream capture only fixed sizes are possible.
    const bool fixed_size = pair_capacity > 0;
    const bool read_count = n > 0 && !fixed_size;
    TORCH_CHECK_VALUE(!read_count || ws != nullptr,
                "diff_gaussian_rasterization: a forward pass under CUDA graph capture needs pair_capacity > 0");
    if (read_count)
        TORCH_CHECK(cudaMemcpyAsync(ws->count_host(), im.total, sizeof(int64_t), cudaMemcpyDeviceToHost, stream) ==
                            cudaSuccess &&
                        cudaEventRecord(ws->count_event(), stream) == cudaSuccess,
                    "diff_gaussian_rasterization: queueing the pair-count read-back failed");
    Tensor color = torch::empty({3, H, W}, fopt);  // after the first launches: the GPU is busy meanwhile
    if (ws != nullptr) {
        ws->order_by_depth((int)n);
    } else {
        gsr::order_by_depth(g.sort_tmp, g.sort_bytes, g.scan_tmp, g.scan_bytes, (int)n, g.st, g.ord, stream);
    }
    check_launch(debug, "depth order");
    int64_t num_rendered = 0;
    if (fixed_size) {
        num_rendered = n > 0 ? pair_capacity : 0;
    } else if (read_count) {
        TORCH_CHECK(cudaEventSynchronize(ws->count_event()) == cudaSuccess,
                    "diff_gaussian_rasterization: reading the number of tile pairs failed: ",
                    cudaGetErrorString(cudaGetLastError()));
        num_rendered = *ws->count_host();
    }

    // tile keys: 16 bits when they hold every tile index and the padding key num_tiles
    const int tile_bits = gsr::num_bits((uint32_t)num_tiles);
    const int key_bytes = tile_bits <= 16 ? 2 : 4;
    size_t bin_bytes = 0;
    const size_t sort_bytes = num_rendered > 0 ? gsr::sort_temp_bytes(num_rendered, tile_bits, key_bytes) : 0;
    carve_bins(nullptr, num_rendered, key_bytes, sort_bytes, bin_bytes);
    Tensor bins = byte_buffer(bin_bytes, fopt);
    const BinLayout b = carve_bins(bins.data_ptr(), num_rendered, key_bytes, sort_bytes, bin_bytes);
    if (num_rendered > 0) {
        if (key_bytes == 2) {
            emit_and_sort_pairs(cam, (int)n, g, im, b, num_rendered, fixed_size, tile_bits, debug,
                                static_cast<uint16_t*>(b.keys_unsorted), static_cast<uint16_t*>(b.keys_sorted),
                                stream);
        } else {
            emit_and_sort_pairs(cam, (int)n, g, im, b, num_rendered, fixed_size, tile_bits, debug,
                                static_cast<uint32_t*>(b.keys_unsorted), static_cast<uint32_t*>(b.keys_sorted),
                                stream);
        }
    }
    if (tile_order) {
        gsr::launch_tile_order((int)num_tiles, im.ranges, im.tile_order, stream);
        check_launch(debug, "tile order");
    }
    gsr::launch_render_forward(cam, tile_order ? im.tile_order : nullptr, im.ranges, b.point_list, g.st,
                               color.data_ptr<float>(), im.final_T, im.n_contrib, stream);
    check_launch(debug, "render");
    return {color, radii, state, bins};
}

// Returns (dmeans2D, dcolors, dopacity, dmeans3D, dcov3D, dsh, dscales, drotations); absent inputs get
// empty gradients.
std::vector<Tensor> rasterize_backward(const Tensor& bg, const Tensor& means3D, const Tensor& radii,
                                       const Tensor& colors, const Tensor& opacity, const Tensor& scales,
                                       const Tensor& rotations, double scale_modifier, const Tensor& cov3D,
                                       const Tensor& viewmatrix, const Tensor& projmatrix, double tanfovx,
                                       double tanfovy, const Tensor& dL_dout, const Tensor& sh, int64_t degree,
                                       const Tensor& campos, const Tensor& state, const Tensor& bins,
                                       bool debug, double cx, double cy,
                                       const Tensor& intrinsics, bool tile_order) {
    const c10::cuda::CUDAGuard guard(means3D.device());
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
    int64_t sh_coeffs = 0;
    const gsr::SplatInputs in =
        make_inputs(means3D.device(), means3D, colors, opacity, scales, rotations, cov3D, sh, degree, sh_coeffs);
    TORCH_CHECK(dL_dout.dim() == 3 && dL_dout.size(0) == 3,
                "diff_gaussian_rasterization: image gradient must be (3, H, W)");
    const int64_t H = dL_dout.size(1), W = dL_dout.size(2);
    const gsr::Camera cam = make_camera(means3D.device(), bg, viewmatrix, projmatrix, campos, scale_modifier, tanfovx,
                                        tanfovy, H, W, degree, sh_coeffs, cx, cy, intrinsics);
    const int64_t n = in.n;
    const auto& fopt = means3D.options();
    const Tensor grad = dL_dout.contiguous();
    const int64_t num_tiles = (int64_t)cam.tiles_x * cam.tiles_y;
    size_t bytes = 0;
    const StateLayout g = carve_state(state.data_ptr(), n, num_tiles, H * W, false, 0, 0, bytes);
    TORCH_CHECK(radii.numel() == n && bytes <= (size_t)state.numel(),
                "diff_gaussian_rasterization: forward state does not match the inputs");
    const ImageLayout& im = g.im;
    const int32_t* point_list = reinterpret_cast<const int32_t*>(bins.data_ptr());

    Tensor accum = torch::empty({n, 12}, fopt);
    if (n > 0) {
        TORCH_CHECK(cudaMemsetAsync(accum.data_ptr<float>(), 0, sizeof(float) * 12 * n, stream) == cudaSuccess,
                    "diff_gaussian_rasterization: cudaMemsetAsync failed");
        gsr::launch_render_backward(cam, tile_order ? im.tile_order : nullptr, im.ranges, point_list, g.st, im.final_T,
                                    im.n_contrib, grad.data_ptr<float>(),
                                    reinterpret_cast<float4*>(accum.data_ptr<float>()), stream);
        check_launch(debug, "render backward");
    }

    Tensor dmeans3D = torch::empty({n, 3}, fopt);
    Tensor dmeans2D = torch::empty({n, 3}, fopt);
    Tensor dopacity = torch::empty({n, 1}, fopt);
    const Tensor none = torch::empty({0}, fopt);
    Tensor dcolors = in.colors ? torch::empty({n, 3}, fopt) : none;
    Tensor dcov3D = in.cov3D ? torch::empty({n, 6}, fopt) : none;
    Tensor dsh = in.shs ? torch::empty({n, sh_coeffs, 3}, fopt) : none;
    Tensor dscales = in.scales ? torch::empty({n, 3}, fopt) : none;
    Tensor drot = in.rotations ? torch::empty({n, 4}, fopt) : none;
    gsr::SplatGrads gr;
    gr.means3D = dmeans3D.data_ptr<float>();
    gr.means2D = dmeans2D.data_ptr<float>();
    gr.opacities = dopacity.data_ptr<float>();
    gr.colors = in.colors ? dcolors.data_ptr<float>() : nullptr;
    gr.cov3D = in.cov3D ? dcov3D.data_ptr<float>() : nullptr;
    gr.shs = in.shs ? dsh.data_ptr<float>() : nullptr;
    gr.scales = in.scales ? dscales.data_ptr<float>() : nullptr;
    gr.rotations = in.rotations ? drot.data_ptr<float>() : nullptr;
    gsr::launch_preprocess_backward(cam, in, radii.data_ptr<int>(), reinterpret_cast<float4*>(accum.data_ptr<float>()),
                                    gr, stream);
    check_launch(debug, "preprocess backward");
    return {dmeans2D, dcolors, dopacity, dmeans3D, dcov3D, dsh, dscales, drot};
}

// ---------------------------------------------------------------------------------------------
// Autograd: the forward and backward passes as one C++ autograd function, so that a call costs one
// crossing from Python (no Python autograd.Function, no per-argument conversions in Python).
// ---------------------------------------------------------------------------------------------
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Inputs in the order of RasterizeFunction::forward (after the context).
enum Input : int {
    kMeans3D, kMeans2D, kSh, kColors, kOpacity, kScales, kRotations, kCov3D,  // differentiable
    kBg, kView, kProj, kCampos, kIntrinsics, kPairCount,                      // settings tensors
    kNumTensorInputs,
    kNumInputs = kNumTensorInputs + 10  // scalars: scale_modifier .. pair_capacity
};

// A float32 contiguous tensor on `dev` (the Python entry passes empty tensors for absent inputs;
// they keep their shape, which the checks of a call with N = 0 read).
Tensor as_f32(const Tensor& t, const c10::Device& dev) {
    if (!t.defined()) return t;
    Tensor r = (t.scalar_type() == torch::kFloat32 && t.device() == dev) ? t : t.to(dev, torch::kFloat32);
    return r.is_contiguous() ? r : r.contiguous();
}

void check_finite(const Tensor& t, const char* name) {
    if (t.defined() && t.numel() > 0)
        TORCH_CHECK_VALUE(torch::isfinite(t).all().item<bool>(), "diff_gaussian_rasterization (debug): ", name,
                          " holds NaN or Inf values");
}

class RasterizeFunction : public torch::autograd::Function<RasterizeFunction> {
public:
    static variable_list forward(AutogradContext* ctx, const Tensor& means3D, const Tensor& means2D, const Tensor& sh,
                                 const Tensor& colors, const Tensor& opacity, const Tensor& scales,
                                 const Tensor& rotations, const Tensor& cov3D, const Tensor& bg, const Tensor& view,
                                 const Tensor& proj, const Tensor& campos, const Tensor& intrinsics,
                                 const Tensor& pair_count, double scale_modifier, double tanfovx, double tanfovy,
                                 int64_t H, int64_t W, int64_t degree, bool debug, double cx, double cy,
                                 int64_t pair_capacity) {
        const c10::Device dev = means3D.device();
        const Tensor m3 = as_f32(means3D, dev), op = as_f32(opacity, dev);
        const Tensor col = as_f32(colors, dev), sc = as_f32(scales, dev);
        const Tensor rot = as_f32(rotations, dev), cov = as_f32(cov3D, dev);
        const Tensor shs = as_f32(sh, dev);
        const Tensor bg32 = as_f32(bg, dev), view32 = as_f32(view, dev);
        const Tensor proj32 = as_f32(proj, dev), campos32 = as_f32(campos, dev);
        const bool tile_order = tile_order_enabled();
        auto out = rasterize_forward(bg32, m3, col, op, sc, rot, scale_modifier, cov, view32, proj32, tanfovx, tanfovy,
                                     H, W, shs, degree, campos32, debug, cx, cy, intrinsics, pair_capacity,
                                     pair_count, tile_order);
        const Tensor& color = out[0];
        const Tensor& radii = out[1];
        ctx->save_for_backward({bg32, m3, radii, col, op, sc, rot, cov, view32, proj32, shs, campos32, out[2], out[3],
                                intrinsics});
        ctx->saved_data["scale_modifier"] = scale_modifier;
        ctx->saved_data["tanfovx"] = tanfovx;
        ctx->saved_data["tanfovy"] = tanfovy;
        ctx->saved_data["degree"] = degree;
        ctx->saved_data["H"] = H;
        ctx->saved_data["W"] = W;
        ctx->saved_data["debug"] = debug;
        ctx->saved_data["cx"] = cx;
        ctx->saved_data["cy"] = cy;
        ctx->saved_data["tile_order"] = tile_order;
        // shapes the gradients take: those of the inputs as given (0 rows: absent)
        ctx->saved_data["means3D_shape"] = means3D.sizes().vec();
        ctx->saved_data["means2D_cols"] = (means2D.defined() && means2D.numel() > 0 && means2D.dim() == 2)
                                              ? means2D.size(1) : int64_t(0);
        ctx->saved_data["sh_shape"] = sh.defined() ? sh.sizes().vec() : std::vector<int64_t>{};
        ctx->saved_data["opacity_shape"] = opacity.sizes().vec();
        ctx->mark_non_differentiable({radii});
        return {color, radii};
    }

    static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
        const auto saved = ctx->get_saved_variables();
        const Tensor &bg = saved[0], &m3 = saved[1], &radii = saved[2], &col = saved[3], &op = saved[4],
                     &sc = saved[5], &rot = saved[6], &cov = saved[7], &view = saved[8], &proj = saved[9],
                     &shs = saved[10], &campos = saved[11], &state = saved[12], &bins = saved[13],
                     &intrinsics = saved[14];
        const auto& d = ctx->saved_data;
        const bool debug = d.at("debug").toBool();
        Tensor grad = grad_outputs[0];
        if (!grad.defined())  // the image was not used: a zero gradient of its size
            grad = torch::zeros({3, d.at("H").toInt(), d.at("W").toInt()}, m3.options());
        grad = grad.to(torch::kFloat32);
        if (!grad.is_contiguous()) grad = grad.contiguous();
        if (debug) check_finite(grad, "grad of the rendered image");
        auto g = rasterize_backward(bg, m3, radii, col, op, sc, rot, d.at("scale_modifier").toDouble(), cov, view, proj,
                                    d.at("tanfovx").toDouble(), d.at("tanfovy").toDouble(), grad, shs,
                                    d.at("degree").toInt(), campos, state, bins, debug, d.at("cx").toDouble(),
                                    d.at("cy").toDouble(), intrinsics, d.at("tile_order").toBool());
        // g: dmeans2D, dcolors, dopacity, dmeans3D, dcov3D, dsh, dscales, drotations
        variable_list grads(kNumInputs);
        auto shaped = [](const Tensor& t, const std::vector<int64_t>& shape) {
            return t.sizes().vec() == shape ? t : t.reshape(shape);
        };
        grads[kMeans3D] = shaped(g[3], d.at("means3D_shape").toIntVector());
        const int64_t m2_cols = d.at("means2D_cols").toInt();
        if (m2_cols > 0) grads[kMeans2D] = g[0].narrow(1, 0, m2_cols);
        if (shs.numel() > 0) grads[kSh] = shaped(g[5], d.at("sh_shape").toIntVector());
        if (col.numel() > 0) grads[kColors] = g[1];
        grads[kOpacity] = shaped(g[2], d.at("opacity_shape").toIntVector());
        if (sc.numel() > 0) grads[kScales] = g[6];
        if (rot.numel() > 0) grads[kRotations] = g[7];
        if (cov.numel() > 0) grads[kCov3D] = g[4];
        return grads;
    }
};

// The whole differentiable call: (color (3, H, W), radii (N,) int32). Absent inputs may be None.
std::vector<Tensor> rasterize(const Tensor& means3D, const std::optional<Tensor>& means2D,
                              const std::optional<Tensor>& sh, const std::optional<Tensor>& colors,
                              const Tensor& opacity, const std::optional<Tensor>& scales,
                              const std::optional<Tensor>& rotations, const std::optional<Tensor>& cov3D,
                              const Tensor& bg, const Tensor& view, const Tensor& proj, const Tensor& campos,
                              const std::optional<Tensor>& intrinsics, const std::optional<Tensor>& pair_count,
                              double scale_modifier, double tanfovx, double tanfovy, int64_t H, int64_t W,
                              int64_t degree, bool debug, double cx, double cy, int64_t pair_capacity) {
    TORCH_CHECK(means3D.is_cuda(), "diff_gaussian_rasterization: means3D must be a CUDA tensor");
    const Tensor empty = torch::empty({0}, means3D.options().dtype(torch::kFloat32));
    auto given = [&](const std::optional<Tensor>& t) { return t.has_value() && t->defined() ? *t : empty; };
    return RasterizeFunction::apply(means3D, given(means2D), given(sh), given(colors), opacity, given(scales),
                                    given(rotations), given(cov3D), bg, view, proj, campos, given(intrinsics),
                                    given(pair_count), scale_modifier, tanfovx, tanfovy, H, W, degree, debug, cx, cy,
                                    pair_capacity);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "Tile-based Gaussian splatting rasterizer (forward and backward).";
    m.def("rasterize", &rasterize, "Differentiable render (autograd function of the two passes)");
    m.def("rasterize_forward", &rasterize_forward, "Forward pass of the tile rasterizer");
    m.def("rasterize_backward", &rasterize_backward, "Backward pass of the tile rasterizer");
    m.def("workspace_bytes", &gsr::depth_workspace_bytes,
          "Bytes held by the calling thread's depth-order workspaces (one per device and stream used)");
    m.def("release_workspaces", &gsr::release_depth_workspaces,
          "Free the calling thread's depth-order workspaces (they are made again on the next call)");
}
