// examples/uptrain/data.cpp: the IDX reader (raw or gzip through zlib) and Fashion-MNIST loading.
#include "data.hpp"

#include <zlib.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <numeric>

#include <gqa/random.hpp>

namespace uptrain {

namespace {

/// The whole content of a file, raw or gunzipped. gzread also reads a file that is not gzip-compressed
/// as is, so one path serves both forms; a corrupt gzip stream is reported by gzerror.
std::vector<std::uint8_t> read_bytes(const std::filesystem::path& path) {
  struct closer {
    void operator()(gzFile f) const { gzclose(f); }
  };
  std::unique_ptr<gzFile_s, closer> f(gzopen(path.c_str(), "rb"));
  if (!f) throw data_error(path.string() + ": cannot open");
  std::vector<std::uint8_t> out;
  std::uint8_t buf[1 << 16];
  for (;;) {
    const int got = gzread(f.get(), buf, sizeof buf);
    if (got < 0) {
      int code = 0;
      const char* msg = gzerror(f.get(), &code);
      throw data_error(path.string() + ": corrupt or truncated gzip stream (" + msg + ")");
    }
    if (got == 0) break;
    out.insert(out.end(), buf, buf + got);
  }
  // gzread returns 0 both at a clean end and when a gzip member ends early; only gzerror tells them apart.
  int code = 0;
  const char* msg = gzerror(f.get(), &code);
  if (code != Z_OK && code != Z_STREAM_END)
    throw data_error(path.string() + ": corrupt or truncated gzip stream (" + msg + ")");
  return out;
}

std::uint32_t big_endian_u32(const std::uint8_t* p) {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) | std::uint32_t{p[3]};
}

std::filesystem::path existing(const std::filesystem::path& path) {
  if (std::filesystem::is_regular_file(path)) return path;
  std::filesystem::path gz = path;
  gz += ".gz";
  if (std::filesystem::is_regular_file(gz)) return gz;
  throw data_error(path.string() + ": no such file (nor " + gz.filename().string() + ")");
}

}  // namespace

idx_array read_idx(const std::filesystem::path& requested, std::size_t expected_rank) {
  const std::filesystem::path path = existing(requested);
  const std::vector<std::uint8_t> bytes = read_bytes(path);
  const std::string name = path.string();
  if (bytes.size() < 4) throw data_error(name + ": truncated: " + std::to_string(bytes.size()) + " bytes, no IDX header");
  if (bytes[0] != 0 || bytes[1] != 0)
    throw data_error(name + ": not an IDX file (the first two bytes must be 0; gzip data not ending in .gz?)");
  if (bytes[2] != 0x08) {
    char type[8];
    std::snprintf(type, sizeof type, "0x%02x", bytes[2]);
    throw data_error(name + ": IDX element type " + type + " is not 0x08 (unsigned byte)");
  }
  const std::size_t rank = bytes[3];
  if (rank != expected_rank)
    throw data_error(name + ": " + std::to_string(rank) + " dimensions, expected " + std::to_string(expected_rank));
  const std::size_t header = 4 + 4 * rank;
  if (bytes.size() < header)
    throw data_error(name + ": truncated: " + std::to_string(bytes.size()) + " bytes, the header alone needs " +
                     std::to_string(header));
  idx_array a;
  std::size_t count = 1;
  for (std::size_t i = 0; i < rank; ++i) {
    a.dims.push_back(big_endian_u32(bytes.data() + 4 + 4 * i));
    count *= a.dims.back();
  }
  const std::size_t payload = bytes.size() - header;
  if (payload < count)
    throw data_error(name + ": truncated: the header promises " + std::to_string(count) + " bytes of data, the file has " +
                     std::to_string(payload));
  if (payload > count)
    throw data_error(name + ": " + std::to_string(payload - count) + " bytes after the " + std::to_string(count) +
                     " the header describes (mismatched header?)");
  a.data.assign(bytes.begin() + static_cast<std::ptrdiff_t>(header), bytes.end());
  return a;
}

image_set load_image_set(const std::filesystem::path& dir, const std::string& prefix) {
  const auto images_path = dir / (prefix + "-images-idx3-ubyte");
  const auto labels_path = dir / (prefix + "-labels-idx1-ubyte");
  idx_array images = read_idx(images_path, 3);
  idx_array labels = read_idx(labels_path, 1);
  if (images.dims[1] != image_set::rows || images.dims[2] != image_set::cols)
    throw data_error(images_path.string() + ": images are " + std::to_string(images.dims[1]) + " x " +
                     std::to_string(images.dims[2]) + ", expected 28 x 28");
  if (images.dims[0] != labels.dims[0])
    throw data_error(labels_path.string() + ": " + std::to_string(labels.dims[0]) + " labels for " +
                     std::to_string(images.dims[0]) + " images in " + images_path.filename().string());
  for (std::size_t i = 0; i < labels.data.size(); ++i)
    if (labels.data[i] >= image_set::classes)
      throw data_error(labels_path.string() + ": label " + std::to_string(i) + " is " + std::to_string(labels.data[i]) +
                       ", expected 0-9");
  image_set s;
  s.images = std::move(images.data);
  s.labels = std::move(labels.data);
  return s;
}

fashion_mnist load_fashion_mnist(const std::filesystem::path& dir) {
  if (!std::filesystem::is_directory(dir))
    throw data_error(dir.string() + ": no such directory; install Debian's dataset-fashion-mnist "
                                    "(bash scripts/install-deps.sh --uptrain) or pass --data DIR");
  return {load_image_set(dir, "train"), load_image_set(dir, "t10k")};
}

image_set head(const image_set& set, std::size_t n) {
  if (n == 0 || n >= set.size()) return set;
  image_set s;
  s.images.assign(set.images.begin(), set.images.begin() + static_cast<std::ptrdiff_t>(n * image_set::pixels));
  s.labels.assign(set.labels.begin(), set.labels.begin() + static_cast<std::ptrdiff_t>(n));
  return s;
}

std::vector<std::uint32_t> epoch_order(std::size_t n, std::uint64_t seed, std::uint64_t epoch) {
  std::vector<std::uint32_t> order(n);
  std::iota(order.begin(), order.end(), 0u);
  gqa::random::stream rng{seed, gqa::random::hash(epoch, {0x73687566666c65ULL})};  // "shuffle"
  for (std::size_t i = n; i > 1; --i) std::swap(order[i - 1], order[rng.uniform_int(static_cast<std::uint32_t>(i))]);
  return order;
}

}  // namespace uptrain
