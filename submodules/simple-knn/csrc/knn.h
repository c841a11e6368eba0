// Exact 3-nearest-neighbour search on the GPU (launchers; the bindings own the buffers).
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

namespace sknn {

constexpr int kLeaf = 32;          // points per leaf box
constexpr int kLeavesPerNode = 32; // leaf boxes per node box (1024 points)

// 63-bit Morton codes of points normalised to the box [lo, lo + extent].
void launch_morton(int n, const float* points, const float* lo, const float* inv_extent, int64_t* codes,
                   cudaStream_t s);
// Gathers points in sorted order (float4, w unused).
void launch_gather(int n, const float* points, const int64_t* order, float4* sorted, cudaStream_t s);
// Leaf and node bounding boxes (lo, hi pairs) of consecutive runs of the sorted points.
void launch_boxes(int n, const float4* sorted, float4* leaf_boxes, float4* node_boxes, cudaStream_t s);
// Mean squared distance to the k = min(3, n - 1) nearest other points, written at the original index.
void launch_query(int n, const float4* sorted, const int64_t* order, const float4* leaf_boxes,
                  const float4* node_boxes, float* out, cudaStream_t s);

}  // namespace sknn
