# tests/check_layers.cmake: CTest check that gqa's lower layers include no kernel. For each rule below,
# the header's full include closure (the compiler's -M output) must contain none of the forbidden
# headers: views, the 16-bit types, the int8 cache type and its quantiser, memory, options, errors, threading, ISA tags
# and the shapes of the registry are plain layers; the
# Eigen view adapter and checkpoint conversion do not compile the attention core; the core's common.hpp
# includes no ISA header (its stated invariant); the reference shares nothing with the kernels.
# cmake -DCXX=<compiler> -DINCLUDE=<repo>/include [-DEIGEN=<Eigen include dir>] -P check_layers.cmake
cmake_minimum_required(VERSION 3.21)
foreach(_var CXX INCLUDE)
  if(NOT DEFINED ${_var})
    message(FATAL_ERROR "check_layers.cmake: pass -D${_var}=...")
  endif()
endforeach()

set(_kernel "gqa/detail/core/,gqa/attention\\.hpp,gqa/variants/policy\\.hpp,gqa/isa/vec")
set(_rules
  "config.hpp|${_kernel}" "version.hpp|${_kernel}" "errors.hpp|${_kernel}" "numeric.hpp|${_kernel}" "tensor.hpp|${_kernel}"
  "head_map.hpp|${_kernel}" "options.hpp|${_kernel}" "integer_span.hpp|${_kernel}" "kv_cache.hpp|${_kernel}" "random.hpp|${_kernel}"
  "quantized.hpp|${_kernel}" "memory.hpp|${_kernel}"
  "threading/executor.hpp|${_kernel},gqa/options\\.hpp" "threading/parallel.hpp|${_kernel},gqa/options\\.hpp"
  "threading/pool.hpp|${_kernel},gqa/options\\.hpp"
  "isa/tags.hpp|${_kernel}" "isa/cpu.hpp|${_kernel}" "isa/select.hpp|${_kernel}" "runtime_info.hpp|${_kernel}"
  "variants/model_shape.hpp|${_kernel}" "variants/wgqa_weights.hpp|${_kernel}"
  "convert.hpp|${_kernel}"
  "detail/core/common.hpp|gqa/isa/,gqa/attention\\.hpp,gqa/variants/,gqa/threading/"
  "reference/attention.hpp|${_kernel},gqa/variants/" "reference/convert.hpp|${_kernel},gqa/variants/"
  "reference/grouping.hpp|${_kernel},gqa/variants/" "reference/pgqa.hpp|${_kernel},gqa/variants/"
  "reference/wgqa.hpp|${_kernel},gqa/variants/")
if(DEFINED EIGEN AND NOT EIGEN STREQUAL "")
  list(APPEND _rules "interop/eigen.hpp|${_kernel},gqa/convert\\.hpp,gqa/variants/,gqa/threading/")
endif()

set(_failures 0)
foreach(_rule IN LISTS _rules)
  # "<header>|<forbidden>,<forbidden>,...": a rule is one list element, so its parts use | and ,
  string(REPLACE "|" ";" _parts "${_rule}")
  list(POP_FRONT _parts _header)
  string(REPLACE "," ";" _parts "${_parts}")
  set(_args -std=c++20 -I${INCLUDE})
  if(DEFINED EIGEN AND NOT EIGEN STREQUAL "")
    list(APPEND _args -I${EIGEN})
  endif()
  execute_process(COMMAND "${CXX}" ${_args} -M -x c++ "${INCLUDE}/gqa/${_header}" RESULT_VARIABLE rc
                  OUTPUT_VARIABLE deps ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(SEND_ERROR "FAIL: ${_header}: the compiler could not list its includes: ${err}")
    math(EXPR _failures "${_failures} + 1")
    continue()
  endif()
  # The closure as paths relative to INCLUDE, normalised (the compiler prints gqa/interop/../tensor.hpp).
  string(REGEX REPLACE "[ \t\r\n\\]+" ";" _tokens "${deps}")
  set(_closure)
  foreach(_t IN LISTS _tokens)
    if(_t STREQUAL "" OR _t MATCHES ":$")
      continue()
    endif()
    cmake_path(NORMAL_PATH _t)
    string(FIND "${_t}" "${INCLUDE}/" _at)
    if(_at EQUAL 0)
      string(LENGTH "${INCLUDE}/" _n)
      string(SUBSTRING "${_t}" ${_n} -1 _t)
      list(APPEND _closure "${_t}")
    endif()
  endforeach()
  foreach(_forbidden IN LISTS _parts)
    set(_hits ${_closure})
    list(FILTER _hits INCLUDE REGEX "^${_forbidden}")
    if(_hits)
      message(SEND_ERROR "FAIL: gqa/${_header} includes ${_hits} (forbidden: ${_forbidden})")
      math(EXPR _failures "${_failures} + 1")
    endif()
  endforeach()
endforeach()
if(_failures GREATER 0)
  message(FATAL_ERROR "${_failures} layering violation(s)")
endif()
list(LENGTH _rules n)
message(STATUS "${n} headers: no forbidden includes")
