// The settings table and its parsers, and the documents that list the settings.
#include <catch2/catch_test_macros.hpp>

#include <signal.h>
#include <stdlib.h>

#include <fstream>
#include <set>
#include <sstream>
#include <string>

#include <ferry_common/settings.hpp>

using namespace ferry::settings;

TEST_CASE("sizes parse the same everywhere: suffixes are powers of 1024", "[settings]") {
  CHECK(parse_size("64g") == 64ull << 30);
  CHECK(parse_size("64G") == 64ull << 30);
  CHECK(parse_size("64GiB") == 64ull << 30);
  CHECK(parse_size("64gb") == 64ull << 30);
  CHECK(parse_size("512M") == 512ull << 20);
  CHECK(parse_size("2T") == 2ull << 40);
  CHECK(parse_size("4k") == 4096);
  CHECK(parse_size("4096") == 4096);
  CHECK(parse_size("0") == 0);
  CHECK(parse_size("0x500000000000") == 0x500000000000ull);
  CHECK(parse_size(" 1M ") == 1ull << 20);
  CHECK_FALSE(parse_size(""));
  CHECK_FALSE(parse_size("g"));
  CHECK_FALSE(parse_size("12q"));
  CHECK_FALSE(parse_size("1.5G"));
  CHECK_FALSE(parse_size("-1"));
  CHECK_FALSE(parse_size("0x"));
  CHECK_FALSE(parse_size("99999999999999999999"));
  CHECK_FALSE(parse_size("16777216T"));  // 2^64 bytes: does not fit
}

TEST_CASE("FERRY_ARENA_SIZE=64g is 64 GiB through the typed reader", "[settings]") {
  setenv("FERRY_ARENA_SIZE", "64g", 1);
  CHECK(size("FERRY_ARENA_SIZE", 1) == 64ull << 30);
  setenv("FERRY_ARENA_SIZE", "lots", 1);
  CHECK(size("FERRY_ARENA_SIZE", 7) == 7);  // unparsable: the default, and a message
  unsetenv("FERRY_ARENA_SIZE");
  CHECK(size("FERRY_ARENA_SIZE", 9) == 9);
}

TEST_CASE("flags, counts, signals", "[settings]") {
  for (const char* on : {"on", "ON", "1", "true", "yes"}) CHECK(parse_flag(on) == true);
  for (const char* off : {"off", "Off", "0", "false", "no"}) CHECK(parse_flag(off) == false);
  CHECK_FALSE(parse_flag("maybe"));
  setenv("FERRY_ARENA", "off", 1);
  CHECK_FALSE(flag("FERRY_ARENA", true));
  unsetenv("FERRY_ARENA");
  CHECK(flag("FERRY_ARENA", true));
  setenv("FERRY_EMU_DEVICES", "3", 1);
  CHECK(count("FERRY_EMU_DEVICES", 2) == 3);
  setenv("FERRY_EMU_DEVICES", "3x", 1);
  CHECK(count("FERRY_EMU_DEVICES", 2) == 2);
  unsetenv("FERRY_EMU_DEVICES");
  CHECK(parse_signal("TERM") == SIGTERM);
  CHECK(parse_signal("SIGUSR2") == SIGUSR2);
  CHECK(parse_signal("usr1") == SIGUSR1);
  CHECK(parse_signal("15") == 15);
  CHECK(parse_signal("0") == 0);
  CHECK(parse_signal("64") == 0);
  CHECK(parse_signal("BOGUS") == 0);
}

TEST_CASE("the table: unique names, indexed names, help for each", "[settings]") {
  std::set<std::string> names;
  for (const Setting& s : kSettings) {
    INFO(s.name);
    CHECK(std::string(s.name).rfind("FERRY_", 0) == 0);
    CHECK(names.insert(s.name).second);
    CHECK(std::string(s.help).size() > 10);
    CHECK(s.scope != 0);
    CHECK(find(s.name) == &s);
  }
  CHECK(find("FERRY_EMU_DEVICE3") != nullptr);
  CHECK(std::string(find("FERRY_EMU_DEVICE12")->name) == "FERRY_EMU_DEVICE<n>");
  CHECK(find("FERRY_EMU_DEVICEx") == nullptr);
  CHECK(find("FERRY_NO_SUCH_THING") == nullptr);
}

namespace {

std::string read_doc(const std::string& rel) {
  std::ifstream in(std::string(FERRY_TEST_SOURCE_DIR) + "/" + rel);
  REQUIRE(in.good());
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The FERRY_* names in the first column of the markdown tables of a document: each
// `FERRY_...` in backquotes (std::regex is avoided: gcc 12 warns inside it under ASan).
std::set<std::string> documented(const std::string& doc) {
  std::set<std::string> out;
  std::istringstream lines(doc);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.rfind("| `FERRY_", 0) != 0) continue;
    std::string first = line.substr(0, line.find('|', 1));
    for (size_t at = first.find("`FERRY_"); at != std::string::npos; at = first.find("`FERRY_", at + 1)) {
      size_t end = first.find('`', at + 1);
      if (end != std::string::npos) out.insert(first.substr(at + 1, end - at - 1));
    }
  }
  return out;
}

void check_doc(const std::string& rel, unsigned scope) {
  std::set<std::string> in_table;
  for (const Setting& s : kSettings)
    if (s.scope & scope) in_table.insert(s.name);
  std::set<std::string> in_doc = documented(read_doc(rel));
  std::string only_doc, only_table;
  for (auto& n : in_doc)
    if (!in_table.count(n)) only_doc += n + " ";
  for (auto& n : in_table)
    if (!in_doc.count(n)) only_table += n + " ";
  INFO(rel << ": documented but not in the settings table: " << only_doc
            << "; in the table (common/include/ferry_common/settings.hpp) but not documented: " << only_table);
  CHECK(in_doc == in_table);
}

}  // namespace

TEST_CASE("docs/shim.md lists exactly the shim's settings", "[settings][docs]") { check_doc("docs/shim.md", Shim); }

TEST_CASE("docs/emulator.md lists exactly the simulated GPU's settings", "[settings][docs]") {
  check_doc("docs/emulator.md", Emulator);
}
