#include "worker/metrics.h"

#include <cstdio>

namespace ringtrain {

void ClassificationMetrics::Add(int truth, int predicted) {
  confusion[static_cast<size_t>(truth) * classes + predicted]++;
  ++total;
  if (truth == predicted) ++correct;
}

void ClassificationMetrics::Finish() {
  precision.assign(classes, 0.0);
  recall.assign(classes, 0.0);
  f1.assign(classes, 0.0);
  double sum_f1 = 0;
  for (int c = 0; c < classes; ++c) {
    int64_t tp = confusion[static_cast<size_t>(c) * classes + c], pred = 0, actual = 0;
    for (int k = 0; k < classes; ++k) {
      pred += confusion[static_cast<size_t>(k) * classes + c];
      actual += confusion[static_cast<size_t>(c) * classes + k];
    }
    precision[c] = pred ? static_cast<double>(tp) / static_cast<double>(pred) : 0.0;
    recall[c] = actual ? static_cast<double>(tp) / static_cast<double>(actual) : 0.0;
    const double s = precision[c] + recall[c];
    f1[c] = s > 0 ? 2 * precision[c] * recall[c] / s : 0.0;
    sum_f1 += f1[c];
  }
  accuracy = total ? static_cast<double>(correct) / static_cast<double>(total) : 0.0;
  macro_f1 = classes ? sum_f1 / classes : 0.0;
}

nlohmann::json ClassificationMetrics::ToJson() const {
  nlohmann::json per = nlohmann::json::array();
  for (int c = 0; c < classes; ++c)
    per.push_back({{"class", c}, {"precision", precision[c]}, {"recall", recall[c]}, {"f1", f1[c]}});
  nlohmann::json conf = nlohmann::json::array();
  for (int c = 0; c < classes; ++c)
    conf.push_back(std::vector<int64_t>(confusion.begin() + static_cast<std::ptrdiff_t>(c) * classes,
                                        confusion.begin() + static_cast<std::ptrdiff_t>(c + 1) * classes));
  return {{"accuracy", accuracy}, {"macro_f1", macro_f1}, {"per_class", per}, {"confusion", conf}, {"count", total}};
}

std::string ClassificationMetrics::Table() const {
  std::string s = "  class  precision  recall      f1\n";
  char buf[96];
  for (int c = 0; c < classes; ++c) {
    std::snprintf(buf, sizeof buf, "  %5d  %9.4f  %6.4f  %6.4f\n", c, precision[c], recall[c], f1[c]);
    s += buf;
  }
  std::snprintf(buf, sizeof buf, "  accuracy %.4f, macro-F1 %.4f over %lld images\n", accuracy, macro_f1,
                static_cast<long long>(total));
  return s + buf;
}

}  // namespace ringtrain
