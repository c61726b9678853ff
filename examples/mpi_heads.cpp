// examples/mpi_heads.cpp: one attention layer sharded by KV heads over MPI ranks. Rank r owns a
// contiguous range of KV heads and the query heads they serve, computes those output rows with
// gqa::attend on views of its slice, and MPI_Gatherv collects the slices into the full output on rank 0,
// which checks that it is bitwise equal to the single-process gqa::forward call and prints per-rank times.
//
//   mpiexec -np 2 gqa_example_mpi_heads [--variant all|gqa|kdgqa] [--b 1] [--hq 32] [--hkv 8] [--d 128]
//                                       [--prefill 512] [--cache 4096] [--threads 1] [--reps 3]
//
// Runs a causal prefill of --prefill tokens and one decode step over a --cache-token KV cache (0 skips
// either), for uniform GQA groups and for KDGQA's unequal ones. Any rank count works: a rank may get more
// KV heads than another (hkv not a multiple of the rank count), no KV head at all (more ranks than KV
// heads), or KV heads that serve no query head (KDGQA can give a KV head none); it then sends an empty
// slice. Some shardings do not yet give the single-process bits (a decode slice with one KV head; unequal
// groups in a prefill on AVX2/AVX-512; docs/design.md, "Tasks and threads", lists the cases): the check
// then reports them.
// Exit status: 0 if every sharded output is bitwise equal to the single-process one, 1 if not, 2 for bad
// arguments.
#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include <gqa/gqa.hpp>

