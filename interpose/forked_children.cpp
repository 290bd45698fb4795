#include "forked_children.hpp"

#include <fcntl.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>

#include <ferry_common/driver_files.hpp>
#include <ferry_common/export_tables.hpp>
#include <ferry_common/settings.hpp>

#include "log.hpp"
#include "nvml.hpp"
#include "pid_ns.hpp"
#include "shim.hpp"
#include "shim_decls.hpp"

namespace ferry::forked {

namespace {

// Set at install when the driver is the simulated GPU: the descriptor it holds in place
// of a GPU's /dev/nvidia* files (its own export table, ferry_common/export_tables.hpp).
// A userfaultfd is the driver's only then, and only that one: a program's own stays.
int (*g_emu_device_file)() = nullptr;

// Runs in a child right after fork, possibly of a multithreaded parent: system calls on
// stack buffers only -- no allocation, no lock another thread might have held.

bool driver_fd(int fd, const char* link) {
  if (driver_files::is_gpu_device(link)) return true;
  if (strcmp(link, driver_files::kSimulatedDevice) != 0) return false;
  return (g_emu_device_file && fd == g_emu_device_file()) || fd == nvml::emu_device_file();
}

int replace_fds() {
  int dir = static_cast<int>(syscall(SYS_openat, AT_FDCWD, "/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir < 0) return 0;
  int null_fd = -1, n = 0;
  alignas(8) char buf[4096];
  for (;;) {
    long got = syscall(SYS_getdents64, dir, buf, sizeof buf);
    if (got <= 0) break;
    for (long off = 0; off < got;) {
      struct Entry {
        uint64_t ino;
        int64_t off;
        unsigned short reclen;
        unsigned char type;
        char name[1];
      };
      auto* e = reinterpret_cast<Entry*>(buf + off);
      off += e->reclen;
      if (e->name[0] < '0' || e->name[0] > '9') continue;
      int fd = atoi(e->name);
      if (fd == dir || fd == null_fd) continue;
      char link[256];
      ssize_t len = readlinkat(dir, e->name, link, sizeof link - 1);
      if (len <= 0) continue;
      link[len] = '\0';
      if (!driver_fd(fd, link)) continue;
      if (null_fd < 0) null_fd = static_cast<int>(syscall(SYS_openat, AT_FDCWD, "/dev/null", O_RDWR | O_CLOEXEC));
      if (null_fd < 0) break;
      int fl = fcntl(fd, F_GETFD);
      if (dup3(null_fd, fd, fl >= 0 && (fl & FD_CLOEXEC) ? O_CLOEXEC : 0) == fd) n++;
    }
  }
  if (null_fd >= 0) close(null_fd);
  close(dir);
  return n;
}

// Mappings of the driver's device files, collected a buffer's worth at a time and
// replaced once /proc/self/maps has been read to its end (changing mappings while
// reading it could skip lines); more than fit in one pass take another.
int replace_mappings() {
  int total = 0;
  for (int pass = 0; pass < 8; pass++) {
    int fd = static_cast<int>(syscall(SYS_openat, AT_FDCWD, "/proc/self/maps", O_RDONLY | O_CLOEXEC));
    if (fd < 0) return total;
    struct Range {
      uintptr_t lo, hi;
    } found[256];
    int nfound = 0;
    bool more = false, skipping = false;  // skipping: the rest of a line longer than the buffer
    char buf[8192];
    size_t have = 0;
    for (;;) {
      ssize_t got = read(fd, buf + have, sizeof buf - have);
      if (got <= 0) break;
      have += static_cast<size_t>(got);
      size_t start = 0;
      for (size_t i = 0; i < have; i++) {
        if (buf[i] != '\n') continue;
        buf[i] = '\0';
        const char* line = buf + start;
        start = i + 1;
        if (skipping) {
          skipping = false;
          continue;
        }
        if (!driver_files::gpu_device_mapped(line)) continue;
        if (nfound == 256) {
          more = true;
          continue;
        }
        char* dash = nullptr;
        uintptr_t lo = strtoull(line, &dash, 16);
        if (!dash || *dash != '-') continue;
        uintptr_t hi = strtoull(dash + 1, nullptr, 16);
        if (hi > lo) found[nfound++] = {lo, hi};
      }
      if (start == 0 && have == sizeof buf) {  // no line end in a full buffer: not a mapping of ours
        skipping = true;
        have = 0;
        continue;
      }
      memmove(buf, buf + start, have - start);
      have -= start;
    }
    close(fd);
    int replaced = 0;
    for (int i = 0; i < nfound; i++) {
      void* p = mmap(reinterpret_cast<void*>(found[i].lo), found[i].hi - found[i].lo, PROT_NONE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
      if (p != MAP_FAILED) replaced++;
    }
    total += replaced;
    if (!more || replaced == 0) break;  // nothing changed: another pass would find the same
  }
  return total;
}

void in_child() {
  int saved = errno;  // fork() returned success; what we tried here must not say otherwise
  release_driver_files();
  errno = saved;
}

}  // namespace

Released release_driver_files() { return {replace_fds(), replace_mappings()}; }

void install() {
  static std::once_flag once;
  std::call_once(once, [] {
    const void* table = nullptr;
    CUuuid id;
    memcpy(id.bytes, export_tables::kEmuDriverFiles.data(), sizeof id.bytes);
    if (real::cuGetExportTable && real::cuGetExportTable(&table, &id) == CUDA_SUCCESS && table)
      g_emu_device_file = reinterpret_cast<int (*)()>(
          static_cast<void* const*>(table)[export_tables::emu_driver_files::kDeviceFile]);
    std::string mode = settings::text("FERRY_FORK_RELEASE", "job");
    if (mode != "job" && mode != "on" && mode != "off") {
      FERRY_WARN("FERRY_FORK_RELEASE=%s is not job, on or off; taken as job", mode.c_str());
      mode = "job";
    }
    if (mode == "on" || (mode == "job" && in_job())) pthread_atfork(nullptr, nullptr, in_child);
  });
}

}  // namespace ferry::forked
