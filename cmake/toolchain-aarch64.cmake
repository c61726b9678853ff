# cmake/toolchain-aarch64.cmake: cross-compile gqa (and GoogleTest) for AArch64 Linux with Debian's
# aarch64-linux-gnu toolchain, and run the results under qemu-aarch64 (CMAKE_CROSSCOMPILING_EMULATOR:
# used by try_run, gtest_discover_tests and ctest). scripts/test-neon.sh is the one user.
# Overrides: GQA_AARCH64_PREFIX (default aarch64-linux-gnu), GQA_AARCH64_SYSROOT (the target's libc,
# default /usr/<prefix>), GQA_QEMU (default qemu-aarch64).

set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

if(NOT DEFINED GQA_AARCH64_PREFIX)
  set(GQA_AARCH64_PREFIX aarch64-linux-gnu)
endif()
if(NOT DEFINED GQA_AARCH64_SYSROOT)
  set(GQA_AARCH64_SYSROOT /usr/${GQA_AARCH64_PREFIX})
endif()
if(NOT DEFINED GQA_QEMU)
  set(GQA_QEMU qemu-aarch64)
endif()
# The toolchain file is read again by every try_compile project: hand the settings down.
list(APPEND CMAKE_TRY_COMPILE_PLATFORM_VARIABLES GQA_AARCH64_PREFIX GQA_AARCH64_SYSROOT GQA_QEMU)

set(CMAKE_C_COMPILER ${GQA_AARCH64_PREFIX}-gcc)
set(CMAKE_CXX_COMPILER ${GQA_AARCH64_PREFIX}-g++)

# qemu-user needs the target's dynamic loader and libraries: -L points it at the Debian cross sysroot.
set(CMAKE_CROSSCOMPILING_EMULATOR ${GQA_QEMU} -L ${GQA_AARCH64_SYSROOT})

# Headers, libraries and CMake packages come from the target sysroot only (never the x86-64 ones in /usr);
# programs (the compilers, qemu) from the host. Packages built for aarch64 elsewhere (GoogleTest, see
# scripts/test-neon.sh) are found through an explicit <Package>_DIR, which these modes do not restrict.
set(CMAKE_FIND_ROOT_PATH ${GQA_AARCH64_SYSROOT})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
