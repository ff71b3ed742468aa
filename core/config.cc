#include "core/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace ringtrain {

namespace {

const ConfigKey* FindKey(const std::string& key) {
  for (const auto& k : ConfigSchema())
    if (k.key == key) return &k;
  return nullptr;
}

size_t EditDistance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

std::string FormatNumber(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

StatusOr<Config::Value> ParseValue(const ConfigKey& k, const std::string& raw) {
  std::string s = raw;
  // Strip surrounding whitespace and quotes.
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  size_t i = 0;
  while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
  s = s.substr(i);
  if (s.size() >= 2 && (s.front() == '"' || s.front() == '\'') && s.back() == s.front())
    s = s.substr(1, s.size() - 2);
  auto bad = [&](const char* what) {
    return InvalidArgument("config key " + k.key + ": expected " + what + ", got '" + raw + "'");
  };
  switch (k.type) {
    case ConfigType::kInt: {
      if (s.empty()) return bad("an integer");
      errno = 0;
      char* end = nullptr;
      long long v = std::strtoll(s.c_str(), &end, 10);
      if (*end != 0 || errno != 0) {
        // Accept integral floats written like 1e6.
        double d = std::strtod(s.c_str(), &end);
        if (*end != 0 || d != std::floor(d) || std::fabs(d) > 9e15) return bad("an integer");
        v = static_cast<long long>(d);
      }
      if (v < k.min || v > k.max)
        return InvalidArgument("config key " + k.key + " = " + s + " is out of range [" + FormatNumber(k.min) +
                               ", " + FormatNumber(k.max) + "]");
      return Config::Value(static_cast<int64_t>(v));
    }
    case ConfigType::kFloat: {
      if (s.empty()) return bad("a number");
      char* end = nullptr;
      double v = std::strtod(s.c_str(), &end);
      if (*end != 0 || !std::isfinite(v)) return bad("a number");
      if (v < k.min || v > k.max)
        return InvalidArgument("config key " + k.key + " = " + s + " is out of range [" + FormatNumber(k.min) +
                               ", " + FormatNumber(k.max) + "]");
      return Config::Value(v);
    }
    case ConfigType::kBool: {
      std::string l = s;
      std::transform(l.begin(), l.end(), l.begin(), ::tolower);
      if (l == "true" || l == "yes" || l == "on" || l == "1") return Config::Value(true);
      if (l == "false" || l == "no" || l == "off" || l == "0") return Config::Value(false);
      return bad("true or false");
    }
    case ConfigType::kString: {
      if (!k.choices.empty() && std::find(k.choices.begin(), k.choices.end(), s) == k.choices.end()) {
        std::string list;
        for (const auto& c : k.choices) list += (list.empty() ? "" : ", ") + c;
        return InvalidArgument("config key " + k.key + ": '" + s + "' is not one of: " + list);
      }
      return Config::Value(s);
    }
  }
  return Internal("unreachable");
}

Status UnknownKey(const std::string& key, const std::string& origin) {
  std::string msg = origin + ": unknown config key '" + key + "'";
  std::string near = NearestConfigKey(key);
  if (!near.empty()) msg += " (did you mean '" + near + "'?)";
  return InvalidArgument(msg);
}

}  // namespace

std::string NearestConfigKey(const std::string& key) {
  std::string best;
  size_t best_d = SIZE_MAX;
  // Compare against full keys and against the last component (a key typed in the wrong section).
  const std::string leaf = key.substr(key.rfind('.') == std::string::npos ? 0 : key.rfind('.') + 1);
  for (const auto& k : ConfigSchema()) {
    size_t d = EditDistance(key, k.key);
    const std::string kleaf = k.key.substr(k.key.rfind('.') == std::string::npos ? 0 : k.key.rfind('.') + 1);
    if (kleaf == leaf) d = std::min<size_t>(d, 1);
    if (d < best_d) {
      best_d = d;
      best = k.key;
    }
  }
  return best_d <= std::max<size_t>(3, key.size() / 3) ? best : "";
}

Config::Config() {
  for (const auto& k : ConfigSchema()) {
    auto v = ParseValue(k, k.default_value);
    RT_CHECK_MSG(v.ok(), "bad default for " + k.key);
    values_[k.key] = v.value();
  }
}

Status Config::Set(const std::string& key, const std::string& value) {
  const ConfigKey* k = FindKey(key);
  if (!k) return UnknownKey(key, "--set");
  RT_ASSIGN_OR_RETURN(Value v, ParseValue(*k, value));
  values_[key] = v;
  explicit_[key] = true;
  return Status::Ok();
}

Status Config::SetOverride(const std::string& kv) {
  const size_t eq = kv.find('=');
  if (eq == std::string::npos || eq == 0)
    return InvalidArgument("--set expects key=value, got '" + kv + "'");
  const std::string key = kv.substr(0, eq);
  if (!FindKey(key)) return UnknownKey(key, "--set");
  return Set(key, kv.substr(eq + 1));
}

Status Config::ApplyYamlNode(const void* node_ptr, const std::string& prefix, const std::string& origin) {
  const YAML::Node& node = *static_cast<const YAML::Node*>(node_ptr);
  for (auto it = node.begin(); it != node.end(); ++it) {
    const std::string name = it->first.as<std::string>();
    const std::string key = prefix.empty() ? name : prefix + "." + name;
    const YAML::Node val = it->second;  // a copy: the iterator yields a temporary
    if (val.IsMap()) {
      // A section must be a prefix of some key.
      bool any = false;
      for (const auto& k : ConfigSchema())
        if (k.key.rfind(key + ".", 0) == 0) any = true;
      if (!any) return UnknownKey(key, origin);
      RT_RETURN_IF_ERROR(ApplyYamlNode(&val, key, origin));
    } else if (val.IsScalar()) {
      const ConfigKey* k = FindKey(key);
      if (!k) return UnknownKey(key, origin);
      RT_RETURN_IF_ERROR(Set(key, val.Scalar()).WithContext(origin));
    } else if (val.IsNull()) {
      if (!FindKey(key)) return UnknownKey(key, origin);
    } else {
      return InvalidArgument(origin + ": config key " + key + ": expected a single value, not a list");
    }
  }
  return Status::Ok();
}

StatusOr<Config> Config::FromYamlString(const std::string& yaml, const std::string& origin) {
  Config c;
  YAML::Node root;
  try {
    root = YAML::Load(yaml);
  } catch (const YAML::Exception& e) {
    return InvalidArgument(origin + ": not valid YAML: " + e.what());
  }
  if (root.IsNull()) return c;
  if (!root.IsMap()) return InvalidArgument(origin + ": expected a mapping of config keys at the top level");
  RT_RETURN_IF_ERROR(c.ApplyYamlNode(&root, "", origin));
  return c;
}

StatusOr<Config> Config::Load(const std::string& yaml_path, const std::vector<std::string>& overrides) {
  Config c;
  if (!yaml_path.empty()) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(yaml_path, ec))
      return NotFound("config file " + yaml_path + ": no such file");
    std::ifstream in(yaml_path);
    std::stringstream ss;
    ss << in.rdbuf();
    if (!in.good() && !in.eof()) return IoError("config file " + yaml_path + ": cannot read");
    RT_ASSIGN_OR_RETURN(c, FromYamlString(ss.str(), yaml_path));
  }
  for (const auto& o : overrides) RT_RETURN_IF_ERROR(c.SetOverride(o));
  return c;
}

