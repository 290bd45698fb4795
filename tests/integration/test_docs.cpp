// Documentation that states facts about the build is checked against the build.
#include <catch2/catch_test_macros.hpp>

#include <fstream>
#include <regex>
#include <set>
#include <sstream>

#include "process.hpp"

TEST_CASE("docs/emulator.md lists exactly the entry points the emulator exports", "[docs]") {
  std::ifstream in(std::string(FERRY_TEST_SOURCE_DIR) + "/docs/emulator.md");
  REQUIRE(in.good());
  std::stringstream ss;
  ss << in.rdbuf();
  std::string doc = ss.str();
  auto a = doc.find("<!-- implemented:begin -->");
  auto b = doc.find("<!-- implemented:end -->");
  REQUIRE(a != std::string::npos);
  REQUIRE(b != std::string::npos);
  std::string section = doc.substr(a, b - a);
  std::set<std::string> documented;
  std::regex word(R"(\bcu[A-Z]\w*)");
  for (auto it = std::sregex_iterator(section.begin(), section.end(), word); it != std::sregex_iterator(); ++it)
    documented.insert(it->str());

  auto r = ferry_test::run({FERRY_TEST_NM, "-D", "--defined-only", std::string(FERRY_TEST_EMU_LIB_DIR) + "/libcuda.so.1"});
  REQUIRE(r.exit_code == 0);
  std::set<std::string> exported;
  std::istringstream lines(r.out);
  std::string addr, type, name;
  while (lines >> addr >> type >> name)
    if (std::regex_match(name, std::regex(R"(cu[A-Z]\w*)"))) exported.insert(name);
  REQUIRE(exported.size() > 250);
  std::string only_doc, only_lib;
  for (auto& n : documented)
    if (!exported.count(n)) only_doc += n + " ";
  for (auto& n : exported)
    if (!documented.count(n)) only_lib += n + " ";
  INFO("run scripts/emulator-entry-points.sh --update; documented but not exported: "
       << only_doc << "; exported but not documented: " << only_lib);
  REQUIRE(documented == exported);
}

TEST_CASE("docs/control.md describes every subcommand of the ferry CLI", "[docs]") {
  std::ifstream in(std::string(FERRY_TEST_SOURCE_DIR) + "/docs/control.md");
  REQUIRE(in.good());
  std::stringstream ss;
  ss << in.rdbuf();
  std::string doc = ss.str();
  auto r = ferry_test::run({std::string(FERRY_TEST_BIN_DIR) + "/tools/ferry", "--help"});
  REQUIRE(r.exit_code == 0);
  auto at = r.out.find("Subcommands:");
  REQUIRE(at != std::string::npos);
  std::istringstream lines(r.out.substr(at));
  std::string line;
  std::getline(lines, line);
  int n = 0;
  while (std::getline(lines, line)) {
    std::istringstream words(line);
    std::string cmd;
    if (!(words >> cmd)) continue;
    n++;
    INFO("ferry " << cmd);
    CHECK(doc.find("ferry " + cmd + " ") != std::string::npos);
  }
  CHECK(n >= 11);  // the help was parsed
}
