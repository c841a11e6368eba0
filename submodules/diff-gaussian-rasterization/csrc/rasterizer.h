// Host-side launchers of the tile rasterizer kernels (no torch types: the bindings own buffers).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cuda_runtime.h>

#include "camera.h"

namespace gsr {

// Per-splat inputs of the preprocess step (null pointers for absent inputs).
struct SplatInputs {
    int n;
    const float* means;       // (N, 3)
    const float* scales;      // (N, 3) or null when cov3D is given
    const float* rotations;   // (N, 4) or null
    const float* cov3D;       // (N, 6) or null
    const float* opacities;   // (N,)
    const float* shs;         // (N, M, 3) or null when colors is given
    const float* colors;      // (N, 3) or null
};

// Screen-space state produced by the preprocess step (kept for the backward pass).
struct SplatState {
    float2* xy;               // pixel-space means
    float4* conic_opacity;    // (conic xx, xy, yy, opacity)
    float* rgb;               // (N, 3) colours
    int* radii;               // 0 = culled
    int64_t* tiles_touched;   // tiles the splat can reach (0 when culled)
};

// Depth order of the splats and the per-splat pair offsets in that order (scratch of one forward
// pass). The (tile, splat) pairs are emitted front to back, so a stable sort by tile alone leaves
// each tile's list in depth order: the pair sort needs only the tile bits.
struct DepthOrder {
    uint32_t* keys;               // (N,) view-depth bits of visible splats (culled: 0xFFFFFFFF)
    uint32_t* keys_sorted;        // (N,)
    int32_t* index;               // (N,) 0 .. N-1
    int32_t* order;               // (N,) splat indices, front to back (ties: by index)
    int64_t* offsets;             // (N,) inclusive prefix sum of tiles_touched[order[j]]
    uint64_t* tile_mask;          // (N,) tiles hit, for tile rectangles of at most kMaskTiles tiles
    unsigned long long* total;    // out: number of (tile, splat) pairs (written by the preprocess)
    // Counters of the preprocess's blocks: zero before it starts, and zero again after it (its last
    // block reads them and resets them), so a persistent pair needs no memset per call.
    unsigned long long* pairs_acc;
    unsigned int* blocks_done;
    int64_t* ranges;              // (2 * num_tiles) tile ranges, zeroed by the preprocess
    int num_ranges;               // 2 * num_tiles
};

// Preprocess: fills `st`, the depth keys and indices of `ord`, writes the pair count to ord.total
// and zeroes ord.ranges.
void launch_preprocess(const Camera& cam, const SplatInputs& in, const SplatState& st, const DepthOrder& ord,
                       cudaStream_t s);
size_t depth_sort_temp_bytes(int n);
size_t scan_temp_bytes(int n);
// Depth sort, then the pair offsets in depth order (ord.order, ord.offsets).
void order_by_depth(void* sort_tmp, size_t sort_bytes, void* scan_tmp, size_t scan_bytes, int n,
                    const SplatState& st, const DepthOrder& ord, cudaStream_t s);

// Pair keys: the tile index alone, 16 bits wide when the image has fewer than 65,536 tiles.
// Writes the pairs of offsets below `limit` (the buffer's size); the rest are dropped.
void launch_duplicate(const Camera& cam, int n, const SplatState& st, const DepthOrder& ord, int64_t limit,
                      uint16_t* keys, int32_t* values, cudaStream_t s);
void launch_duplicate(const Camera& cam, int n, const SplatState& st, const DepthOrder& ord, int64_t limit,
                      uint32_t* keys, int32_t* values, cudaStream_t s);
// Pads entries [*total, count) with the key of the non-tile num_tiles (fixed-size buffers).
void launch_pad_pairs(int64_t count, const unsigned long long* total, int num_tiles, uint16_t* keys,
                      int32_t* values, cudaStream_t s);
void launch_pad_pairs(int64_t count, const unsigned long long* total, int num_tiles, uint32_t* keys,
                      int32_t* values, cudaStream_t s);
size_t sort_temp_bytes(int64_t count, int end_bit, int key_bytes);
void radix_sort(void* tmp, size_t bytes, const uint16_t* keys_in, uint16_t* keys_out, const int32_t* vals_in,
                int32_t* vals_out, int64_t count, int end_bit, cudaStream_t s);
void radix_sort(void* tmp, size_t bytes, const uint32_t* keys_in, uint32_t* keys_out, const int32_t* vals_in,
                int32_t* vals_out, int64_t count, int end_bit, cudaStream_t s);
void launch_tile_ranges(int64_t count, int num_tiles, const uint16_t* keys, int64_t* ranges, cudaStream_t s);
void launch_tile_ranges(int64_t count, int num_tiles, const uint32_t* keys, int64_t* ranges, cudaStream_t s);
// Launch order of the blending passes' tile blocks (num_tiles entries): tiles by decreasing list
// length, read from the tile ranges. The blending launchers take it, or null for raster order.
void launch_tile_order(int num_tiles, const int64_t* ranges, int32_t* order, cudaStream_t s);
void launch_render_forward(const Camera& cam, const int32_t* tile_order, const int64_t* ranges,
                           const int32_t* point_list, const SplatState& st, float* out_color, float* final_T,
                           int32_t* n_contrib, cudaStream_t s);

// Backward.
struct SplatGrads {
    float* means3D;   // (N, 3)
    float* means2D;   // (N, 3): dL/dndc in x, y; z = 0
    float* opacities; // (N,)
    float* colors;    // (N, 3) or null (only when colours were precomputed)
    float* cov3D;     // (N, 6) or null (only when cov3D was precomputed)
    float* shs;       // (N, M, 3) or null
    float* scales;    // (N, 3) or null
    float* rotations; // (N, 4) or null
};

// accum: (N, 3) float4 = [dmean2D.x, dmean2D.y, dopacity, -], [dconic xx, xy, yy, -], [dr, dg, db, -]
void launch_render_backward(const Camera& cam, const int32_t* tile_order, const int64_t* ranges,
                            const int32_t* point_list, const SplatState& st, const float* final_T,
                            const int32_t* n_contrib, const float* dL_dpixels, float4* accum, cudaStream_t s);
void launch_preprocess_backward(const Camera& cam, const SplatInputs& in, const int* radii,
                                const float4* accum, const SplatGrads& g, cudaStream_t s);

}  // namespace gsr
