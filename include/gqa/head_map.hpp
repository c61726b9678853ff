// gqa/head_map.hpp: which query heads share which KV head.
// Invariant: kv_of(h) in [0, hkv) for every query head; KV heads may serve no query head; for every KV
// head the served query heads are listed in increasing order (the core processes them as one tile); hq and
// hkv are at most INT_MAX (group sizes are ints, see allocation()).
#pragma once

#include <algorithm>
#include <climits>
#include <span>
#include <utility>
#include <vector>

#include "config.hpp"
#include "errors.hpp"

GQA_BEGIN_NAMESPACE

/// A runtime query-head → KV-head assignment. Groups may be unequal or empty. Every reference code
/// groups contiguous query heads (`map[h] = floor(h / s)`), and the builders below do too, but the
/// core accepts any map. Head counts are limited to INT_MAX; the builders check that before allocating,
/// so they throw gqa::invalid_argument for absurd counts and std::bad_alloc only if memory runs out.
class head_map {
 public:
  head_map() = default;

  /// General map: `kv_of_q[h]` is the KV head of query head h.
  head_map(std::span<const index_t> kv_of_q, index_t hkv) {
    check_count(hkv, "head_map", "hkv");
    check_count(kv_of_q.size(), "head_map", "hq");
    for (std::size_t h = 0; h < kv_of_q.size(); ++h)
      if (kv_of_q[h] < 0 || kv_of_q[h] >= hkv)
        detail::fail("head_map: kv_of_q[", h, "] = ", kv_of_q[h], ": must be in [0, hkv = ", hkv, ")");
    kv_.assign(kv_of_q.begin(), kv_of_q.end());
    hkv_ = hkv;
    build();
  }

  /// Uniform contiguous groups: map[h] = h / (hq / hkv). Requires hkv to divide hq.
  static head_map uniform(index_t hq, index_t hkv) {
    check_count(hq, "head_map::uniform", "hq");
    check_count(hkv, "head_map::uniform", "hkv");
    if (hq % hkv != 0)
      detail::fail("head_map::uniform: hq = ", hq, " is not a multiple of hkv = ", hkv,
                   " (uniform GQA needs equal groups; use head_map::from_allocation for unequal ones)");
    std::vector<index_t> m(static_cast<std::size_t>(hq));
    for (index_t h = 0; h < hq; ++h) m[static_cast<std::size_t>(h)] = h / (hq / hkv);
    return head_map(m, hkv);
  }

  /// Contiguous groups of the given sizes: KV head g serves the next `alloc[g]` query heads (may be 0).
  static head_map from_allocation(std::span<const int> alloc) {
    constexpr const char* where = "head_map::from_allocation";
    check_count(alloc.size(), where, "alloc.size()");
    index_t hq = 0;  // at most INT_MAX · INT_MAX: no overflow
    for (std::size_t g = 0; g < alloc.size(); ++g) {
      if (alloc[g] < 0) detail::fail(where, ": alloc[", g, "] = ", alloc[g], ": must be >= 0");
      hq += alloc[g];
    }
    check_count(hq, where, "sum(alloc)");
    std::vector<index_t> m;
    m.reserve(static_cast<std::size_t>(hq));
    for (std::size_t g = 0; g < alloc.size(); ++g) m.insert(m.end(), static_cast<std::size_t>(alloc[g]), static_cast<index_t>(g));
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
  /// A head count: in [1, INT_MAX].
  template <class N>
  static void check_count(N n, const char* where, const char* name) {
    detail::require(std::cmp_greater(n, 0), where, name, n, "must be positive");
    detail::require(std::cmp_less_equal(n, INT_MAX), where, name, n, "must be <= INT_MAX = ", INT_MAX,
                    " (group sizes are ints)");
  }

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
