// Per-stream depth-order workspace and its CUDA graph (see workspace.h).
#include "workspace.h"

#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>

#include "carver.h"

namespace gsr {

namespace {

constexpr size_t kMaxGraphs = 4;       // splat counts with a captured graph, per workspace
constexpr size_t kMaxWorkspaces = 8;   // per thread; the least recently made one goes first
constexpr size_t kCounterBytes = 512;  // the two block counters at the start of a layout (256-aligned)

// Experiment knob, read at every call so that one process can interleave both (benchmarks'
// --graph-ab): GSR_DEPTH_GRAPH=0 keeps the plain launches.
bool graphs_enabled() {
    const char* v = std::getenv("GSR_DEPTH_GRAPH");
    return v == nullptr || v[0] != '0';
}

void check_cuda(cudaError_t err, const char* what) {
    TORCH_CHECK(err == cudaSuccess, "diff_gaussian_rasterization: ", what, " failed: ", cudaGetErrorString(err));
}

}  // namespace

DepthWorkspace::DepthWorkspace(int device, cudaStream_t stream) : device_(device), stream_(stream) {
    void* p = nullptr;
    check_cuda(cudaHostAlloc(&p, sizeof(int64_t), cudaHostAllocPortable), "cudaHostAlloc (pair count)");
    count_host_ = static_cast<int64_t*>(p);
    const cudaError_t err = cudaEventCreateWithFlags(&count_event_, cudaEventDisableTiming);
    if (err != cudaSuccess) {
        (void)cudaFreeHost(count_host_);
        check_cuda(err, "cudaEventCreate (pair count)");
    }
}

// Runs at release or thread exit; return codes are ignored (the runtime may be shutting down).
DepthWorkspace::~DepthWorkspace() {
    drop_graphs();
    if (capture_stream_ != nullptr) (void)cudaStreamDestroy(capture_stream_);
    if (buffer_ != nullptr) c10::cuda::CUDACachingAllocator::raw_delete(buffer_);
    if (count_host_ != nullptr) (void)cudaFreeHost(count_host_);
    if (count_event_ != nullptr) (void)cudaEventDestroy(count_event_);
}

DepthWorkspace::Layout DepthWorkspace::layout(int n, void* base, size_t* bytes) const {
    Carver c(base);
    Layout l;
    // the block counters first: their place does not depend on n, so they keep their (zero)
    // values when n changes within the buffer
    l.ord.pairs_acc = c.take<unsigned long long>(1);
    l.ord.blocks_done = c.take<unsigned int>(1);
    l.tiles_touched = c.take<int64_t>(n);
    l.ord.keys = c.take<uint32_t>(n);
    l.ord.keys_sorted = c.take<uint32_t>(n);
    l.ord.index = c.take<int32_t>(n);
    l.ord.order = c.take<int32_t>(n);
    l.ord.offsets = c.take<int64_t>(n);
    l.ord.tile_mask = c.take<uint64_t>(n);
    l.ord.total = nullptr;  // the caller's: total and ranges live in the call's state
    l.ord.ranges = nullptr;
    l.ord.num_ranges = 0;
    l.sort_bytes = depth_sort_temp_bytes(n);
    l.sort_tmp = c.take<char>((int64_t)l.sort_bytes);
    l.scan_bytes = scan_temp_bytes(n);
    l.scan_tmp = c.take<char>((int64_t)l.scan_bytes);
    *bytes = c.size();
    return l;
}

void DepthWorkspace::drop_graphs() {
    for (Graph& g : graphs_) (void)cudaGraphExecDestroy(g.exec);
    graphs_.clear();
}

void DepthWorkspace::prepare(int n, int64_t** tiles_touched, DepthOrder* ord) {
    TORCH_CHECK(n > 0, "diff_gaussian_rasterization: depth workspace for ", n, " splats");
    if (n != current_n_) {
        size_t need = 0;
        layout(n, nullptr, &need);
        if (need > bytes_) {  // grow with headroom; graphs hold the old addresses
            const size_t grown = std::max(need, bytes_ + bytes_ / 4);
            void* fresh = c10::cuda::CUDACachingAllocator::raw_alloc_with_stream(grown, stream_);
            const cudaError_t err = cudaMemsetAsync(fresh, 0, kCounterBytes, stream_);  // block counters
            if (err != cudaSuccess) {
                c10::cuda::CUDACachingAllocator::raw_delete(fresh);
                check_cuda(err, "zeroing the depth workspace's counters");
            }
            drop_graphs();
            if (buffer_ != nullptr) c10::cuda::CUDACachingAllocator::raw_delete(buffer_);
            buffer_ = fresh;
            bytes_ = grown;
        }
        current_ = layout(n, buffer_, &need);
        current_n_ = n;
    }
    *tiles_touched = current_.tiles_touched;
    *ord = current_.ord;
}

// Captures the depth sort and scan of n splats on a private stream (the caller's stream may be the
// legacy default stream, which cannot be captured). nullptr when capture is not possible.
cudaGraphExec_t DepthWorkspace::capture(int n, const Layout& l) {
    if (capture_stream_ == nullptr &&
        cudaStreamCreateWithFlags(&capture_stream_, cudaStreamNonBlocking) != cudaSuccess) {
        capture_stream_ = nullptr;
        (void)cudaGetLastError();
        return nullptr;
    }
    if (cudaStreamBeginCapture(capture_stream_, cudaStreamCaptureModeThreadLocal) != cudaSuccess) {
        (void)cudaGetLastError();
        return nullptr;
    }
    SplatState st{};
    st.tiles_touched = l.tiles_touched;
    gsr::order_by_depth(l.sort_tmp, l.sort_bytes, l.scan_tmp, l.scan_bytes, n, st, l.ord, capture_stream_);
    cudaGraph_t graph = nullptr;
    cudaError_t err = cudaStreamEndCapture(capture_stream_, &graph);
    cudaGraphExec_t exec = nullptr;
    if (err == cudaSuccess) err = cudaGraphInstantiate(&exec, graph, 0);
    if (graph != nullptr) (void)cudaGraphDestroy(graph);
    if (err == cudaSuccess) err = cudaGraphUpload(exec, stream_);
    if (err != cudaSuccess) {
        if (exec != nullptr) (void)cudaGraphExecDestroy(exec);
        (void)cudaGetLastError();
        return nullptr;
    }
    return exec;
}

void DepthWorkspace::order_by_depth(int n) {
    TORCH_CHECK(n == current_n_, "diff_gaussian_rasterization: depth workspace prepared for ", current_n_,
                " splats, asked to order ", n);
    ++clock_;
    auto hit = std::find_if(graphs_.begin(), graphs_.end(), [n](const Graph& g) { return g.n == n; });
    if (hit == graphs_.end() && !graphs_failed_ && graphs_enabled()) {
        cudaGraphExec_t exec = capture(n, current_);
        if (exec == nullptr) {
            graphs_failed_ = true;  // this stream keeps the plain launches
        } else {
            if (graphs_.size() >= kMaxGraphs) {
                auto oldest = std::min_element(graphs_.begin(), graphs_.end(),
                                               [](const Graph& a, const Graph& b) { return a.last_use < b.last_use; });
                (void)cudaGraphExecDestroy(oldest->exec);
                graphs_.erase(oldest);
            }
            graphs_.push_back({n, exec, clock_});
            hit = graphs_.end() - 1;
        }
    }
    if (hit != graphs_.end()) {
        hit->last_use = clock_;
        check_cuda(cudaGraphLaunch(hit->exec, stream_), "launching the depth-order graph");
        return;
    }
    SplatState st{};
    st.tiles_touched = current_.tiles_touched;
    gsr::order_by_depth(current_.sort_tmp, current_.sort_bytes, current_.scan_tmp, current_.scan_bytes, n, st,
                        current_.ord, stream_);
}

namespace {

std::vector<std::unique_ptr<DepthWorkspace>>& thread_workspaces() {
    thread_local std::vector<std::unique_ptr<DepthWorkspace>> workspaces;
    return workspaces;
}

}  // namespace

DepthWorkspace& depth_workspace(int device, cudaStream_t stream) {
    auto& all = thread_workspaces();
    for (auto& w : all)
        if (w->device() == device && w->stream() == stream) return *w;
    if (all.size() >= kMaxWorkspaces) {
        // the oldest one's work may still be queued: wait for its device before freeing
        int current = -1;
        (void)cudaGetDevice(&current);
        if (cudaSetDevice(all.front()->device()) == cudaSuccess) (void)cudaDeviceSynchronize();
        if (current >= 0) (void)cudaSetDevice(current);
        all.erase(all.begin());
    }
    all.push_back(std::make_unique<DepthWorkspace>(device, stream));
    return *all.back();
}

void release_depth_workspaces() {
    auto& all = thread_workspaces();
    if (all.empty()) return;
    int current = -1;
    check_cuda(cudaGetDevice(&current), "cudaGetDevice");
    for (auto& w : all) {
        check_cuda(cudaSetDevice(w->device()), "cudaSetDevice");
        check_cuda(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
    }
    check_cuda(cudaSetDevice(current), "cudaSetDevice");
    all.clear();
}

size_t depth_workspace_bytes() {
    size_t total = 0;
    for (const auto& w : thread_workspaces()) total += w->bytes();
    return total;
}

}  // namespace gsr
