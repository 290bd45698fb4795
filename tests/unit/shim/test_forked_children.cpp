// The fork handler's work (interpose/forked_children.hpp), run by hand in a child: the
// driver's descriptors become /dev/null, close-on-exec kept, its mappings inaccessible
// memory at the same addresses, and nothing else changes. No GPU here, so the child
// gets a /dev of its own (a private mount namespace, as root) where /dev/nvidia* are
// plain files -- the handler knows the driver's files by name. The simulated GPU's own
// file (a userfaultfd) goes too, a userfaultfd of the program's stays.
#include <catch2/catch_test_macros.hpp>

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "child.hpp"
#include "forked_children.hpp"
#include "shim_test.hpp"

namespace {

std::string link_of(int fd) {
  char b[256] = {};
  ssize_t n = readlink(("/proc/self/fd/" + std::to_string(fd)).c_str(), b, sizeof b - 1);
  return n > 0 ? std::string(b, static_cast<size_t>(n)) : "closed";
}

std::string cloexec(int fd) { return (fcntl(fd, F_GETFD) & FD_CLOEXEC) ? " cloexec" : ""; }

// The descriptor this process holds on `link` (the first), or -1.
int fd_on(const std::string& link) {
  for (int fd = 0; fd < 1024; fd++)
    if (link_of(fd) == link) return fd;
  return -1;
}

// The maps line of the mapping at addr, from its permissions on ("rw-s 00000000 ... path").
std::string map_at(void* addr) {
  char lo[32];
  snprintf(lo, sizeof lo, "%lx-", reinterpret_cast<unsigned long>(addr));
  std::ifstream in("/proc/self/maps");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(lo, 0) == 0) {
      std::string perms = line.substr(line.find(' ') + 1, 4);
      size_t path = line.find('/');
      return perms + (path == std::string::npos ? "" : " " + line.substr(path));
    }
  return "unmapped";
}

// In the child: builds the scene, runs the handler's work, reports what became of it.
std::string scene(const std::string& work) {
  if (unshare(CLONE_NEWNS) != 0 || mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0)
    return "no mount namespace";
  std::string null_copy = work + "/null", keep = work + "/keep";
  close(open(null_copy.c_str(), O_CREAT | O_WRONLY, 0600));
  if (mount("/dev/null", null_copy.c_str(), nullptr, MS_BIND, nullptr) != 0) return "cannot bind /dev/null";
  if (mount("tmpfs", "/dev", "tmpfs", 0, "size=1m") != 0) return "cannot mount a /dev";
  close(open("/dev/null", O_CREAT | O_WRONLY, 0666));
  if (mount(null_copy.c_str(), "/dev/null", nullptr, MS_BIND, nullptr) != 0) return "cannot bind /dev/null back";
  for (const char* f : {"/dev/nvidiactl", "/dev/nvidia0", keep.c_str()}) {
    int fd = open(f, O_CREAT | O_RDWR, 0666);
    if (fd < 0 || ftruncate(fd, 8192) != 0) return std::string("cannot make ") + f;
    close(fd);
  }
  int ctl = open("/dev/nvidiactl", O_RDWR);               // inherited without close-on-exec
  int dev = open("/dev/nvidia0", O_RDWR | O_CLOEXEC);      // and with it
  int other = open(keep.c_str(), O_RDWR | O_CLOEXEC);      // not the driver's
  int driver = fd_on("anon_inode:[userfaultfd]");  // the simulated driver's, from cuInit
  int uffd = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY));  // the program's own
  void* dev_map = mmap(nullptr, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, dev, 0);
  void* other_map = mmap(nullptr, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, other, 0);
  if (dev_map == MAP_FAILED || other_map == MAP_FAILED) return "cannot map";
  auto r = ferry::forked::release_driver_files();
  std::string s = "released " + std::to_string(r.fds) + " fds, " + std::to_string(r.mappings) + " mappings\n";
  s += "nvidiactl: " + link_of(ctl) + cloexec(ctl) + "\n";
  s += "nvidia0: " + link_of(dev) + cloexec(dev) + "\n";
  s += "other: " + link_of(other) + cloexec(other) + "\n";
  if (driver >= 0) s += "the simulated driver's file: " + link_of(driver) + cloexec(driver) + "\n";
  if (uffd >= 0) s += "the program's userfaultfd: " + link_of(uffd) + cloexec(uffd) + "\n";
  s += "nvidia0 mapping: " + map_at(dev_map) + "\n";
  s += "other mapping: " + map_at(other_map) + "\n";
  return s;
}

}  // namespace

TEST_CASE("a forked child's driver files: descriptors become /dev/null with their close-on-exec flag, mappings "
          "inaccessible memory in place; other files untouched",
          "[shim][fork]") {
  REQUIRE(geteuid() == 0);  // a mount namespace for the child's /dev
  shim_test::init();         // the simulated driver holds its file, and the shim knows which
  // Where the kernel has no user-mode userfaultfd, neither the driver nor the program has one.
  bool uffd = fd_on("anon_inode:[userfaultfd]") >= 0;
  char tmpl[] = "/tmp/ferry-fork-XXXXXX";
  REQUIRE(mkdtemp(tmpl));
  std::string work = tmpl;
  std::string got = ferry_test::report_from_child([&] { return scene(work); });
  unlink((work + "/null").c_str());
  unlink((work + "/keep").c_str());
  rmdir(work.c_str());
  CHECK(got == std::string(uffd ? "released 3 fds, 1 mappings\n" : "released 2 fds, 1 mappings\n") +
                   "nvidiactl: /dev/null\n"
                   "nvidia0: /dev/null cloexec\n"
                   "other: " + work + "/keep cloexec\n" +
                   (uffd ? "the simulated driver's file: /dev/null cloexec\n"
                           "the program's userfaultfd: anon_inode:[userfaultfd] cloexec\n"
                         : "") +
                   "nvidia0 mapping: ---p\n"
                   "other mapping: rw-s " + work + "/keep\n");
}
