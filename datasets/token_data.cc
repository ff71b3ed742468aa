#include "datasets/token_data.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "core/rng.h"

namespace ringtrain {

StatusOr<std::string> ReadFile(const std::string& path, const std::string& what) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return NotFound(what + " " + path + ": no such file");
  if (!std::filesystem::is_regular_file(path, ec)) return InvalidArgument(what + " " + path + ": not a regular file");
  std::ifstream in(path, std::ios::binary);
  if (!in) return IoError(what + " " + path + ": cannot open");
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return IoError(what + " " + path + ": read error");
  return ss.str();
}

StatusOr<std::vector<char32_t>> DecodeUtf8(const std::string& s, const std::string& origin) {
  std::vector<char32_t> out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (len == 0 || i + len > s.size())
      return InvalidArgument(origin + ": invalid UTF-8 at byte offset " + std::to_string(i));
    char32_t cp = len == 1 ? c : len == 2 ? (c & 0x1F) : len == 3 ? (c & 0x0F) : (c & 0x07);
    for (int k = 1; k < len; ++k) {
      const unsigned char d = static_cast<unsigned char>(s[i + k]);
      if ((d >> 6) != 2) return InvalidArgument(origin + ": invalid UTF-8 at byte offset " + std::to_string(i));
      cp = (cp << 6) | (d & 0x3F);
    }
    out.push_back(cp);
    i += len;
  }
  return out;
}

std::string EncodeUtf8(char32_t c) {
  std::string s;
  if (c < 0x80) {
    s += static_cast<char>(c);
  } else if (c < 0x800) {
    s += static_cast<char>(0xC0 | (c >> 6));
    s += static_cast<char>(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    s += static_cast<char>(0xE0 | (c >> 12));
    s += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    s += static_cast<char>(0xF0 | (c >> 18));
    s += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
    s += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (c & 0x3F));
  }
  return s;
}

CharVocab::CharVocab(std::vector<char32_t> chars) : chars_(std::move(chars)) {
  std::sort(chars_.begin(), chars_.end());
  chars_.erase(std::unique(chars_.begin(), chars_.end()), chars_.end());
}

StatusOr<CharVocab> CharVocab::FromText(const std::string& utf8, const std::string& origin) {
  RT_ASSIGN_OR_RETURN(std::vector<char32_t> cps, DecodeUtf8(utf8, origin));
  std::set<char32_t> uniq(cps.begin(), cps.end());
  return CharVocab(std::vector<char32_t>(uniq.begin(), uniq.end()));
}

namespace {
std::string Describe(char32_t c) {
  char buf[32];
  if (c >= 0x20 && c < 0x7F) {
    std::snprintf(buf, sizeof buf, "'%c'", static_cast<char>(c));
  } else {
    std::snprintf(buf, sizeof buf, "U+%04X", static_cast<unsigned>(c));
  }
  return buf;
}
}  // namespace

StatusOr<std::vector<int32_t>> CharVocab::Encode(const std::string& utf8, const std::string& origin) const {
  RT_ASSIGN_OR_RETURN(std::vector<char32_t> cps, DecodeUtf8(utf8, origin));
  std::vector<int32_t> ids;
  ids.reserve(cps.size());
  for (size_t i = 0; i < cps.size(); ++i) {
    auto it = std::lower_bound(chars_.begin(), chars_.end(), cps[i]);
    if (it == chars_.end() || *it != cps[i])
      return InvalidArgument(origin + ": character " + Describe(cps[i]) + " at position " + std::to_string(i) +
                             " is not in the model's vocabulary of " + std::to_string(chars_.size()) + " characters");
    ids.push_back(static_cast<int32_t>(it - chars_.begin()));
  }
  return ids;
}

std::string CharVocab::DecodeOne(int32_t id) const {
  if (id < 0 || id >= size()) return "?";
  return EncodeUtf8(chars_[id]);
}

std::string CharVocab::Decode(const std::vector<int32_t>& ids) const {
  std::string s;
  for (int32_t id : ids) s += DecodeOne(id);
  return s;
}

