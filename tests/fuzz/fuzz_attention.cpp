// tests/fuzz/fuzz_attention.cpp: gqa_fuzz, a libFuzzer target (clang, -fsanitize=fuzzer,address,undefined;
// CMake option GQA_BUILD_FUZZERS) that turns bytes into gqa API calls. Two kinds of input, chosen by the
// first byte:
//  * a valid call: the sweep's case generator (tests/sweep/case.hpp, Note [sweep case]) drawing from the
//    bytes instead of a seeded stream, with a small size budget so that an execution takes about a
//    millisecond: shapes, strides (padded, negative, fused QKV), head maps, options, values (NaN, ±inf,
//    1e30, denormals, overflow pairs). Run on one ISA of the build (the first byte picks it); the result
//    must match the double reference (Note [sweep checks]);
//  * a broken call (Note [fuzz mutations]): a valid call with one argument made invalid; it must throw
//    gqa::invalid_argument.
// Anything else (a crash, a sanitizer report, another exception, a mismatch, no exception) aborts with a
// one-line description of the call. Seed corpus: tests/fuzz/corpus/. How to run it: docs/design.md,
// "Testing".
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <limits>
#include <string>
#include <typeinfo>
#include <vector>

#include "sweep/case.hpp"

namespace {

using gqa::index_t;

/// Draws from the fuzzer's bytes, two per draw (little endian); zeros once they run out.
class byte_source final : public gqa::sweep::source {
 public:
  byte_source(const std::uint8_t* data, std::size_t size) : p_(data), end_(data + size) {}
  std::uint64_t bits() override {
    std::uint64_t v = 0;
    for (int i = 0; i < 2 && p_ < end_; ++i) v |= static_cast<std::uint64_t>(*p_++) << (8 * i);
    return v;
  }

