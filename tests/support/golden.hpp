// tests/support/golden.hpp: reading the authors' golden vectors (tests/data/golden, README there): a
// small JSON reader (objects, arrays, numbers kept as their text so a float32 value is parsed with strtof,
// strings, true/false/null), the tensor format {shape, dtype, data}, and the error measures and tally the
// golden tests report. Internal linkage (anonymous namespace): suite headers include this once per ISA.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#ifndef GQA_TEST_DATA_DIR
#error "golden.hpp: tests/CMakeLists.txt defines GQA_TEST_DATA_DIR (the tests/data folder)"
#endif

namespace gqa::test {
namespace {

/// One JSON value. Numbers keep their literal text: the golden floats are the shortest decimals that
/// round-trip through float32, so strtof of the text gives the authors' exact bits.
class json {
 public:
  enum class kind { null, boolean, number, string, array, object };

  kind type() const noexcept { return kind_; }
  bool is_null() const noexcept { return kind_ == kind::null; }
  bool has(std::string_view key) const {
    for (const auto& m : members_)
      if (m.first == key) return true;
    return false;
  }
  /// The member `key` of an object; throws std::runtime_error naming the key if absent.
  const json& operator[](std::string_view key) const {
    expect(kind::object, "an object");
    for (const auto& m : members_)
      if (m.first == key) return m.second;
    throw std::runtime_error("golden json: no member \"" + std::string(key) + "\"");
  }
  const json& operator[](std::size_t i) const {
    expect(kind::array, "an array");
    if (i >= items_.size()) throw std::runtime_error("golden json: index " + std::to_string(i) + " out of range");
    return items_[i];
  }
  std::size_t size() const { return kind_ == kind::object ? members_.size() : items_.size(); }
  const std::vector<json>& items() const {
    expect(kind::array, "an array");
    return items_;
  }
  bool boolean() const {
    expect(kind::boolean, "a boolean");
    return bool_;
  }
  const std::string& str() const {
    expect(kind::string, "a string");
    return text_;
  }
  double number() const {
    expect(kind::number, "a number");
    return std::strtod(text_.c_str(), nullptr);
  }
  float f32() const {
    expect(kind::number, "a number");
    return std::strtof(text_.c_str(), nullptr);
  }
  std::int64_t integer() const {
    expect(kind::number, "a number");
    return std::strtoll(text_.c_str(), nullptr, 10);
  }
  /// An array of numbers as float32 values / as ints.
  std::vector<float> floats() const {
    std::vector<float> out;
    for (const json& x : items()) out.push_back(x.f32());
    return out;
  }
  std::vector<int> ints() const {
    std::vector<int> out;
    for (const json& x : items()) out.push_back(static_cast<int>(x.integer()));
    return out;
  }

  static json parse(std::string_view text) {
    std::size_t at = 0;
    json v = parse_value(text, at);
    skip_space(text, at);
    if (at != text.size()) fail_at(at, "trailing characters");
    return v;
  }