namespace {

using gqa::index_t;

constexpr const char* usage =
    "usage: mpiexec -np N gqa_example_mpi_heads [--variant all|gqa|kdgqa] [--b 1] [--hq 32] [--hkv 8]\n"
    "       [--d 128] [--prefill 512] [--cache 4096] [--threads 1] [--reps 3]   (0 skips prefill/decode)\n";

struct config {
  std::string variant = "all";
  index_t b = 1, hq = 32, hkv = 8, d = 128, prefill = 512, cache = 4096;
  int threads = 1, reps = 3;
};

/// Heads [h0, h0 + n) of a view: the same memory and strides, `data` moved to head h0. This is all that
/// sharding means to gqa: each output row depends only on its query row and its own KV head, so a call
/// on such slices computes the same rows as the full call (bit for bit but for the cases listed in
/// docs/design.md, "Tasks and threads").
template <class T>
gqa::tensor_view<T> heads(gqa::tensor_view<T> t, index_t h0, index_t n) {
  t.data += h0 * t.stride_h;
  t.h = n;
  return t;
}

/// The output is laid out head-major, [hq][b][s][d], so that the query heads of one rank are ONE
/// contiguous block and MPI_Gatherv writes each rank's block straight into place. gqa takes any strides;
/// a [b][s][hq][d] output would interleave the ranks' heads token by token.
gqa::tensor_view<float> head_major(float* p, index_t b, index_t s, index_t h, index_t d) {
  return {p, b, s, h, d, /*stride_b=*/s * d, /*stride_s=*/d, /*stride_h=*/b * s * d, /*stride_d=*/1};
}

std::vector<float> random_values(index_t n, std::uint64_t seed) {
  std::vector<float> x(static_cast<std::size_t>(n));
  for (std::size_t i = 0; i < x.size(); ++i)
    x[i] = 2.0f * gqa::random::to_unit_float(gqa::random::hash(seed, {i})) - 1.0f;
  return x;
}

/// Sum of sizes[first, first + n): where a contiguous range of groups starts.
index_t sum(const std::vector<int>& sizes, index_t first, index_t n) {
  index_t s = 0;
  for (index_t i = first; i < first + n; ++i) s += sizes[static_cast<std::size_t>(i)];
  return s;
}

/// What one rank did in one case (rank 0 prints every rank's row).
struct rank_report {
  index_t kv0, n_kv, q0, n_q;           // its KV heads [kv0, kv0 + n_kv) and query heads [q0, q0 + n_q)
  double plan, compute, wait, gather;  // seconds, fastest of --reps runs
};

/// One layer call (prefill or decode) with one variant, sharded over all ranks. Returns false on mismatch.
bool run_case(const config& c, const std::string& variant, const char* phase, index_t sq, index_t skv) {
  int rank = 0, ranks = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  const index_t b = c.b, hq = c.hq, hkv = c.hkv, d = c.d;

  // Every rank builds the same full inputs from the same seeds, for the check on rank 0. In a model, a
  // rank would hold only its own heads (from its shard of the QKV projection and its part of the KV
  // cache), and the views below would simply be its own buffers.
  const auto q = random_values(b * sq * hq * d, 1), v = random_values(b * skv * hkv * d, 3);
  auto k = random_values(b * skv * hkv * d, 2);
  // Keys of KV head g scaled by 0.5 + g/4: unequal key norms, so KDGQA gives unequal groups.
  for (std::size_t i = 0; i < k.size(); ++i) k[i] *= 0.5f + 0.25f * static_cast<float>((i / d) % hkv);
  const auto qv = gqa::bshd<const float>(q.data(), b, sq, hq, d);
  const auto kv = gqa::bshd<const float>(k.data(), b, skv, hkv, d);
  const auto vv = gqa::bshd<const float>(v.data(), b, skv, hkv, d);
  gqa::attention_options opt;
  opt.causal = true;  // bottom-right aligned: the decode query sees the whole cache
  opt.num_threads = c.threads;

  // This rank's KV heads: contiguous, as even as possible (hkv / ranks each, one more for the first
  // hkv % ranks ranks; none when there are more ranks than KV heads). Equal KV-head ranges hold equal
  // parts of the KV cache; with KDGQA's unequal groups they get unequal work (the "wait" column), and a
  // caller could instead cut the ranges by query-head count: nothing below depends on how they are cut.
  const std::vector<int> kv_per_rank = gqa::balanced_allocation(hkv, ranks);
  std::vector<int> kv_first(static_cast<std::size_t>(ranks));  // first KV head of every rank
  for (int r = 0; r < ranks; ++r) kv_first[static_cast<std::size_t>(r)] = static_cast<int>(sum(kv_per_rank, 0, r));
  const index_t kv0 = kv_first[static_cast<std::size_t>(rank)], n_kv = kv_per_rank[static_cast<std::size_t>(rank)];

  const index_t head_elems = b * sq * d;  // one query head of the head-major output
  // The full output, on rank 0 only; the filler cannot pass the check if the gather missed a slice.
  std::vector<float> out(rank == 0 ? static_cast<std::size_t>(hq * head_elems) : 0, -7.0f);
  std::vector<float> mine;  // this rank's slice (rank 0 writes straight into `out`)
  std::vector<int> alloc;   // query heads per KV head, identical on every rank
  std::vector<int> counts(static_cast<std::size_t>(ranks)), displs(static_cast<std::size_t>(ranks));
  index_t q0 = 0, n_q = 0;
  rank_report best{};
  for (int rep = 0; rep < c.reps; ++rep) {
    MPI_Barrier(MPI_COMM_WORLD);
    const double t0 = MPI_Wtime();

    // 1. Plan: the query-head groups of every KV head. Uniform GQA needs no data. KDGQA sizes the groups
    // from the key norms of ALL KV heads (min-max scaled across heads), so no rank can plan alone: each
    // computes the norms of its own KV heads, MPI_Allgatherv shares them (hkv doubles), and every rank
    // runs the same pure function kdgqa_allocate on the same numbers: the same groups everywhere.
    if (variant == "gqa") {
      alloc.assign(static_cast<std::size_t>(hkv), static_cast<int>(hq / hkv));
    } else {
      std::vector<double> norms(static_cast<std::size_t>(hkv));
      const std::vector<double> mine_norms = n_kv > 0 ? gqa::key_norms(heads(kv, kv0, n_kv)) : std::vector<double>{};
      MPI_Allgatherv(mine_norms.data(), static_cast<int>(n_kv), MPI_DOUBLE, norms.data(), kv_per_rank.data(),
                     kv_first.data(), MPI_DOUBLE, MPI_COMM_WORLD);
      alloc = gqa::kdgqa_allocate(norms, hq).alloc;
    }
    // Every rank's query heads: the ones its KV heads serve (groups are contiguous in KV-head order), as
    // counts and offsets in output values for the gather.
    for (std::size_t r = 0; r < kv_first.size(); ++r) {
      counts[r] = static_cast<int>(sum(alloc, kv_first[r], kv_per_rank[r]) * head_elems);
      displs[r] = static_cast<int>(sum(alloc, 0, kv_first[r]) * head_elems);
    }
    q0 = sum(alloc, 0, kv0);
    n_q = sum(alloc, kv0, n_kv);
    const double t1 = MPI_Wtime();

    // 2. Compute: attention on the slice, with the slice's own head map (its KV heads' groups).
    float* dst = out.data();
    if (rank != 0) {
      mine.resize(static_cast<std::size_t>(n_q * head_elems));
      dst = mine.data();
    }
    if (n_q > 0) {
      const std::vector<int> slice_alloc(alloc.begin() + kv0, alloc.begin() + kv0 + n_kv);
      const auto ov = head_major(dst, b, sq, n_q, d);  // on rank 0 q0 == 0: the first heads of `out`
      gqa::attend(heads(qv, q0, n_q), heads(kv, kv0, n_kv), heads(vv, kv0, n_kv), ov,
                  gqa::head_map::from_allocation(slice_alloc), opt);
    }
    const double t2 = MPI_Wtime();

    // 3. Wait for the slowest rank (load imbalance), timed apart from the transfer itself.
    MPI_Barrier(MPI_COMM_WORLD);
    const double t3 = MPI_Wtime();

    // 4. Gather: rank r's block of query heads lands at its first query head in the output on rank 0.
    if (rank == 0) {
      MPI_Gatherv(MPI_IN_PLACE, 0, MPI_FLOAT, out.data(), counts.data(), displs.data(), MPI_FLOAT, 0,
                  MPI_COMM_WORLD);
    } else {
      MPI_Gatherv(mine.data(), static_cast<int>(n_q * head_elems), MPI_FLOAT, nullptr, nullptr, nullptr, MPI_FLOAT,
                  0, MPI_COMM_WORLD);
    }
    const double t4 = MPI_Wtime();

    const rank_report now{kv0, n_kv, q0, n_q, t1 - t0, t2 - t1, t3 - t2, t4 - t3};
    if (rep == 0) best = now;
    best.plan = std::min(best.plan, now.plan);
    best.compute = std::min(best.compute, now.compute);
    best.wait = std::min(best.wait, now.wait);
    best.gather = std::min(best.gather, now.gather);
  }

  std::vector<rank_report> reports(static_cast<std::size_t>(ranks));  // same binary everywhere: send bytes
  MPI_Gather(&best, sizeof best, MPI_BYTE, reports.data(), sizeof best, MPI_BYTE, 0, MPI_COMM_WORLD);

  // 5. Check on rank 0: the single-process call of the same variant (the policy plans from all keys).
  int ok = 1;
  if (rank == 0) {
    std::vector<float> expect(out.size());
    const auto ev = head_major(expect.data(), b, sq, hq, d);
    double single = 1e30;
    for (int rep = 0; rep < c.reps; ++rep) {
      const double t0 = MPI_Wtime();
      if (variant == "gqa") {
        gqa::gqa_policy policy;
        gqa::forward(policy, qv, kv, vv, ev, opt);
      } else {
        gqa::kdgqa_policy policy;
        gqa::forward(policy, qv, kv, vv, ev, opt);
      }
      single = std::min(single, MPI_Wtime() - t0);
    }
    std::size_t differ = 0;
    for (std::size_t i = 0; i < out.size(); ++i) differ += std::memcmp(&out[i], &expect[i], sizeof(float)) != 0;
    ok = differ == 0;

    std::string groups;
    for (std::size_t g = 0; g < alloc.size(); ++g) groups += (g ? "," : "") + std::to_string(alloc[g]);
    std::printf("%s, %s: b %lld, hq %lld, hkv %lld, d %lld, sq %lld, skv %lld, causal; query heads per KV head [%s]\n",
                phase, variant.c_str(), static_cast<long long>(b), static_cast<long long>(hq),
                static_cast<long long>(hkv), static_cast<long long>(d), static_cast<long long>(sq),
                static_cast<long long>(skv), groups.c_str());
    std::printf("  rank  KV heads  query heads   plan ms  compute ms   wait ms  gather ms\n");
    for (int r = 0; r < ranks; ++r) {
      const rank_report& p = reports[static_cast<std::size_t>(r)];
      auto range = [](index_t first, index_t n) {
        return n == 0 ? std::string("-") : std::to_string(first) + ".." + std::to_string(first + n - 1);
      };
      std::printf("  %4d  %-8s  %-11s  %8.2f  %10.2f  %8.2f  %9.2f\n", r, range(p.kv0, p.n_kv).c_str(),
                  range(p.q0, p.n_q).c_str(), 1e3 * p.plan, 1e3 * p.compute, 1e3 * p.wait, 1e3 * p.gather);
    }
    std::printf("  single process (rank 0, gqa::forward): %.2f ms; sharded output %s\n\n", 1e3 * single,
                ok ? "bitwise equal" : ("DIFFERS in " + std::to_string(differ) + " of " +
                                        std::to_string(out.size()) + " values").c_str());
  }
  MPI_Bcast(&ok, 1, MPI_INT, 0, MPI_COMM_WORLD);
  return ok == 1;
}

/// Parses --name value pairs; returns an error message, empty if the arguments are valid.
std::string parse(int argc, char** argv, config& c) {
  for (int i = 1; i < argc; i += 2) {
    const std::string name = argv[i];
    if (i + 1 >= argc) return name + ": missing value";
    const std::string value = argv[i + 1];
    if (name == "--variant") {
      c.variant = value;
      continue;
    }
    long long x = 0;
    try {
      std::size_t used = 0;
      x = std::stoll(value, &used);
      if (used != value.size()) return name + " " + value + ": not an integer";
    } catch (const std::exception&) {
      return name + " " + value + ": not an integer";
    }
    if (name == "--b") c.b = x;
    else if (name == "--hq") c.hq = x;
    else if (name == "--hkv") c.hkv = x;
    else if (name == "--d") c.d = x;
    else if (name == "--prefill") c.prefill = x;
    else if (name == "--cache") c.cache = x;
    else if (name == "--threads") c.threads = static_cast<int>(x);
    else if (name == "--reps") c.reps = static_cast<int>(x);
    else return "unknown option " + name;
  }
  if (c.variant != "all" && c.variant != "gqa" && c.variant != "kdgqa")
    return "--variant " + c.variant + ": must be all, gqa or kdgqa";
  if (c.b < 1 || c.hq < 1 || c.hkv < 1 || c.d < 1) return "--b, --hq, --hkv and --d must be positive";
  if (c.hkv > c.hq) return "--hkv " + std::to_string(c.hkv) + ": must be <= --hq " + std::to_string(c.hq);
  if (c.prefill < 0 || c.cache < 0) return "--prefill and --cache must be >= 0 (0 skips that phase)";
  if (c.threads < 0 || c.reps < 1) return "--threads must be >= 0 (0 = all cores) and --reps >= 1";
  // MPI counts and displacements are int (the MPI-4 large-count calls are not in every MPI yet).
  if (c.b * std::max<index_t>(c.prefill, 1) * c.hq * c.d > INT_MAX) return "the output has more than INT_MAX values";
  if (c.variant == "gqa" && c.hq % c.hkv != 0)
    return "--variant gqa needs --hkv to divide --hq (uniform groups); use --variant kdgqa";
  return {};
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, ranks = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);

