// The error table: one class, one name, one exit code, one C code.
#include <catch2/catch_test_macros.hpp>

#include <set>
#include <string>

#include <ferry/ferry_c.h>
#include <ferry_common/errors.hpp>

using namespace ferry;

TEST_CASE("every error class has its name, exit code and C code", "[errors]") {
  CHECK(std::string(class_name(ErrorClass::RetryLater)) == "retry-later");
  CHECK(std::string(class_name(ErrorClass::FixFirst)) == "fix-first");
  CHECK(std::string(class_name(ErrorClass::DataLost)) == "data-lost");
  CHECK(std::string(class_name(ErrorClass::Bug)) == "bug");
  // sysexits.h: EX_TEMPFAIL, EX_CONFIG, EX_IOERR, EX_SOFTWARE
  CHECK(info(ErrorClass::RetryLater).exit_code == 75);
  CHECK(info(ErrorClass::FixFirst).exit_code == 78);
  CHECK(info(ErrorClass::DataLost).exit_code == 74);
  CHECK(info(ErrorClass::Bug).exit_code == 70);
  CHECK(info(ErrorClass::RetryLater).c_code == FERRY_RETRY_LATER);
  CHECK(info(ErrorClass::FixFirst).c_code == FERRY_FIX_FIRST);
  CHECK(info(ErrorClass::DataLost).c_code == FERRY_DATA_LOST);
  CHECK(info(ErrorClass::Bug).c_code == FERRY_BUG);
}

TEST_CASE("names, exit codes and C codes are distinct and round-trip", "[errors]") {
  std::set<std::string> names;
  std::set<int> exits, codes;
  for (const auto& i : kErrorClasses) {
    CHECK(names.insert(i.name).second);
    CHECK(exits.insert(i.exit_code).second);
    CHECK(codes.insert(i.c_code).second);
    CHECK(i.c_code != FERRY_OK);
    CHECK(class_from_name(i.name) == i.cls);
    CHECK(exit_code_for(i.name) == i.exit_code);
    for (int other : {exit_code::kOk, exit_code::kFailed, exit_code::kUsage, exit_code::kNoProcess})
      CHECK(i.exit_code != other);
  }
  CHECK(names.size() == 4);
  CHECK_FALSE(class_from_name("retry_later"));
  CHECK(exit_code_for("something new") == 70);  // a class the CLI does not know is a bug
}

TEST_CASE("an Error carries its class and message", "[errors]") {
  try {
    throw Error(ErrorClass::DataLost, "packs/0000.pack: chunk 3f at offset 7: truncated");
  } catch (const std::exception& e) {
    CHECK(std::string(e.what()) == "packs/0000.pack: chunk 3f at offset 7: truncated");
    CHECK(dynamic_cast<const Error&>(e).cls == ErrorClass::DataLost);
  }
}
