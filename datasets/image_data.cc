#include "datasets/image_data.h"

#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "core/rng.h"

namespace ringtrain {

StatusOr<IdxArray> ReadIdx(const std::string& path, int expect_ndims) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) return NotFound("IDX file " + path + ": no such file");
  gzFile f = gzopen(path.c_str(), "rb");
  if (!f) return IoError("IDX file " + path + ": cannot open");
  std::string bytes;
  char buf[1 << 16];
  int n;
  while ((n = gzread(f, buf, sizeof buf)) > 0) bytes.append(buf, static_cast<size_t>(n));
  int err = 0;
  const char* msg = gzerror(f, &err);
  const std::string zmsg = msg ? msg : "";
  gzclose(f);
  if (n < 0 || (err != Z_OK && err != Z_STREAM_END))
    return DataLoss("IDX file " + path + ": gzip data is corrupt or truncated (" + zmsg + ")");
  auto u8 = [&](size_t i) { return static_cast<uint8_t>(bytes[i]); };
  if (bytes.size() < 4 || u8(0) != 0 || u8(1) != 0)
    return DataLoss("IDX file " + path + ": bad magic number (not an IDX file)");
  if (u8(2) != 0x08)
    return DataLoss("IDX file " + path + ": element type 0x" + std::to_string(u8(2)) + " is not unsigned byte (0x08)");
  const int nd = u8(3);
  if (nd != expect_ndims)
    return DataLoss("IDX file " + path + ": has " + std::to_string(nd) + " dimensions, expected " +
                    std::to_string(expect_ndims));
  if (bytes.size() < 4 + 4 * static_cast<size_t>(nd)) return DataLoss("IDX file " + path + ": truncated header");
  IdxArray a;
  uint64_t total = 1;
  for (int d = 0; d < nd; ++d) {
    const size_t o = 4 + 4 * static_cast<size_t>(d);
    const uint32_t v = (uint32_t(u8(o)) << 24) | (uint32_t(u8(o + 1)) << 16) | (uint32_t(u8(o + 2)) << 8) | u8(o + 3);
    a.dims.push_back(v);
    total *= v;
  }
  const size_t header = 4 + 4 * static_cast<size_t>(nd);
  if (bytes.size() - header != total)
    return DataLoss("IDX file " + path + ": " + std::to_string(bytes.size() - header) + " data bytes, header says " +
                    std::to_string(total) + (bytes.size() - header < total ? " (truncated)" : " (trailing bytes)"));
  a.data.assign(bytes.begin() + static_cast<std::ptrdiff_t>(header), bytes.end());
  return a;
}

void DrawSyntheticImage(float* img, int label, int channels, int size, uint64_t seed, uint64_t sample) {
  // Class pattern: a sum of 3 random 2-D cosines per channel (smooth, class-specific).
  Rng pat(seed, RngPurpose::kSynthetic, 100 + static_cast<uint64_t>(label));
  Rng rng(seed, RngPurpose::kSynthetic, 1000 + static_cast<uint64_t>(label), sample);
  const int dx = static_cast<int>(rng.Below(7)) - 3, dy = static_cast<int>(rng.Below(7)) - 3;
  const double contrast = 0.7 + 0.6 * rng.Uniform();
  for (int c = 0; c < channels; ++c) {
    double fx[3], fy[3], ph[3], amp[3];
    for (int k = 0; k < 3; ++k) {
      fx[k] = (pat.Uniform() * 2 - 1) * 0.9;
      fy[k] = (pat.Uniform() * 2 - 1) * 0.9;
      ph[k] = pat.Uniform() * 6.283185307179586;
      amp[k] = 0.5 + pat.Uniform();
    }
    for (int y = 0; y < size; ++y) {
      for (int x = 0; x < size; ++x) {
        double v = 0;
        for (int k = 0; k < 3; ++k) v += amp[k] * std::cos(fx[k] * (x + dx) + fy[k] * (y + dy) + ph[k]);
        img[(static_cast<int64_t>(c) * size + y) * size + x] = static_cast<float>(contrast * v + 2.5 * rng.Normal());
      }
    }
  }
}

