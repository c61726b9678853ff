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
// overlapping an input, a head map of the wrong size (attend), and absurd extents and strides (2^31 to
// 2^62) of any view. None of them is dereferenced by the harness: a call that reads through one without
// throwing is caught by AddressSanitizer.
// The last two (an absurd extent; a stride whose span overflows int64, or an output overlapping itself
// through a zero stride) are docs/design.md's "Sizes and overflow" and "Aliasing" rules; GQA_FUZZ_SIZES=0
// in the environment leaves them out (before those rules, the core wrote through an overflowed pointer:
// UBSan in tensor_view::row from kernel::write_rows, and accepted o.stride_h = 0).
constexpr int k_mutations = 13;
bool sizes_enabled() {
  static const bool on = [] {
    const char* s = std::getenv("GQA_FUZZ_SIZES");
    return s == nullptr || s[0] != '0';
  }();
  return on;
}

/// Applies mutation `kind` (Note [fuzz mutations]) to call k; false if it does not apply to this case.
bool mutate(int kind, gqa::sweep::source& r, gqa::sweep::call& k, std::vector<index_t>& lengths,
            std::vector<float>& lse, std::string& what) {
  gqa::tensor_view<const float>* inputs[3] = {&k.q, &k.k, &k.v};
  const int t = static_cast<int>(r.uniform(0, 3));  // q, k, v, o
  const auto extent = [&](auto& view) -> index_t& {
    index_t* e[4] = {&view.b, &view.s, &view.h, &view.d};
    return *e[r.uniform(0, 3)];
  };
  static constexpr const char* names[] = {"q", "k", "v", "o"};
  what = std::string("mutation ") + std::to_string(kind) + " of " + names[t];
  switch (kind) {
    case 0: {  // non-positive extent
      index_t& e = t < 3 ? extent(*inputs[t]) : extent(k.o);
      e = -r.uniform(0, 3);
      return true;
    }
    case 1: {  // mismatched extent: every extent must agree with another view's (b everywhere; s of q/o
               // and of k/v; d of q/k and of v/o; h of q/o and of k/v). One smaller when it can be, so
               // the view stays inside its buffer, else one larger.
      index_t& e = t < 3 ? extent(*inputs[t]) : extent(k.o);
      e += e > 1 ? -1 : 1;
      return true;
    }
    case 2:  // stride_d
      (t < 3 ? inputs[t]->stride_d : k.o.stride_d) = r.chance(50) ? 0 : 2;
      return true;
    case 3:  // null data
      if (t < 3) inputs[t]->data = nullptr;
      else k.o.data = nullptr;
      return true;
    case 4:  // kv_lengths size
      lengths.assign(static_cast<std::size_t>(k.q.b + (r.chance(50) ? 1 : -1)), 0);
      if (lengths.empty()) return false;
      k.opt.kv_lengths = lengths;
      return true;
    case 5: {  // kv_lengths value
      lengths.assign(static_cast<std::size_t>(k.q.b), k.k.s);
      lengths[static_cast<std::size_t>(r.uniform(0, k.q.b - 1))] = r.chance(50) ? -1 : k.k.s + 1;
      k.opt.kv_lengths = lengths;
      return true;
    }
    case 6:  // LSE size
      lse.assign(static_cast<std::size_t>(k.q.b * k.q.h * k.q.s + (r.chance(50) ? 1 : -1)), 0.0f);
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
    case 9: {  // o overlaps an input: o's view moved onto the input's first element
      if (t == 3) return false;
      k.o.data = const_cast<float*>(inputs[t]->data);
      // Keep o inside the input's buffer: one element, the input's own first element.
      k.o.b = k.o.s = k.o.h = 1;
      k.q.b = k.k.b = k.v.b = 1;
      k.q.s = 1;
      k.o.d = k.v.d;
      if (!lengths.empty()) k.opt.kv_lengths = {};
      k.opt.lse = {};
      return k.variant < 0 && k.map->hq() == 1;  // o.h == q.h needs one query head
    }
    case 10:  // map sizes (attend)
      if (k.variant >= 0) return false;
      if (r.chance(50)) k.q.h += 1, k.o.h += 1;  // map.hq() != q.h (the views grow: must throw first)
      else k.k.h += 1, k.v.h += 1;
      return true;
    case 11:  // an absurd extent (2^31 to 2^62): it never matches the other views' (issue 9 part 2)
      if (!sizes_enabled()) return false;
      (t < 3 ? extent(*inputs[t]) : extent(k.o)) = index_t{1} << r.uniform(31, 62);
      return true;
    case 12: {  // a stride whose span (extent - 1) * stride overflows int64, or o overlapping itself
      if (!sizes_enabled()) return false;
      const int dim = static_cast<int>(r.uniform(0, 2));
      const auto apply = [&](auto& view) {
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
      };
      return t < 3 ? apply(*inputs[t]) : apply(k.o);
    }
    default:
      return false;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 2) return 0;
  static const std::vector<gqa::sweep::runner> isas = [] {
    std::vector<gqa::sweep::runner> v;
    for (const auto& r : gqa::sweep::all_runners())
      if (r.supported()) v.push_back(r);
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
  // A broken call: must throw gqa::invalid_argument. The mutations break the dense float views, so the
  // call takes them (not a paged cache, a ragged batch or another element type the case may have drawn).
  gqa::sweep::case_spec dense = c;
  dense.kv_kind = 0;
  dense.kv = gqa::sweep::kv_type::f32;  // the mutations break the float views
  dense.qo16 = false;
  const gqa::sweep::case_data in = gqa::sweep::build_inputs(dense);
  gqa::sweep::buffer o = gqa::sweep::make_buffer(c.lo, c.b, c.sq, c.heads.hq, c.dv);
  gqa::sweep::call k = gqa::sweep::call_of(dense, in, o.view);
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
