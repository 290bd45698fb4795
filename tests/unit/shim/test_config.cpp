// The shim reads its settings through common's table: the same parser as the CLI.
#include <catch2/catch_test_macros.hpp>

#include <signal.h>
#include <stdlib.h>

#include "config.hpp"

using namespace ferry;

TEST_CASE("FERRY_ARENA_SIZE=64g is 64 GiB to the shim", "[config]") {
  setenv("FERRY_ARENA_SIZE", "64g", 1);
  setenv("FERRY_ARENA_BASE", "0x600000000000", 1);
  setenv("FERRY_DUMP_SIGNAL", "SIGUSR2", 1);
  setenv("FERRY_ARENA", "0", 1);
  setenv("FERRY_FINGERPRINTS", "off", 1);
  read_config();
  CHECK(config().arena_size == 64ull << 30);
  CHECK(config().arena_base == 0x600000000000ull);
  CHECK(config().dump_signal == SIGUSR2);
  CHECK_FALSE(config().arena);
  CHECK_FALSE(config().fingerprints);
  CHECK(config().control);
}
