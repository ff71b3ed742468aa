// Classification metrics from predicted and true labels: accuracy, per-class precision, recall
// and F1, macro-F1, and the confusion matrix (rows: true class, columns: predicted class).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace ringtrain {

struct ClassificationMetrics {
  int classes = 0;
  int64_t total = 0, correct = 0;
  std::vector<int64_t> confusion;  // (classes, classes)
  std::vector<double> precision, recall, f1;
  double accuracy = 0, macro_f1 = 0;

  explicit ClassificationMetrics(int k) : classes(k), confusion(static_cast<size_t>(k) * k, 0) {}
  void Add(int truth, int predicted);
  void Finish();  // computes the derived figures; classes never predicted / never present get 0
  nlohmann::json ToJson() const;
  std::string Table() const;  // per-class lines for the terminal
};

}  // namespace ringtrain
