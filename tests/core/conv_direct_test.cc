// The direct 3x3 float convolution (conv_direct.cc) against the float64 im2col reference, which
// conv_gradcheck_test checks by definition and finite differences. Inputs, weights and output
// gradients are small integers, so every float sum is exact and the comparison is bitwise.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "core/cpu/conv_direct.h"
#include "core/cpu/conv_ops.h"
#include "core/rng.h"

namespace ringtrain {
namespace {

std::vector<double> SmallInts(size_t n, uint64_t key) {
  Rng r(11, RngPurpose::kTest, key);
  std::vector<double> v(n);
  for (auto& x : v) x = static_cast<double>(static_cast<int>(r.Uniform() * 5.0) - 2);  // -2..2
  return v;
}

std::vector<float> ToFloat(const std::vector<double>& v) { return std::vector<float>(v.begin(), v.end()); }

void ExpectSame(const std::vector<float>& got, const std::vector<double>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  int bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (static_cast<double>(got[i]) != want[i] && ++bad <= 5) ADD_FAILURE() << what << "[" << i << "] = " << got[i] << ", want " << want[i];
  }
  EXPECT_EQ(bad, 0) << what;
}

// (N, C, H, W, OC, bias, threads)
using Case = std::tuple<int, int, int, int, int, bool, int>;
class DirectConv : public ::testing::TestWithParam<Case> {};

TEST_P(DirectConv, MatchesIm2colReferenceExactly) {
  cpu::ConvShape s;
  bool bias;
  int threads;
  std::tie(s.N, s.C, s.H, s.W, s.OC, bias, threads) = GetParam();
  s.KH = s.KW = 3;
  s.stride = 1;
  s.pad = 1;
  if (!cpu::DirectConvSupported(s)) GTEST_SKIP() << "direct convolution kernels not built (no AVX2+FMA)";
  const int saved = omp_get_max_threads();
  omp_set_num_threads(threads);

  const size_t in_n = static_cast<size_t>(s.N) * s.C * s.H * s.W, out_n = static_cast<size_t>(s.N) * s.OC * s.OH() * s.OW();
  auto in = SmallInts(in_n, 1), w = SmallInts(s.OC * s.ColRows(), 2), b = SmallInts(s.OC, 3), g = SmallInts(out_n, 4);
  // Reference: float64 through im2col + GEMM.
  std::vector<double> out(out_n), din(in_n), dw(w.size(), 1.0), db(s.OC, 1.0), scratch_d(cpu::ConvScratchSize(s));
  cpu::Conv2dForward(out.data(), in.data(), w.data(), bias ? b.data() : nullptr, s, scratch_d.data());
  cpu::Conv2dBackward(din.data(), dw.data(), bias ? db.data() : nullptr, g.data(), in.data(), w.data(), s,
                      scratch_d.data());
  // Float: the direct path (dw and db start at 1 to check they accumulate).
  auto inf = ToFloat(in), wf = ToFloat(w), bf = ToFloat(b), gf = ToFloat(g);
  std::vector<float> outf(out_n, NAN), dinf(in_n, NAN), dwf(w.size(), 1.f), dbf(s.OC, 1.f), scratch(cpu::ConvScratchSize(s));
  cpu::Conv2dForward(outf.data(), inf.data(), wf.data(), bias ? bf.data() : nullptr, s, scratch.data());
  cpu::Conv2dBackward(dinf.data(), dwf.data(), bias ? dbf.data() : nullptr, gf.data(), inf.data(), wf.data(), s,
                      scratch.data());
  omp_set_num_threads(saved);
  ExpectSame(outf, out, "out");
  ExpectSame(dinf, din, "din");
  ExpectSame(dwf, dw, "dw");
  if (bias) ExpectSame(dbf, db, "db");
}

INSTANTIATE_TEST_SUITE_P(Shapes, DirectConv,
                         ::testing::Values(Case{3, 3, 5, 8, 5, true, 1},      // channel and pixel remainders
                                           Case{2, 16, 32, 32, 16, false, 1},  // ResNet stage 1
                                           Case{4, 7, 8, 16, 9, true, 2},      // odd channels, 2 threads
                                           Case{3, 32, 16, 16, 32, false, 2},  // ResNet stage 2
                                           Case{2, 64, 8, 8, 64, false, 1},    // ResNet stage 3
                                           Case{1, 2, 1, 8, 3, true, 1}),      // a single row
                         [](const auto& info) {
                           const auto& c = info.param;
                           std::ostringstream name;
                           name << "N" << std::get<0>(c) << "C" << std::get<1>(c) << "H" << std::get<2>(c) << "W"
                                << std::get<3>(c) << "OC" << std::get<4>(c) << (std::get<5>(c) ? "Bias" : "") << "T"
                                << std::get<6>(c);
                           return name.str();
                         });

TEST(DirectConvShapes, OnlyStrideOne3x3WithVectorWidths) {
  cpu::ConvShape s;
  s.C = s.OC = 4;
  s.H = s.W = 16;
  s.KH = s.KW = 3;
  s.pad = 1;
  const bool have = cpu::DirectConvSupported(s);
  if (!have) GTEST_SKIP() << "direct convolution kernels not built (no AVX2+FMA)";
  s.stride = 2;
  EXPECT_FALSE(cpu::DirectConvSupported(s));
  s.stride = 1;
  s.W = 12;
  EXPECT_FALSE(cpu::DirectConvSupported(s));
  s.W = 16;
  s.KH = s.KW = 5;
  EXPECT_FALSE(cpu::DirectConvSupported(s));
}

}  // namespace
}  // namespace ringtrain
