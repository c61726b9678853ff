// examples/uptrain/tests/data_test.cpp: the IDX reader's errors (missing, truncated, mismatched files, raw
// and gzip), Fashion-MNIST set checks and the epoch shuffle.
#include <gtest/gtest.h>
#include <zlib.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "data.hpp"

namespace uptrain {
namespace {

namespace fs = std::filesystem;

std::vector<std::uint8_t> idx(std::uint8_t type, const std::vector<std::uint32_t>& dims, std::size_t payload) {
  std::vector<std::uint8_t> b{0, 0, type, static_cast<std::uint8_t>(dims.size())};
  for (const std::uint32_t d : dims)
    for (int shift = 24; shift >= 0; shift -= 8) b.push_back(static_cast<std::uint8_t>(d >> shift));
  for (std::size_t i = 0; i < payload; ++i) b.push_back(static_cast<std::uint8_t>(i % 10));
  return b;
}

class idx_files : public ::testing::Test {
 protected:
  void SetUp() override {
    dir = fs::temp_directory_path() / ("gqa_uptrain_data_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) +
                                       "_" + ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir);
    fs::create_directories(dir);
  }
  void TearDown() override { fs::remove_all(dir); }

  void raw(const std::string& name, const std::vector<std::uint8_t>& bytes) {
    std::ofstream f(dir / name, std::ios::binary);
    f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  }
  void gz(const std::string& name, const std::vector<std::uint8_t>& bytes) {
    gzFile f = gzopen((dir / name).c_str(), "wb");
    ASSERT_NE(f, nullptr);
    ASSERT_EQ(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())), static_cast<int>(bytes.size()));
    gzclose(f);
  }
  /// A valid set of n images and n labels, named like Fashion-MNIST's training files.
  void valid_set(std::size_t n, bool compressed) {
    auto put = [&](const std::string& name, const std::vector<std::uint8_t>& b) { compressed ? gz(name + ".gz", b) : raw(name, b); };
    put("train-images-idx3-ubyte", idx(0x08, {static_cast<std::uint32_t>(n), 28, 28}, n * 784));
    put("train-labels-idx1-ubyte", idx(0x08, {static_cast<std::uint32_t>(n)}, n));
  }
  fs::path dir;
};

/// Expects f() to throw data_error whose message contains every part.
template <class F>
void expect_data_error(F f, std::initializer_list<std::string> parts) {
  try {
    f();
    ADD_FAILURE() << "no data_error thrown";
  } catch (const data_error& e) {
    for (const std::string& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << "'" << p << "' not in: " << e.what();
  }
}

TEST_F(idx_files, reads_raw_and_gzip) {
  for (const bool compressed : {false, true}) {
    SCOPED_TRACE(compressed ? "gzip" : "raw");
    fs::remove_all(dir);
    fs::create_directories(dir);
    valid_set(3, compressed);
    const image_set s = load_image_set(dir, "train");
    ASSERT_EQ(s.size(), 3u);
    ASSERT_EQ(s.images.size(), 3u * 784);
    EXPECT_EQ(s.images[785], 785 % 10);
    EXPECT_EQ(s.labels[2], 2);
  }
}

TEST_F(idx_files, missing_directory_and_file) {
  expect_data_error([&] { load_fashion_mnist(dir / "nowhere"); }, {"nowhere", "no such directory", "dataset-fashion-mnist", "--data"});
  expect_data_error([&] { load_image_set(dir, "train"); }, {"train-images-idx3-ubyte", "no such file", ".gz"});
  valid_set(2, false);
  fs::remove(dir / "train-labels-idx1-ubyte");
  expect_data_error([&] { load_image_set(dir, "train"); }, {"train-labels-idx1-ubyte", "no such file"});
}

TEST_F(idx_files, truncated) {
  raw("short", {0, 0});
  expect_data_error([&] { read_idx(dir / "short", 1); }, {"short", "truncated", "no IDX header"});
  raw("header", {0, 0, 8, 3, 0, 0});
  expect_data_error([&] { read_idx(dir / "header", 3); }, {"header", "truncated", "needs 16"});
  std::vector<std::uint8_t> b = idx(0x08, {3, 28, 28}, 3 * 784);
  b.resize(b.size() - 100);
  raw("images", b);
  expect_data_error([&] { read_idx(dir / "images", 3); }, {"images", "truncated", "promises 2352", "has 2252"});
  // A gzip stream cut in the middle.
  gz("whole.gz", idx(0x08, {3, 28, 28}, 3 * 784));
  std::ifstream in(dir / "whole.gz", std::ios::binary);
  std::vector<char> z((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  z.resize(z.size() / 2);
  raw("cut.gz", {z.begin(), z.end()});
  expect_data_error([&] { read_idx(dir / "cut.gz", 3); }, {"cut.gz", "truncated"});
}

TEST_F(idx_files, mismatched) {
  std::vector<std::uint8_t> b = idx(0x08, {4}, 4);
  b.push_back(7);
  raw("long", b);
  expect_data_error([&] { read_idx(dir / "long", 1); }, {"long", "1 bytes after the 4"});
  raw("magic", {1, 0, 8, 1, 0, 0, 0, 0});
  expect_data_error([&] { read_idx(dir / "magic", 1); }, {"magic", "not an IDX file"});
  raw("floats", idx(0x0d, {1}, 4));
  expect_data_error([&] { read_idx(dir / "floats", 1); }, {"floats", "element type 0x0d"});
  raw("rank", idx(0x08, {1, 28, 28}, 784));
  expect_data_error([&] { read_idx(dir / "rank", 1); }, {"rank", "3 dimensions, expected 1"});

  raw("train-images-idx3-ubyte", idx(0x08, {3, 27, 28}, 3 * 27 * 28));
  raw("train-labels-idx1-ubyte", idx(0x08, {3}, 3));
  expect_data_error([&] { load_image_set(dir, "train"); }, {"train-images-idx3-ubyte", "27 x 28", "expected 28 x 28"});
  raw("train-images-idx3-ubyte", idx(0x08, {3, 28, 28}, 3 * 784));
  raw("train-labels-idx1-ubyte", idx(0x08, {4}, 4));
  expect_data_error([&] { load_image_set(dir, "train"); }, {"train-labels-idx1-ubyte", "4 labels for 3 images"});
  std::vector<std::uint8_t> labels = idx(0x08, {3}, 3);
  labels.back() = 10;
  raw("train-labels-idx1-ubyte", labels);
  expect_data_error([&] { load_image_set(dir, "train"); }, {"label 2 is 10", "expected 0-9"});
}

TEST(epoch_order, is_a_seeded_permutation) {
  const std::vector<std::uint32_t> a = epoch_order(1000, 7, 0), b = epoch_order(1000, 7, 0);
  const std::vector<std::uint32_t> c = epoch_order(1000, 7, 1), d = epoch_order(1000, 8, 0);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  EXPECT_NE(a, d);
  std::vector<std::uint32_t> sorted = a;
  std::sort(sorted.begin(), sorted.end());
  for (std::uint32_t i = 0; i < sorted.size(); ++i) ASSERT_EQ(sorted[i], i);
}

}  // namespace
}  // namespace uptrain
