// Runs a program for a test: argv, extra environment, captured stdout/stderr, exit
// status, and a timeout so a hung child fails the test instead of the whole run.
#pragma once

#include <map>
#include <string>
#include <vector>

namespace ferry_test {

struct Result {
  int exit_code = -1;  // -1 when killed by a signal
  int signal = 0;
  bool timed_out = false;
  std::string out, err;
};

Result run(const std::vector<std::string>& argv, const std::map<std::string, std::string>& env = {},
           int timeout_s = 120);

// Environment that points a process at the simulated GPU of this build.
std::map<std::string, std::string> emu_env(std::map<std::string, std::string> extra = {});

std::vector<std::string> lines_with(const std::string& text, const std::string& needle);

}  // namespace ferry_test
