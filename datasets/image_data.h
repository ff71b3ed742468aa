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
  int augment_crop_pad = 0;
  bool augment_hflip = false;

  static StatusOr<ImageData> Load(const Config& c);
  int64_t ImageSize() const { return static_cast<int64_t>(channels) * height * width; }
  int64_t Count(Split s) const { return static_cast<int64_t>((s == Split::kTrain ? train_labels : test_labels).size()); }
  // Training rows: random images (with augmentation); evaluation rows (augment = false) are drawn
  // the same way so DP ranks can share the code, but Evaluate walks the test split in order.
  void SampleBatch(Split split, uint64_t seed, uint64_t index, int row_begin, int rows, bool augment, float* images,
                   int32_t* labels) const;
  // Copies test images [begin, begin + rows) in order.
  void OrderedBatch(Split split, int64_t begin, int rows, float* images, int32_t* labels) const;
};

// Builds one of `classes` procedurally drawn classes of images: each class is a fixed smooth
// random pattern; every sample is its class pattern shifted by up to 3 pixels, scaled in
// contrast, plus pixel noise. Deterministic from (seed, class, sample).
void DrawSyntheticImage(float* img, int label, int channels, int size, uint64_t seed, uint64_t sample);

}  // namespace ringtrain
