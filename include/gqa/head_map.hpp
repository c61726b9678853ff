// gqa/head_map.hpp: which query heads share which KV head.
// Invariant: kv_of(h) in [0, hkv) for every query head; KV heads may serve no query head; for every KV
// head the served query heads are listed in increasing order (the core processes them as one tile).
#pragma once

#include <algorithm>
#include <span>
#include <vector>

#include "config.hpp"
#include "errors.hpp"

GQA_BEGIN_NAMESPACE

/// A runtime query-head → KV-head assignment. Groups may be unequal or empty. Every reference code
/// groups contiguous query heads (`map[h] = floor(h / s)`), and the builders below do too, but the
/// core accepts any map.
class head_map {
 public:
  head_map() = default;

  /// General map: `kv_of_q[h]` is the KV head of query head h.
  head_map(std::span<const index_t> kv_of_q, index_t hkv) : kv_(kv_of_q.begin(), kv_of_q.end()), hkv_(hkv) {
    detail::require(hkv > 0, "head_map", "hkv", hkv, "must be positive");
    detail::require(!kv_.empty(), "head_map", "hq", kv_.size(), "must be positive");
    for (std::size_t h = 0; h < kv_.size(); ++h)
      if (kv_[h] < 0 || kv_[h] >= hkv)
        detail::fail("head_map: kv_of_q[", h, "] = ", kv_[h], ": must be in [0, hkv = ", hkv, ")");
    build();
  }

  /// Uniform contiguous groups: map[h] = h / (hq / hkv). Requires hkv to divide hq.
  static head_map uniform(index_t hq, index_t hkv) {
    detail::require(hq > 0, "head_map::uniform", "hq", hq, "must be positive");
    detail::require(hkv > 0, "head_map::uniform", "hkv", hkv, "must be positive");
    if (hq % hkv != 0)
      detail::fail("head_map::uniform: hq = ", hq, " is not a multiple of hkv = ", hkv,
                   " (uniform GQA needs equal groups; use head_map::from_allocation for unequal ones)");
    std::vector<index_t> m(static_cast<std::size_t>(hq));
    for (index_t h = 0; h < hq; ++h) m[static_cast<std::size_t>(h)] = h / (hq / hkv);
    return head_map(m, hkv);
  }

  /// Contiguous groups of the given sizes: KV head g serves the next `alloc[g]` query heads (may be 0).
  static head_map from_allocation(std::span<const int> alloc) {
    detail::require(!alloc.empty(), "head_map::from_allocation", "alloc.size()", alloc.size(), "must be positive");
    std::vector<index_t> m;
    for (std::size_t g = 0; g < alloc.size(); ++g) {
      if (alloc[g] < 0) detail::fail("head_map::from_allocation: alloc[", g, "] = ", alloc[g], ": must be >= 0");
      m.insert(m.end(), static_cast<std::size_t>(alloc[g]), static_cast<index_t>(g));
    }
    detail::require(!m.empty(), "head_map::from_allocation", "sum(alloc)", 0, "must be positive");
    return head_map(m, static_cast<index_t>(alloc.size()));
  }

  index_t hq() const noexcept { return static_cast<index_t>(kv_.size()); }
  index_t hkv() const noexcept { return hkv_; }
  index_t kv_of(index_t h) const noexcept { return kv_[static_cast<std::size_t>(h)]; }
  /// Query heads served by KV head g, increasing.
  std::span<const index_t> q_heads(index_t g) const noexcept {
    return {q_.data() + off_[static_cast<std::size_t>(g)],
            static_cast<std::size_t>(off_[static_cast<std::size_t>(g) + 1] - off_[static_cast<std::size_t>(g)])};
  }
  index_t group_size(index_t g) const noexcept { return static_cast<index_t>(q_heads(g).size()); }
  index_t max_group_size() const noexcept { return max_group_; }
  /// Group sizes, one per KV head (the "allocation" of KDGQA/DGQA).
  std::vector<int> allocation() const {
    std::vector<int> a(static_cast<std::size_t>(hkv_));
    for (index_t g = 0; g < hkv_; ++g) a[static_cast<std::size_t>(g)] = static_cast<int>(group_size(g));
    return a;
  }
  /// True when every group is a contiguous, in-order range of query heads.
  bool contiguous() const noexcept {
    for (std::size_t h = 1; h < kv_.size(); ++h)
      if (kv_[h] < kv_[h - 1]) return false;
    return true;
  }
  std::span<const index_t> kv_of_q() const noexcept { return kv_; }
  friend bool operator==(const head_map& a, const head_map& b) { return a.hkv_ == b.hkv_ && a.kv_ == b.kv_; }

 private:
  void build() {
    off_.assign(static_cast<std::size_t>(hkv_) + 1, 0);
    for (index_t g : kv_) ++off_[static_cast<std::size_t>(g) + 1];
    max_group_ = 0;
    for (std::size_t g = 0; g < static_cast<std::size_t>(hkv_); ++g) {
      max_group_ = std::max(max_group_, off_[g + 1]);
      off_[g + 1] += off_[g];
    }
    q_.assign(kv_.size(), 0);
    std::vector<index_t> fill(off_.begin(), off_.end() - 1);
    for (std::size_t h = 0; h < kv_.size(); ++h) q_[static_cast<std::size_t>(fill[static_cast<std::size_t>(kv_[h])]++)] = static_cast<index_t>(h);
  }

  std::vector<index_t> kv_;   // kv head of each query head
  std::vector<index_t> q_;    // query heads sorted by kv head (CSR values)
  std::vector<index_t> off_;  // CSR offsets, size hkv + 1
  index_t hkv_ = 0;
  index_t max_group_ = 0;
};

GQA_END_NAMESPACE
