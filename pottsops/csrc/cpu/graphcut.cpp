// α-expansion on one image through the C functions of the gco-wrapper library (pottsops/graphcut.py).
//
// GCO reports an error (too few sites or labels, a term past its integer limit, no memory) by throwing a
// C++ exception.  Called through ctypes, the exception meets libffi's frames, which cannot be unwound, and
// std::terminate aborts the process.  Called from here, it unwinds through GCO's own C++ frames into the
// catch below and becomes a Python RuntimeError.  The library's addresses come from Python (its ctypes
// handles), so nothing here links against it.
#include <torch/extension.h>

#include <cstdint>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

namespace pottsops {
namespace {

// The signatures of gco-wrapper's cgco.cpp (SiteID, LabelID, EnergyTermType: int; EnergyType: long long).
using CreateGraph = int (*)(int, int, int*);
using DestroyGraph = int (*)(int);
using SetDataCost = int (*)(int, int*);
using SetAllNeighbors = int (*)(int, int*, int*, int*, int);
using SetSmoothCost = int (*)(int, int*);
using InitLabelAtSite = int (*)(int, int, int);
using Expansion = int (*)(int, int, long long*);
using GetLabels = int (*)(int, int*);

// cgco keeps its graphs in a process-wide std::map without a lock: graphs are created and destroyed by one
// thread at a time; expansions on distinct graphs (map lookups) run in parallel.
std::mutex graph_table_lock;

template <typename F>
F function_at(const std::vector<int64_t>& functions, size_t index) {
  TORCH_CHECK(index < functions.size() && functions[index] != 0, "gco_expansion: function ", index, " missing");
  return reinterpret_cast<F>(static_cast<intptr_t>(functions[index]));
}

}  // namespace

// functions: the addresses of gcoCreateGeneralGraph, gcoDestroyGraph, gcoSetDataCost, gcoSetAllNeighbors,
// gcoSetSmoothCost, gcoInitLabelAtSite, gcoExpansion, gcoGetLabels, in that order.  costs (N, K) int32,
// first / second / weights (E,) int32 (pairs), start (N,) int32 (GCO starts at label 0 elsewhere); iters:
// expansion cycles, -1 until no move lowers the energy.  Returns the labels (N,) int32.
torch::Tensor gco_expansion(const std::vector<int64_t>& functions, torch::Tensor costs, torch::Tensor first,
                            torch::Tensor second, torch::Tensor weights, torch::Tensor start, int64_t iters) {
  for (const auto* t : {&costs, &first, &second, &weights, &start}) {
    TORCH_CHECK(t->scalar_type() == torch::kInt32 && t->is_contiguous() && t->device().is_cpu(),
                "gco_expansion: expected contiguous int32 CPU tensors");
  }
  TORCH_CHECK(costs.dim() == 2 && start.dim() == 1 && start.size(0) == costs.size(0),
              "gco_expansion: costs (N, K) and start (N,) expected");
  TORCH_CHECK(first.numel() == second.numel() && first.numel() == weights.numel(),
              "gco_expansion: one weight per pair expected");
  TORCH_CHECK(costs.size(0) <= INT32_MAX && costs.size(1) <= INT32_MAX && first.numel() <= INT32_MAX,
              "gco_expansion: more sites, labels or pairs than GCO's int32 counts");
  const int sites = static_cast<int>(costs.size(0)), labels = static_cast<int>(costs.size(1));
  const int pairs = static_cast<int>(first.numel());
  auto create = function_at<CreateGraph>(functions, 0);
  auto destroy = function_at<DestroyGraph>(functions, 1);
  auto set_data = function_at<SetDataCost>(functions, 2);
  auto set_neighbors = function_at<SetAllNeighbors>(functions, 3);
  auto set_smooth = function_at<SetSmoothCost>(functions, 4);
  auto init_label = function_at<InitLabelAtSite>(functions, 5);
  auto expansion = function_at<Expansion>(functions, 6);
  auto get_labels = function_at<GetLabels>(functions, 7);

  std::vector<int> smooth(static_cast<size_t>(labels) * labels, 1);  // Potts: 1 - [k == l]
  for (int k = 0; k < labels; ++k) smooth[static_cast<size_t>(k) * labels + k] = 0;
  auto found = torch::empty({sites}, torch::kInt32);
  int handle = -1;
  std::string error;
  try {
    {
      std::lock_guard<std::mutex> guard(graph_table_lock);
      create(sites, labels, &handle);
    }
    set_data(handle, costs.data_ptr<int>());
    if (pairs > 0) set_neighbors(handle, first.data_ptr<int>(), second.data_ptr<int>(), weights.data_ptr<int>(), pairs);
    set_smooth(handle, smooth.data());
    const int* start_labels = start.data_ptr<int>();
    for (int site = 0; site < sites; ++site) {
      if (start_labels[site] != 0) init_label(handle, site, start_labels[site]);
    }
    long long energy = 0;
    expansion(handle, static_cast<int>(iters), &energy);
    get_labels(handle, found.data_ptr<int>());
  } catch (const std::bad_alloc&) {
    error = "GCO ran out of memory";
  } catch (const std::exception& e) {
    error = e.what();
  } catch (...) {  // GCO's GCException: its message was printed to stderr by GCO before it threw
    error = "GCO stopped with an error (its message is on stderr above)";
  }
  if (handle != -1) {
    std::lock_guard<std::mutex> guard(graph_table_lock);
    try {
      destroy(handle);
    } catch (...) {
    }
  }
  if (!error.empty()) throw std::runtime_error("alpha_expansion: " + error);
  return found;
}

}  // namespace pottsops
