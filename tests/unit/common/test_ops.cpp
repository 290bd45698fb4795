// The operations' options and statistics: JSON and C codecs.
#include <catch2/catch_test_macros.hpp>

#include <cstddef>
#include <cstring>
#include <string>

#include <ferry/ferry_c.h>
#include <ferry_common/errors.hpp>
#include <ferry_common/ops.hpp>

using namespace ferry;

TEST_CASE("options survive the JSON codec; defaults are left out", "[ops]") {
  ops::Options d;
  CHECK(ops::to_json(d) == nlohmann::json::object());
  ops::Options o;
  o.dir = "/ckpt/a";
  o.parent = "/ckpt/p";
  o.leave_running = true;
  o.stay_stopped = true;
  o.discard = true;
  o.zstd_level = 3;
  o.device = 1;
  o.device_map = {1, 0};
  o.staging_bytes = 64ull << 20;
  o.fingerprints = false;
  nlohmann::json j = ops::to_json(o);
  CHECK(j["fingerprints"] == false);
  CHECK(j["staging_mb"] == 64);
  CHECK(j["zstd"] == 3);
  ops::Options back = ops::options_from_json(j);
  CHECK(back.dir == o.dir);
  CHECK(back.parent == o.parent);
  CHECK(back.leave_running);
  CHECK(back.stay_stopped);
  CHECK(back.discard);
  CHECK(back.zstd_level == 3);
  CHECK(back.device == 1);
  CHECK(back.device_map == std::vector<int>{1, 0});
  CHECK(back.staging_bytes == 64ull << 20);
  CHECK_FALSE(back.fingerprints);
  CHECK(ops::options_from_json(nlohmann::json::object()).fingerprints);
}

TEST_CASE("an option of the wrong type is refused by name", "[ops]") {
  try {
    ops::options_from_json({{"device", "one"}});
    FAIL("accepted");
  } catch (const Error& e) {
    CHECK(e.cls == ErrorClass::FixFirst);
    CHECK(e.message == "option \"device\" has the wrong type (\"one\")");
  }
  CHECK_THROWS_AS(ops::options_from_json(nlohmann::json::array()), Error);
}

TEST_CASE("stats survive the JSON codec", "[ops]") {
  ops::Stats s{1, 2, 3, 4, 5.5, 6.25, 7};
  nlohmann::json j = ops::to_json(s);
  CHECK(j.size() == 7);
  ops::Stats b = ops::stats_from_json(j);
  CHECK(b.device_bytes == 1);
  CHECK(b.written == 2);
  CHECK(b.reused == 3);
  CHECK(b.copied == 4);
  CHECK(b.carried == 7);
  CHECK(b.seconds == 5.5);
  CHECK(b.stopped_seconds == 6.25);
}

TEST_CASE("the C options struct: read_all, and an older, smaller struct", "[ops]") {
  ferry_options c = FERRY_OPTIONS_INIT;
  CHECK(ops::from_c(&c).fingerprints);
  CHECK(ops::from_c(&c).device == -1);
  c.read_all = 1;
  c.dir = "/x";
  int map[] = {1, 0};
  c.device_map = map;
  c.device_map_len = 2;
  ops::Options o = ops::from_c(&c);
  CHECK_FALSE(o.fingerprints);
  CHECK(o.dir == "/x");
  CHECK(o.device_map == std::vector<int>{1, 0});

  // A program built against ABI 2 passes a struct that ends before read_all; whatever
  // follows it in memory is not read.
  struct {
    ferry_options opts;
    char garbage[16];
  } old;
  memset(&old, 0xff, sizeof old);
  memset(&old.opts, 0, offsetof(ferry_options, read_all));
  old.opts.size = offsetof(ferry_options, read_all);
  old.opts.device = 1;
  o = ops::from_c(&old.opts);
  CHECK(o.fingerprints);
  CHECK(o.device == 1);
  CHECK(o.staging_bytes == ops::Options::kDefaultStagingBytes);

  CHECK(ops::from_c(nullptr).device == -1);
}

TEST_CASE("the C result struct: filled up to the caller's size", "[ops]") {
  ops::Stats s{10, 20, 30, 40, 1.5, 0.5, 50};
  ferry_result r{};
  r.size = sizeof r;
  ops::to_c(s, FERRY_DATA_LOST, "damaged", &r);
  CHECK(r.error_class == FERRY_DATA_LOST);
  CHECK(std::string(r.message) == "damaged");
  CHECK(r.device_bytes == 10);
  CHECK(r.copied == 40);
  CHECK(r.stopped_seconds == 0.5);
  CHECK(r.carried == 50);

  struct {
    ferry_result res;
    unsigned char guard[8];
  } small;
  memset(&small, 0xab, sizeof small);
  small.res.size = offsetof(ferry_result, copied);  // an older result struct
  ops::to_c(s, FERRY_OK, "", &small.res);
  CHECK(small.res.written == 20);
  const unsigned char* after = reinterpret_cast<const unsigned char*>(&small.res) + offsetof(ferry_result, copied);
  CHECK(after[0] == 0xab);
  // ABI 3's struct, without carried: filled up to copied, nothing past it.
  memset(&small, 0xab, sizeof small);
  small.res.size = offsetof(ferry_result, carried);
  ops::to_c(s, FERRY_OK, "", &small.res);
  CHECK(small.res.copied == 40);
  CHECK(reinterpret_cast<const unsigned char*>(&small.res)[offsetof(ferry_result, carried)] == 0xab);
}
