// Forward pass of the tile rasterizer: preprocess, depth order, key duplication (front to back), sort
// by tile, tile ranges, blending.
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>
#include <thrust/iterator/permutation_iterator.h>

#include "common.cuh"
#include "rasterizer.h"

namespace gsr {

// ---------------------------------------------------------------------------------------------
// Preprocess: one thread per splat. Culling, 3D/2D covariance, conic, radius, tiles, colour.
// ---------------------------------------------------------------------------------------------
// Splat i: writes its state and returns the number of tiles it touches (0: culled); `depth_key`
// receives the bits of its view depth (positive floats order as their bit patterns).
__device__ __forceinline__ int64_t preprocess_splat(Camera& cam, const SplatInputs& in, const SplatState& st,
                                                    uint64_t* tile_mask, int i, uint32_t& depth_key) {
    st.radii[i] = 0;
    st.tiles_touched[i] = 0;

    const float3 p = make_float3(in.means[3 * i], in.means[3 * i + 1], in.means[3 * i + 2]);
    const float3 t = view_point(cam, p);
    if (!(t.z > kNearCull)) return 0;  // also rejects NaN depths

    const float4 ph = proj_point(cam, p);
    const float pw = 1.0f / (ph.w + 1e-7f);
    const float2 xy = make_float2(ndc_to_pixel(ph.x * pw, cam.width), ndc_to_pixel(ph.y * pw, cam.height));

    float cov[6];
    if (in.cov3D != nullptr) {
#pragma unroll
        for (int k = 0; k < 6; ++k) cov[k] = in.cov3D[6 * i + k];
    } else {
        const float m = cam.scale_modifier;
        const float3 s = make_float3(in.scales[3 * i] * m, in.scales[3 * i + 1] * m, in.scales[3 * i + 2] * m);
        float inv_norm;
        const float4 q = normalize_quat(make_float4(in.rotations[4 * i], in.rotations[4 * i + 1],
                                                    in.rotations[4 * i + 2], in.rotations[4 * i + 3]), inv_norm);
        cov3d_from_scale_rot(s, q, cov);
    }
    const EwaJacobian e = ewa_jacobian(cam, t);
    float u0[3], u1[3];
    sym_mul(cov, e.t0, u0);
    sym_mul(cov, e.t1, u1);
    const float a = e.t0[0] * u0[0] + e.t0[1] * u0[1] + e.t0[2] * u0[2] + kDilation;
    const float b = e.t0[0] * u1[0] + e.t0[1] * u1[1] + e.t0[2] * u1[2];
    const float c = e.t1[0] * u1[0] + e.t1[1] * u1[1] + e.t1[2] * u1[2] + kDilation;
    const float det = a * c - b * b;
    if (!(det > 0.0f) || !isfinite(det)) return 0;  // the reference culls det <= 0 and non-finite
    const float inv_det = 1.0f / det;
    const float mid = 0.5f * (a + c);
    const float disc = sqrtf(fmaxf(0.1f, mid * mid - det));
    const float lam = fmaxf(mid + disc, mid - disc);
    const float radius_f = ceilf(3.0f * sqrtf(lam));
    if (!(radius_f > 0.0f) || !isfinite(xy.x) || !isfinite(xy.y)) return 0;  // NaN / degenerate
    const float radius = fminf(radius_f, 1.0e9f);
    int2 rmin, rmax;
    tile_rect(cam, xy, radius, rmin, rmax);
    if ((rmax.x - rmin.x) * (rmax.y - rmin.y) == 0) return 0;
    const float4 conic_op = make_float4(c * inv_det, -b * inv_det, a * inv_det, in.opacities[i]);
    // Tiles of the rectangle where the splat can contribute at all (see tile_hit); small
    // rectangles keep them as a mask for the emitting pass.
    const TileTest test = tile_test_of(conic_op);
    int64_t touched = 0;
    if ((int64_t)(rmax.x - rmin.x) * (rmax.y - rmin.y) <= kMaskTiles) {
        uint64_t mask = 0;
        int bit = 0;
        for (int ty = rmin.y; ty < rmax.y; ++ty)
            for (int tx = rmin.x; tx < rmax.x; ++tx, ++bit)
                if (tile_hit(cam.width, cam.height, xy, test, tx, ty)) mask |= 1ull << bit;
        tile_mask[i] = mask;
        touched = __popcll(mask);
    } else {
        for (int ty = rmin.y; ty < rmax.y; ++ty)
            for (int tx = rmin.x; tx < rmax.x; ++tx) touched += tile_hit(cam.width, cam.height, xy, test, tx, ty);
    }

    float rgb[3];
    if (in.colors != nullptr) {
        rgb[0] = in.colors[3 * i]; rgb[1] = in.colors[3 * i + 1]; rgb[2] = in.colors[3 * i + 2];
    } else {
        float dx = p.x - __ldg(cam.campos), dy = p.y - __ldg(cam.campos + 1), dz = p.z - __ldg(cam.campos + 2);
        const float inv = rsqrtf(dx * dx + dy * dy + dz * dz);
        dx *= inv; dy *= inv; dz *= inv;
        float basis[16] = {};
        sh_basis(cam.sh_degree, dx, dy, dz, basis);
        const int nb = (cam.sh_degree + 1) * (cam.sh_degree + 1);
        float sh[48];
        load_row48(in.shs + (int64_t)i * cam.sh_coeffs * 3, 3 * nb,
                   rows_vectorisable(in.shs, 3 * cam.sh_coeffs), sh);
        rgb[0] = rgb[1] = rgb[2] = 0.5f;
#pragma unroll
        for (int k = 0; k < 16; ++k) {
            if (k < nb) {
                rgb[0] += basis[k] * sh[3 * k];
                rgb[1] += basis[k] * sh[3 * k + 1];
                rgb[2] += basis[k] * sh[3 * k + 2];
            }
        }
        rgb[0] = fmaxf(rgb[0], 0.f); rgb[1] = fmaxf(rgb[1], 0.f); rgb[2] = fmaxf(rgb[2], 0.f);
    }

    st.xy[i] = xy;
    depth_key = __float_as_uint(t.z);
    st.conic_opacity[i] = conic_op;
    st.rgb[3 * i] = rgb[0]; st.rgb[3 * i + 1] = rgb[1]; st.rgb[3 * i + 2] = rgb[2];
    st.radii[i] = (int)radius;
    st.tiles_touched[i] = touched;
    return touched;
}

// One thread per splat; each block adds its splats' tile counts to ord.pairs_acc (one atomic), and
// the last block to finish moves the sum to ord.total and resets the counters. The threads also
// zero the tile ranges (grid-stride), which only the tile-range pass after the sort fills in.
__global__ void __launch_bounds__(256) preprocess_kernel(Camera cam, SplatInputs in, SplatState st, DepthOrder ord) {
    __shared__ unsigned long long s_warp[8];
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    for (int r = i; r < ord.num_ranges; r += gridDim.x * blockDim.x) ord.ranges[r] = 0;
    unsigned long long touched = 0;
    if (i < in.n) {
        load_intrinsics(cam);
        uint32_t key = 0xFFFFFFFFu;  // culled splats sort last (they emit no pairs)
        touched = (unsigned long long)preprocess_splat(cam, in, st, ord.tile_mask, i, key);
        ord.keys[i] = touched > 0 ? key : 0xFFFFFFFFu;
        ord.index[i] = i;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) touched += __shfl_xor_sync(0xffffffffu, touched, o);
    if ((threadIdx.x & 31) == 0) s_warp[threadIdx.x >> 5] = touched;
    __syncthreads();
    if (threadIdx.x == 0) {
        unsigned long long sum = 0;
        for (int w = 0; w < (int)(blockDim.x >> 5); ++w) sum += s_warp[w];
        if (sum) atomicAdd(ord.pairs_acc, sum);
        __threadfence();  // the sum is visible before this block counts as done
        if (atomicAdd(ord.blocks_done, 1u) == gridDim.x - 1) {
            *ord.total = atomicExch(ord.pairs_acc, 0ull);
            *ord.blocks_done = 0u;
        }
    }
}

void launch_preprocess(const Camera& cam, const SplatInputs& in, const SplatState& st, const DepthOrder& ord,
                       cudaStream_t s) {
    if (in.n == 0) return;
    preprocess_kernel<<<(in.n + 255) / 256, 256, 0, s>>>(cam, in, st, ord);
}

// tiles_touched read in depth order (the scan gathers through ord.order)
using TouchedInDepthOrder = thrust::permutation_iterator<const int64_t*, const int32_t*>;

size_t scan_temp_bytes(int n) {
    size_t bytes = 0;
    cub::DeviceScan::InclusiveSum(nullptr, bytes, TouchedInDepthOrder(nullptr, nullptr), (int64_t*)nullptr, n);
    return bytes;
}

size_t depth_sort_temp_bytes(int n) {
    size_t bytes = 0;
    cub::DeviceRadixSort::SortPairs(nullptr, bytes, (const uint32_t*)nullptr, (uint32_t*)nullptr,
                                    (const int32_t*)nullptr, (int32_t*)nullptr, n, 0, 32);
    return bytes;
}

void order_by_depth(void* sort_tmp, size_t sort_bytes, void* scan_tmp, size_t scan_bytes, int n,
                    const SplatState& st, const DepthOrder& ord, cudaStream_t s) {
    if (n == 0) return;
    // stable: equal depths keep index order, as the (tile | depth) keys of a single sort did
    cub::DeviceRadixSort::SortPairs(sort_tmp, sort_bytes, ord.keys, ord.keys_sorted, ord.index, ord.order, n, 0, 32, s);
    const TouchedInDepthOrder touched(st.tiles_touched, ord.order);
    cub::DeviceScan::InclusiveSum(scan_tmp, scan_bytes, touched, ord.offsets, n, s);
}

// ---------------------------------------------------------------------------------------------
// One (tile) key per tile a splat touches, splats visited front to back.
// ---------------------------------------------------------------------------------------------
template <typename Key>
__global__ void duplicate_kernel(Camera cam, int n, SplatState st, DepthOrder ord, int64_t limit,
                                 Key* __restrict__ keys, int32_t* __restrict__ values) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n) return;
    int64_t off = (j == 0) ? 0 : ord.offsets[j - 1];
    const int64_t end = ord.offsets[j] < limit ? ord.offsets[j] : limit;  // a short pair buffer drops the rest
    if (end <= off) return;  // also every culled splat (no tiles)
    const int i = ord.order[j];
    const float2 m = st.xy[i];
    int2 rmin, rmax;
    tile_rect(cam, m, (float)st.radii[i], rmin, rmax);
    const int rect_w = rmax.x - rmin.x;
    if ((int64_t)rect_w * (rmax.y - rmin.y) <= kMaskTiles) {  // the counting pass kept the tiles
        uint64_t mask = ord.tile_mask[i];
        while (mask && off < end) {
            const int bit = __ffsll((long long)mask) - 1;
            mask &= mask - 1;
            keys[off] = (Key)((rmin.y + bit / rect_w) * cam.tiles_x + rmin.x + bit % rect_w);
            values[off] = i;
            ++off;
        }
        return;
    }
    const TileTest test = tile_test_of(st.conic_opacity[i]);
    for (int y = rmin.y; y < rmax.y; ++y) {
        for (int x = rmin.x; x < rmax.x; ++x) {
            if (!tile_hit(cam.width, cam.height, m, test, x, y)) continue;
            if (off >= end) return;  // only at the buffer's end (same test as the counting pass)
            keys[off] = (Key)(y * cam.tiles_x + x);
            values[off] = i;
            ++off;
        }
    }
}

