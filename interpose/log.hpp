// Messages from the shim: one line each, "ferry: ...", to stderr or FERRY_LOG_FILE.
// FERRY_LOG=error|warn|info|debug (default warn); ",state" adds a dump of the
// device-state log at exit.
#pragma once

namespace ferry::log {

enum Level { Error = 0, Warn = 1, Info = 2, Debug = 3 };

// Set once from the configuration: the level and where lines go.
void configure(Level level, int fd);
bool enabled(Level l);
void write(Level l, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
// Writes raw text (already formatted) to the log destination.
void raw(const char* text, unsigned long len);

}  // namespace ferry::log

#define FERRY_ERROR(...) ::ferry::log::write(::ferry::log::Error, __VA_ARGS__)
#define FERRY_WARN(...) ::ferry::log::write(::ferry::log::Warn, __VA_ARGS__)
#define FERRY_INFO(...) \
  (::ferry::log::enabled(::ferry::log::Info) ? ::ferry::log::write(::ferry::log::Info, __VA_ARGS__) : void())
#define FERRY_DEBUG(...) \
  (::ferry::log::enabled(::ferry::log::Debug) ? ::ferry::log::write(::ferry::log::Debug, __VA_ARGS__) : void())
