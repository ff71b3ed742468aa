// Data sources: UTF-8 char vocabulary, token files, the synthetic Markov source's exact entropy
// rate (checked against a closed form and against the empirical conditional entropy of its own
// stream), and deterministic batch sampling.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>

#include "datasets/token_data.h"
#include "tests/util/temp_dir.h"

namespace ringtrain {
namespace {

std::string TempFile(const std::string& name, const std::string& bytes) {
  const std::string p = testing::TestTemp(name);
  std::ofstream(p, std::ios::binary) << bytes;
  return p;
}

TEST(CharVocab, Utf8RoundTripAndUnknownCharacter) {
  auto v = CharVocab::FromText("héllo wörld", "t");
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(v->size(), 9);  // h e l o ' ' w r d é ö -> h,é,l,o,' ',w,ö,r,d
  auto ids = v->Encode("wörld", "prompt");
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(v->Decode(*ids), "wörld");
  auto bad = v->Encode("héllo!", "prompt");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("'!' at position 5"), std::string::npos) << bad.status().message();
  EXPECT_FALSE(CharVocab::FromText(std::string("ab\xff"), "t").ok());
}

TEST(TokenData, TextSourceSplitsTail) {
  std::string text;
  for (int i = 0; i < 100; ++i) text += "abcdefghij";
  const std::string p = TempFile("text.txt", text);
  auto c = Config::Load("", {"data.path=" + p, "model.block_size=8"});
  ASSERT_TRUE(c.ok());
  auto d = TokenData::Load(*c);
  ASSERT_TRUE(d.ok()) << d.status().message();
  EXPECT_EQ(d->vocab_size, 10);
  EXPECT_EQ(d->val.size(), 100u);
  EXPECT_EQ(d->train.size(), 900u);
  EXPECT_EQ(d->val[0], 0);  // 'a' at offset 900
}

TEST(TokenData, TokenFiles) {
  std::string bytes;
  for (int i = 0; i < 600; ++i) {
    const uint16_t t = static_cast<uint16_t>(i % 300);
    bytes += static_cast<char>(t & 0xFF);
    bytes += static_cast<char>(t >> 8);
  }
  const std::string p = TempFile("train.bin", bytes);
  auto c = Config::Load("", {"data.source=tokens", "data.path=" + p, "model.block_size=8"});
  ASSERT_TRUE(c.ok());
  auto d = TokenData::Load(*c);
  ASSERT_TRUE(d.ok()) << d.status().message();
  EXPECT_EQ(d->vocab_size, 300);
  EXPECT_EQ(d->train[299], 299);
  const std::string odd = TempFile("odd.bin", bytes + "x");
  auto c2 = Config::Load("", {"data.source=tokens", "data.path=" + odd});
  auto d2 = TokenData::Load(*c2);
  ASSERT_FALSE(d2.ok());
  EXPECT_NE(d2.status().message().find("odd"), std::string::npos);
}

TEST(TokenData, MissingFileIsNamed) {
  auto c = Config::Load("", {"data.path=/no/such/file.txt"});
  auto d = TokenData::Load(*c);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().ExitCode(), 2);
  EXPECT_NE(d.status().message().find("/no/such/file.txt: no such file"), std::string::npos);
}

TEST(MarkovSource, EntropyRateClosedFormOrderOne) {
  // branching = vocab: every row is 0.02/V + 0.98 * w; for a 2-symbol order-1 chain the
  // stationary distribution is (q, p) / (p + q) with p = P(0->1), q = P(1->0).
  MarkovSource m = MarkovSource::Make(2, 1, 2, 5);
  const double p = m.probs[1], q = m.probs[2];
  const double pi0 = q / (p + q), pi1 = p / (p + q);
  auto h = [](double a) { return -a * std::log(a) - (1 - a) * std::log(1 - a); };
  EXPECT_NEAR(m.EntropyRate(), pi0 * h(p) + pi1 * h(q), 1e-12);
}

TEST(MarkovSource, EntropyRateMatchesEmpiricalConditionalEntropy) {
  MarkovSource m = MarkovSource::Make(8, 2, 3, 11);
  const auto s = m.Generate(2000000, 3);
  // Empirical conditional entropy of the next symbol given the two previous ones.
  std::map<int, std::vector<double>> counts;
  for (size_t i = 2; i < s.size(); ++i) {
    auto& c = counts[s[i - 2] * 8 + s[i - 1]];
    c.resize(8);
    c[s[i]] += 1;
  }
  double h = 0, total = static_cast<double>(s.size() - 2);
  for (auto& [ctx, c] : counts) {
    double n = 0;
    for (double x : c) n += x;
    for (double x : c)
      if (x > 0) h -= x / total * std::log(x / n);
  }
  EXPECT_NEAR(h, m.EntropyRate(), 0.01);
}

TEST(TokenData, SamplingIsDeterministicAndRowIndependent) {
  auto c = Config::Load("", {"data.synthetic.length=20000", "model.block_size=16"});
  auto d = TokenData::Load(*c);
  ASSERT_TRUE(d.ok());
  std::vector<int32_t> t1(4 * 16), y1(4 * 16), t2(2 * 16), y2(2 * 16);
  d->SampleBatch(Split::kTrain, 1, 7, 0, 4, 16, t1.data(), y1.data());
  d->SampleBatch(Split::kTrain, 1, 7, 2, 2, 16, t2.data(), y2.data());  // rows 2..3 drawn alone
  for (int i = 0; i < 32; ++i) EXPECT_EQ(t1[32 + i], t2[i]);
  for (int i = 0; i < 15; ++i) EXPECT_EQ(y1[i], t1[i + 1]);  // targets are the next tokens
  d->SampleBatch(Split::kTrain, 1, 8, 0, 2, 16, t2.data(), y2.data());
  EXPECT_NE(std::vector<int32_t>(t1.begin(), t1.begin() + 32), t2);
}

}  // namespace
}  // namespace ringtrain
