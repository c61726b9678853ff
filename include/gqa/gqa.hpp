// gqa/gqa.hpp: the umbrella header: every public header of gqa.
// Not included here: gqa/interop/* (needs Eigen), gqa/reference/* (slow reference code for tests),
// gqa/detail/* (internals).
#pragma once

#include "config.hpp"
#include "version.hpp"
#include "errors.hpp"
#include "tensor.hpp"
#include "head_map.hpp"
#include "options.hpp"
#include "isa/tags.hpp"
#include "isa/select.hpp"
#include "attention.hpp"
#include "backward.hpp"
#include "runtime_info.hpp"
#include "random.hpp"
#include "variants.hpp"
#include "kv_cache.hpp"
#include "memory.hpp"
#include "quantized.hpp"
#include "paged.hpp"
#include "varlen.hpp"
#include "convert.hpp"
