// gqa/version.hpp: the library version as macros and constants. The numbers themselves are defined once,
// in config.hpp (GQA_VERSION_MAJOR/MINOR/PATCH), which CMakeLists.txt also reads for the package version.
#pragma once

#include <string_view>

#include "config.hpp"

/// MAJOR * 10000 + MINOR * 100 + PATCH, for preprocessor comparisons (0.1.0 -> 100).
#define GQA_VERSION (GQA_VERSION_MAJOR * 10000 + GQA_VERSION_MINOR * 100 + GQA_VERSION_PATCH)

#define GQA_DETAIL_STR2(x) #x
#define GQA_DETAIL_STR(x) GQA_DETAIL_STR2(x)
/// "MAJOR.MINOR.PATCH".
#define GQA_VERSION_STRING \
  GQA_DETAIL_STR(GQA_VERSION_MAJOR) "." GQA_DETAIL_STR(GQA_VERSION_MINOR) "." GQA_DETAIL_STR(GQA_VERSION_PATCH)

GQA_BEGIN_NAMESPACE
/// The version of the headers this translation unit was compiled with.
inline constexpr int version_major = GQA_VERSION_MAJOR;
inline constexpr int version_minor = GQA_VERSION_MINOR;
inline constexpr int version_patch = GQA_VERSION_PATCH;
inline constexpr std::string_view version_string = GQA_VERSION_STRING;
GQA_END_NAMESPACE
