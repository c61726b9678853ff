// examples/uptrain/tests/protocol_test.cpp: the protocol on synthetic images: training lowers the loss and
// is deterministic, and every run's result is the same whether the pool trains one run at a time or two.
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "protocol.hpp"

namespace uptrain {
namespace {

/// n images whose class is readable from the pixels (class c brightens row band c), seeded noise elsewhere.
image_set synthetic(std::size_t n, std::uint64_t seed) {
  image_set s;
  s.images.resize(n * image_set::pixels);
  s.labels.resize(n);
  gqa::random::stream rng{seed, 0};
  for (std::size_t i = 0; i < n; ++i) {
    const auto c = static_cast<std::uint8_t>(i % image_set::classes);
    s.labels[i] = c;
    for (int p = 0; p < image_set::pixels; ++p) {
      const int row = p / image_set::cols;
      const bool band = row / 3 == c;
      s.images[i * image_set::pixels + static_cast<std::size_t>(p)] =
          static_cast<std::uint8_t>((band ? 160 : 0) + rng.uniform_int(64));
    }
  }
  return s;
}

protocol_options tiny_protocol() {
  protocol_options p;
  p.model = {16, 4, 1, 2};
  p.groups = 2;
  p.dgqa_window = 1;
  p.seeds = 2;
  p.pretrain = {8, 16, 3e-3, 2, 0.05, 1.0, 4};
  p.uptrain = {3, 16, 1e-3, 1, 0.05, 1.0, 3};
  p.converted_eval = 16;
  return p;
}

TEST(protocol, training_lowers_the_loss_and_is_deterministic) {
  const image_set data = synthetic(256, 1);
  const vit_config cfg{16, 4, 1, 2};
  const train_options opt{40, 32, 3e-3, 4, 0.05, 1.0, 10};
  vit a(cfg, mha_spec(16, 4), 5), b = a;
  const run_result ra = train(a, data, opt, 9), rb = train(b, data, opt, 9);
  ASSERT_EQ(ra.loss_curve.size(), 4u);
  EXPECT_LT(ra.loss_curve.back().second, 0.9 * ra.loss_curve.front().second);
  for (std::size_t i = 0; i < ra.loss_curve.size(); ++i) EXPECT_EQ(ra.loss_curve[i].second, rb.loss_curve[i].second);
  const std::vector<param<float>*> pa = a.parameters(), pb = b.parameters();
  for (std::size_t i = 0; i < pa.size(); ++i) EXPECT_EQ(pa[i]->value, pb[i]->value) << "parameter " << i;
}

TEST(protocol, results_do_not_depend_on_the_number_of_jobs) {
  fashion_mnist data{synthetic(96, 2), synthetic(40, 3)};
  protocol_options one = tiny_protocol(), two = tiny_protocol();
  one.jobs = 1;
  two.jobs = 2;
  const protocol_result r1 = run_protocol(one, data), r2 = run_protocol(two, data);
  ASSERT_EQ(r1.runs.size(), r1.schemes.size() * 2);
  ASSERT_EQ(r1.runs.size(), r2.runs.size());
  for (std::size_t i = 0; i < r1.runs.size(); ++i) {
    SCOPED_TRACE(r1.runs[i].scheme + " seed " + std::to_string(r1.runs[i].seed));
    EXPECT_EQ(r1.runs[i].scheme, r2.runs[i].scheme);
    EXPECT_EQ(r1.runs[i].test_loss, r2.runs[i].test_loss);
    EXPECT_EQ(r1.runs[i].test_accuracy, r2.runs[i].test_accuracy);
    EXPECT_EQ(r1.runs[i].converted_accuracy, r2.runs[i].converted_accuracy);
    EXPECT_EQ(r1.runs[i].allocations, r2.runs[i].allocations);
  }
  for (std::size_t s = 0; s < r1.pretrain.size(); ++s) EXPECT_EQ(r1.pretrain[s].test_loss, r2.pretrain[s].test_loss);
  // Different seeds give different models.
  EXPECT_NE(r1.pretrain[0].test_loss, r1.pretrain[1].test_loss);
}

}  // namespace
}  // namespace uptrain