template <typename Key>
void duplicate(const Camera& cam, int n, const SplatState& st, const DepthOrder& ord, int64_t limit, Key* keys,
               int32_t* values, cudaStream_t s) {
    if (n == 0) return;
    duplicate_kernel<Key><<<(n + 255) / 256, 256, 0, s>>>(cam, n, st, ord, limit, keys, values);
}

void launch_duplicate(const Camera& cam, int n, const SplatState& st, const DepthOrder& ord, int64_t limit,
                      uint16_t* keys, int32_t* values, cudaStream_t s) {
    duplicate(cam, n, st, ord, limit, keys, values, s);
}

void launch_duplicate(const Camera& cam, int n, const SplatState& st, const DepthOrder& ord, int64_t limit,
                      uint32_t* keys, int32_t* values, cudaStream_t s) {
    duplicate(cam, n, st, ord, limit, keys, values, s);
}

// Entries [total, count) of a fixed-size pair buffer get the key num_tiles, which sorts after every
// real one and which the tile-range pass ignores.
template <typename Key>
__global__ void pad_pairs_kernel(int64_t count, const unsigned long long* __restrict__ total, Key tail_key,
                                 Key* __restrict__ keys, int32_t* __restrict__ values) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count || (unsigned long long)i < *total) return;
    keys[i] = tail_key;
    values[i] = 0;
}

