// Exact 3-NN: Morton-sorted points, a window search in sorted order for a first bound, then a
// two-level bounding-box pruned scan (node boxes of 1024 points, leaf boxes of 32 points).
// Pruning uses a strict '<' against the current third-best squared distance, so the result is exact.
#include <cfloat>

#include "knn.h"

namespace sknn {

namespace {

constexpr int kWindow = 8;  // sorted-order neighbours examined on each side for the first bound

__device__ __forceinline__ uint64_t spread21(uint64_t v) {
    v &= 0x1fffff;
    v = (v | v << 32) & 0x1f00000000ffffull;
    v = (v | v << 16) & 0x1f0000ff0000ffull;
    v = (v | v << 8) & 0x100f00f00f00f00full;
    v = (v | v << 4) & 0x10c30c30c30c30c3ull;
    v = (v | v << 2) & 0x1249249249249249ull;
    return v;
}

__global__ void morton_kernel(int n, const float* __restrict__ pts, const float* __restrict__ lo,
                              const float* __restrict__ inv_ext, int64_t* __restrict__ codes) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    uint64_t c[3];
#pragma unroll
    for (int k = 0; k < 3; ++k) {
        float u = (pts[3 * i + k] - lo[k]) * inv_ext[k];
        u = fminf(fmaxf(u, 0.f), 1.f);
        c[k] = (uint64_t)(u * 2097151.0f);
    }
    codes[i] = (int64_t)(spread21(c[0]) | (spread21(c[1]) << 1) | (spread21(c[2]) << 2));
}

__global__ void gather_kernel(int n, const float* __restrict__ pts, const int64_t* __restrict__ order,
                              float4* __restrict__ sorted) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const int64_t j = order[i];
    sorted[i] = make_float4(pts[3 * j], pts[3 * j + 1], pts[3 * j + 2], 0.f);
}

__global__ void leaf_box_kernel(int n, const float4* __restrict__ sorted, float4* __restrict__ boxes) {
    const int b = blockIdx.x * blockDim.x + threadIdx.x;
    const int nb = (n + kLeaf - 1) / kLeaf;
    if (b >= nb) return;
    float4 lo = make_float4(FLT_MAX, FLT_MAX, FLT_MAX, 0.f), hi = make_float4(-FLT_MAX, -FLT_MAX, -FLT_MAX, 0.f);
    const int end = min(n, (b + 1) * kLeaf);
    for (int i = b * kLeaf; i < end; ++i) {
        const float4 p = sorted[i];
        lo.x = fminf(lo.x, p.x); lo.y = fminf(lo.y, p.y); lo.z = fminf(lo.z, p.z);
        hi.x = fmaxf(hi.x, p.x); hi.y = fmaxf(hi.y, p.y); hi.z = fmaxf(hi.z, p.z);
    }
    boxes[2 * b] = lo;
    boxes[2 * b + 1] = hi;
}

__global__ void node_box_kernel(int n_leaves, const float4* __restrict__ leaves, float4* __restrict__ nodes) {
    const int b = blockIdx.x * blockDim.x + threadIdx.x;
    const int nn = (n_leaves + kLeavesPerNode - 1) / kLeavesPerNode;
    if (b >= nn) return;
    float4 lo = make_float4(FLT_MAX, FLT_MAX, FLT_MAX, 0.f), hi = make_float4(-FLT_MAX, -FLT_MAX, -FLT_MAX, 0.f);
    const int end = min(n_leaves, (b + 1) * kLeavesPerNode);
    for (int l = b * kLeavesPerNode; l < end; ++l) {
        const float4 a = leaves[2 * l], c = leaves[2 * l + 1];
        lo.x = fminf(lo.x, a.x); lo.y = fminf(lo.y, a.y); lo.z = fminf(lo.z, a.z);
        hi.x = fmaxf(hi.x, c.x); hi.y = fmaxf(hi.y, c.y); hi.z = fmaxf(hi.z, c.z);
    }
    nodes[2 * b] = lo;
    nodes[2 * b + 1] = hi;
}

