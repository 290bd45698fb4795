#include <ferry_common/ops.hpp>

#include <algorithm>
#include <cstdio>
#include <cstring>

#include <ferry/ferry_c.h>
#include <ferry_common/errors.hpp>

namespace ferry::ops {

nlohmann::json to_json(const Options& o) {
  const Options d;
  nlohmann::json j = nlohmann::json::object();
  if (!o.dir.empty()) j["dir"] = o.dir;
  if (!o.parent.empty()) j["parent"] = o.parent;
  if (o.leave_running) j["leave_running"] = true;
  if (o.stay_stopped) j["stay_stopped"] = true;
  if (o.discard) j["discard"] = true;
  if (o.zstd_level) j["zstd"] = o.zstd_level;
  if (!o.fingerprints) j["fingerprints"] = false;
  if (o.device >= 0) j["device"] = o.device;
  if (!o.device_map.empty()) j["device_map"] = o.device_map;
  if (!o.device_uuids.empty()) {
    nlohmann::json u = nlohmann::json::object();
    for (auto& [v, id] : o.device_uuids) u[std::to_string(v)] = id;
    j["device_uuids"] = u;
  }
  if (o.staging_bytes != d.staging_bytes) j["staging_mb"] = o.staging_bytes >> 20;
  return j;
}

namespace {
template <class T>
T get(const nlohmann::json& j, const char* key, T dflt) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return dflt;
  try {
    return it->get<T>();
  } catch (const nlohmann::json::exception&) {
    throw Error(ErrorClass::FixFirst, std::string("option \"") + key + "\" has the wrong type (" + it->dump() + ")");
  }
}
}  // namespace

Options options_from_json(const nlohmann::json& j) {
  Options o;
  if (!j.is_object()) throw Error(ErrorClass::FixFirst, "the options are not a JSON object");
  o.dir = get<std::string>(j, "dir", "");
  o.parent = get<std::string>(j, "parent", "");
  o.leave_running = get<bool>(j, "leave_running", false);
  o.stay_stopped = get<bool>(j, "stay_stopped", false);
  o.discard = get<bool>(j, "discard", false);
  o.zstd_level = get<int>(j, "zstd", 0);
  o.fingerprints = get<bool>(j, "fingerprints", true);
  o.device = get<int>(j, "device", -1);
  o.device_map = get<std::vector<int>>(j, "device_map", {});
  for (auto& [v, id] : get<std::map<std::string, std::string>>(j, "device_uuids", {})) {
    size_t used = 0;
    int d = -1;
    try {
      d = std::stoi(v, &used);
    } catch (const std::exception&) {
    }
    if (d < 0 || used != v.size())
      throw Error(ErrorClass::FixFirst, "option \"device_uuids\" names \"" + v + "\", not a device number");
    o.device_uuids[d] = id;
  }
  if (j.contains("staging_mb")) o.staging_bytes = get<uint64_t>(j, "staging_mb", 0) << 20;
  return o;
}

nlohmann::json to_json(const Stats& s) {
  return {{"device_bytes", s.device_bytes}, {"written", s.written}, {"reused", s.reused},
          {"carried", s.carried},           {"copied", s.copied},             {"seconds", s.seconds}, {"stopped_seconds", s.stopped_seconds}};
}

Stats stats_from_json(const nlohmann::json& j) {
  Stats s;
  s.device_bytes = j.value("device_bytes", uint64_t{0});
  s.written = j.value("written", uint64_t{0});
  s.reused = j.value("reused", uint64_t{0});
  s.carried = j.value("carried", uint64_t{0});
  s.copied = j.value("copied", uint64_t{0});
  s.seconds = j.value("seconds", 0.0);
  s.stopped_seconds = j.value("stopped_seconds", 0.0);
  return s;
}

Options from_c(const ferry_options* c) {
  Options o;
  if (!c || c->size == 0) return o;
  ferry_options x{};
  x.device = -1;
  memcpy(&x, c, std::min<size_t>(c->size, sizeof x));
  if (x.dir) o.dir = x.dir;
  if (x.parent) o.parent = x.parent;
  o.leave_running = x.leave_running != 0;
  o.stay_stopped = x.stay_stopped != 0;
  o.discard = x.discard != 0;
  o.zstd_level = x.zstd_level;
  o.device = x.device;
  if (x.device_map && x.device_map_len > 0) o.device_map.assign(x.device_map, x.device_map + x.device_map_len);
  if (x.staging_bytes) o.staging_bytes = x.staging_bytes;
  o.fingerprints = x.read_all == 0;
  if (x.progress) {
    ferry_progress_fn fn = x.progress;
    void* user = x.progress_user;
    o.progress.fn = [fn, user](const char* phase, uint64_t d, uint64_t t) { fn(phase, d, t, user); };
  }
  return o;
}

void to_c(const Stats& s, int code, const std::string& message, ferry_result* r) {
  if (!r) return;
  ferry_result res{};
  res.size = sizeof res;
  res.error_class = code;
  snprintf(res.message, sizeof res.message, "%s", message.c_str());
  res.device_bytes = s.device_bytes;
  res.written = s.written;
  res.reused = s.reused;
  res.copied = s.copied;
  res.carried = s.carried;
  res.seconds = s.seconds;
  res.stopped_seconds = s.stopped_seconds;
  memcpy(r, &res, std::min<size_t>(r->size ? r->size : sizeof res, sizeof res));
}

}  // namespace ferry::ops
