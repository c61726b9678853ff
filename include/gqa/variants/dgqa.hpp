// gqa/variants/dgqa.hpp: (being written)
#pragma once

#include "policy.hpp"
