// The shim's messages (see log.hpp).
#include "log.hpp"

#include <unistd.h>

#include <cstdarg>
#include <cstdio>

namespace ferry::log {

namespace {
int g_level = Warn;
int g_fd = 2;
}  // namespace

void configure(Level level, int fd) {
  g_level = level;
  g_fd = fd;
}

bool enabled(Level l) { return l <= g_level; }

void raw(const char* text, unsigned long len) {
  while (len > 0) {
    ssize_t n = ::write(g_fd, text, len);
    if (n <= 0) return;
    text += n;
    len -= static_cast<unsigned long>(n);
  }
}

void write(Level l, const char* fmt, ...) {
  if (l > g_level) return;
  char buf[1024];
  int n = snprintf(buf, sizeof buf, "ferry: ");
  va_list ap;
  va_start(ap, fmt);
  n += vsnprintf(buf + n, sizeof buf - static_cast<size_t>(n) - 1, fmt, ap);
  va_end(ap);
  if (n > static_cast<int>(sizeof buf) - 2) n = sizeof buf - 2;
  buf[n++] = '\n';
  raw(buf, static_cast<unsigned long>(n));
}

}  // namespace ferry::log
