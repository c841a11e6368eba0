// Aligned sub-buffers carved out of one allocation (host-side pointer arithmetic only).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

namespace gsr {

// A first pass with base == nullptr only sizes the layout; a second pass over a buffer of size()
// bytes hands out the same offsets as pointers. Every array starts on a 256-byte boundary.
class Carver {
public:
    explicit Carver(void* base) : base_(static_cast<char*>(base)) {}
    template <typename T>
    T* take(int64_t count) {
        off_ = (off_ + 255) & ~size_t(255);
        T* p = base_ ? reinterpret_cast<T*>(base_ + off_) : nullptr;
        off_ += sizeof(T) * (size_t)std::max<int64_t>(count, 0);
        return p;
    }
    size_t size() const { return off_ + 256; }

private:
    char* base_;
    size_t off_ = 0;
};

}  // namespace gsr