int64_t Config::Int(const std::string& key) const {
  auto it = values_.find(key);
  RT_CHECK_MSG(it != values_.end() && std::holds_alternative<int64_t>(it->second), "int key " + key);
  return std::get<int64_t>(it->second);
}
double Config::Float(const std::string& key) const {
  auto it = values_.find(key);
  RT_CHECK_MSG(it != values_.end() && std::holds_alternative<double>(it->second), "float key " + key);
  return std::get<double>(it->second);
}
bool Config::Bool(const std::string& key) const {
  auto it = values_.find(key);
  RT_CHECK_MSG(it != values_.end() && std::holds_alternative<bool>(it->second), "bool key " + key);
  return std::get<bool>(it->second);
}
const std::string& Config::Str(const std::string& key) const {
  auto it = values_.find(key);
  RT_CHECK_MSG(it != values_.end() && std::holds_alternative<std::string>(it->second), "string key " + key);
  return std::get<std::string>(it->second);
}

nlohmann::json Config::ToJson() const {
  nlohmann::json j = nlohmann::json::object();
  for (const auto& [key, v] : values_) {
    nlohmann::json* node = &j;
    size_t start = 0, dot;
    while ((dot = key.find('.', start)) != std::string::npos) {
      node = &(*node)[key.substr(start, dot - start)];
      start = dot + 1;
    }
    const std::string leaf = key.substr(start);
    std::visit([&](const auto& x) { (*node)[leaf] = x; }, v);
  }
  return j;
}

StatusOr<Config> Config::FromJson(const nlohmann::json& j) {
  // JSON is a subset of YAML.
  return FromYamlString(j.dump(), "stored config");
}

}  // namespace ringtrain