 private:
  void expect(kind k, const char* what) const {
    if (kind_ != k) throw std::runtime_error(std::string("golden json: value is not ") + what);
  }
  [[noreturn]] static void fail_at(std::size_t at, const std::string& what) {
    throw std::runtime_error("golden json: " + what + " at offset " + std::to_string(at));
  }
  static void skip_space(std::string_view t, std::size_t& at) {
    while (at < t.size() && (t[at] == ' ' || t[at] == '\n' || t[at] == '\r' || t[at] == '\t')) ++at;
  }
  static void append_utf8(std::string& out, std::uint32_t cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xc0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xe0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
      out += static_cast<char>(0x80 | (cp & 0x3f));
    } else {
      out += static_cast<char>(0xf0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
      out += static_cast<char>(0x80 | (cp & 0x3f));
    }
  }
  static std::uint32_t hex4(std::string_view t, std::size_t& at) {
    if (at + 4 > t.size()) fail_at(at, "short \\u escape");
    std::uint32_t v = 0;
    for (int i = 0; i < 4; ++i, ++at) {
      const char c = t[at];
      v = v * 16 + static_cast<std::uint32_t>(c >= '0' && c <= '9'   ? c - '0'
                                              : c >= 'a' && c <= 'f' ? c - 'a' + 10
                                              : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                                                     : (fail_at(at, "bad \\u escape"), 0));
    }
    return v;
  }
  static std::string parse_string(std::string_view t, std::size_t& at) {
    ++at;  // the opening quote
    std::string out;
    while (true) {
      if (at >= t.size()) fail_at(at, "unterminated string");
      const char c = t[at++];
      if (c == '"') return out;
      if (c != '\\') {
        out += c;
        continue;
      }
      if (at >= t.size()) fail_at(at, "unterminated escape");
      const char e = t[at++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          std::uint32_t cp = hex4(t, at);
          if (cp >= 0xd800 && cp < 0xdc00 && at + 6 <= t.size() && t[at] == '\\' && t[at + 1] == 'u') {
            at += 2;
            const std::uint32_t lo = hex4(t, at);
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
          }
          append_utf8(out, cp);
          break;
        }
        default: fail_at(at, "bad escape");
      }
    }
  }
  static json parse_value(std::string_view t, std::size_t& at) {
    skip_space(t, at);
    if (at >= t.size()) fail_at(at, "unexpected end");
    json v;
    const char c = t[at];
    if (c == '{') {
      v.kind_ = kind::object;
      ++at;
      skip_space(t, at);
      if (at < t.size() && t[at] == '}') return ++at, v;
      while (true) {
        skip_space(t, at);
        if (at >= t.size() || t[at] != '"') fail_at(at, "expected a key");
        std::string key = parse_string(t, at);
        skip_space(t, at);
        if (at >= t.size() || t[at] != ':') fail_at(at, "expected ':'");
        ++at;
        v.members_.emplace_back(std::move(key), parse_value(t, at));
        skip_space(t, at);
        if (at < t.size() && t[at] == ',') {
          ++at;
        } else if (at < t.size() && t[at] == '}') {
          return ++at, v;
        } else {
          fail_at(at, "expected ',' or '}'");
        }
      }
    }
    if (c == '[') {
      v.kind_ = kind::array;
      ++at;
      skip_space(t, at);
      if (at < t.size() && t[at] == ']') return ++at, v;
      while (true) {
        v.items_.push_back(parse_value(t, at));
        skip_space(t, at);
        if (at < t.size() && t[at] == ',') {
          ++at;
        } else if (at < t.size() && t[at] == ']') {
          return ++at, v;
        } else {
          fail_at(at, "expected ',' or ']'");
        }
      }
    }
    if (c == '"') {
      v.kind_ = kind::string;
      v.text_ = parse_string(t, at);
      return v;
    }
    for (const auto& [word, k, b] : {std::tuple{std::string_view("true"), kind::boolean, true},
                                     std::tuple{std::string_view("false"), kind::boolean, false},
                                     std::tuple{std::string_view("null"), kind::null, false}})
      if (t.substr(at, word.size()) == word) {
        at += word.size();
        v.kind_ = k;
        v.bool_ = b;
        return v;
      }
    const std::size_t start = at;
    while (at < t.size() && (std::isdigit(static_cast<unsigned char>(t[at])) || t[at] == '-' || t[at] == '+' ||
                             t[at] == '.' || t[at] == 'e' || t[at] == 'E'))
      ++at;
    if (at == start) fail_at(at, "unexpected character");
    v.kind_ = kind::number;
    v.text_ = std::string(t.substr(start, at - start));
    return v;
  }

