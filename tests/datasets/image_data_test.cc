// Image data: IDX reading (raw and gzip) with its error cases, the explicit train/test split,
// normalisation, synthetic images and deterministic augmentation.
#include <gtest/gtest.h>
#include <zlib.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "datasets/image_data.h"
#include "tests/util/temp_dir.h"

namespace ringtrain {
namespace {

std::string Tmp(const std::string& name) {
  return testing::TestTemp(name);
}

std::string IdxBytes(std::vector<uint32_t> dims, const std::vector<uint8_t>& data, uint8_t type = 0x08) {
  std::string s = {0, 0, static_cast<char>(type), static_cast<char>(dims.size())};
  for (uint32_t d : dims)
    for (int k = 3; k >= 0; --k) s += static_cast<char>((d >> (8 * k)) & 0xFF);
  s.append(data.begin(), data.end());
  return s;
}

void WriteRaw(const std::string& p, const std::string& bytes) { std::ofstream(p, std::ios::binary) << bytes; }
void WriteGz(const std::string& p, const std::string& bytes) {
  gzFile f = gzopen(p.c_str(), "wb");
  gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size()));
  gzclose(f);
}

// 10 images of 4x4 (pixel = 10*i + j) and labels i % 10.
void MakeMnist(const std::string& im, const std::string& lb, int n = 10, int size = 4, bool gz = true) {
  std::vector<uint8_t> px, labels;
  for (int i = 0; i < n; ++i) {
    labels.push_back(static_cast<uint8_t>(i % 10));
    for (int j = 0; j < size * size; ++j) px.push_back(static_cast<uint8_t>((10 * i + j) % 256));
  }
  auto w = gz ? WriteGz : WriteRaw;
  w(im, IdxBytes({static_cast<uint32_t>(n), static_cast<uint32_t>(size), static_cast<uint32_t>(size)}, px));
  w(lb, IdxBytes({static_cast<uint32_t>(n)}, labels));
}

TEST(Idx, RawAndGzipReadTheSame) {
  MakeMnist(Tmp("a-img.gz"), Tmp("a-lab.gz"), 10, 4, true);
  MakeMnist(Tmp("a-img"), Tmp("a-lab"), 10, 4, false);
  auto g = ReadIdx(Tmp("a-img.gz"), 3);
  auto r = ReadIdx(Tmp("a-img"), 3);
  ASSERT_TRUE(g.ok()) << g.status().message();
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(g->dims, (std::vector<uint32_t>{10, 4, 4}));
  EXPECT_EQ(g->data, r->data);
  EXPECT_EQ(g->data[17], 11);  // image 1, pixel 1
}

TEST(Idx, Errors) {
  WriteRaw(Tmp("bad-magic"), std::string("\x01\x02\x08\x03", 4) + std::string(12, '\0'));
  auto a = ReadIdx(Tmp("bad-magic"), 3);
  ASSERT_FALSE(a.ok());
  EXPECT_NE(a.status().message().find("bad magic"), std::string::npos) << a.status().message();
  EXPECT_EQ(a.status().ExitCode(), 2);
  std::string full = IdxBytes({3, 4, 4}, std::vector<uint8_t>(48, 1));
  WriteGz(Tmp("trunc.gz"), full.substr(0, full.size() - 5));
  auto b = ReadIdx(Tmp("trunc.gz"), 3);
  ASSERT_FALSE(b.ok());
  EXPECT_NE(b.status().message().find("truncated"), std::string::npos) << b.status().message();
  WriteRaw(Tmp("type"), IdxBytes({3}, {1, 2, 3}, 0x0D));
  EXPECT_FALSE(ReadIdx(Tmp("type"), 1).ok());
  EXPECT_FALSE(ReadIdx(Tmp("a-lab"), 3).ok());  // wrong number of dimensions
  auto missing = ReadIdx("/nonexistent/x.idx", 3);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("/nonexistent/x.idx: no such file"), std::string::npos);
}

TEST(ImageData, MnistSplitAndNormalisation) {
  MakeMnist(Tmp("b-img.gz"), Tmp("b-lab.gz"), 10, 4, true);
  auto c = Config::Load("", {"data.source=mnist", "data.images=" + Tmp("b-img.gz"), "data.labels=" + Tmp("b-lab.gz"),
                             "data.train_count=8"});
  ASSERT_TRUE(c.ok());
  auto d = ImageData::Load(*c);
  ASSERT_TRUE(d.ok()) << d.status().message();
  EXPECT_EQ(d->Count(Split::kTrain), 8);
  EXPECT_EQ(d->Count(Split::kVal), 2);
  EXPECT_EQ(d->test_labels[0], 8);
  // Training split normalised to mean 0, std 1.
  double s = 0, ss = 0;
  for (float v : d->train_images) {
    s += v;
    ss += v * v;
  }
  const double n = static_cast<double>(d->train_images.size());
  EXPECT_NEAR(s / n, 0.0, 1e-5);
  EXPECT_NEAR(ss / n, 1.0, 1e-4);
}

TEST(ImageData, CountMismatchAndSizeMismatch) {
  MakeMnist(Tmp("c-img"), Tmp("c-lab"), 10, 4, false);
  MakeMnist(Tmp("c-img9"), Tmp("c-lab9"), 9, 4, false);
  auto c = Config::Load("", {"data.source=mnist", "data.images=" + Tmp("c-img"), "data.labels=" + Tmp("c-lab9")});
  auto d = ImageData::Load(*c);
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.status().message().find("has 10 images but"), std::string::npos) << d.status().message();
  MakeMnist(Tmp("c-img5"), Tmp("c-lab5"), 10, 5, false);
  auto c2 = Config::Load("", {"data.source=mnist", "data.images=" + Tmp("c-img"), "data.labels=" + Tmp("c-lab"),
                              "data.test_images=" + Tmp("c-img5"), "data.test_labels=" + Tmp("c-lab5")});
  auto d2 = ImageData::Load(*c2);
  ASSERT_FALSE(d2.ok());
  EXPECT_NE(d2.status().message().find("5x5 images, the training files hold 4x4"), std::string::npos)
      << d2.status().message();
}