namespace {

Status CheckLabels(const std::vector<int32_t>& labels, int classes, const std::string& what) {
  for (size_t i = 0; i < labels.size(); ++i)
    if (labels[i] < 0 || labels[i] >= classes)
      return DataLoss(what + ": label " + std::to_string(labels[i]) + " at index " + std::to_string(i) +
                      " is outside [0, " + std::to_string(classes) + ")");
  return Status::Ok();
}

// Loads an (images, labels) IDX pair into float images (0..1) and labels.
Status LoadIdxPair(const std::string& images, const std::string& labels, std::vector<float>* x,
                   std::vector<int32_t>* y, int* h, int* w) {
  RT_ASSIGN_OR_RETURN(IdxArray im, ReadIdx(images, 3));
  RT_ASSIGN_OR_RETURN(IdxArray lb, ReadIdx(labels, 1));
  if (im.dims[0] != lb.dims[0])
    return DataLoss("MNIST: " + images + " has " + std::to_string(im.dims[0]) + " images but " + labels + " has " +
                    std::to_string(lb.dims[0]) + " labels");
  if (*h != 0 && (static_cast<int>(im.dims[1]) != *h || static_cast<int>(im.dims[2]) != *w))
    return DataLoss("MNIST: " + images + " holds " + std::to_string(im.dims[1]) + "x" + std::to_string(im.dims[2]) +
                    " images, the training files hold " + std::to_string(*h) + "x" + std::to_string(*w));
  *h = static_cast<int>(im.dims[1]);
  *w = static_cast<int>(im.dims[2]);
  x->resize(im.data.size());
  for (size_t i = 0; i < im.data.size(); ++i) (*x)[i] = static_cast<float>(im.data[i]) / 255.0f;
  y->assign(lb.data.begin(), lb.data.end());
  return Status::Ok();
}

Status LoadCifarFile(const std::string& path, std::vector<float>* x, std::vector<int32_t>* y) {
  RT_ASSIGN_OR_RETURN(std::string bytes, ReadFile(path, "CIFAR-10 file"));
  const size_t rec = 1 + 3072;
  if (bytes.empty() || bytes.size() % rec != 0)
    return DataLoss("CIFAR-10 file " + path + ": size " + std::to_string(bytes.size()) +
                    " is not a multiple of 3073-byte records (truncated?)");
  for (size_t r = 0; r < bytes.size() / rec; ++r) {
    const auto* p = reinterpret_cast<const uint8_t*>(bytes.data()) + r * rec;
    y->push_back(p[0]);
    for (int i = 0; i < 3072; ++i) x->push_back(static_cast<float>(p[1 + i]) / 255.0f);
  }
  return CheckLabels(*y, 10, "CIFAR-10 file " + path);
}

}  // namespace