MarkovSource MarkovSource::Make(int vocab, int order, int branching, uint64_t seed) {
  MarkovSource m;
  m.vocab = vocab;
  m.order = order;
  m.branching = std::min(branching, vocab);
  int64_t contexts = 1;
  for (int i = 0; i < order; ++i) contexts *= vocab;
  m.probs.assign(static_cast<size_t>(contexts * vocab), 0.0);
  const double kNoise = 0.02;
  Rng rng(seed, RngPurpose::kSynthetic, 1);
  std::vector<int> perm(vocab);
  for (int64_t ctx = 0; ctx < contexts; ++ctx) {
    double* p = &m.probs[static_cast<size_t>(ctx * vocab)];
    for (int v = 0; v < vocab; ++v) perm[v] = v;
    // Partial Fisher-Yates: the first `branching` entries are the likely successors.
    std::vector<double> w(m.branching);
    double sum = 0;
    for (int j = 0; j < m.branching; ++j) {
      const int k = j + static_cast<int>(rng.Below(static_cast<uint64_t>(vocab - j)));
      std::swap(perm[j], perm[k]);
      w[j] = -std::log(1.0 - rng.Uniform());  // exponential weights: a flat Dirichlet draw
      sum += w[j];
    }
    for (int v = 0; v < vocab; ++v) p[v] = kNoise / vocab;
    for (int j = 0; j < m.branching; ++j) p[perm[j]] += (1.0 - kNoise) * w[j] / sum;
  }
  return m;
}

double MarkovSource::EntropyRate() const {
  // Stationary distribution over contexts by power iteration (the chain is irreducible and
  // aperiodic thanks to the uniform mixture, so this converges geometrically).
  const int64_t contexts = static_cast<int64_t>(probs.size()) / vocab;
  std::vector<double> pi(static_cast<size_t>(contexts), 1.0 / static_cast<double>(contexts)), next(pi.size());
  for (int it = 0; it < 100000; ++it) {
    std::fill(next.begin(), next.end(), 0.0);
    for (int64_t ctx = 0; ctx < contexts; ++ctx) {
      const double* p = &probs[static_cast<size_t>(ctx * vocab)];
      const int64_t shifted = (ctx * vocab) % contexts;  // drop the oldest symbol
      for (int v = 0; v < vocab; ++v) next[static_cast<size_t>(shifted + v)] += pi[static_cast<size_t>(ctx)] * p[v];
    }
    double diff = 0;
    for (size_t i = 0; i < pi.size(); ++i) diff += std::fabs(next[i] - pi[i]);
    pi.swap(next);
    if (diff < 1e-15) break;
  }
  double h = 0;
  for (int64_t ctx = 0; ctx < contexts; ++ctx) {
    const double* p = &probs[static_cast<size_t>(ctx * vocab)];
    double hc = 0;
    for (int v = 0; v < vocab; ++v)
      if (p[v] > 0) hc -= p[v] * std::log(p[v]);
    h += pi[static_cast<size_t>(ctx)] * hc;
  }
  return h;
}

std::vector<uint16_t> MarkovSource::Generate(int64_t n, uint64_t seed) const {
  const int64_t contexts = static_cast<int64_t>(probs.size()) / vocab;
  Rng rng(seed, RngPurpose::kSynthetic, 2);
  std::vector<uint16_t> out(static_cast<size_t>(n));
  int64_t ctx = static_cast<int64_t>(rng.Below(static_cast<uint64_t>(contexts)));
  const int64_t burn_in = 1000;
  for (int64_t i = -burn_in; i < n; ++i) {
    const int v = SampleCategorical(rng, &probs[static_cast<size_t>(ctx * vocab)], vocab);
    if (i >= 0) out[static_cast<size_t>(i)] = static_cast<uint16_t>(v);
    ctx = (ctx * vocab + v) % contexts;
  }
  return out;
}

namespace {

uint64_t Fingerprint(const std::vector<uint16_t>& a, const std::vector<uint16_t>& b) {
  uint64_t h = 1469598103934665603ull;
  for (const auto* v : {&a, &b}) {
    for (uint16_t t : *v) {
      h ^= t;
      h *= 1099511628211ull;
    }
    h ^= 0xFF;
    h *= 1099511628211ull;
  }
  return h;
}

StatusOr<std::vector<uint16_t>> ReadTokenFile(const std::string& path) {
  RT_ASSIGN_OR_RETURN(std::string bytes, ReadFile(path, "token file"));
  if (bytes.size() % 2 != 0)
    return DataLoss("token file " + path + ": size " + std::to_string(bytes.size()) +
                    " bytes is odd; expected little-endian uint16 tokens");
  std::vector<uint16_t> t(bytes.size() / 2);
  for (size_t i = 0; i < t.size(); ++i)
    t[i] = static_cast<uint16_t>(static_cast<unsigned char>(bytes[2 * i]) |
                                 (static_cast<unsigned char>(bytes[2 * i + 1]) << 8));
  return t;
}

}  // namespace