TEST(ImageData, Cifar10BinaryBatches) {
  const std::string dir = Tmp("cifar");
  std::filesystem::create_directories(dir);
  // Record = label byte + 3072 pixel bytes (R plane, G plane, B plane); 3 records per file.
  auto write = [&](const std::string& name, int first_label) {
    std::string bytes;
    for (int r = 0; r < 3; ++r) {
      bytes += static_cast<char>((first_label + r) % 10);
      for (int i = 0; i < 3072; ++i) bytes += static_cast<char>((i / 1024) * 100 + r);
    }
    WriteRaw(dir + "/" + name, bytes);
  };
  for (int i = 1; i <= 5; ++i) write("data_batch_" + std::to_string(i) + ".bin", i);
  write("test_batch.bin", 7);
  auto c = Config::Load("", {"data.source=cifar10", "data.path=" + dir, "data.normalize=false"});
  auto d = ImageData::Load(*c);
  ASSERT_TRUE(d.ok()) << d.status().message();
  EXPECT_EQ(d->Count(Split::kTrain), 15);
  EXPECT_EQ(d->Count(Split::kVal), 3);
  EXPECT_EQ(d->channels, 3);
  EXPECT_EQ(d->train_labels[0], 1);
  EXPECT_EQ(d->test_labels[2], 9);
  EXPECT_FLOAT_EQ(d->train_images[1024 + 5], 100.0f / 255.0f);  // image 0, green plane
  std::string broken(3073 * 2 + 100, '\0');
  WriteRaw(dir + "/test_batch.bin", broken);
  auto e = ImageData::Load(*c);
  ASSERT_FALSE(e.ok());
  EXPECT_NE(e.status().message().find("test_batch.bin: size 6246 is not a multiple of 3073-byte records"),
            std::string::npos)
      << e.status().message();
}

TEST(ImageData, SharedMnistFile) {
  const char* env = std::getenv("RINGTRAIN_DATA");
  const std::string dir = std::string(env ? env : RINGTRAIN_SOURCE_DIR "/../shared/data") + "/mnist";
  if (!std::filesystem::exists(dir + "/t10k-images-idx3-ubyte.gz")) GTEST_SKIP() << "MNIST not found in " << dir;
  auto c = Config::Load("", {"data.source=mnist", "data.images=" + dir + "/t10k-images-idx3-ubyte.gz",
                             "data.labels=" + dir + "/t10k-labels-idx1-ubyte.gz", "data.train_count=8000"});
  auto d = ImageData::Load(*c);
  ASSERT_TRUE(d.ok()) << d.status().message();
  EXPECT_EQ(d->Count(Split::kTrain), 8000);
  EXPECT_EQ(d->Count(Split::kVal), 2000);
  EXPECT_EQ(d->height, 28);
  EXPECT_EQ(d->train_labels[0], 7);  // the first t10k image is a seven
}

TEST(ImageData, SyntheticAndAugmentationAreDeterministic) {
  auto c = Config::Load("", {"data.source=synthetic_images", "data.synthetic.train_images=50",
                             "data.synthetic.test_images=20", "data.augment.crop_pad=2", "data.augment.hflip=true"});
  auto d = ImageData::Load(*c);
  ASSERT_TRUE(d.ok()) << d.status().message();
  EXPECT_EQ(d->Count(Split::kTrain), 50);
  std::vector<float> a(4 * d->ImageSize()), b(4 * d->ImageSize()), e(2 * d->ImageSize());
  std::vector<int32_t> la(4), lb(4), le(2);
  d->SampleBatch(Split::kTrain, 5, 3, 0, 4, 4, true, a.data(), la.data());
  d->SampleBatch(Split::kTrain, 5, 3, 0, 4, 4, true, b.data(), lb.data());
  d->SampleBatch(Split::kTrain, 5, 3, 2, 2, 4, true, e.data(), le.data());
  EXPECT_EQ(a, b);
  EXPECT_EQ(la, lb);
  for (int64_t i = 0; i < 2 * d->ImageSize(); ++i) EXPECT_EQ(a[2 * d->ImageSize() + i], e[i]);
  // An epoch (50 images = 5 batches of 10) visits every image exactly once.
  std::vector<float> img(10 * d->ImageSize());
  std::vector<int32_t> lab(10);
  std::vector<int> seen(50, 0);
  for (int b = 0; b < 5; ++b) {
    d->SampleBatch(Split::kTrain, 5, static_cast<uint64_t>(b), 0, 10, 10, false, img.data(), lab.data());
    for (int r = 0; r < 10; ++r)
      for (int i = 0; i < 50; ++i)
        if (std::equal(img.begin() + r * d->ImageSize(), img.begin() + (r + 1) * d->ImageSize(),
                       d->train_images.begin() + i * d->ImageSize()))
          seen[i]++;
  }
  for (int i = 0; i < 50; ++i) EXPECT_EQ(seen[i], 1) << "image " << i;
  // Same class, different samples differ; the class pattern is shared (positive correlation).
  std::vector<float> x(d->ImageSize()), y(d->ImageSize());
  DrawSyntheticImage(x.data(), 3, 1, 16, 1, 1);
  DrawSyntheticImage(y.data(), 3, 1, 16, 1, 2);
  EXPECT_NE(x, y);
}

}  // namespace
}  // namespace ringtrain
