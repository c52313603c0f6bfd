#include "loader/json_util.h"

#include <unordered_set>
#include <vector>

#include "rt/sdk/error.h"

namespace rt {

using nlohmann::json;

json parse_json_strict(std::string_view text, const std::string& what, int max_depth) {
  // One key set per open object; the parser reports keys before their values, so the top of the
  // stack is always the object the key belongs to.
  std::vector<std::unordered_set<std::string>> open_objects;
  auto on_event = [&](int depth, json::parse_event_t event, json& parsed) -> bool {
    switch (event) {
      case json::parse_event_t::object_start:
      case json::parse_event_t::array_start:
        if (depth >= max_depth) fail(what, ": JSON nested deeper than ", max_depth, " levels");
        if (event == json::parse_event_t::object_start) open_objects.emplace_back();
        break;
      case json::parse_event_t::object_end:
        if (!open_objects.empty()) open_objects.pop_back();
        break;
      case json::parse_event_t::key: {
        const std::string& key = parsed.get_ref<const std::string&>();
        if (!open_objects.empty() && !open_objects.back().insert(key).second)
          fail(what, ": duplicate key \"", key, "\" in JSON object");
        break;
      }
      default:
        break;
    }
    return true;
  };
  try {
    return json::parse(text.begin(), text.end(), on_event, /*allow_exceptions=*/true,
                       /*ignore_comments=*/false);
  } catch (const json::parse_error& e) {
    // e.what() is "[json.exception.parse_error.101] parse error at line L, column C: ..."; the
    // bracketed id means nothing to a user.
    std::string msg = e.what();
    if (auto p = msg.find("] "); p != std::string::npos && msg.rfind("[json.", 0) == 0)
      msg = msg.substr(p + 2);
    fail(what, ": invalid JSON (byte ", e.byte, "): ", msg);
  } catch (const json::exception& e) {
    fail(what, ": invalid JSON: ", e.what());
  }
}

std::string json_type_name(const json& j) {
  switch (j.type()) {
    case json::value_t::null: return "null";
    case json::value_t::boolean: return "boolean";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned: return "integer";
    case json::value_t::number_float: return "number";
    case json::value_t::string: return "string";
    case json::value_t::array: return "array";
    case json::value_t::object: return "object";
    default: return "value";
  }
}

std::string json_brief(const json& j, size_t max_chars) {
  // error_handler_t::replace: a dump must never throw on odd bytes while we build an error.
  std::string s = j.dump(-1, ' ', false, json::error_handler_t::replace);
  if (s.size() > max_chars) s = s.substr(0, max_chars) + "...";
  return s;
}

}  // namespace rt
