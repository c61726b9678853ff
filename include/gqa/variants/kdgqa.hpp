// gqa/variants/kdgqa.hpp: (being written)
#pragma once

#include "policy.hpp"
