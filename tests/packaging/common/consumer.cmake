# consumer.cmake: the consumer executable, shared by the find_package and add_subdirectory projects.
# Expects gqa::gqa and gqa_isa_compile_options() to exist already.
if(NOT TARGET gqa::gqa)
  message(FATAL_ERROR "consumer: target gqa::gqa is missing")
endif()
if(NOT COMMAND gqa_isa_compile_options OR NOT DEFINED GQA_BUILDABLE_ISAS)
  message(FATAL_ERROR "consumer: gqa_isa_compile_options()/GQA_BUILDABLE_ISAS are missing")
endif()
get_filename_component(_common ${CMAKE_CURRENT_LIST_DIR} ABSOLUTE)

add_executable(consumer ${_common}/consumer_main.cpp)
target_link_libraries(consumer PRIVATE gqa::gqa)
if("avx2" IN_LIST GQA_BUILDABLE_ISAS)
  gqa_isa_compile_options(avx2 _avx2_flags)
  set_source_files_properties(${_common}/consumer_avx2.cpp PROPERTIES COMPILE_OPTIONS "${_avx2_flags}")
  target_sources(consumer PRIVATE ${_common}/consumer_avx2.cpp)
  target_compile_definitions(consumer PRIVATE GQA_CONSUMER_HAS_AVX2_TU)
endif()

# gqa::gqa must bring C++20 by itself: the consumer sets no standard.
get_target_property(_features gqa::gqa INTERFACE_COMPILE_FEATURES)
if(NOT "cxx_std_20" IN_LIST _features)
  message(FATAL_ERROR "consumer: gqa::gqa does not export cxx_std_20 (has: ${_features})")
endif()

enable_testing()
add_test(NAME consumer COMMAND consumer)
set_tests_properties(consumer PROPERTIES PASS_REGULAR_EXPRESSION "consumer OK")
