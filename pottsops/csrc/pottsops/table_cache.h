// Copies of small constant tables (the grid kernels' pair tables: grid_device.cuh) on a device, made once
// and kept, so that a kernel reads its table from device memory rather than taking it as a parameter
// (512 offsets in double are 6 KB, past the 4 KB CUDA allowed before 12.1) and a CUDA graph that captured
// a launch can replay it later: the copy outlives the launch.
//
// A capture cannot copy host memory to the device, so a table a capture asks for must exist already: made
// by an eager call before the capture (solve() warms each window up before capturing it, as
// torch.cuda.graph's own recipe does); otherwise get() refuses with the fix.  A table used by a capture is
// kept for the life of the process; the others are dropped when the cache is full, which bounds the memory
// when the tables change from call to call (a sigma_xy schedule changes every spatial factor).
//
// Generic over the device, so that tests/csrc/device_emulation.cpp runs the same cache on CPU tensors.
#pragma once

#include <ATen/ATen.h>

#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace pottsops {

class TableCache {
 public:
  explicit TableCache(size_t capacity) : capacity_(capacity) {}

  // The copy of bytes on device (a uint8 tensor of bytes.size() elements; undefined for no bytes).
  // capturing: whether a CUDA graph is being captured on the current stream.  The cache may drop the tensor
  // later (if no capture used it), so a caller holds its own reference while its kernels are queued.
  at::Tensor get(const std::vector<uint8_t>& bytes, const at::Device& device, bool capturing, const char* what) {
    if (bytes.empty()) return at::Tensor();
    Key key{device.str(), std::string(bytes.begin(), bytes.end())};
    std::lock_guard<std::mutex> lock(mutex_);
    auto found = entries_.find(key);
    if (found != entries_.end()) {
      found->second.captured = found->second.captured || capturing;
      return found->second.copy;
    }
    TORCH_CHECK(!capturing, what, ": this table (", bytes.size(), " bytes) is not on ", device.str(),
                " yet, and a CUDA graph is being captured, which cannot copy it there: run the same call once "
                "before capturing (torch.cuda.graph's warm-up iterations do)");
    if (entries_.size() >= capacity_) drop_uncaptured();
    at::Tensor host = at::empty({static_cast<int64_t>(bytes.size())}, at::TensorOptions().dtype(at::kByte));
    std::memcpy(host.data_ptr<uint8_t>(), bytes.data(), bytes.size());
    // A blocking copy: the table is on the device before any kernel, on any stream, can read it.
    at::Tensor copy = device.is_cpu() ? host : host.to(device, /*non_blocking=*/false, /*copy=*/true);
    entries_.emplace(std::move(key), Entry{copy, false});
    return copy;
  }

  size_t size() {
    std::lock_guard<std::mutex> lock(mutex_);
    return entries_.size();
  }

 private:
  using Key = std::pair<std::string, std::string>;  // device, bytes
  struct Entry {
    at::Tensor copy;
    bool captured;
  };

  // A dropped copy goes back to PyTorch's allocator, which reuses its memory only after the kernels queued
  // on the streams it was used on (recorded by the CUDA launchers) have finished.
  void drop_uncaptured() {
    for (auto it = entries_.begin(); it != entries_.end();) {
      it = it->second.captured ? std::next(it) : entries_.erase(it);
    }
  }

  const size_t capacity_;
  std::mutex mutex_;
  std::map<Key, Entry> entries_;
};

}  // namespace pottsops
