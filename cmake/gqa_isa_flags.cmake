# gqa_isa_compile_options(<isa> <out_var>): compiler flags that enable <isa> (scalar, avx2, avx512, neon)
# for one translation unit. Installed with the package (and included by gqa-config.cmake) so consumers can
# build per-ISA TUs too: each TU gets its own ABI namespace (Note [ABI namespace] in gqa/config.hpp).
# Safe to include more than once (a function is simply redefined, the variable reset).

function(gqa_isa_compile_options isa out_var)
  if(MSVC AND NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
    # MSVC defines __AVX2__/__AVX512F__ under /arch but not __FMA__; gqa's AVX2 path needs FMA, which
    # every AVX2 CPU has, so MSVC users also get -D__FMA__ here.
    if(isa STREQUAL "avx2")
      set(flags /arch:AVX2 /D__FMA__)
    elseif(isa STREQUAL "avx512")
      set(flags /arch:AVX512 /D__FMA__)
    elseif(isa STREQUAL "scalar" OR isa STREQUAL "neon")
      set(flags "")
    else()
      message(FATAL_ERROR "gqa_isa_compile_options: unknown isa '${isa}' (scalar, avx2, avx512, neon)")
    endif()
  elseif(isa STREQUAL "scalar")
    set(flags "")
  elseif(isa STREQUAL "avx2")
    set(flags -mavx2 -mfma -mf16c)  # F16C: the f16 conversions (every AVX2 CPU has it)
  elseif(isa STREQUAL "avx512")
    set(flags -mavx2 -mfma -mf16c -mavx512f -mavx512vl -mavx512bw -mavx512dq)
  elseif(isa STREQUAL "neon")
    set(flags "")  # NEON is baseline on AArch64
  else()
    message(FATAL_ERROR "gqa_isa_compile_options: unknown isa '${isa}' (scalar, avx2, avx512, neon)")
  endif()
  set(${out_var} "${flags}" PARENT_SCOPE)
endfunction()

# The ISAs whose translation units this build can compile (not whether the CPU can run them; check
# gqa::isa::cpu_supports<Isa>() at run time).
if(CMAKE_SYSTEM_PROCESSOR MATCHES "^(aarch64|arm64|ARM64)$")
  set(GQA_BUILDABLE_ISAS scalar neon)
elseif(CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64|i686)$")
  set(GQA_BUILDABLE_ISAS scalar avx2 avx512)
else()
  set(GQA_BUILDABLE_ISAS scalar)
endif()