template <typename Key>
void pad_pairs(int64_t count, const unsigned long long* total, int num_tiles, Key* keys, int32_t* values,
               cudaStream_t s) {
    if (count == 0) return;
    pad_pairs_kernel<Key><<<(unsigned)((count + 255) / 256), 256, 0, s>>>(count, total, (Key)num_tiles, keys, values);
}

void launch_pad_pairs(int64_t count, const unsigned long long* total, int num_tiles, uint16_t* keys,
                      int32_t* values, cudaStream_t s) {
    pad_pairs(count, total, num_tiles, keys, values, s);
}

void launch_pad_pairs(int64_t count, const unsigned long long* total, int num_tiles, uint32_t* keys,
                      int32_t* values, cudaStream_t s) {
    pad_pairs(count, total, num_tiles, keys, values, s);
}

template <typename Key>
size_t sort_bytes_for(int64_t count, int end_bit) {
    size_t bytes = 0;
    if (count <= INT32_MAX) {
        cub::DeviceRadixSort::SortPairs(nullptr, bytes, (const Key*)nullptr, (Key*)nullptr, (const int32_t*)nullptr,
                                        (int32_t*)nullptr, (int)count, 0, end_bit);
    } else {
        cub::DeviceRadixSort::SortPairs(nullptr, bytes, (const Key*)nullptr, (Key*)nullptr, (const int32_t*)nullptr,
                                        (int32_t*)nullptr, count, 0, end_bit);
    }
    return bytes;
}

