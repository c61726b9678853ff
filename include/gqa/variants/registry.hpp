// gqa/variants/registry.hpp: the registry of variants: one list of policy types that the tests, gqa_bench
// and gqa-compare iterate over, instead of lists of their own. Adding a variant is its header (a policy
// with the registry members below), its reference twin in gqa/reference/, and one line in
// registered_variants (docs/design.md, "Adding a variant").
// Invariant: names are unique, and every registered policy satisfies registered_variant (static_asserts).
#pragma once

#include <array>
#include <concepts>
#include <cstddef>
#include <optional>
#include <string_view>
#include <type_traits>
#include <utility>

#include "dgqa.hpp"
#include "gqa.hpp"
#include "kdgqa.hpp"
#include "mha.hpp"
#include "model_shape.hpp"
#include "mqa.hpp"
#include "pgqa.hpp"
#include "policy.hpp"
#include "sqa.hpp"
#include "wgqa.hpp"

GQA_BEGIN_NAMESPACE

/// What a policy provides to be registered, beside attention_policy:
///   static constexpr std::string_view name;                          short name, unique ("mha", ...)
///   static constexpr variant_heads heads_for(const model_shape&);    the heads it runs on a layer by default
/// and a factory for given heads (h = heads_for(m) for the default), one of
///   static P make(const model_shape& m, const variant_heads& h);
///   template <class Fn> static decltype(auto) with(const model_shape& m, const variant_heads& h, Fn&& fn);
/// the second calls fn(policy) on a policy that lives only during the call (DGQA: over a fresh state).
template <class P>
concept registered_variant =
    attention_policy<P> &&
    requires(const model_shape& m) {
      { P::name } -> std::convertible_to<std::string_view>;
      { P::heads_for(m) } -> std::same_as<variant_heads>;
    } &&
    (requires(const model_shape& m, const variant_heads& h) {
      { P::make(m, h) } -> std::same_as<P>;
    } || requires(const model_shape& m, const variant_heads& h, void (*fn)(P&)) { P::with(m, h, fn); });

/// A list of policy types.
template <class... P>
struct variant_list {
  static constexpr std::size_t size = sizeof...(P);
};

/// Every variant, in the order the docs, the benchmarks and gqa-compare list them.
using registered_variants = variant_list<mha_policy, mqa_policy, gqa_policy, sqa_policy, kdgqa_policy, dgqa_policy,
                                         pgqa_policy, wgqa_policy>;

namespace detail {
template <class... P>
constexpr std::array<std::string_view, sizeof...(P)> names_of(variant_list<P...>) noexcept {
  return {P::name...};
}
template <class... P>
constexpr bool all_registered(variant_list<P...>) noexcept {
  return (registered_variant<P> && ...);
}
template <std::size_t N>
constexpr bool unique(const std::array<std::string_view, N>& names) noexcept {
  for (std::size_t i = 0; i < N; ++i)
    for (std::size_t j = i + 1; j < N; ++j)
      if (names[i] == names[j]) return false;
  return true;
}
}  // namespace detail

/// Short names of every registered variant, in registry order.
inline constexpr std::array<std::string_view, registered_variants::size> variant_names =
    detail::names_of(registered_variants{});

static_assert(detail::all_registered(registered_variants{}),
              "every registered policy needs name, heads_for() and make() or with() (see registered_variant)");
static_assert(detail::unique(variant_names), "registered variant names must be unique");

/// Calls fn(std::type_identity<P>{}) for every registered policy P, in registry order.
template <class Fn>
void for_each_variant(Fn&& fn) {
  [&]<class... P>(variant_list<P...>) { (fn(std::type_identity<P>{}), ...); }(registered_variants{});
}

/// Calls fn(policy) with the policy P built for heads h on layer m (P::make or P::with); returns fn's
/// result. Throws gqa::invalid_argument when P cannot be built for them.
template <registered_variant P, class Fn>
decltype(auto) with_policy(const model_shape& m, const variant_heads& h, Fn&& fn) {
  if constexpr (requires { P::make(m, h); }) {
    P p = P::make(m, h);
    return std::forward<Fn>(fn)(p);
  } else {
    return P::with(m, h, std::forward<Fn>(fn));
  }
}

/// with_policy for P's default heads on m, P::heads_for(m).
template <registered_variant P, class Fn>
decltype(auto) with_default_policy(const model_shape& m, Fn&& fn) {
  return with_policy<P>(m, P::heads_for(m), std::forward<Fn>(fn));
}

/// Calls fn(std::type_identity<P>{}) for the registered policy named `name`; false when there is none.
template <class Fn>
bool visit_variant(std::string_view name, Fn&& fn) {
  bool found = false;
  for_each_variant([&](auto t) {
    if (!found && decltype(t)::type::name == name) {
      found = true;
      fn(t);
    }
  });
  return found;
}

/// The default heads of the variant named `name` on layer m; empty for an unknown name.
inline std::optional<variant_heads> variant_heads_for(std::string_view name, const model_shape& m) {
  std::optional<variant_heads> h;
  visit_variant(name, [&](auto t) { h = decltype(t)::type::heads_for(m); });
  return h;
}

GQA_END_NAMESPACE