__device__ __forceinline__ float box_dist2(const float4& p, const float4& lo, const float4& hi) {
    const float dx = fmaxf(0.f, fmaxf(lo.x - p.x, p.x - hi.x));
    const float dy = fmaxf(0.f, fmaxf(lo.y - p.y, p.y - hi.y));
    const float dz = fmaxf(0.f, fmaxf(lo.z - p.z, p.z - hi.z));
    return dx * dx + dy * dy + dz * dz;
}

__device__ __forceinline__ void insert3(float d, float& b0, float& b1, float& b2) {
    if (d < b2) {
        if (d < b1) {
            b2 = b1;
            if (d < b0) { b1 = b0; b0 = d; } else { b1 = d; }
        } else {
            b2 = d;
        }
    }
}

__device__ __forceinline__ float dist2(const float4& a, const float4& b) {
    const float dx = a.x - b.x, dy = a.y - b.y, dz = a.z - b.z;
    return dx * dx + dy * dy + dz * dz;
}

__global__ void query_kernel(int n, const float4* __restrict__ sorted, const int64_t* __restrict__ order,
                             const float4* __restrict__ leaves, const float4* __restrict__ nodes,
                             float* __restrict__ out) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float4 p = sorted[i];
    float b0 = FLT_MAX, b1 = FLT_MAX, b2 = FLT_MAX;
    const int w0 = max(0, i - kWindow), w1 = min(n - 1, i + kWindow);
    for (int j = w0; j <= w1; ++j) {
        if (j != i) insert3(dist2(p, sorted[j]), b0, b1, b2);
    }
    const int n_leaves = (n + kLeaf - 1) / kLeaf;
    const int n_nodes = (n_leaves + kLeavesPerNode - 1) / kLeavesPerNode;
    for (int nd = 0; nd < n_nodes; ++nd) {
        if (!(box_dist2(p, __ldg(nodes + 2 * nd), __ldg(nodes + 2 * nd + 1)) < b2)) continue;
        const int l_end = min(n_leaves, (nd + 1) * kLeavesPerNode);
        for (int l = nd * kLeavesPerNode; l < l_end; ++l) {
            if (!(box_dist2(p, __ldg(leaves + 2 * l), __ldg(leaves + 2 * l + 1)) < b2)) continue;
            const int j_end = min(n, (l + 1) * kLeaf);
            for (int j = l * kLeaf; j < j_end; ++j) {
                if (j >= w0 && j <= w1) continue;  // already examined by the window search
                insert3(dist2(p, __ldg(sorted + j)), b0, b1, b2);
            }
        }
    }
    float result;
    if (n >= 4) result = (b0 + b1 + b2) * (1.0f / 3.0f);
    else if (n == 3) result = 0.5f * (b0 + b1);
    else if (n == 2) result = b0;
    else result = 0.f;
    out[order[i]] = result;
}

}  // namespace

void launch_morton(int n, const float* points, const float* lo, const float* inv_extent, int64_t* codes,
                   cudaStream_t s) {
    if (n > 0) morton_kernel<<<(n + 255) / 256, 256, 0, s>>>(n, points, lo, inv_extent, codes);
}

void launch_gather(int n, const float* points, const int64_t* order, float4* sorted, cudaStream_t s) {
    if (n > 0) gather_kernel<<<(n + 255) / 256, 256, 0, s>>>(n, points, order, sorted);
}

void launch_boxes(int n, const float4* sorted, float4* leaf_boxes, float4* node_boxes, cudaStream_t s) {
    if (n <= 0) return;
    const int n_leaves = (n + kLeaf - 1) / kLeaf;
    const int n_nodes = (n_leaves + kLeavesPerNode - 1) / kLeavesPerNode;
    leaf_box_kernel<<<(n_leaves + 127) / 128, 128, 0, s>>>(n, sorted, leaf_boxes);
    node_box_kernel<<<(n_nodes + 127) / 128, 128, 0, s>>>(n_leaves, leaf_boxes, node_boxes);
}

void launch_query(int n, const float4* sorted, const int64_t* order, const float4* leaf_boxes,
                  const float4* node_boxes, float* out, cudaStream_t s) {
    if (n > 0) query_kernel<<<(n + 127) / 128, 128, 0, s>>>(n, sorted, order, leaf_boxes, node_boxes, out);
}

}  // namespace sknn
