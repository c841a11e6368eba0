// Torch binding of the exact 3-NN search: distCUDA2(points (N, 3)) -> (N,) mean squared distance
// to the 3 nearest other points (fewer when N < 4; 0 for a single point).
#include <torch/extension.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "knn.h"

namespace {

torch::Tensor dist_cuda2(const torch::Tensor& points_in) {
    TORCH_CHECK(points_in.is_cuda(), "simple_knn.distCUDA2: points must be a CUDA tensor");
    TORCH_CHECK(points_in.dim() == 2 && points_in.size(1) == 3, "simple_knn.distCUDA2: points must be (N, 3), got ",
                points_in.sizes());
    TORCH_CHECK(points_in.size(0) < INT32_MAX, "simple_knn.distCUDA2: too many points");
    const c10::cuda::CUDAGuard guard(points_in.device());
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
    const torch::Tensor points = points_in.to(torch::kFloat32).contiguous();
    const int n = (int)points.size(0);
    auto fopt = points.options();
    torch::Tensor out = torch::zeros({n}, fopt);
    if (n <= 1) return out;

    const torch::Tensor lo = std::get<0>(points.min(0)).contiguous();
    const torch::Tensor hi = std::get<0>(points.max(0)).contiguous();
    const torch::Tensor ext = hi - lo;
    const torch::Tensor inv_ext = torch::where(ext > 0, 1.0 / ext, torch::zeros_like(ext)).contiguous();
    torch::Tensor codes = torch::empty({n}, fopt.dtype(torch::kInt64));
    sknn::launch_morton(n, points.data_ptr<float>(), lo.data_ptr<float>(), inv_ext.data_ptr<float>(),
                        codes.data_ptr<int64_t>(), stream);
    const torch::Tensor order = std::get<1>(codes.sort()).contiguous();
    torch::Tensor sorted = torch::empty({n, 4}, fopt);
    auto* sorted4 = reinterpret_cast<float4*>(sorted.data_ptr<float>());
    sknn::launch_gather(n, points.data_ptr<float>(), order.data_ptr<int64_t>(), sorted4, stream);
    const int64_t n_leaves = (n + sknn::kLeaf - 1) / sknn::kLeaf;
    const int64_t n_nodes = (n_leaves + sknn::kLeavesPerNode - 1) / sknn::kLeavesPerNode;
    torch::Tensor leaves = torch::empty({n_leaves * 2, 4}, fopt);
    torch::Tensor nodes = torch::empty({n_nodes * 2, 4}, fopt);
    auto* leaves4 = reinterpret_cast<float4*>(leaves.data_ptr<float>());
    auto* nodes4 = reinterpret_cast<float4*>(nodes.data_ptr<float>());
    sknn::launch_boxes(n, sorted4, leaves4, nodes4, stream);
    sknn::launch_query(n, sorted4, order.data_ptr<int64_t>(), leaves4, nodes4, out.data_ptr<float>(), stream);
    const cudaError_t err = cudaGetLastError();
    TORCH_CHECK(err == cudaSuccess, "simple_knn.distCUDA2: CUDA error: ", cudaGetErrorString(err));
    return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "Exact 3-nearest-neighbour mean squared distances on the GPU.";
    m.def("distCUDA2", &dist_cuda2, "Mean squared distance to the 3 nearest neighbours, (N,) float32");
}
