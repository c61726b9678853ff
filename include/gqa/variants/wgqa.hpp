// gqa/variants/wgqa.hpp: (being written)
#pragma once

#include "policy.hpp"
