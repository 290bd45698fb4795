// What a function returns when run in a forked child: for tests of what a process looks
// like after fork. The child writes its report back over a pipe and exits with _exit.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <functional>
#include <string>

namespace ferry_test {

inline std::string report_from_child(const std::function<std::string()>& fn) {
  int p[2];
  if (pipe(p) != 0) return "no pipe";
  fflush(nullptr);
  pid_t c = fork();
  if (c == 0) {
    close(p[0]);
    std::string s = fn();
    _exit(write(p[1], s.data(), s.size()) == static_cast<ssize_t>(s.size()) ? 0 : 1);
  }
  close(p[1]);
  std::string got;
  char b[512];
  for (ssize_t n; (n = read(p[0], b, sizeof b)) > 0;) got.append(b, static_cast<size_t>(n));
  close(p[0]);
  int st = 0;
  waitpid(c, &st, 0);
  return got;
}

}  // namespace ferry_test
