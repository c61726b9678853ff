# install.cmake: cmake -DBUILD_DIR=<gqa build> -DPREFIX=<dir> [-DCONFIG=<cfg>] -P install.cmake
# Installs the gqa build tree into a fresh PREFIX and checks the layout of the package.
cmake_minimum_required(VERSION 3.21)
foreach(var BUILD_DIR PREFIX)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "install.cmake: -D${var}=... is required")
  endif()
endforeach()
file(REMOVE_RECURSE ${PREFIX})
set(cfg)
if(CONFIG)
  set(cfg --config ${CONFIG})
endif()
execute_process(COMMAND ${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${PREFIX} ${cfg}
                RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "cmake --install ${BUILD_DIR} --prefix ${PREFIX} failed (${rc})")
endif()
# Header-only and ARCH_INDEPENDENT: everything under include/ and share/, nothing under lib/.
foreach(f include/gqa/gqa.hpp include/gqa/config.hpp include/gqa/attention.hpp include/gqa/version.hpp
          share/cmake/gqa/gqa-config.cmake share/cmake/gqa/gqa-config-version.cmake
          share/cmake/gqa/gqa-targets.cmake share/cmake/gqa/gqa_isa_flags.cmake)
  if(NOT EXISTS ${PREFIX}/${f})
    message(FATAL_ERROR "install.cmake: ${PREFIX}/${f} was not installed")
  endif()
endforeach()
file(GLOB_RECURSE libs ${PREFIX}/lib*/*)
if(libs)
  message(FATAL_ERROR "install.cmake: a header-only package installed files under lib/: ${libs}")
endif()
# The version file must accept a 32-bit consumer (ARCH_INDEPENDENT) asking for this major.minor.
set(CMAKE_SIZEOF_VOID_P 4)
file(STRINGS ${PREFIX}/share/cmake/gqa/gqa-config-version.cmake pv REGEX "^set\\(PACKAGE_VERSION \"")
string(REGEX MATCH "\"([0-9]+)\\.([0-9]+)" _ "${pv}")
set(PACKAGE_FIND_VERSION ${CMAKE_MATCH_1}.${CMAKE_MATCH_2})
set(PACKAGE_FIND_VERSION_MAJOR ${CMAKE_MATCH_1})
set(PACKAGE_FIND_VERSION_MINOR ${CMAKE_MATCH_2})
include(${PREFIX}/share/cmake/gqa/gqa-config-version.cmake)
if(PACKAGE_VERSION_UNSUITABLE OR NOT PACKAGE_VERSION_COMPATIBLE)
  message(FATAL_ERROR "install.cmake: gqa-config-version.cmake (version ${PACKAGE_VERSION}) rejects a "
                      "32-bit consumer asking for ${PACKAGE_FIND_VERSION}: not ARCH_INDEPENDENT?")
endif()
message(STATUS "gqa installed into ${PREFIX}")
