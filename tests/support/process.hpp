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

// The simulated driver copied alone into dir (made where missing): a --real-driver with no
// NVML beside it. Its path.
std::string lone_simulated_driver(const std::string& dir);

std::vector<std::string> lines_with(const std::string& text, const std::string& needle);

// A program running in the background while a test drives it from outside; its
// stdout and stderr go to files the test can watch. Killed when the object dies.
class Child {
 public:
  Child(const std::vector<std::string>& argv, const std::map<std::string, std::string>& env = {});
  ~Child();
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  int pid() const { return pid_; }
  std::string out() const;
  std::string err() const;
  // Waits until stdout holds `needle` (false on timeout or when the program ended).
  bool wait_for(const std::string& needle, int timeout_s = 60);
  // Waits for the program to end (killed after timeout_s) and returns what it did.
  Result finish(int timeout_s = 120);

 private:
  int pid_ = -1;
  bool done_ = false;
  std::string out_path_, err_path_;
};

std::string read_file(const std::string& path);

}  // namespace ferry_test
