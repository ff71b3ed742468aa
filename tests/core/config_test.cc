// Config schema validation: defaults, YAML nesting, overrides, and the error for each kind of
// mistake (unknown key with suggestion, wrong type, out of range, bad choice).
#include <gtest/gtest.h>

#include "core/config.h"

namespace ringtrain {
namespace {

TEST(Config, DefaultsAndOverrides) {
  auto c = Config::Load("", {"model.n_layer=3", "optim.lr=0.01", "model.bias=false", "name=x"});
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_EQ(c->Int("model.n_layer"), 3);
  EXPECT_DOUBLE_EQ(c->Float("optim.lr"), 0.01);
  EXPECT_FALSE(c->Bool("model.bias"));
  EXPECT_EQ(c->Str("name"), "x");
  EXPECT_EQ(c->Int("model.n_head"), 4);  // default
}

TEST(Config, NestedYaml) {
  auto c = Config::FromYamlString("model:\n  n_layer: 5\n  dropout: 0.1\ntrain:\n  batch_size: 3\n", "t.yaml");
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_EQ(c->Int("model.n_layer"), 5);
  EXPECT_DOUBLE_EQ(c->Float("model.dropout"), 0.1);
  EXPECT_EQ(c->Int("train.batch_size"), 3);
}

TEST(Config, UnknownKeySuggestsNearest) {
  auto c = Config::FromYamlString("model:\n  n_layr: 5\n", "t.yaml");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().ExitCode(), 2);
  EXPECT_NE(c.status().message().find("unknown config key 'model.n_layr'"), std::string::npos) << c.status().message();
  EXPECT_NE(c.status().message().find("did you mean 'model.n_layer'"), std::string::npos) << c.status().message();
  auto d = Config::Load("", {"optim.learning_rat=1"});
  ASSERT_FALSE(d.ok());
  auto e = Config::Load("", {"train.lr=1"});  // right leaf, wrong section
  ASSERT_FALSE(e.ok());
  EXPECT_NE(e.status().message().find("did you mean 'optim.lr'"), std::string::npos) << e.status().message();
  auto f = Config::FromYamlString("modle:\n  n_layer: 5\n", "t.yaml");
  ASSERT_FALSE(f.ok());
  EXPECT_NE(f.status().message().find("'modle'"), std::string::npos);
}

TEST(Config, WrongTypeNamesKey) {
  auto c = Config::Load("", {"model.n_layer=four"});
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("model.n_layer: expected an integer, got 'four'"), std::string::npos)
      << c.status().message();
  auto d = Config::FromYamlString("model:\n  dropout: [1, 2]\n", "t.yaml");
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.status().message().find("model.dropout"), std::string::npos);
  auto e = Config::Load("", {"model.bias=maybe"});
  ASSERT_FALSE(e.ok());
  auto f = Config::Load("", {"model.n_layer=2.5"});
  ASSERT_FALSE(f.ok());
}

TEST(Config, RangeAndChoices) {
  auto c = Config::Load("", {"model.n_embd=-8"});
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().ExitCode(), 2);
  EXPECT_NE(c.status().message().find("model.n_embd = -8 is out of range"), std::string::npos) << c.status().message();
  auto d = Config::Load("", {"optim.name=lamb"});
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.status().message().find("not one of: sgd, adam, adamw"), std::string::npos) << d.status().message();
  EXPECT_TRUE(Config::Load("", {"train.steps=1e3"}).ok());  // integral float accepted for ints
}

TEST(Config, MissingFile) {
  auto c = Config::Load("/nonexistent/x.yaml", {});
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().ExitCode(), 2);
  EXPECT_NE(c.status().message().find("/nonexistent/x.yaml"), std::string::npos);
}

TEST(Config, JsonRoundTrip) {
  auto c = Config::Load("", {"model.n_layer=7", "optim.lr=0.00125", "data.path=a b.txt"});
  ASSERT_TRUE(c.ok());
  auto d = Config::FromJson(c->ToJson());
  ASSERT_TRUE(d.ok()) << d.status().message();
  EXPECT_EQ(d->Int("model.n_layer"), 7);
  EXPECT_DOUBLE_EQ(d->Float("optim.lr"), 0.00125);
  EXPECT_EQ(d->Str("data.path"), "a b.txt");
}

}  // namespace
}  // namespace ringtrain