size_t sort_temp_bytes(int64_t count, int end_bit, int key_bytes) {
    return key_bytes == 2 ? sort_bytes_for<uint16_t>(count, end_bit) : sort_bytes_for<uint32_t>(count, end_bit);
}

template <typename Key>
void sort_pairs(void* tmp, size_t bytes, const Key* keys_in, Key* keys_out, const int32_t* vals_in, int32_t* vals_out,
                int64_t count, int end_bit, cudaStream_t s) {
    if (count <= INT32_MAX) {
        cub::DeviceRadixSort::SortPairs(tmp, bytes, keys_in, keys_out, vals_in, vals_out, (int)count, 0, end_bit, s);
    } else {
        cub::DeviceRadixSort::SortPairs(tmp, bytes, keys_in, keys_out, vals_in, vals_out, count, 0, end_bit, s);
    }
}

void radix_sort(void* tmp, size_t bytes, const uint16_t* keys_in, uint16_t* keys_out, const int32_t* vals_in,
                int32_t* vals_out, int64_t count, int end_bit, cudaStream_t s) {
    sort_pairs(tmp, bytes, keys_in, keys_out, vals_in, vals_out, count, end_bit, s);
}

void radix_sort(void* tmp, size_t bytes, const uint32_t* keys_in, uint32_t* keys_out, const int32_t* vals_in,
                int32_t* vals_out, int64_t count, int end_bit, cudaStream_t s) {
    sort_pairs(tmp, bytes, keys_in, keys_out, vals_in, vals_out, count, end_bit, s);
}