StatusOr<ImageData> ImageData::Load(const Config& c, const std::vector<float>* mean_in,
                                     const std::vector<float>* std_in) {
  ImageData d;
  const std::string& source = c.Str("data.source");
  std::vector<float> all_x;
  std::vector<int32_t> all_y;
  bool have_test = false;
  if (source == "synthetic_images") {
    d.classes = static_cast<int>(c.Int("data.synthetic.classes"));
    d.channels = static_cast<int>(c.Int("data.synthetic.channels"));
    d.height = d.width = static_cast<int>(c.Int("data.synthetic.image_size"));
    const uint64_t seed = static_cast<uint64_t>(c.Int("seed"));
    const int64_t ntr = c.Int("data.synthetic.train_images"), nte = c.Int("data.synthetic.test_images");
    auto draw = [&](int64_t n, uint64_t offset, std::vector<float>* x, std::vector<int32_t>* y) {
      x->resize(static_cast<size_t>(n * d.ImageSize()));
      y->resize(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) {
        (*y)[i] = static_cast<int32_t>(i % d.classes);
        DrawSyntheticImage(x->data() + i * d.ImageSize(), (*y)[i], d.channels, d.height, seed, offset + i);
      }
    };
    draw(ntr, 0, &d.train_images, &d.train_labels);
    draw(nte, 1u << 30, &d.test_images, &d.test_labels);
    have_test = true;
    d.description = "synthetic images, " + std::to_string(d.classes) + " classes, " + std::to_string(d.channels) +
                    "x" + std::to_string(d.height) + "x" + std::to_string(d.width);
  } else if (source == "mnist") {
    const std::string& im = c.Str("data.images");
    const std::string& lb = c.Str("data.labels");
    if (im.empty() || lb.empty())
      return InvalidArgument("config keys data.images and data.labels: the mnist source needs both IDX files");
    d.channels = 1;
    d.height = d.width = 0;
    RT_RETURN_IF_ERROR(LoadIdxPair(im, lb, &all_x, &all_y, &d.height, &d.width));
    if (!c.Str("data.test_images").empty()) {
      RT_RETURN_IF_ERROR(LoadIdxPair(c.Str("data.test_images"), c.Str("data.test_labels"), &d.test_images,
                                     &d.test_labels, &d.height, &d.width));
      d.train_images = std::move(all_x);
      d.train_labels = std::move(all_y);
      have_test = true;
    }
    d.classes = 10;
    d.description = "MNIST " + im;
  } else if (source == "cifar10") {
    const std::string& dir = c.Str("data.path");
    if (dir.empty()) return InvalidArgument("config key data.path: the cifar10 source needs the batches directory");
    d.channels = 3;
    d.height = d.width = 32;
    d.classes = 10;
    for (int i = 1; i <= 5; ++i)
      RT_RETURN_IF_ERROR(LoadCifarFile(dir + "/data_batch_" + std::to_string(i) + ".bin", &d.train_images, &d.train_labels));
    RT_RETURN_IF_ERROR(LoadCifarFile(dir + "/test_batch.bin", &d.test_images, &d.test_labels));
    have_test = true;
    d.description = "CIFAR-10 " + dir;
  } else {
    return InvalidArgument("config key data.source = " + source + " is not an image source");
  }
  if (!have_test) {
    // Explicit split: the first data.train_count items train, the rest test (0: val_fraction).
    const int64_t n = static_cast<int64_t>(all_y.size());
    int64_t ntr = c.Int("data.train_count");
    if (ntr == 0) ntr = n - static_cast<int64_t>(static_cast<double>(n) * c.Float("data.val_fraction"));
    if (ntr <= 0 || ntr >= n)
      return InvalidArgument("config key data.train_count = " + std::to_string(ntr) + " must be in [1, " +
                             std::to_string(n - 1) + "] for " + std::to_string(n) + " images");
    const int64_t sz = static_cast<int64_t>(d.channels) * d.height * d.width;
    d.train_images.assign(all_x.begin(), all_x.begin() + ntr * sz);
    d.test_images.assign(all_x.begin() + ntr * sz, all_x.end());
    d.train_labels.assign(all_y.begin(), all_y.begin() + ntr);
    d.test_labels.assign(all_y.begin() + ntr, all_y.end());
  }
  RT_RETURN_IF_ERROR(CheckLabels(d.train_labels, d.classes, d.description + " (train)"));
  RT_RETURN_IF_ERROR(CheckLabels(d.test_labels, d.classes, d.description + " (test)"));
  if (d.train_labels.empty() || d.test_labels.empty())
    return InvalidArgument(d.description + ": the train and test splits must both be non-empty");
  // Per-channel normalisation from the training split.
  d.mean.assign(d.channels, 0.f);
  d.std.assign(d.channels, 1.f);
  if (c.Bool("data.normalize")) {
    const int64_t hw = static_cast<int64_t>(d.height) * d.width;
    for (int ch = 0; ch < d.channels && !mean_in; ++ch) {
      double s = 0, ss = 0;
      int64_t cnt = 0;
      for (int64_t i = 0; i < d.Count(Split::kTrain); ++i) {
        const float* p = d.train_images.data() + (i * d.channels + ch) * hw;
        for (int64_t j = 0; j < hw; ++j) {
          s += p[j];
          ss += static_cast<double>(p[j]) * p[j];
        }
        cnt += hw;
      }
      const double m = s / static_cast<double>(cnt);
      const double sd = std::sqrt(std::max(1e-12, ss / static_cast<double>(cnt) - m * m));
      d.mean[ch] = static_cast<float>(m);
      d.std[ch] = static_cast<float>(sd);
    }
    if (mean_in) {
      if (mean_in->size() != static_cast<size_t>(d.channels) || !std_in || std_in->size() != mean_in->size())
        return InvalidArgument(d.description + ": has " + std::to_string(d.channels) +
                               " channels, the model's normalisation has " + std::to_string(mean_in->size()));
      d.mean = *mean_in;
      d.std = *std_in;
    }
    for (auto* v : {&d.train_images, &d.test_images}) {
      const int64_t n = static_cast<int64_t>(v->size()) / (d.channels * hw);
      for (int64_t i = 0; i < n; ++i)
        for (int ch = 0; ch < d.channels; ++ch) {
          float* p = v->data() + (i * d.channels + ch) * hw;
          for (int64_t j = 0; j < hw; ++j) p[j] = (p[j] - d.mean[ch]) / d.std[ch];
        }
    }
  }
  d.augment_crop_pad = static_cast<int>(c.Int("data.augment.crop_pad"));
  d.augment_hflip = c.Bool("data.augment.hflip");
  return d;
}

