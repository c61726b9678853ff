// gqa/isa/cpu.hpp: what the running CPU and OS let gqa execute, read once per process from CPUID and
// XGETBV (x86-64) or known at compile time (AArch64: NEON is baseline).
// Invariant: an ISA is reported only when every feature its code is compiled for is present AND the OS
// saves the registers it uses (XCR0), so a kernel picked from here never raises SIGILL.
#pragma once

#include <cstdint>

#include "../config.hpp"

#if defined(__linux__)
#include <unistd.h>  // sysconf (l2_cache_bytes)
#endif
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#define GQA_X86_CPUID 1
#else
#define GQA_X86_CPUID 0
#endif

GQA_BEGIN_NAMESPACE
namespace isa {

/// The features gqa's x86 kernels need, as this CPU and OS provide them.
struct cpu_features {
  /// AVX2, FMA and F16C (the f16 conversions; every AVX2 CPU has it), and the OS saves ymm state: what
  /// the AVX2 code (-mavx2 -mfma -mf16c) needs.
  bool avx2_fma = false;
  /// AVX-512 F, VL, BW and DQ on top of avx2_fma, and the OS saves opmask and zmm state: what the AVX-512
  /// code (-mavx512f -mavx512vl -mavx512bw -mavx512dq, see cmake/gqa_isa_flags.cmake) needs.
  bool avx512 = false;
  /// AVX512-BF16 (CPUID.(EAX=7,ECX=1):EAX bit 5: VDPBF16PS, VCVTNE2PS2BF16) on top of avx512.
  bool avx512_bf16 = false;
  /// AVX512-VNNI (CPUID.(EAX=7,ECX=0):ECX bit 11: VPDPBUSD) on top of avx512: what decode's int8 products
  /// need (Note [int8 decode products] in detail/core/decode.hpp).
  bool avx512_vnni = false;
  /// AVX-VNNI (CPUID.(EAX=7,ECX=1):EAX bit 4: VPDPBUSD with a VEX encoding, on ymm) on top of avx2_fma: what
  /// the AVX2 core's int8 decode products need (Intel Alder Lake and later, AMD Zen 5).
  bool avx_vnni = false;
  /// AMX-TILE and AMX-BF16 (CPUID.(EAX=7,ECX=0):EDX bits 24, 22) on top of avx512_bf16, and the OS saves
  /// the tile state (XCR0 bits 17, 18): what the bf16 prefill tiles need (Note [bf16 tiles] in
  /// detail/core/bf16_tiles.hpp), once the process may use the tile data (amx_tiles_granted()).
  bool amx_bf16 = false;
};

namespace detail_cpu {
#if GQA_X86_CPUID
/// XCR0: the register states the OS saves on a context switch (only valid when CPUID says OSXSAVE).
inline std::uint64_t xcr0() noexcept {
  std::uint32_t lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<std::uint64_t>(hi) << 32) | lo;
}

/// Asks the OS for the AMX tile data state (Linux: arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA),
/// needed once per process before the first tile instruction); true if granted. Elsewhere: false.
inline bool tile_data_granted() noexcept {
#if defined(__linux__) && defined(SYS_arch_prctl)
  constexpr long req_xcomp_perm = 0x1023, xtiledata = 18;
  return syscall(SYS_arch_prctl, req_xcomp_perm, xtiledata) == 0;
#else
  return false;
#endif
}

inline cpu_features detect() noexcept {
  cpu_features f;
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool fma = (c >> 12) & 1u, osxsave = (c >> 27) & 1u, avx = (c >> 28) & 1u, f16c = (c >> 29) & 1u;
  if (!osxsave || !avx) return f;  // no XGETBV, or no AVX: nothing past SSE
  const std::uint64_t xcr = xcr0();
  constexpr std::uint64_t ymm_state = 0x6;   // SSE (bit 1) + AVX upper halves (bit 2)
  constexpr std::uint64_t zmm_state = 0xE6;  // + opmask (5), upper zmm0-15 (6), zmm16-31 (7)
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return f;
  const bool avx2 = (b >> 5) & 1u, avx512f = (b >> 16) & 1u, avx512dq = (b >> 17) & 1u,
             avx512bw = (b >> 30) & 1u, avx512vl = (b >> 31) & 1u;
  f.avx2_fma = avx2 && fma && f16c && (xcr & ymm_state) == ymm_state;
  f.avx512 = f.avx2_fma && avx512f && avx512dq && avx512bw && avx512vl && (xcr & zmm_state) == zmm_state;
  f.avx512_vnni = f.avx512 && ((c >> 11) & 1u);
  const bool amx_tile = (d >> 24) & 1u, amx_bf16 = (d >> 22) & 1u;
  if (!f.avx2_fma || !__get_cpuid_count(7, 1, &a, &b, &c, &d)) return f;
  f.avx_vnni = (a >> 4) & 1u;
  if (!f.avx512) return f;
  f.avx512_bf16 = (a >> 5) & 1u;
  constexpr std::uint64_t tile_state = 0x60000;  // XTILECFG (17) + XTILEDATA (18)
  f.amx_bf16 = f.avx512_bf16 && amx_tile && amx_bf16 && (xcr & tile_state) == tile_state;
  return f;
}
#else
inline cpu_features detect() noexcept { return {}; }
inline bool tile_data_granted() noexcept { return false; }
#endif
}  // namespace detail_cpu