// ranges[2 t] .. ranges[2 t + 1]: the slice of the sorted list that belongs to tile t (zeroed first).
// Keys of tile num_tiles (padding of a fixed-size buffer) belong to no tile.
template <typename Key>
__global__ void tile_ranges_kernel(int64_t count, uint32_t num_tiles, const Key* __restrict__ keys,
                                   int64_t* __restrict__ ranges) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count) return;
    const uint32_t tile = keys[i];
    const bool real = tile < num_tiles;
    if (i == 0) {
        if (real) ranges[2 * (int64_t)tile] = 0;
    } else {
        const uint32_t prev = keys[i - 1];
        if (prev != tile) {
            if (prev < num_tiles) ranges[2 * (int64_t)prev + 1] = i;
            if (real) ranges[2 * (int64_t)tile] = i;
        }
    }
    if (i == count - 1 && real) ranges[2 * (int64_t)tile + 1] = count;
}

template <typename Key>
void tile_ranges(int64_t count, int num_tiles, const Key* keys, int64_t* ranges, cudaStream_t s) {
    if (count == 0) return;
    const int64_t blocks = (count + 255) / 256;
    tile_ranges_kernel<Key><<<(unsigned)blocks, 256, 0, s>>>(count, (uint32_t)num_tiles, keys, ranges);
}

void launch_tile_ranges(int64_t count, int num_tiles, const uint16_t* keys, int64_t* ranges, cudaStream_t s) {
    tile_ranges(count, num_tiles, keys, ranges, s);
}

void launch_tile_ranges(int64_t count, int num_tiles, const uint32_t* keys, int64_t* ranges, cudaStream_t s) {
    tile_ranges(count, num_tiles, keys, ranges, s);
}

// ---------------------------------------------------------------------------------------------
// Launch order of the blending passes' tile blocks: the longest tile lists first.
// ---------------------------------------------------------------------------------------------
// A blending pass runs one block per tile, and the blocks start in launch order. In raster order a
// heavy tile that comes late starts after the multiprocessors have filled up with lighter ones and
// then runs nearly alone at the end of the pass. Listing the tiles by decreasing list length
// (longest-processing-time-first) starts every heavy tile in the first round, one or two per
// multiprocessor, and fills the gaps with the light ones. The lengths are bucketed on a log scale
// with four buckets per octave, which schedules as well as an exact sort; the order inside a
// bucket is whatever the shared-memory atomics give. It changes no pixel and no gradient sum's
// terms: every tile is still blended by one block, the same way, whichever block runs it.
constexpr int kOrderBuckets = 128;
constexpr int kOrderThreads = 1024;

// 0 for an empty list, else 1 + 4 floor(log2 len) + the next two bits of len (monotone in len).
__device__ __forceinline__ int length_bucket(int64_t len) {
    if (len <= 0) return 0;
    const unsigned long long v = (unsigned long long)len;
    const int e = 63 - __clzll((long long)v);
    const int frac = e >= 2 ? (int)((v >> (e - 2)) & 3ull) : (int)((v << (2 - e)) & 3ull);
    return min(kOrderBuckets - 1, 1 + 4 * e + frac);
}

