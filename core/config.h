// Validated configuration. Every key is declared once in the schema (core/config_schema.cc) with
// its type, default, range and help. YAML files nest keys (model: {n_layer: 4}); --set uses the
// dotted form (model.n_layer=4). Unknown keys, wrong types and out-of-range values are errors that
// name the key (and suggest the nearest valid key for typos).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/status.h"

namespace ringtrain {

enum class ConfigType { kInt, kFloat, kBool, kString };

struct ConfigKey {
  std::string key;
  ConfigType type;
  std::string default_value;          // as it would be written in YAML
  double min = -1e300, max = 1e300;   // inclusive range for numbers
  std::vector<std::string> choices;   // allowed strings (empty: any)
  std::string help;
};

const std::vector<ConfigKey>& ConfigSchema();

class Config {
 public:
  using Value = std::variant<int64_t, double, bool, std::string>;

  // Defaults for every key.
  Config();
  // Loads a YAML file (empty path: defaults only) then applies "key=value" overrides in order.
  static StatusOr<Config> Load(const std::string& yaml_path, const std::vector<std::string>& overrides);
  static StatusOr<Config> FromYamlString(const std::string& yaml, const std::string& origin);

  Status Set(const std::string& key, const std::string& value);  // parses and validates
  Status SetOverride(const std::string& key_equals_value);

  int64_t Int(const std::string& key) const;
  double Float(const std::string& key) const;
  bool Bool(const std::string& key) const;
  const std::string& Str(const std::string& key) const;
  bool IsSet(const std::string& key) const { return explicit_.count(key) > 0; }

  nlohmann::json ToJson() const;  // nested, like the YAML
  static StatusOr<Config> FromJson(const nlohmann::json& j);

 private:
  Status ApplyYamlNode(const void* node, const std::string& prefix, const std::string& origin);
  std::map<std::string, Value> values_;
  std::map<std::string, bool> explicit_;
};

// Nearest schema key by edit distance, or "" when nothing is close.
std::string NearestConfigKey(const std::string& key);

}  // namespace ringtrain
