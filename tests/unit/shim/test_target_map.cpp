// Which physical device each program device goes to, from --device / --device-map.
#include <catch2/catch_test_macros.hpp>

#include <string>

#include "restore.hpp"

using namespace ferry;
using engine::target_map;

namespace {
nlohmann::json uses(std::initializer_list<int> vdevs) {
  nlohmann::json s = {{"contexts", nlohmann::json::array()}, {"physical", nlohmann::json::array()}};
  for (int v : vdevs) s["contexts"].push_back({{"vdev", v}});
  return s;
}
std::string refusal(const nlohmann::json& state, const ops::Options& o, std::vector<int> current) {
  try {
    target_map(state, o, current);
  } catch (const Error& e) {
    CHECK(e.cls == ErrorClass::FixFirst);
    return e.message;
  }
  return "";
}
}  // namespace

TEST_CASE("target: none given, the map stays", "[target]") {
  ops::Options o;
  CHECK(target_map(uses({0}), o, {1, 0}) == std::vector<int>{1, 0});
}

TEST_CASE("target: --device moves the program's one device and keeps a permutation", "[target]") {
  ops::Options o;
  o.device = 1;
  CHECK(target_map(uses({0}), o, {0, 1}) == std::vector<int>{1, 0});
  CHECK(target_map(uses({1}), o, {0, 1}) == std::vector<int>{0, 1});
  o.device = 2;
  CHECK(target_map(uses({0}), o, {0, 1, 2, 3}) == std::vector<int>{2, 1, 0, 3});
  CHECK(target_map(uses({}), o, {0, 1, 2}) == std::vector<int>{2, 1, 0});  // nothing used: device 0
}

TEST_CASE("target: --device-map is taken as given, when it fits", "[target]") {
  ops::Options o;
  o.device_map = {1, 0};
  CHECK(target_map(uses({0, 1}), o, {0, 1}) == std::vector<int>{1, 0});
  o.device_map = {1, 0, 2};
  CHECK(refusal(uses({0}), o, {0, 1}) == "the device map names 3 devices; the program sees 2");
  o.device_map = {0, 5};
  CHECK(refusal(uses({0}), o, {0, 1}) == "device 5 does not exist (2 devices)");
}

TEST_CASE("target: impossible --device requests are refused", "[target]") {
  ops::Options o;
  o.device = 4;
  CHECK(refusal(uses({0}), o, {0, 1}) == "device 4 does not exist (2 devices)");
  o.device = 1;
  CHECK(refusal(uses({0, 1}), o, {0, 1}) ==
        "the program uses 2 devices; say where each goes with a device map (--device-map)");
}