/// The running CPU's features, detected on the first call (thread-safe) and cached for the process.
inline const cpu_features& cpu() noexcept {
  static const cpu_features f = detail_cpu::detect();
  return f;
}

/// Whether this process may run AMX tile instructions: cpu().amx_bf16, and on Linux the tile data state
/// granted by arch_prctl(ARCH_REQ_XCOMP_PERM), requested on the first call (thread-safe, once per process)
/// and only then: the grant makes the kernel size signal frames (and check sigaltstack sizes) for the tile
/// state, so it is asked for by the first call that would use the tiles, not by every program that
/// includes gqa. Elsewhere false.
inline bool amx_tiles_granted() noexcept {
  static const bool granted = cpu().amx_bf16 && detail_cpu::tile_data_granted();
  return granted;
}

/// Whether the running CPU is an AMD one (CPUID leaf 0 names "AuthenticAMD"), read once per process; false
/// elsewhere and off x86. The decode walk reads memory differently on AMD (Note [decode first loads] in
/// detail/core/decode.hpp): a tuning choice that changes no result.
inline bool amd_cpu() noexcept {
#if GQA_X86_CPUID
  static const bool amd = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid(0, &a, &b, &c, &d)) return false;
    // The vendor string is EBX, EDX, ECX: "Auth" "enti" "cAMD".
    return b == 0x68747541u && d == 0x69746e65u && c == 0x444d4163u;
  }();
  return amd;
#else
  return false;
#endif
}

/// The running CPU's family as CPUID leaf 1 reports it (the base family, plus the extended family where
/// the base is 15: AMD Zen 3 and Zen 4 are 25, Zen 5 26), read once per process; 0 off x86. Decode tunes
/// its reads by it on AMD CPUs (Note [decode loads ahead] in detail/core/decode.hpp): a choice of speed
/// that changes no result.
inline unsigned cpu_family() noexcept {
#if GQA_X86_CPUID
  static const unsigned family = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0u;
    const unsigned base = (a >> 8) & 0xFu;
    return base == 0xFu ? base + ((a >> 20) & 0xFFu) : base;
  }();
  return family;
#else
  return 0;
#endif
}

/// Whether this is an AMD CPU of family 25 (Zen 3 and Zen 4), whose decode steps some choices of the
/// core's decode path were measured on (Note [decode loads ahead], Note [decode prefetches in cache]).
inline bool amd_family_25() noexcept { return amd_cpu() && cpu_family() == 25; }

/// Whether this is an AMD CPU of family 26 (Zen 5), where prefill's P·V reads its V slabs whole rather
/// than in key chunks (Note [P·V in key chunks] in detail/core/packed.hpp): a choice of speed that changes
/// no result.
inline bool amd_family_26() noexcept { return amd_cpu() && cpu_family() == 26; }

/// Whether bf16 prefill without AMX multiplies with VDPBF16PS (Note [bf16 tiles] in detail/core/bf16_tiles.hpp):
/// the CPU has AVX512-BF16 and is an AMD one, where VDPBF16PS issues like an FMA and does twice its work
/// (Zen 5: 406 against 218 GFLOP/s on one core). On the Intel Xeons measured it issues at half an FMA's
/// rate (108 GFLOP/s on Sapphire Rapids), slower than the fp32 products, so Intel CPUs without AMX tiles
/// (Cooper Lake, or a hypervisor that hides AMX) keep the fp32 products. A choice of speed: either way the
/// results are within Note [bf16 products tolerance] of the reference.
inline bool bf16_dot_fast() noexcept { return cpu().avx512_bf16 && amd_cpu(); }

/// The size in bytes of the level-2 data cache of the CPU this process runs on, as the C library reports it
/// (glibc's sysconf(_SC_LEVEL2_CACHE_SIZE), which reads CPUID), read once per process; 0 where unknown
/// (other platforms and C libraries). The forward's tasks take more rows where L2 is large (Note [tile
/// shape], Note [rows by L2]).
inline long l2_cache_bytes() noexcept {
#if defined(__linux__) && defined(__GLIBC__) && defined(_SC_LEVEL2_CACHE_SIZE)
  static const long bytes = [] {
    const long b = ::sysconf(_SC_LEVEL2_CACHE_SIZE);
    return b > 0 ? b : 0L;
  }();
  return bytes;
#else
  return 0;
#endif
}

}  // namespace isa
GQA_END_NAMESPACE