std::vector<int64_t> EpochPermutation(int64_t n, uint64_t seed, int split, uint64_t epoch) {
  std::vector<int64_t> p(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) p[i] = i;
  Rng rng(seed, RngPurpose::kData, 10 + static_cast<uint64_t>(split), epoch);
  for (int64_t i = n - 1; i > 0; --i) std::swap(p[i], p[static_cast<int64_t>(rng.Below(static_cast<uint64_t>(i + 1)))]);
  return p;
}

void ImageData::SampleBatch(Split split, uint64_t seed, uint64_t index, int row_begin, int rows, int global_rows,
                            bool augment, float* images, int32_t* labels) const {
  const auto& X = split == Split::kTrain ? train_images : test_images;
  const auto& Y = split == Split::kTrain ? train_labels : test_labels;
  const int64_t n = static_cast<int64_t>(Y.size()), sz = ImageSize();
  const int H = height, W = width, pad = augment ? augment_crop_pad : 0;
  for (int r = 0; r < rows; ++r) {
    Rng rng(seed, RngPurpose::kData, split == Split::kTrain ? 2 : 3, index, static_cast<uint64_t>(row_begin + r));
    const uint64_t pos = index * static_cast<uint64_t>(global_rows) + static_cast<uint64_t>(row_begin + r);
    const int64_t epoch = static_cast<int64_t>(pos / static_cast<uint64_t>(n));
    const int split_id = split == Split::kTrain ? 0 : 1;
    if (split_id != perm_split_ || epoch != perm_epoch_ || seed != perm_seed_) {
      perm_ = EpochPermutation(n, seed, split_id, static_cast<uint64_t>(epoch));
      perm_seed_ = seed;
      perm_split_ = split_id;
      perm_epoch_ = epoch;
    }
    const int64_t i = perm_[static_cast<size_t>(pos % static_cast<uint64_t>(n))];
    labels[r] = Y[i];
    const float* src = X.data() + i * sz;
    float* dst = images + static_cast<int64_t>(r) * sz;
    const int oy = pad ? static_cast<int>(rng.Below(2 * pad + 1)) - pad : 0;
    const int ox = pad ? static_cast<int>(rng.Below(2 * pad + 1)) - pad : 0;
    const bool flip = augment && augment_hflip && (rng.Next() & 1);
    if (!pad && !flip) {
      std::copy(src, src + sz, dst);
      continue;
    }
    // Random crop from the zero-padded image (zero = the normalised mean) and optional flip.
    for (int ch = 0; ch < channels; ++ch)
      for (int y = 0; y < H; ++y)
        for (int x = 0; x < W; ++x) {
          const int sy = y + oy, sx0 = x + ox;
          const int sx = flip ? W - 1 - sx0 : sx0;
          const bool inside = sy >= 0 && sy < H && sx0 >= 0 && sx0 < W;
          dst[(static_cast<int64_t>(ch) * H + y) * W + x] = inside ? src[(static_cast<int64_t>(ch) * H + sy) * W + sx] : 0.f;
        }
  }
}

void ImageData::OrderedBatch(Split split, int64_t begin, int rows, float* images, int32_t* labels) const {
  const auto& X = split == Split::kTrain ? train_images : test_images;
  const auto& Y = split == Split::kTrain ? train_labels : test_labels;
  const int64_t sz = ImageSize();
  std::copy(X.begin() + begin * sz, X.begin() + (begin + rows) * sz, images);
  std::copy(Y.begin() + begin, Y.begin() + begin + rows, labels);
}

}  // namespace ringtrain