  kind kind_ = kind::null;
  bool bool_ = false;
  std::string text_;
  std::vector<json> items_;
  std::vector<std::pair<std::string, json>> members_;
};

/// tests/data/golden/<name>, parsed; throws std::runtime_error naming the path if it cannot be read.
json load_golden(const std::string& name) {
  const std::string path = std::string(GQA_TEST_DATA_DIR) + "/golden/" + name;
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open golden file " + path);
  std::ostringstream os;
  os << f.rdbuf();
  return json::parse(os.str());
}

/// A golden tensor: {shape, dtype float32, data row-major}; throws if the data does not fill the shape.
struct golden_tensor {
  std::vector<std::int64_t> shape;
  std::vector<float> data;
  std::int64_t dim(std::size_t i) const { return shape.at(i); }
};
golden_tensor tensor_of(const json& t) {
  golden_tensor out;
  for (const json& x : t["shape"].items()) out.shape.push_back(x.integer());
  if (t["dtype"].str() != "float32") throw std::runtime_error("golden tensor dtype " + t["dtype"].str());
  out.data = t["data"].floats();
  std::int64_t n = 1;
  for (const auto s : out.shape) n *= s;
  if (n != static_cast<std::int64_t>(out.data.size()))
    throw std::runtime_error("golden tensor: " + std::to_string(out.data.size()) + " values for " + std::to_string(n));
  return out;
}

/// max_i |a_i − b_i| (a and b of equal length).
template <class A, class B>
double max_abs_error(const std::vector<A>& a, const std::vector<B>& b) {
  double e = 0.0;
  for (std::size_t i = 0; i < a.size() && i < b.size(); ++i)
    e = std::max(e, std::fabs(static_cast<double>(a[i]) - static_cast<double>(b[i])));
  return a.size() == b.size() ? e : HUGE_VAL;
}
/// Normwise relative error max_i |a_i − b_i| / max_i |b_i| (b the golden values; no division by a tiny
/// element, so values that cancel to near zero do not dominate).
template <class A, class B>
double max_rel_error(const std::vector<A>& a, const std::vector<B>& b) {
  double scale = 0.0;
  for (const auto x : b) scale = std::max(scale, std::fabs(static_cast<double>(x)));
  return max_abs_error(a, b) / std::max(scale, 1e-30);
}
/// Elementwise relative error max_i |a_i − b_i| / |b_i| (for positive quantities such as norms).
template <class A, class B>
double max_elementwise_rel_error(const std::vector<A>& a, const std::vector<B>& b) {
  if (a.size() != b.size()) return HUGE_VAL;
  double e = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i)
    e = std::max(e, std::fabs(static_cast<double>(a[i]) - static_cast<double>(b[i])) /
                        std::max(std::fabs(static_cast<double>(b[i])), 1e-30));
  return e;
}

/// Counts the golden checks of one test and the largest error seen per kind, and prints a summary line
/// ("golden kdgqa.json: 165 of 165 checks agree; ...") that the reports quote.
class golden_tally {
 public:
  explicit golden_tally(std::string name) : name_(std::move(name)) {}
  golden_tally(const golden_tally&) = delete;
  golden_tally& operator=(const golden_tally&) = delete;
  ~golden_tally() {
    std::ostringstream os;
    os << "golden " << name_ << ": " << agree_ << " of " << total_ << " checks agree";
    for (const auto& [what, err] : worst_) os << "; max " << what << " " << err;
    std::cout << os.str() << std::endl;
    ::testing::Test::RecordProperty("golden_" + name_, os.str());
  }
  /// One check: expects ok (reported at the caller with `context`).
  void check(bool ok, const std::string& context) {
    ++total_;
    if (ok) {
      ++agree_;
    } else {
      ADD_FAILURE() << name_ << ": " << context;
    }
  }
  /// One check of an error against its bound; records the largest error of kind `what`.
  void check_error(double err, double bound, const std::string& what, const std::string& context) {
    note(what, err);
    std::ostringstream os;
    os << context << ": " << what << " " << err << " > " << bound;
    check(err <= bound, os.str());
  }
  void note(const std::string& what, double err) {
    for (auto& w : worst_)
      if (w.first == what) {
        w.second = std::max(w.second, err);
        return;
      }
    worst_.emplace_back(what, err);
  }
  int total() const noexcept { return total_; }

 private:
  std::string name_;
  int total_ = 0, agree_ = 0;
  std::vector<std::pair<std::string, double>> worst_;
};

}  // namespace
}  // namespace gqa::test
