// Reading a coordinator request body (issue 9): the checks every CO_REQUEST passes before it is
// served, header-only so the fuzz target (tests/fuzz/frame_fuzz.cc) runs exactly this code.
// JSON fields of the wrong type are errors here, never exceptions.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "core/status.h"

namespace ringtrain::coord {

// The body as a JSON object, and its "op" as a string.
inline StatusOr<nlohmann::json> ParseRequest(const std::string& body, std::string* op) {
  nlohmann::json j = nlohmann::json::parse(body, nullptr, false);
  if (!j.is_object()) return InvalidArgument("request is not a JSON object");
  auto it = j.find("op");
  if (it == j.end() || !it->is_string()) return InvalidArgument("request has no \"op\" string");
  *op = it->get<std::string>();
  return j;
}

}  // namespace ringtrain::coord