StatusOr<TokenData> TokenData::Load(const Config& c) {
  TokenData d;
  std::string source = c.Str("data.source");
  const std::string& path = c.Str("data.path");
  if (source == "auto") source = path.empty() ? "synthetic" : "text";
  d.source = source;
  const double val_fraction = c.Float("data.val_fraction");
  auto split = [&](std::vector<uint16_t> all) {
    const size_t nval = static_cast<size_t>(static_cast<double>(all.size()) * val_fraction);
    d.val.assign(all.end() - static_cast<std::ptrdiff_t>(nval), all.end());
    all.resize(all.size() - nval);
    d.train = std::move(all);
  };
  if (source == "synthetic") {
    const int V = static_cast<int>(c.Int("data.synthetic.vocab"));
    const int order = static_cast<int>(c.Int("data.synthetic.order"));
    double contexts = std::pow(static_cast<double>(V), order);
    if (contexts > 1 << 22)
      return InvalidArgument("config keys data.synthetic.vocab^order = " + std::to_string(static_cast<int64_t>(contexts)) +
                             " contexts is too many (at most 4194304)");
    const uint64_t seed = static_cast<uint64_t>(c.Int("seed"));
    MarkovSource m = MarkovSource::Make(V, order, static_cast<int>(c.Int("data.synthetic.branching")), seed);
    d.entropy_rate = m.EntropyRate();
    split(m.Generate(c.Int("data.synthetic.length"), seed));
    d.vocab_size = V;
    d.description = "synthetic order-" + std::to_string(order) + " Markov source, " + std::to_string(V) + " symbols";
  } else if (source == "text") {
    if (path.empty()) return InvalidArgument("config key data.path: the text source needs a file");
    RT_ASSIGN_OR_RETURN(std::string text, ReadFile(path, "data file"));
    if (text.empty()) return InvalidArgument("data file " + path + ": empty");
    RT_ASSIGN_OR_RETURN(CharVocab vocab, CharVocab::FromText(text, "data file " + path));
    if (vocab.size() > 65535) return InvalidArgument("data file " + path + ": more than 65535 distinct characters");
    RT_ASSIGN_OR_RETURN(std::vector<int32_t> ids, vocab.Encode(text, "data file " + path));
    split(std::vector<uint16_t>(ids.begin(), ids.end()));
    d.vocab_size = vocab.size();
    d.vocab = std::move(vocab);
    d.description = "text " + path + " (" + std::to_string(d.vocab_size) + " characters)";
  } else if (source == "tokens") {
    if (path.empty()) return InvalidArgument("config key data.path: the tokens source needs a file");
    RT_ASSIGN_OR_RETURN(std::vector<uint16_t> tr, ReadTokenFile(path));
    const std::string& vpath = c.Str("data.val_path");
    if (vpath.empty()) {
      split(std::move(tr));
    } else {
      d.train = std::move(tr);
      RT_ASSIGN_OR_RETURN(d.val, ReadTokenFile(vpath));
    }
    int mx = 0;
    for (auto* v : {&d.train, &d.val})
      for (uint16_t t : *v) mx = std::max<int>(mx, t);
    d.vocab_size = mx + 1;
    d.description = "token file " + path;
  }
  const int64_t need = c.Int("model.block_size") + 1;
  if (static_cast<int64_t>(d.train.size()) < need)
    return InvalidArgument("data: the training split has " + std::to_string(d.train.size()) +
                           " tokens, fewer than model.block_size + 1 = " + std::to_string(need));
  if (static_cast<int64_t>(d.val.size()) < need)
    return InvalidArgument("data: the validation split has " + std::to_string(d.val.size()) +
                           " tokens, fewer than model.block_size + 1 = " + std::to_string(need) +
                           " (raise data.val_fraction or give more data)");
  d.fingerprint = Fingerprint(d.train, d.val);
  return d;
}

void TokenData::SampleBatch(Split split, uint64_t seed, uint64_t index, int row_begin, int rows, int Tn,
                            int32_t* tokens, int32_t* targets) const {
  const std::vector<uint16_t>& src = Tokens(split);
  const uint64_t span = src.size() - static_cast<uint64_t>(Tn);  // valid starts: [0, span)
  for (int r = 0; r < rows; ++r) {
    Rng rng(seed, RngPurpose::kData, split == Split::kTrain ? 0 : 1, index, static_cast<uint64_t>(row_begin + r));
    const uint64_t off = rng.Below(span);
    for (int t = 0; t < Tn; ++t) {
      tokens[static_cast<int64_t>(r) * Tn + t] = src[off + t];
      targets[static_cast<int64_t>(r) * Tn + t] = src[off + t + 1];
    }
  }
}

}  // namespace ringtrain
