// Scratch of the depth order kept between eager forward calls, and the CUDA graph that replays the
// depth sort and its scan on it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include <cuda_runtime.h>

#include "rasterizer.h"

namespace gsr {

// One workspace per (thread, device, stream). Calls on one stream run in stream order, so a call
// may overwrite what the previous one left there; calls on other streams or threads get their own.
// The depth sort and the scan of N splats have a fixed shape and fixed buffers here, so they are
// captured once per N (a few N are kept) and replayed with one launch instead of ~12 runtime calls.
// Buffers come from the PyTorch caching allocator (they count in its memory statistics).
class DepthWorkspace {
public:
    DepthWorkspace(int device, cudaStream_t stream);
    ~DepthWorkspace();
    DepthWorkspace(const DepthWorkspace&) = delete;
    DepthWorkspace& operator=(const DepthWorkspace&) = delete;

    int device() const { return device_; }
    cudaStream_t stream() const { return stream_; }
    size_t bytes() const { return bytes_; }

    // Buffers for n splats: tiles_touched (into *tiles_touched) and the depth order (ord.total is
    // left null: it lives in the caller's per-call buffer). Valid until the next prepare().
    void prepare(int n, int64_t** tiles_touched, DepthOrder* ord);
    // Queues the depth sort and the depth-order scan of the n splats of the last prepare() on the
    // workspace's stream (graph replay; plain launches if a graph cannot be made).
    void order_by_depth(int n);

    // Pinned slot and event through which the pair count reaches the host.
    int64_t* count_host() const { return count_host_; }
    cudaEvent_t count_event() const { return count_event_; }

private:
    struct Graph {
        int n;
        cudaGraphExec_t exec;
        uint64_t last_use;
    };
    struct Layout {
        int64_t* tiles_touched;
        DepthOrder ord;
        void* sort_tmp;
        size_t sort_bytes;
        void* scan_tmp;
        size_t scan_bytes;
    };
    Layout layout(int n, void* base, size_t* bytes) const;
    cudaGraphExec_t capture(int n, const Layout& l);
    void drop_graphs();

    int device_;
    cudaStream_t stream_;
    void* buffer_ = nullptr;
    size_t bytes_ = 0;
    Layout current_{};
    int current_n_ = -1;
    cudaStream_t capture_stream_ = nullptr;
    bool graphs_failed_ = false;
    std::vector<Graph> graphs_;
    uint64_t clock_ = 0;
    int64_t* count_host_ = nullptr;
    cudaEvent_t count_event_ = nullptr;
};

// The calling thread's workspace for (device, stream); the current device must be `device`.
DepthWorkspace& depth_workspace(int device, cudaStream_t stream);
// Frees the calling thread's workspaces (after the work queued on them has finished).
void release_depth_workspaces();
// Bytes held by the calling thread's workspaces.
size_t depth_workspace_bytes();

}  // namespace gsr
