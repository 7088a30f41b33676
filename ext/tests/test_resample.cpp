// Unit tests of lookalike/resample.hpp: the AVX-512 path equals the scalar reference byte for byte
// (sizes up, down, odd, tiny, a row shorter than one window, scales past one window), and the
// reference agrees with a direct double-precision evaluation of the same filter within rounding.
// Closeness to Pillow itself is tested from Python (tests/native/test_resample.py).
#include "lookalike/resample.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

namespace {

namespace rs = lookalike::resample;
using lookalike::SimdLevel;

std::vector<std::uint8_t> random_image(int w, int h, std::uint32_t seed) {
  std::mt19937 gen(seed);
  std::uniform_int_distribution<int> dist(0, 255);
  std::vector<std::uint8_t> out(static_cast<std::size_t>(w) * h * 4);
  for (auto& v : out) v = static_cast<std::uint8_t>(dist(gen));
  return out;
}

std::vector<std::uint8_t> run(const std::vector<std::uint8_t>& src, int w, int h, int ow, int oh, SimdLevel level) {
  std::vector<std::uint8_t> out(static_cast<std::size_t>(ow) * oh * 4, 0xAB);
  rs::downscale_rgbx(src.data(), w, h, out.data(), ow, oh, level);
  return out;
}

using Sizes = std::tuple<int, int, int, int>;

class ResampleSizes : public ::testing::TestWithParam<Sizes> {};

TEST_P(ResampleSizes, Avx512EqualsScalar) {
  if (!rs::avx512_available()) GTEST_SKIP() << "no AVX-512 VBMI on this CPU";
  const auto [w, h, ow, oh] = GetParam();
  const auto src = random_image(w, h, static_cast<std::uint32_t>(w * 7919 + h));
  EXPECT_EQ(run(src, w, h, ow, oh, SimdLevel::avx512), run(src, w, h, ow, oh, SimdLevel::scalar));
}

INSTANTIATE_TEST_SUITE_P(Shapes, ResampleSizes,
                         ::testing::Values(Sizes{640, 480, 416, 312}, Sizes{480, 640, 312, 416},
                                           Sizes{1000, 750, 416, 312}, Sizes{417, 313, 416, 312},
                                           Sizes{640, 480, 640, 300}, Sizes{640, 480, 300, 480},
                                           Sizes{20, 15, 7, 5}, Sizes{5, 5, 3, 3}, Sizes{3, 2, 1, 1},
                                           Sizes{100, 100, 200, 150}, Sizes{2000, 100, 416, 21},
                                           Sizes{4000, 30, 400, 3}, Sizes{64, 64, 63, 63}, Sizes{1, 9, 1, 4}));

// A direct evaluation: each output from the filter's double weights over the horizontally
// resampled (rounded) rows, as the fixed-point code does; they may differ by the fixed point's
// rounding only.
TEST(Resample, ScalarMatchesADoubleEvaluation) {
  const int w = 97, h = 61, ow = 40, oh = 29;
  const auto src = random_image(w, h, 3);
  const auto got = run(src, w, h, ow, oh, SimdLevel::scalar);
  auto weights = [](int in, int out, int i, std::vector<double>& k) {
    const double scale = static_cast<double>(in) / out, fs = std::max(scale, 1.0), support = 2.0 * fs;
    const double center = (i + 0.5) * scale;
    const int lo = std::max(static_cast<int>(center - support + 0.5), 0);
    const int hi = std::min(static_cast<int>(center + support + 0.5), in);
    k.assign(static_cast<std::size_t>(in), 0.0);
    double sum = 0;
    for (int x = lo; x < hi; ++x) sum += k[x] = rs::bicubic((x - center + 0.5) / fs);
    for (double& v : k) v /= sum;
  };
  std::vector<double> k;
  std::vector<double> mid(static_cast<std::size_t>(h) * ow * 4);
  for (int xx = 0; xx < ow; ++xx) {
    weights(w, ow, xx, k);
    for (int y = 0; y < h; ++y) {
      for (int c = 0; c < 4; ++c) {
        double s = 0;
        for (int x = 0; x < w; ++x) s += k[x] * src[(static_cast<std::size_t>(y) * w + x) * 4 + c];
        mid[(static_cast<std::size_t>(y) * ow + xx) * 4 + c] = std::clamp(std::floor(s + 0.5), 0.0, 255.0);
      }
    }
  }
  int worst = 0;
  for (int yy = 0; yy < oh; ++yy) {
    weights(h, oh, yy, k);
    for (int i = 0; i < ow * 4; ++i) {
      double s = 0;
      for (int y = 0; y < h; ++y) s += k[y] * mid[static_cast<std::size_t>(y) * ow * 4 + i];
      const int want = static_cast<int>(std::clamp(std::floor(s + 0.5), 0.0, 255.0));
      worst = std::max(worst, std::abs(want - got[static_cast<std::size_t>(yy) * ow * 4 + i]));
    }
  }
  EXPECT_LE(worst, 1);
}

TEST(Resample, ASameSizeCallCopies) {
  const auto src = random_image(13, 7, 5);
  EXPECT_EQ(run(src, 13, 7, 13, 7, SimdLevel::scalar), src);
}

TEST(Resample, AFlatImageStaysFlat) {
  std::vector<std::uint8_t> src(640 * 480 * 4, 200);
  for (SimdLevel level : {SimdLevel::scalar, lookalike::default_simd_level()}) {
    for (std::uint8_t v : run(src, 640, 480, 416, 312, level)) ASSERT_EQ(v, 200);
  }
}

TEST(Resample, BadSizesAreRefused) {
  std::vector<std::uint8_t> px(4), out(4);
  EXPECT_THROW(rs::downscale_rgbx(px.data(), 0, 1, out.data(), 1, 1, SimdLevel::scalar), std::invalid_argument);
  EXPECT_THROW(rs::downscale_rgbx(px.data(), 1, 1, out.data(), 1, 0, SimdLevel::scalar), std::invalid_argument);
}

TEST(Resample, OnlyFastDeclinesWhereTheScalarCodeWouldRun) {
  const auto src = random_image(8000, 2, 9);
  std::vector<std::uint8_t> out(416 * 1 * 4, 0xAB);
  EXPECT_FALSE(rs::downscale_rgbx(src.data(), 8000, 2, out.data(), 416, 1, SimdLevel::scalar, true));
  EXPECT_FALSE(rs::downscale_rgbx(src.data(), 8000, 2, out.data(), 416, 1, SimdLevel::avx512, true));
  EXPECT_EQ(out, std::vector<std::uint8_t>(416 * 4, 0xAB));  // untouched
  if (rs::avx512_available()) {
    EXPECT_TRUE(rs::downscale_rgbx(src.data(), 640, 3, out.data(), 416, 1, SimdLevel::avx512, true));
  }
}

TEST(Resample, KernelNameSaysWhichCodeRuns) {
  EXPECT_STREQ(rs::kernel_name(640, 416, SimdLevel::scalar), "scalar");
  if (rs::avx512_available()) {
    EXPECT_STREQ(rs::kernel_name(640, 416, SimdLevel::avx512), "avx512vbmi");
    EXPECT_STREQ(rs::kernel_name(8000, 416, SimdLevel::avx512), "scalar");  // taps past one window
    EXPECT_STREQ(rs::kernel_name(1600, 416, SimdLevel::avx512), "avx512vbmi");  // 3.8x: 16 taps, one window
  }
}

}  // namespace