__global__ void __launch_bounds__(kOrderThreads) tile_order_kernel(int num_tiles, const int64_t* __restrict__ ranges,
                                                                  int32_t* __restrict__ order) {
    __shared__ int s_count[kOrderBuckets];
    __shared__ int s_next[kOrderBuckets];
    for (int b = threadIdx.x; b < kOrderBuckets; b += blockDim.x) s_count[b] = 0;
    __syncthreads();
    for (int t = threadIdx.x; t < num_tiles; t += blockDim.x)
        atomicAdd(&s_count[length_bucket(ranges[2 * t + 1] - ranges[2 * t])], 1);
    __syncthreads();
    if (threadIdx.x < 32) {
        // first slot of each bucket, buckets in decreasing order: lane L owns buckets 127 - 4L .. 124 - 4L
        constexpr int kPerLane = kOrderBuckets / 32;
        const int lane = threadIdx.x;
        int counts[kPerLane];
        int sum = 0;
#pragma unroll
        for (int k = 0; k < kPerLane; ++k) {
            counts[k] = s_count[kOrderBuckets - 1 - kPerLane * lane - k];
            sum += counts[k];
        }
        int incl = sum;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const int up = __shfl_up_sync(0xffffffffu, incl, o);
            if (lane >= o) incl += up;
        }
        int first = incl - sum;
#pragma unroll
        for (int k = 0; k < kPerLane; ++k) {
            s_next[kOrderBuckets - 1 - kPerLane * lane - k] = first;
            first += counts[k];
        }
    }
    __syncthreads();
    for (int t = threadIdx.x; t < num_tiles; t += blockDim.x)
        order[atomicAdd(&s_next[length_bucket(ranges[2 * t + 1] - ranges[2 * t])], 1)] = t;
}

void launch_tile_order(int num_tiles, const int64_t* ranges, int32_t* order, cudaStream_t s) {
    if (num_tiles <= 0) return;
    tile_order_kernel<<<1, kOrderThreads, 0, s>>>(num_tiles, ranges, order);
}

// ---------------------------------------------------------------------------------------------
// Blending: one block per tile, one thread per pixel, splats staged in shared memory by 256.
// ---------------------------------------------------------------------------------------------
// Splats whose alphas a warp computes side by side (instruction-level parallelism for the serial
// transmittance update; 4 measured faster than 2 and 1 on the standard workload, PERF_NOTES.md).
constexpr int kBlendWidth = 4;