 private:
  const std::uint8_t* p_;
  const std::uint8_t* end_;
};

[[noreturn]] void die(const std::string& what, const gqa::sweep::case_spec& c) {
  std::fprintf(stderr, "gqa_fuzz: %s\n  case: %s\n", what.c_str(), c.describe().c_str());
  std::abort();
}

// Note [fuzz mutations]
// One argument of a valid call made invalid; each must throw gqa::invalid_argument before any work:
// a non-positive extent, a mismatched extent, stride_d != 1, a null pointer, kv_lengths of the wrong
// size or out of [0, skv], an LSE span of the wrong size, a non-finite scale, num_threads < 0, an output
// overlapping an input, a head map of the wrong size (attend), absurd extents and strides (2^31 to
// 2^62) of any view, and an int8 cache's scales of the wrong shape or null. The views are those of the
// case's element types (Note [sweep element types]: 16-bit K/V, Q and O too, or int8 values), so the
// checks of every typed entry point are fuzzed; an output overlapping an input of another element type
// overlaps it by bytes. None of them is dereferenced by the harness: a call that reads through one
// without throwing is caught by AddressSanitizer.
// The last two (an absurd extent; a stride whose span overflows int64, or an output overlapping itself
// through a zero stride) are docs/design.md's "Sizes and overflow" and "Aliasing" rules; GQA_FUZZ_SIZES=0
// in the environment leaves them out (before those rules, the core wrote through an overflowed pointer:
// UBSan in tensor_view::row from kernel::write_rows, and accepted o.stride_h = 0).
constexpr int k_mutations = 14;
bool sizes_enabled() {
  static const bool on = [] {
    const char* s = std::getenv("GQA_FUZZ_SIZES");
    return s == nullptr || s[0] != '0';
  }();
  return on;
}

/// Applies mutation `kind` (Note [fuzz mutations]) to call k, whose views are q, kk, v and o (those of its
/// element types: with_views); false if it does not apply to this case.
template <class Q, class K, class O>
bool mutate_views(int kind, gqa::sweep::source& r, gqa::sweep::call& k, gqa::tensor_view<Q>& q, gqa::tensor_view<K>& kk,
                  gqa::tensor_view<K>& v, gqa::tensor_view<O>& o, std::vector<index_t>& lengths, std::vector<float>& lse,
                  std::string& what) {
  const int t = static_cast<int>(r.uniform(0, 3));  // q, k, v, o
  const auto on_view = [&](auto&& fn) { return t == 0 ? fn(q) : t == 1 ? fn(kk) : t == 2 ? fn(v) : fn(o); };
  const auto extent = [&](auto& view) -> index_t& {
    index_t* e[4] = {&view.b, &view.s, &view.h, &view.d};
    return *e[r.uniform(0, 3)];
  };
  static constexpr const char* names[] = {"q", "k", "v", "o"};
  what = std::string("mutation ") + std::to_string(kind) + " of " + names[t];
  switch (kind) {
    case 0:  // non-positive extent
      return on_view([&](auto& view) {
        extent(view) = -r.uniform(0, 3);
        return true;
      });
    case 1:  // mismatched extent: every extent must agree with another view's (b everywhere; s of q/o
             // and of k/v; d of q/k and of v/o; h of q/o and of k/v). One smaller when it can be, so
             // the view stays inside its buffer, else one larger.
      return on_view([&](auto& view) {
        index_t& e = extent(view);
        e += e > 1 ? -1 : 1;
        return true;
      });
    case 2:  // stride_d
      return on_view([&](auto& view) {
        view.stride_d = r.chance(50) ? 0 : 2;
        return true;
      });
    case 3:  // null data
      return on_view([&](auto& view) {
        view.data = nullptr;
        return true;
      });
    case 4:  // kv_lengths size
      lengths.assign(static_cast<std::size_t>(q.b + (r.chance(50) ? 1 : -1)), 0);
      if (lengths.empty()) return false;
      k.opt.kv_lengths = lengths;
      return true;
    case 5: {  // kv_lengths value
      lengths.assign(static_cast<std::size_t>(q.b), kk.s);
      lengths[static_cast<std::size_t>(r.uniform(0, q.b - 1))] = r.chance(50) ? -1 : kk.s + 1;
      k.opt.kv_lengths = lengths;
      return true;
    }
    case 6:  // LSE size
      lse.assign(static_cast<std::size_t>(q.b * q.h * q.s + (r.chance(50) ? 1 : -1)), 0.0f);
      if (lse.empty()) return false;
      k.opt.lse = lse;
      return true;
    case 7: {  // scale
      const float bad[] = {gqa::sweep::k_nan, gqa::sweep::k_inf, -gqa::sweep::k_inf};
      k.opt.scale = bad[r.uniform(0, 2)];
      return true;
    }
    case 8:
      k.opt.num_threads = -static_cast<int>(r.uniform(1, 4));
      return true;
    case 9: {  // o overlaps an input: o's view moved onto the input's first element (by bytes, whatever
               // the two element types)
      if (t == 3) return false;
      const void* at = on_view([](auto& view) { return static_cast<const void*>(view.data); });
      o.data = static_cast<O*>(const_cast<void*>(at));
      // Keep o inside the input's buffer: one element, the input's own first element.
      o.b = o.s = o.h = 1;
      q.b = kk.b = v.b = 1;
      q.s = 1;
      o.d = v.d;
      if (!lengths.empty()) k.opt.kv_lengths = {};
      k.opt.lse = {};
      return k.variant < 0 && k.map->hq() == 1;  // o.h == q.h needs one query head
    }
    case 10:  // map sizes (attend)
      if (k.variant >= 0) return false;
      if (r.chance(50)) q.h += 1, o.h += 1;  // map.hq() != q.h (the views grow: must throw first)
      else kk.h += 1, v.h += 1;
      return true;
    case 11:  // an absurd extent (2^31 to 2^62): it never matches the other views' (issue 9 part 2)
      if (!sizes_enabled()) return false;
      return on_view([&](auto& view) {
        extent(view) = index_t{1} << r.uniform(31, 62);
        return true;
      });
    case 12: {  // a stride whose span (extent - 1) * stride overflows int64, or o overlapping itself
      if (!sizes_enabled()) return false;
      const int dim = static_cast<int>(r.uniform(0, 2));
      return on_view([&](auto& view) {
        index_t* strides[3] = {&view.stride_b, &view.stride_s, &view.stride_h};
        const index_t extents[3] = {view.b, view.s, view.h};
        if (t == 3 && r.chance(50)) {  // o.stride_x = 0 over an extent > 1: two outputs share an element
          if (extents[dim] < 2) return false;
          *strides[dim] = 0;
          return true;
        }
        if (extents[dim] < 3) return false;  // (3 - 1) * (2^62 + 1) overflows, with either sign
        *strides[dim] = (r.chance(50) ? 1 : -1) * ((index_t{1} << 62) + 1);
        return true;
      });
    }
    case 13: {  // an int8 cache's scales (k8 or v8): an extent off, d != 1, or null data
      if (k.kv != gqa::sweep::kv_type::i8) return false;
      gqa::tensor_view<const float>& sc = r.chance(50) ? k.k8.scales : k.v8.scales;
      what = std::string("mutation 13 of ") + (&sc == &k.k8.scales ? "k" : "v") + ".scales";
      const int how = static_cast<int>(r.uniform(0, 2));
      if (how == 0) extent(sc) += r.chance(50) && extent(sc) > 1 ? -1 : 1;
      else if (how == 1) sc.d = 2;
      else sc.data = nullptr;
      return true;
    }
    default:
      return false;
  }
}

/// fn(q, k, v, o) on the views call k passes: those of its element types (Note [sweep element types]).
template <class Fn>
bool with_views(gqa::sweep::call& k, Fn&& fn) {
  using gqa::sweep::kv_type;
  switch (k.kv) {
    case kv_type::bf16:
      return k.qo16 ? fn(k.bf16.q, k.bf16.k, k.bf16.v, k.bf16.o) : fn(k.q, k.bf16.k, k.bf16.v, k.o);
    case kv_type::f16:
      return k.qo16 ? fn(k.f16.q, k.f16.k, k.f16.v, k.f16.o) : fn(k.q, k.f16.k, k.f16.v, k.o);
    case kv_type::i8:
      return fn(k.q, k.k8.values, k.v8.values, k.o);
    case kv_type::f32:
      break;
  }
  return fn(k.q, k.k, k.v, k.o);
}

/// Applies mutation `kind` to call k's views (mutate_views).
bool mutate(int kind, gqa::sweep::source& r, gqa::sweep::call& k, std::vector<index_t>& lengths,
            std::vector<float>& lse, std::string& what) {
  return with_views(k, [&](auto& q, auto& kk, auto& v, auto& o) {
    return mutate_views(kind, r, k, q, kk, v, o, lengths, lse, what);
  });
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 2) return 0;
  static const std::vector<gqa::sweep::runner> isas = [] {
    std::vector<gqa::sweep::runner> v;
    for (const auto& r : gqa::sweep::all_runners())
      if (r.supported()) v.push_back(r);
    if (v.empty()) {
      std::fprintf(stderr, "gqa_fuzz: this CPU runs none of the ISAs the fuzzer was built for\n");
      std::abort();
    }
    return v;
  }();
  byte_source r(data + 1, size - 1);
  gqa::sweep::limits lim;
  lim.budget = 2e4;
  lim.max_len = 300;
  lim.max_d = 128;
  const gqa::sweep::case_spec c = gqa::sweep::draw_case(r, lim);
  const auto& isa = isas[static_cast<std::size_t>(data[0] / 4) % isas.size()];  // one ISA per execution
  if (data[0] % 4 != 3) {  // a valid call, checked against the reference
    std::string failure;
    try {
      failure = gqa::sweep::run_and_check(c, {isa});
    } catch (const std::exception& e) {
      failure = std::string("exception escaped: ") + e.what();
    }
    if (!failure.empty()) die(failure, c);
    return 0;
  }
  // A broken call: must throw gqa::invalid_argument. The mutations break the dense views (of the case's
  // element types), so the call takes them (not a paged cache or a ragged batch the case may have drawn).
  gqa::sweep::case_spec dense = c;
  dense.kv_kind = 0;
  const gqa::sweep::case_data in = gqa::sweep::build_inputs(dense);
  gqa::sweep::buffer o = gqa::sweep::make_buffer(c.lo, c.b, c.sq, c.heads.hq, c.dv);
  gqa::sweep::call k = gqa::sweep::call_of(dense, in, o.view);
  std::vector<gqa::bf16> o_bf16;  // a 16-bit O (run_on's)
  std::vector<gqa::f16> o_f16;
  if (dense.qo16 && dense.kv == gqa::sweep::kv_type::bf16) k.bf16.o = gqa::sweep::detail::half_output(o, k.o, o_bf16);
  if (dense.qo16 && dense.kv == gqa::sweep::kv_type::f16) k.f16.o = gqa::sweep::detail::half_output(o, k.o, o_f16);
  k.opt.check_finite = false;  // mutated views must not be read before validation
  std::vector<index_t> lengths = c.kv_lengths;
  std::vector<float> lse;
  std::string what;
  const int kind = static_cast<int>(r.uniform(0, k_mutations - 1));
  if (!mutate(kind, r, k, lengths, lse, what)) return 0;
  try {
    isa.run(k);
  } catch (const gqa::invalid_argument&) {
    return 0;
  } catch (const std::exception& e) {
    die(what + ": threw a " + typeid(e).name() + " that is not gqa::invalid_argument: " + e.what(), c);
  }
  die(what + ": no gqa::invalid_argument thrown", c);
}
