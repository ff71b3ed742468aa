// Image classification data: MNIST IDX files (raw or gzip), CIFAR-10 binary batches, and a built-in
// synthetic image set (procedurally drawn classes) for the default and the tests. Images are
// stored normalised (per-channel mean/std of the training split), NCHW float. Batches are drawn
// deterministically from (seed, index, row), with optional augmentation (random crop with
// padding, horizontal flip) from the same stream.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/status.h"
#include "datasets/token_data.h"

namespace ringtrain {

// An IDX array (big-endian header: 0, 0, type 0x08 (ubyte), ndims; dims as uint32).
struct IdxArray {
  std::vector<uint32_t> dims;
  std::vector<uint8_t> data;
};
// Reads raw or gzip IDX (zlib reads both); checks magic, type, ndims and size.
StatusOr<IdxArray> ReadIdx(const std::string& path, int expect_ndims);

struct ImageData {
  int channels = 1, height = 28, width = 28, classes = 10;
  std::vector<float> train_images, test_images;  // (N, C, H, W), normalised
  std::vector<int32_t> train_labels, test_labels;
  std::vector<float> mean, std;  // per channel, from the training split (applied already)
  std::string description;
  mutable std::vector<int64_t> perm_;  // cached permutation of (perm_seed_, perm_split_, perm_epoch_)
  mutable uint64_t perm_seed_ = 0;
  mutable int perm_split_ = -1;
  mutable int64_t perm_epoch_ = -1;
  int augment_crop_pad = 0;
  bool augment_hflip = false;

  // `mean`/`std` (per channel), when given, replace the statistics of the training split (a saved
  // model evaluates new data with the normalisation it was trained with).
  static StatusOr<ImageData> Load(const Config& c, const std::vector<float>* mean = nullptr,
                                  const std::vector<float>* std = nullptr);
  int64_t ImageSize() const { return static_cast<int64_t>(channels) * height * width; }
  int64_t Count(Split s) const { return static_cast<int64_t>((s == Split::kTrain ? train_labels : test_labels).size()); }
  // Rows [row_begin, row_begin + rows) of batch `index` of `global_rows` rows: epochs walk a
  // permutation of the split drawn from (seed, epoch), so every image is seen once per epoch;
  // position index * global_rows + row decides the image, so DP ranks can draw their own rows.
  // Augmentation is drawn from (seed, index, row).
  void SampleBatch(Split split, uint64_t seed, uint64_t index, int row_begin, int rows, int global_rows, bool augment,
                   float* images, int32_t* labels) const;
  // Copies test images [begin, begin + rows) in order.
  void OrderedBatch(Split split, int64_t begin, int rows, float* images, int32_t* labels) const;
};

// Builds one of `classes` procedurally drawn classes of images: each class is a fixed smooth
// random pattern; every sample is its class pattern shifted by up to 3 pixels, scaled in
// contrast, plus strong pixel noise (std 2.5 against a pattern of std ~1.2), so a model has to
// pool evidence over the image: a linear model gets far less than a small CNN. Deterministic from (seed, class, sample).
// The permutation of [0, n) for one epoch.
std::vector<int64_t> EpochPermutation(int64_t n, uint64_t seed, int split, uint64_t epoch);

void DrawSyntheticImage(float* img, int label, int channels, int size, uint64_t seed, uint64_t sample);

}  // namespace ringtrain
