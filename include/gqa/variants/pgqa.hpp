// gqa/variants/pgqa.hpp: (being written)
#pragma once

#include "policy.hpp"
