// examples/uptrain/data.hpp: Fashion-MNIST from IDX files (raw or gzip-compressed), and the batches the
// ViT trains on. Every malformed input (missing, truncated, mismatched file) throws data_error naming the
// file and what is wrong; nothing is silently padded or cut.
#pragma once

#include <cstdint>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

namespace uptrain {

/// A file-level error of the data loader: the message names the file and the problem.
struct data_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// One IDX file: its dimensions (big-endian u32 each in the file) and its unsigned-byte payload.
/// Format: bytes 0-1 zero, byte 2 the element type (0x08 = unsigned byte, the only one accepted here),
/// byte 3 the number of dimensions, then one u32 per dimension, then prod(dims) bytes, nothing after.
struct idx_array {
  std::vector<std::uint32_t> dims;
  std::vector<std::uint8_t> data;
};

/// Reads `path` if it exists, else `path` + ".gz" (gzip; Debian's dataset-fashion-mnist ships those).
/// Throws data_error when neither exists, when the header is not an unsigned-byte IDX header with
/// `expected_rank` dimensions, when the payload is shorter (truncated) or longer than the header says,
/// or when a gzip stream is corrupt.
idx_array read_idx(const std::filesystem::path& path, std::size_t expected_rank);

/// A labelled set of 28 × 28 grey images, row-major, one byte per pixel.
struct image_set {
  static constexpr int rows = 28, cols = 28, pixels = rows * cols, classes = 10;
  std::vector<std::uint8_t> images;  // n × 784
  std::vector<std::uint8_t> labels;  // n, each in [0, 10)
  std::size_t size() const noexcept { return labels.size(); }
};

/// Loads `<prefix>-images-idx3-ubyte[.gz]` and `<prefix>-labels-idx1-ubyte[.gz]` from `dir` and checks
/// they describe the same set: 28 × 28 images, as many labels as images, every label < 10.
image_set load_image_set(const std::filesystem::path& dir, const std::string& prefix);

/// Fashion-MNIST's training ("train") and test ("t10k") sets.
struct fashion_mnist {
  image_set train, test;
};
/// Where Debian's dataset-fashion-mnist installs the files.
inline const std::filesystem::path default_data_dir = "/usr/share/datasets/fashion-mnist";
/// Loads both sets from `dir`; a missing directory or file says how to get the data.
fashion_mnist load_fashion_mnist(const std::filesystem::path& dir);

/// The first `n` examples of `set` (all of it when n is 0 or >= its size).
image_set head(const image_set& set, std::size_t n);

/// Pixel standardisation: (p / 255 − mean) / std with Fashion-MNIST's training-set statistics.
inline constexpr float pixel_mean = 0.2860f, pixel_std = 0.3530f;

/// The order in which epoch `epoch` of run `seed` visits n examples: a Fisher-Yates shuffle drawn from
/// gqa's counter-based generator, so it is the same on every platform and for any thread count.
std::vector<std::uint32_t> epoch_order(std::size_t n, std::uint64_t seed, std::uint64_t epoch);

}  // namespace uptrain