template <int kWidth>
__global__ void __launch_bounds__(kBlock) render_forward_kernel(
    Camera cam, const int32_t* __restrict__ tile_order, const int64_t* __restrict__ ranges,
    const int32_t* __restrict__ point_list, const float2* __restrict__ xy, const float4* __restrict__ conic_opacity,
    const float* __restrict__ rgb, float* __restrict__ out_color, float* __restrict__ final_T,
    int32_t* __restrict__ n_contrib) {
    __shared__ float2 s_xy[kBlock];
    __shared__ float4 s_co[kBlock];
    __shared__ float s_rgb[3][kBlock];
    __shared__ uint32_t s_mask[kBlock];

    const int tid = threadIdx.y * kTile + threadIdx.x;
    const uint32_t warp_bit = 1u << (tid >> 5);
    const int lane = tid & 31;
    const int tile = tile_order != nullptr ? tile_order[blockIdx.x] : (int)blockIdx.x;
    const int tile_y0 = (tile / cam.tiles_x) * kTile;
    const int px = (tile % cam.tiles_x) * kTile + threadIdx.x;
    const int py = tile_y0 + threadIdx.y;
    const bool inside = px < cam.width && py < cam.height;
    const int64_t start = ranges[2 * tile], end = ranges[2 * tile + 1];
    const int64_t todo = end - start;
    const float fx = (float)px, fy = (float)py;

    bool done = !inside;
    float T = 1.0f, C0 = 0.f, C1 = 0.f, C2 = 0.f;
    int last = 0;  // 1-based position (in the tile's list) of the last splat that contributed

    for (int64_t base = 0; base < todo; base += kBlock) {
        if (__syncthreads_count(done) == kBlock) break;
        const int64_t k = start + base + tid;
        if (k < end) {
            const int id = point_list[k];
            const float2 m = xy[id];
            const float4 co = conic_opacity[id];
            s_xy[tid] = m;
            s_co[tid] = co;
            s_rgb[0][tid] = rgb[3 * id];
            s_rgb[1][tid] = rgb[3 * id + 1];
            s_rgb[2][tid] = rgb[3 * id + 2];
            s_mask[tid] = warp_row_mask(m, co, tile_y0);
        }
        __syncthreads();
        const int cnt = (int)min((int64_t)kBlock, todo - base);
        // alpha of staged splat j at this pixel (0 where the splat cannot contribute): it does not
        // depend on T, so kWidth splats' alphas are computed side by side before the serial update.
        auto alpha_of = [&](int j) {
            const float2 m = s_xy[j];
            const float4 co = s_co[j];
            const float dx = m.x - fx, dy = m.y - fy;
            const float power = -0.5f * (co.x * dx * dx + co.z * dy * dy) - co.y * dx * dy;
            if (power > 0.0f) return 0.0f;
            return fminf(kMaxAlpha, co.w * __expf(power));
        };
        auto blend = [&](int j, float alpha) {
            if (alpha < kMinAlpha) return;
            const float test_T = T * (1.0f - alpha);
            if (test_T < kMinT) {
                done = true;
                return;
            }
            const float w = alpha * T;
            C0 += s_rgb[0][j] * w;
            C1 += s_rgb[1][j] * w;
            C2 += s_rgb[2][j] * w;
            T = test_T;
            last = (int)(base + j + 1);
        };
        // Each warp walks only the splats its two pixel rows can reach: a ballot over 32 staged
        // splats at a time, then their set bits in order, kWidth at a time (front to back is preserved).
        for (int c0 = 0; c0 < cnt; c0 += 32) {
            if (__all_sync(0xffffffffu, done)) break;
            const int jj = c0 + lane;
            uint32_t bits = __ballot_sync(0xffffffffu, jj < cnt && (s_mask[jj] & warp_bit));
            while (bits) {
                int j[kWidth];
                bool has[kWidth];
                j[0] = c0 + __ffs(bits) - 1;
                has[0] = true;
                bits &= bits - 1;
#pragma unroll
                for (int k = 1; k < kWidth; ++k) {
                    has[k] = bits != 0;
                    j[k] = has[k] ? c0 + __ffs(bits) - 1 : j[0];
                    bits &= bits - 1;  // no-op when bits == 0
                }
                float alpha[kWidth];
#pragma unroll
                for (int k = 0; k < kWidth; ++k) alpha[k] = alpha_of(j[k]);
#pragma unroll
                for (int k = 0; k < kWidth; ++k)
                    if (has[k] && !done) blend(j[k], alpha[k]);
            }
        }
    }
    if (inside) {
        const int64_t pix = (int64_t)py * cam.width + px;
        const int64_t hw = (int64_t)cam.width * cam.height;
        final_T[pix] = T;
        n_contrib[pix] = last;
        out_color[pix] = C0 + T * __ldg(cam.bg);
        out_color[hw + pix] = C1 + T * __ldg(cam.bg + 1);
        out_color[2 * hw + pix] = C2 + T * __ldg(cam.bg + 2);
    }
}

void launch_render_forward(const Camera& cam, const int32_t* tile_order, const int64_t* ranges,
                           const int32_t* point_list, const SplatState& st, float* out_color, float* final_T,
                           int32_t* n_contrib, cudaStream_t s) {
    const dim3 grid(cam.tiles_x * cam.tiles_y), block(kTile, kTile);
    render_forward_kernel<kBlendWidth><<<grid, block, 0, s>>>(cam, tile_order, ranges, point_list, st.xy,
                                                              st.conic_opacity, st.rgb, out_color, final_T,
                                                              n_contrib);
}

}  // namespace gsr
