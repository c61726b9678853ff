// gqa/convert.hpp: (being written)
#pragma once

#include "config.hpp"