  config c;
  if (const std::string error = parse(argc, argv, c); !error.empty()) {
    if (rank == 0) std::fprintf(stderr, "mpi_heads: %s\n%s", error.c_str(), usage);
    MPI_Finalize();
    return 2;
  }
  if (rank == 0)
    std::printf("gqa %s, ISA %s: attention sharded by KV heads over %d MPI rank%s, %d thread%s per rank\n\n",
                gqa::version_string.data(), gqa::isa::native::name.data(), ranks, ranks == 1 ? "" : "s",
                c.threads, c.threads == 1 ? "" : "s");

  bool ok = true;
  try {
    std::vector<std::string> variants;
    if (c.variant != "kdgqa" && c.hq % c.hkv == 0) variants.push_back("gqa");
    if (c.variant == "all" && c.hq % c.hkv != 0 && rank == 0)
      std::printf("(gqa skipped: --hkv %lld does not divide --hq %lld, so only KDGQA's unequal groups run)\n\n",
                  static_cast<long long>(c.hkv), static_cast<long long>(c.hq));
    if (c.variant != "gqa") variants.push_back("kdgqa");
    for (const auto& variant : variants) {
      if (c.prefill > 0) ok &= run_case(c, variant, "prefill", c.prefill, c.prefill);
      if (c.cache > 0) ok &= run_case(c, variant, "decode", 1, c.cache);
    }
  } catch (const std::exception& e) {  // gqa::invalid_argument names the argument and its value
    std::fprintf(stderr, "mpi_heads: rank %d: %s\n", rank, e.what());
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  if (rank == 0) std::printf("%s\n", ok ? "every sharded output is bitwise equal to the single-process call" : "MISMATCH");
  MPI_Finalize();
  return ok ? 0 : 1;
}
