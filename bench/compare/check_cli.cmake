# bench/compare/check_cli.cmake: CTest check of gqa-compare's command line (cmake -DEXE=<gqa-compare> -P).
# Every bad argument must exit with status 2 and name the argument (and its value) on stderr, before any
# measuring; --help must exit 0 and print the usage.
cmake_minimum_required(VERSION 3.21)

if(NOT DEFINED EXE)
  message(FATAL_ERROR "check_cli.cmake: pass -DEXE=<gqa-compare>")
endif()

set(_failures 0)
# expect_error(<expected stderr substring> <args...>)
function(expect_error expected)
  execute_process(COMMAND "${EXE}" ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 30)
  string(FIND "${err}" "${expected}" pos)
  if(NOT rc EQUAL 2 OR pos LESS 0 OR NOT out STREQUAL "")
    message(SEND_ERROR "FAIL: gqa-compare ${ARGN}: exit '${rc}' (want 2), stderr '${err}' "
                       "(want '${expected}'), stdout '${out}' (want empty)")
    math(EXPR f "${_failures} + 1")
    set(_failures ${f} PARENT_SCOPE)
  endif()
endfunction()

expect_error("--heads = abc: not an integer" --heads abc)
expect_error("--heads = 0: must be in [1, 1024]" --heads=0)
expect_error("--head-dim = 12x: not an integer" --head-dim 12x)
expect_error("--batch = -3: must be in" --batch -3)
expect_error("--preset = gpt5: unknown preset" --preset gpt5)
expect_error("--bogus: unknown argument" --bogus)
expect_error("--reps: missing value" --tiny --reps)
expect_error("--tiny = 1: takes no value" --tiny=1)
expect_error("--isa = sse9: unknown ISA" --isa sse9)
expect_error("--threads = many: not an integer" --threads many)
expect_error("--hkv-ref = 3: must divide the number of query heads H = 8" --tiny --hkv-ref 3)
expect_error("--kv-len = 5: the KV length must be >= the query length Sq = 37" --tiny --kv-len 5 --prefill)
expect_error("--batch 16777216 --heads 1024" --heads 1024 --batch 16777216)

execute_process(COMMAND "${EXE}" --help RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 30)
string(FIND "${out}" "usage: gqa-compare" pos)
if(NOT rc EQUAL 0 OR pos LESS 0)
  message(SEND_ERROR "FAIL: gqa-compare --help: exit '${rc}', stdout '${out}'")
  math(EXPR _failures "${_failures} + 1")
endif()

if(_failures GREATER 0)
  message(FATAL_ERROR "check_cli.cmake: ${_failures} check(s) failed")
endif()
message(STATUS "check_cli.cmake: all command-line checks passed")
