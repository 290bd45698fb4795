// Whole-process dump and restore (process_image.hpp has the mechanism).
#include "process_image.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cuda.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <ferry_common/control.hpp>
#include <ferry_common/driver_files.hpp>
#include <ferry_common/ops.hpp>
#include <ferry_common/settings.hpp>
#include <ferry_image/image.hpp>

#include "client.hpp"
#include "cuda_driver.hpp"
#include "full_process.hpp"
#include "init_dir.hpp"
#include "job.hpp"
#include "output.hpp"
#include "paths.hpp"
#include "relay.hpp"
#include "restore_guard.hpp"
#include "sockets.hpp"

namespace fs = std::filesystem;

namespace ferry::cli {

namespace {

// How long a dump waits for another dump or restore of a copy of its job (init_dir.hpp).
constexpr int kInitDirWaitS = 600;

// ---- processes, seen through /proc ---------------------------------------------------------

std::string status_field(pid_t pid, const std::string& key) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(key + ":", 0) == 0) {
      size_t v = line.find_first_not_of(" \t", key.size() + 1);
      return v == std::string::npos ? "" : line.substr(v);
    }
  return "";
}

pid_t parent_of(pid_t pid) { return static_cast<pid_t>(atoi(status_field(pid, "PPid").c_str())); }

// The pid as each PID namespace from the host's down sees it.
std::vector<pid_t> ns_pids(pid_t pid) {
  std::istringstream in(status_field(pid, "NSpid"));
  std::vector<pid_t> v;
  pid_t p;
  while (in >> p) v.push_back(p);
  return v;
}

std::vector<std::string> cmdline_of(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/cmdline", std::ios::binary);
  std::vector<std::string> v;
  std::string a;
  while (std::getline(in, a, '\0')) v.push_back(a);
  return v;
}

std::string environ_value(pid_t pid, const std::string& name) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/environ", std::ios::binary);
  std::string kv;
  while (std::getline(in, kv, '\0'))
    if (kv.rfind(name + "=", 0) == 0) return kv.substr(name.size() + 1);
  return "";
}

std::string pid_ns_of(pid_t pid) {
  char b[64] = {};
  ssize_t n = readlink(("/proc/" + std::to_string(pid) + "/ns/pid").c_str(), b, sizeof b - 1);
  return n > 0 ? std::string(b, static_cast<size_t>(n)) : "";
}

// ferry's init of a job in a PID namespace of its own (pid 1 there), or of one without
// (`ferry run --host-pids`: in ferry's own namespace).
bool is_job_init(pid_t pid) {
  if (status_field(pid, "Name") != "ferry-init") return false;
  auto ns = ns_pids(pid);
  if (ns.size() >= 2 && ns.back() == 1) return true;
  std::string mine = pid_ns_of(pid);
  return !mine.empty() && mine == pid_ns_of(getpid());
}

// A job started with --host-pids: its processes have the host's numbers.
bool host_pids_job(pid_t init) {
  auto ns = ns_pids(init);
  return !(ns.size() >= 2 && ns.back() == 1);
}

// The init of the job pid belongs to: pid itself, its child (pid is the job's `ferry run`
// or `ferry restore`), or an ancestor.
pid_t job_init_of(pid_t pid) {
  if (no_process(pid)) throw ClientError(kNoProcess, "no process " + std::to_string(pid));
  if (is_job_init(pid)) return pid;
  for (pid_t c : child_pids(pid))
    if (is_job_init(c)) return c;
  for (pid_t p = pid; p > 1;) {
    p = parent_of(p);
    if (p > 1 && is_job_init(p)) return p;
  }
  throw ClientError(kFixFirst, "process " + std::to_string(pid) +
                                   " is not in a ferry job: a whole-process dump needs the program started with "
                                   "`ferry run --pid-namespace` (its own PID namespace, under ferry's init) or "
                                   "`ferry run --host-pids`");
}

struct Task {
  pid_t host = 0, ns = 0, ns_parent = 0;
  std::string name;
  std::vector<std::string> cmd;
  bool cuda = false;
  std::vector<pid_t> tids;  // its threads but the first, by host number
};

std::string sock_of(pid_t host) { return control::socket_dir() + "/" + control::socket_name(host); }
std::string marker_of(pid_t host, const char* ext) { return control::socket_dir() + "/" + std::to_string(host) + ext; }
// A CUDA process under ferry: it listens on its control socket, or a dump detached it.
bool uses_cuda(pid_t host) {
  return access(sock_of(host).c_str(), F_OK) == 0 || access(marker_of(host, ".detached").c_str(), F_OK) == 0;
}
// Removes the socket and markers named by host, whose process has ended (or never ran
// under that pid here): left where it died without its atexit, they would be taken for a
// live process's.
void forget_files_of(pid_t host) {
  for (const char* ext : {".sock", ".detached", ".reattach"}) unlink(marker_of(host, ext).c_str());
}
// A CUDA process a dump detached that has not listened again (the dump goes on, or died).
bool left_detached(pid_t host) {
  return access(marker_of(host, ".detached").c_str(), F_OK) == 0 && access(sock_of(host).c_str(), F_OK) != 0;
}

// The CUDA driver's device files (/dev/nvidia*; the simulated GPU's stand-in is a
// userfaultfd) that processes of the job hold -- descriptors and mappings -- which CRIU
// cannot dump: one "process N (name, pid P): what" per process holding any, "; "
// between them; "" when none does. CUDA processes are looked at only with `cuda_too`
// (after NVIDIA's checkpoint has released their driver).
std::string driver_files_held(const std::vector<Task>& tasks, bool cuda_too) {
  std::string who;
  for (auto& t : tasks) {
    if (t.cuda && !cuda_too) continue;
    std::string proc = "/proc/" + std::to_string(t.host);
    std::set<std::string> held;
    for (auto& [fd, link] : fd_links(t.host))
      if (driver_files::is_gpu_device(link.c_str()) || link == driver_files::kSimulatedDevice)
        held.insert(link + " as fd " + std::to_string(fd));
    std::ifstream maps(proc + "/maps");
    std::string line;
    while (std::getline(maps, line))
      if (const char* path = driver_files::gpu_device_mapped(line.c_str())) held.insert(std::string(path) + " mapped");
    if (held.empty()) continue;
    std::string what;
    for (auto& h : held) what += (what.empty() ? "" : ", ") + h;
    who += (who.empty() ? "" : "; ") + std::string("process ") + std::to_string(t.ns) + " (" + t.name + ", pid " +
           std::to_string(t.host) + "): " + what;
  }
  return who;
}

// Before anything stops: processes that do not use CUDA under ferry must not hold the
// driver's files. A child forked without exec inherits them (the shim replaces them
// there unless FERRY_FORK_RELEASE=off: interpose/forked_children.hpp), and so does a
// program using the driver without ferry's shim (nvidia-smi). "" when none does.
std::string driver_files_outside_cuda(const std::vector<Task>& tasks) {
  std::string who = driver_files_held(tasks, false);
  if (who.empty()) return "";
  return "processes that do not use CUDA under ferry hold the CUDA driver's files, which CRIU cannot dump -- " + who +
         ". A child forked without exec inherits them (in a ferry job they are replaced in a child forked once CUDA "
         "started under ferry's shim, unless FERRY_FORK_RELEASE=off), as does a program using the driver without "
         "ferry (NVML, nvidia-smi)" +
         (who.find("userfaultfd") == std::string::npos
              ? ""
              : "; a userfaultfd is the simulated GPU's file, or the program's own (CRIU cannot dump either)");
}

// A process's identity across pid reuse: its pid and start time (/proc/PID/stat field 22).
std::string identity_of(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat;
  std::getline(in, stat);
  size_t close = stat.rfind(')');
  if (close == std::string::npos) return "";
  std::istringstream rest(stat.substr(close + 2));
  std::string field;
  for (int i = 3; i <= 22 && rest >> field; i++)
    if (i == 22) return std::to_string(pid) + " " + field;
  return "";
}

// While `ferry dump` works on a job, <socket dir>/<init>.dumping names it (pid and start
// time), so that neither a second dump nor `ferry resume` of the job acts meanwhile; one
// left by a ferry that died is stale and ignored. 0: no dump in progress.
pid_t dumping_ferry(pid_t init) {
  std::ifstream in(marker_of(init, ".dumping"));
  std::string who;
  std::getline(in, who);
  pid_t p = static_cast<pid_t>(atoi(who.c_str()));
  return p > 0 && identity_of(p) == who ? p : 0;
}

// Throws RetryLater, saying what happens next (then), while a dump of job init is under way.
void refuse_while_dumped(pid_t init, const char* then) {
  if (pid_t f = dumping_ferry(init))
    throw ClientError(kRetryLater, "job " + std::to_string(init) + " is being dumped by ferry (pid " +
                                       std::to_string(f) + "); " + then);
}

// Waits for child p to end, leaving it to be reaped: until then its pid is nobody else's.
void wait_unreaped(pid_t p) {
  siginfo_t info;
  while (waitid(P_PID, static_cast<id_t>(p), &info, WEXITED | WNOWAIT) != 0 && errno == EINTR) {
  }
}

// Marks job init as being dumped by this process (created exclusively: of two dumps at
// once, one wins); a marker a dead ferry left is replaced. Returns its path.
std::string mark_dumping(pid_t init) {
  std::string dir = own_socket_dir();
  // Markers a killed ferry left for jobs long gone would otherwise pile up: those a
  // minute old whose ferry is dead go (a younger one may still be getting its writer's name).
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    std::string n = it->path().filename();
    struct stat sb;
    if (n.size() > 8 && n.compare(n.size() - 8, 8, ".dumping") == 0 && lstat(it->path().c_str(), &sb) == 0 &&
        time(nullptr) - sb.st_mtime > 60 && dumping_ferry(static_cast<pid_t>(atoi(n.c_str()))) == 0) {
      struct stat again;  // not replaced meanwhile by a new dump's
      if (lstat(it->path().c_str(), &again) == 0 && again.st_ino == sb.st_ino && again.st_mtime == sb.st_mtime)
        unlink(it->path().c_str());
    }
    // A marker being written by a ferry killed before it linked it into place.
    if (size_t at = n.find(".dumping.tmp-"); at != std::string::npos && lstat(it->path().c_str(), &sb) == 0 &&
                                             time(nullptr) - sb.st_mtime > 60) {
      pid_t writer = static_cast<pid_t>(atoi(n.c_str() + at + 13));
      if (writer > 0 && no_process(writer)) unlink(it->path().c_str());
    }
  }
  std::string path = marker_of(init, ".dumping");
  // Written in full under a name of this process's, then linked into place: a marker is
  // never seen empty (taken for a dead ferry's and removed while its dump goes on).
  const std::string mine = path + ".tmp-" + std::to_string(getpid());
  {
    unlink(mine.c_str());
    int fd = open(mine.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) throw ClientError(kFixFirst, "cannot create " + mine + ": " + strerror(errno));
    std::string me = identity_of(getpid()) + "\n";
    bool ok = write(fd, me.data(), me.size()) == static_cast<ssize_t>(me.size());
    int e = errno;
    close(fd);
    if (!ok) {
      unlink(mine.c_str());
      throw ClientError(kFixFirst, "cannot write " + mine + ": " + strerror(e));
    }
  }
  struct Unlink {
    const std::string& p;
    ~Unlink() { unlink(p.c_str()); }
  } drop_mine{mine};
  for (int attempt = 0; attempt < 3; attempt++) {
    if (link(mine.c_str(), path.c_str()) == 0) return path;
    if (errno != EEXIST) throw ClientError(kFixFirst, "cannot create " + path + ": " + strerror(errno));
    struct stat judged, now;
    if (lstat(path.c_str(), &judged) != 0) continue;  // gone meanwhile
    refuse_while_dumped(init, "try again when that has ended");
    // Stale: its ferry is gone. Unless a third dump's replaced it since it was judged.
    if (lstat(path.c_str(), &now) == 0 && now.st_ino == judged.st_ino) unlink(path.c_str());
  }
  throw ClientError(kRetryLater, "job " + std::to_string(init) + " is being dumped by another ferry; try again when "
                                                                  "that has ended");
}

// The job's processes, parents before children.
std::vector<Task> tree_of(pid_t init, bool dead_are_done = true) {
  std::vector<Task> out;
  std::vector<std::pair<pid_t, pid_t>> todo = {{init, 0}};
  for (size_t i = 0; i < todo.size(); i++) {
    auto [host, parent_ns] = todo[i];
    Task t;
    t.host = host;
    auto ns = ns_pids(host);
    if (ns.empty()) continue;  // gone meanwhile
    t.ns = ns.back();
    t.ns_parent = parent_ns;
    t.name = status_field(host, "Name");
    t.cmd = cmdline_of(host);
    // A zombie (a CUDA process that ended, not reaped yet) has no GPU state; its socket
    // and markers, left where it died without its atexit, are stale (it keeps its pid).
    // Not once CRIU has dumped the job: one killed since is alive in the image.
    if (dead_are_done && dead(host)) {
      // Only while it holds its pid (a zombie): once gone, a new process may have it.
      if (!no_process(host)) forget_files_of(host);
    } else {
      t.cuda = uses_cuda(host);
    }
    for (pid_t tid : thread_ids(host))
      if (tid != host) t.tids.push_back(tid);
    std::sort(t.tids.begin(), t.tids.end());
    for (pid_t c : child_pids(host)) todo.push_back({c, t.ns});
    out.push_back(t);
  }
  return out;
}

// ---- the job's stdio, and descriptors from its launcher -------------------------------------------

// How CRIU names what fd of pid is open on: `external` for --external at a dump (""
// when CRIU takes it as it is), `key` for --inherit-fd at a restore.
struct Stdio {
  int fd = 0;
  dev_t dev = 0;
  uint64_t ino = 0;
  std::string kind, key, external, what;
  std::string mode;  // "r", "w" or "rw": how the job had it open ("" unknown)
};

std::string access_mode(unsigned long flags) {
  switch (flags & O_ACCMODE) {
    case O_RDONLY: return "r";
    case O_WRONLY: return "w";
    case O_RDWR: return "rw";
  }
  return "";
}

// The descriptors the init holds from outside the job: 0, 1 and 2, and those ferry run
// --preserve-fds kept for it. The init's own (its wake-up pipe) are close-on-exec and
// the kept ones cannot be (they came through ferry run's exec), so the flag tells them
// apart; an init that kept none closed everything above 2 (job.hpp).
std::vector<int> outside_fds(pid_t init) {
  std::vector<int> fds = {0, 1, 2};
  std::string base = "/proc/" + std::to_string(init);
  DIR* d = opendir((base + "/fd").c_str());
  if (!d) return fds;
  while (dirent* e = readdir(d)) {
    char* end = nullptr;
    long fd = strtol(e->d_name, &end, 10);
    if (end == e->d_name || *end || fd < 3) continue;
    bool read = false;
    if (unsigned long flags = fd_flags(init, static_cast<int>(fd), &read); read && !(flags & O_CLOEXEC))
      fds.push_back(static_cast<int>(fd));
  }
  closedir(d);
  std::sort(fds.begin(), fds.end());
  return fds;
}

std::vector<Stdio> stdio_of(pid_t pid) {
  std::vector<Stdio> v;
  for (int fd : outside_fds(pid)) {
    std::string link = "/proc/" + std::to_string(pid) + "/fd/" + std::to_string(fd);
    char buf[4096];
    ssize_t n = readlink(link.c_str(), buf, sizeof buf - 1);
    struct stat sb;
    if (n <= 0 || stat(link.c_str(), &sb) != 0) continue;
    buf[n] = 0;
    Stdio s;
    s.fd = fd;
    s.dev = sb.st_dev;
    s.ino = sb.st_ino;
    s.what = buf;
    bool read = false;
    if (unsigned long flags = fd_flags(pid, fd, &read); read) s.mode = access_mode(flags);
    char k[96];
    if (S_ISSOCK(sb.st_mode)) {
      // A Unix socket (a service's journald stream, a supervisor's socketpair): its peer
      // stays outside. Any other socket is left to the socket check, which refuses it.
      if (!is_unix_socket(pid, sb.st_ino)) continue;
      snprintf(k, sizeof k, "socket:[%llu]", static_cast<unsigned long long>(sb.st_ino));
      s.kind = "socket";
      s.external = "unix[" + std::to_string(sb.st_ino) + "]";
    } else if (S_ISFIFO(sb.st_mode)) {
      // CRIU matches a pipe by the name /proc shows ("pipe:[INODE]"), whatever its
      // --help says.
      snprintf(k, sizeof k, "pipe:[%llu]", static_cast<unsigned long long>(sb.st_ino));
      s.kind = "pipe";
    } else if (S_ISCHR(sb.st_mode) && (major(sb.st_rdev) == 136 || major(sb.st_rdev) == 4 || major(sb.st_rdev) == 5)) {
      snprintf(k, sizeof k, "tty[%llx:%llx]", static_cast<unsigned long long>(sb.st_rdev),
               static_cast<unsigned long long>(sb.st_dev));
      s.kind = "tty";
      s.external = k;
    } else if (S_ISREG(sb.st_mode) || S_ISCHR(sb.st_mode)) {
      if (buf[0] != '/') continue;
      snprintf(k, sizeof k, "%s", "");
      s.kind = "file";
      s.key = std::string(buf + 1);  // CRIU names a file by its path without the leading /
    } else {
      continue;
    }
    if (s.key.empty()) s.key = k;
    v.push_back(s);
  }
  return v;
}

// ---- the job's files ---------------------------------------------------------------------------


// What CRIU opens again by path at a restore and refuses when it changed (it compares
// sizes): every regular file a process of the job maps (its programs, libraries, ferry's
// own) or holds open, and each working directory. Left out: the job's stdio and the
// descriptors its launcher gave it (the restorer's replace them), files open for appending only (CRIU does not check logs),
// files deleted since they were opened and memfds (their contents are in the image).
nlohmann::json job_files(const std::vector<Task>& tasks, const std::vector<Stdio>& outside) {
  std::set<std::pair<dev_t, ino_t>> stdio;
  for (auto& s : outside) stdio.insert({s.dev, s.ino});
  std::map<std::string, nlohmann::json> files;
  auto add = [&](const std::string& path, const std::string& through, const char* what) {
    if (path.empty() || path[0] != '/' || files.count(path) || !json_text(path)) return;
    if (path.size() > 10 && path.compare(path.size() - 10, 10, " (deleted)") == 0) return;
    struct stat sb;
    if (stat(through.c_str(), &sb) != 0 || stdio.count({sb.st_dev, sb.st_ino})) return;
    if (S_ISREG(sb.st_mode))
      files[path] = {{"path", path}, {"size", static_cast<uint64_t>(sb.st_size)}, {"as", what}};
    else if (S_ISDIR(sb.st_mode))
      files[path] = {{"path", path}, {"as", what}};
  };
  for (auto& t : tasks) {
    std::string proc = "/proc/" + std::to_string(t.host);
    char buf[4096];
    // The init's own directory is not the job's: a restore makes it (init_dir.hpp).
    if (ssize_t n = readlink((proc + "/cwd").c_str(), buf, sizeof buf - 1);
        n > 0 && !is_init_dir(std::string(buf, static_cast<size_t>(n))))
      add(std::string(buf, static_cast<size_t>(n)), proc + "/cwd", "working directory");
    std::ifstream maps(proc + "/maps");
    std::string line;
    while (std::getline(maps, line)) {
      // start-end perms offset dev inode path
      std::istringstream in(line);
      std::string range, perms, off, dev, inode;
      in >> range >> perms >> off >> dev >> inode;
      std::string path;
      std::getline(in >> std::ws, path);
      if (inode != "0") add(path, proc + "/map_files/" + range, "mapped");
    }
    for (auto& [fd, link] : fd_links(t.host)) {
      unsigned long flags = fd_flags(t.host, fd);
      if ((flags & O_ACCMODE) == O_WRONLY && (flags & O_APPEND)) continue;
      add(link, proc + "/fd/" + std::to_string(fd), "open");
    }
  }
  nlohmann::json v = nlohmann::json::array();
  for (auto& [path, f] : files) v.push_back(f);
  return v;
}

// The recorded files this machine lacks or has otherwise: "PATH (why)" each.
std::vector<std::string> files_changed_here(const nlohmann::json& files) {
  std::vector<std::string> bad;
  for (auto& f : files) {
    std::string path = f.value("path", "");
    struct stat sb;
    if (stat(path.c_str(), &sb) != 0) {
      bad.push_back(path + " (missing)");
    } else if (!f.contains("size")) {
      if (!S_ISDIR(sb.st_mode)) bad.push_back(path + " (not a directory)");
    } else if (!S_ISREG(sb.st_mode)) {
      bad.push_back(path + " (not a regular file)");
    } else if (static_cast<uint64_t>(sb.st_size) != f["size"].get<uint64_t>()) {
      bad.push_back(path + " (" + std::to_string(sb.st_size) + " bytes; it had " +
                    std::to_string(f["size"].get<uint64_t>()) + ")");
    }
  }
  return bad;
}

std::vector<JobTask> job_tasks(const std::vector<Task>& tasks) {
  std::vector<JobTask> v;
  for (auto& t : tasks) v.push_back({t.host, t.name});
  return v;
}

// The job's sockets, its stdio exempt (it is outside by design).
JobSockets sockets_of(const std::vector<Task>& tasks, const std::vector<Stdio>& stdio, bool stopped = false) {
  std::set<uint64_t> exempt;
  for (auto& s : stdio)
    if (s.kind == "socket") exempt.insert(s.ino);
  return job_sockets(job_tasks(tasks), exempt, stopped);
}

std::string joined(const std::vector<std::string>& v) {
  std::string s;
  for (auto& x : v) s += (s.empty() ? "" : "; ") + x;
  return s;
}

// An entry of an image's "stdio" (the job's stdio and --preserve-fds descriptors) and the
// restorer's descriptor that takes its place: its own number, or, for a file the job had
// at an earlier number too (2>&1, 3>&1), that earlier one -- CRIU takes the first
// --inherit-fd that matches its key.
struct StandIn {
  const nlohmann::json* entry;
  int fd, by;
};

// CRIU's key of a stdio entry. A file's key is its path, which need not be UTF-8: JSON
// cannot hold it, so such a key is also kept as hex ("key_hex"), exact, and "key" is only
// for reading (an image with one is format 5: an older ferry would match no descriptor
// to it, and CRIU would open the old file again).
std::string stdio_key(const nlohmann::json& s) {
  if (!s.contains("key_hex")) return s["key"].get<std::string>();
  return ::ferry::json_text::unhex(s["key_hex"].get<std::string>());  // its shape checked by check_shape
}

std::vector<StandIn> stand_ins(const nlohmann::json& m) {
  std::vector<StandIn> v;
  if (!m.contains("stdio")) return v;
  std::map<std::string, int> first;  // by CRIU's key
  for (auto& s : m["stdio"]) {
    int fd = s["fd"].get<int>();
    v.push_back({&s, fd, first.emplace(stdio_key(s), fd).first->second});
  }
  return v;
}

// Of this ferry restore's descriptors standing in for the job's, those its output relay
// takes (relay.hpp) for a job with a network of its own: fd 1 or 2, a Unix stream socket,
// standing in for the job's fds 1 and 2 only (one that is also its stdin, a terminal at
// 0-2 say, may be read).
std::vector<int> relayed_stand_ins(const nlohmann::json& m) {
  std::map<int, bool> output_only;  // by the restorer's fd
  for (auto& x : stand_ins(m)) {
    auto it = output_only.emplace(x.by, true).first;
    it->second = it->second && (x.fd == 1 || x.fd == 2);
  }
  std::vector<int> v;
  for (auto& [fd, only] : output_only)
    if (only && OutputRelay::takes(fd)) v.push_back(fd);
  return v;
}

// What of the job's descriptors from its launcher (ferry run --preserve-fds) this ferry
// restore was not given to stand in for them ("" when nothing). One the same as an
// earlier descriptor of the job (3>&1) needs nothing.
std::string launcher_fds_missing(const nlohmann::json& m) {
  std::vector<std::string> missing, numbers;
  for (auto& x : stand_ins(m)) {
    if (x.by != x.fd || x.fd <= 2 || from_launcher(x.fd)) continue;
    missing.push_back("fd " + std::to_string(x.fd) + " (" + x.entry->value("kind", std::string("?")) + ", " +
                      x.entry->value("was", std::string("?")) + " at the dump)");
    numbers.push_back(std::to_string(x.fd));
  }
  if (missing.empty()) return "";
  std::string fds = numbers.size() == 1 ? "fd " : "fds ";
  for (auto& n : numbers) fds += (&n == &numbers[0] ? "" : ", ") + n;
  return "the job had " + joined(missing) + " from its launcher (ferry run --preserve-fds); start ferry restore " +
         "with " + fds + " open to take " + (numbers.size() == 1 ? "its" : "their") + " place (e.g. " + numbers[0] +
         ">>LOG)";
}

// Access to a descriptor as bits: reading, writing.
constexpr int kRead = 1, kWrite = 2;

int access_bits(int accmode) {
  return (accmode == O_RDONLY || accmode == O_RDWR ? kRead : 0) | (accmode == O_WRONLY || accmode == O_RDWR ? kWrite : 0);
}

const char* access_text(int bits) {
  return bits == (kRead | kWrite) ? "reading and writing" : bits == kRead ? "reading" : "writing";
}

// What of the job's access to a descriptor its restorer's must give (bits): stdin is
// read and stdout and stderr written, whatever else they allowed (a terminal is open
// both ways); one from the launcher as the job had it. 0 for an image that does not say
// (an older ferry's); nullopt for a mode not understood.
std::optional<int> access_needed(const nlohmann::json& s) {
  if (!s.contains("mode")) return 0;
  const std::string mode = s["mode"].is_string() ? s["mode"].get<std::string>() : "";
  if (mode != "r" && mode != "w" && mode != "rw") return std::nullopt;
  const int fd = s["fd"].get<int>();
  return (mode != "w" && fd != 1 && fd != 2 ? kRead : 0) | (mode != "r" && fd != 0 ? kWrite : 0);
}

// The descriptors this ferry restore gives the job that lack an access the job had
// ("" when none): the job's reads or writes there would fail (EBADF), its output lost.
std::string stand_ins_lacking_access(const nlohmann::json& m) {
  // The restorer's descriptor that stands in for several of the job's (one file at the
  // dump: a terminal at 0, 1 and 2; 2>&1) must allow what the job does with each.
  struct Need {
    int bits = 0;
    std::vector<int> fds;
    const nlohmann::json* entry = nullptr;
  };
  std::map<int, Need> by_restorer_fd;
  for (auto& x : stand_ins(m)) {
    Need& n = by_restorer_fd[x.by];
    n.bits |= access_needed(*x.entry).value_or(0);
    n.fds.push_back(x.fd);
    if (x.by == x.fd) n.entry = x.entry;
  }
  std::vector<std::string> lacking;
  std::string first_fix;
  for (auto& [fd, n] : by_restorer_fd) {
    const int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || !n.entry) continue;  // not open: launcher_fds_missing says so
    const int have = access_bits(flags & O_ACCMODE);
    if ((have & n.bits) == n.bits) continue;
    const std::string num = std::to_string(fd);
    const std::string as = n.fds.size() > 1 ? ", as its fds " + numbers_text(n.fds) : "";
    lacking.push_back("this ferry restore's fd " + num + " is open for " + access_text(have) + " only, and the job " +
                      (n.bits == (kRead | kWrite) ? "reads and writes it"
                       : n.bits == kRead          ? "reads it"
                                                  : "writes to it") +
                      " (" + n.entry->value("kind", std::string("?")) + ", " +
                      n.entry->value("was", std::string("?")) + " at the dump" + as + ")");
    if (first_fix.empty())
      first_fix = "fd " + num + " open for " + access_text(n.bits) + " (e.g. " + num +
                  (n.bits == (kRead | kWrite) ? "<>FILE" : n.bits == kRead ? "<FILE" : ">>LOG") + ")";
  }
  if (lacking.empty()) return "";
  return joined(lacking) + "; start ferry restore with " +
         (lacking.size() == 1 ? first_fix : std::string("them open as the job had them"));
}

// ---- running CRIU --------------------------------------------------------------------------------

// Runs criu with argv (stdin/out/err this process's, or /dev/null when quiet); its
// exit code, -1 if it could not run or was killed, and then *failed says which (CRIU's
// log has nothing to say about either).
//
// CRIU loads every plugin in its plugin directory (/usr/lib/criu, or $CRIU_LIBS_DIR).
// NVIDIA's cuda_plugin, where installed with cuda-checkpoint, would drive the driver
// checkpoint itself -- at a restore before ferry does and without ferry's GPU pairs --
// and a dump it took part in lists it as required by every restore. ferry does that
// work itself, so CRIU runs with an empty plugin directory of its own, kept in the
// socket directory (this user's, 0700: nobody else can slip a library into it).
// watch (where given) is told CRIU's pid once it runs (true) and once it has ended,
// before it is reaped (false): until then its pid cannot be another process's.
// CRIU gets this process's descriptors but those that are close-on-exec, and keep_open.
int run_criu(std::vector<std::string> argv, bool quiet, std::string* failed,
             const std::map<std::string, std::string>& env = {}, const std::function<void(pid_t, bool)>& watch = {},
             const std::vector<int>& keep_open = {}) {
  hardware_breakpoints_work();  // probed (once) here, not in the child
  auto not_run = [&](const std::string& why) {
    *failed = "CRIU was not started: " + why;
    return -1;
  };
  std::string no_plugins;
  try {
    no_plugins = own_socket_dir() + "/criu-no-plugins";
  } catch (const ClientError& e) {
    return not_run(e.message);
  }
  if (mkdir(no_plugins.c_str(), 0700) != 0 && errno != EEXIST)
    return not_run("cannot create " + no_plugins + ": " + strerror(errno));
  std::error_code ec;
  if (!fs::is_empty(no_plugins, ec) || ec)
    return not_run(no_plugins + " is meant to stay empty (CRIU would load what is in it); empty it");
  argv.insert(argv.begin() + 2, {"--libdir", no_plugins});
  // All the child needs is made here. This process may have threads by now (the CUDA
  // driver's, once loaded): after fork only async-signal-safe calls are safe, and a
  // malloc or setenv in the child could wait forever on a lock another thread held at
  // the fork -- holding the restore guard's socket open, so the guard waited too.
  std::map<std::string, std::string> vars;
  for (char** e = environ; e && *e; e++) {
    std::string s = *e;
    if (size_t eq = s.find('='); eq != std::string::npos) vars.emplace(s.substr(0, eq), s.substr(eq + 1));
  }
  vars.erase("LD_PRELOAD");  // ferry run's own environment preloads the shim for its program
  for (auto& [k, v] : env) vars[k] = v;
  // CRIU_FAULT is CRIU's own variable: a caller who sets it knows better.
  if (!vars.count("CRIU_FAULT") && !hardware_breakpoints_work()) vars["CRIU_FAULT"] = "130";
  std::vector<std::string> env_text;
  for (auto& [k, v] : vars) env_text.push_back(k + "=" + v);
  std::vector<char*> envp, a;
  for (auto& s : env_text) envp.push_back(s.data());
  envp.push_back(nullptr);
  for (auto& s : argv) a.push_back(s.data());
  a.push_back(nullptr);
  // The child tells why its exec failed here (the pipe closes unwritten when it works).
  int told[2];
  if (pipe2(told, O_CLOEXEC) != 0) return not_run(std::string("cannot make a pipe: ") + strerror(errno));
  pid_t p = fork();
  if (p < 0) {
    int e = errno;
    close(told[0]);
    close(told[1]);
    return not_run(std::string("cannot fork: ") + strerror(e));
  }
  if (p == 0) {
    sigset_t none;  // not the signals a restore defers (CRIU sets the restored tasks' own)
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    signal(SIGPIPE, SIG_DFL);  // a detached ferry ignores it; CRIU expects the default
    for (int fd : keep_open) fcntl(fd, F_SETFD, 0);
    if (quiet) {
      int null = open("/dev/null", O_RDWR);
      dup2(null, 0);
      dup2(null, 1);
      dup2(null, 2);
    }
    execve(a[0], a.data(), envp.data());
    int e = errno;
    (void)!write(told[1], &e, sizeof e);
    _exit(127);
  }
  close(told[1]);
  if (watch) watch(p, true);
  int exec_errno = 0;
  ssize_t n;
  while ((n = read(told[0], &exec_errno, sizeof exec_errno)) < 0 && errno == EINTR) {
  }
  close(told[0]);
  if (watch) {
    wait_unreaped(p);
    watch(p, false);
  }
  if (n == static_cast<ssize_t>(sizeof exec_errno)) {
    waitpid(p, nullptr, 0);
    return not_run("cannot execute " + argv[0] + ": " + strerror(exec_errno));
  }
  int st = 0;
  int r = 0;
  while ((r = static_cast<int>(waitpid(p, &st, 0))) < 0 && errno == EINTR) {
  }
  if (r < 0) return not_run(std::string("cannot wait for it: ") + strerror(errno));
  if (WIFEXITED(st)) return WEXITSTATUS(st);
  *failed = std::string("CRIU was killed by SIG") + (sigabbrev_np(WTERMSIG(st)) ? sigabbrev_np(WTERMSIG(st)) : "?");
  return -1;
}

// The lines of a CRIU log that say what went wrong (the last few).
std::string criu_errors(const std::string& log) {
  std::ifstream in(log);
  std::string line;
  std::vector<std::string> errs;
  while (std::getline(in, line))
    // CRIU failing to raise its own descriptor limit is logged as an error, and harmless.
    if (line.find("Error") != std::string::npos && line.find("RLIMIT_NOFILE for self") == std::string::npos)
      errs.push_back(line);
  if (errs.size() > 4) errs.erase(errs.begin(), errs.end() - 4);
  std::string s;
  for (auto& e : errs) s += (s.empty() ? "" : " | ") + e;
  return s.empty() ? "no error in its log" : s;
}

// The criu to use, checked enough that a failure later is CRIU's own.
std::string usable_criu() {
  std::string c = criu_path();
  if (access(c.c_str(), X_OK) != 0)
    throw ClientError(kFixFirst, "CRIU not found: " + c +
                                     " is not an executable; run scripts/setup.sh as root (it builds CRIU 4.2.1) or "
                                     "set FERRY_CRIU to a CRIU >= 4.2 (ferry check says more)");
  if (geteuid() != 0)
    throw ClientError(kFixFirst, "CRIU dumps and restores processes as root; run ferry as root for whole-process images");
  return c;
}

std::string now_iso() {
  char b[32];
  time_t t = time(nullptr);
  struct tm tmv;
  gmtime_r(&t, &tmv);
  strftime(b, sizeof b, "%Y-%m-%dT%H:%M:%SZ", &tmv);
  return b;
}

double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// The fields a restore, inspect and verify read, by type: a manifest that parses but is
// not so shaped (cut by hand, another tool's) is refused as damaged, naming the field,
// rather than failing half-way through a restore.
void check_shape(const nlohmann::json& m, const std::string& p) {
  using J = nlohmann::json;
  constexpr unsigned kMaxGpus = 4096;  // a GPU number beyond any machine's: damage
  auto bad = [&](const std::string& what) { throw ClientError(kDataLost, p + " is damaged: " + what); };
  auto is = [](const J& o, const char* key, bool (J::*test)() const, bool required) {
    return o.contains(key) ? (o[key].*test)() : !required;
  };
  auto objects = [&](const char* key, bool required) {
    if (!m.contains(key)) {
      if (required) bad(std::string("it has no \"") + key + "\"");
      return;
    }
    if (!m[key].is_array()) bad(std::string("\"") + key + "\" is not a list");
    for (auto& o : m[key])
      if (!o.is_object()) bad(std::string("an entry of \"") + key + "\" is not an object");
  };
  auto field = [&](const J& o, const char* list, const char* key, bool (J::*test)() const, const char* type,
                   bool required = true) {
    if (!is(o, key, test, required))
      bad(std::string("an entry of \"") + list + "\" has " + (o.contains(key) ? "a \"" : "no \"") + key + "\"" +
          (o.contains(key) ? std::string(" that is not ") + type : std::string()));
  };
  // A device or GPU number: beyond any machine's, it is damage (and would size a vector).
  auto number = [&](const J& o, const char* list, const char* key, bool required, const std::string& what) {
    field(o, list, key, &J::is_number_unsigned, "a number", required);
    if (o.contains(key) && o[key].get<uint64_t>() >= kMaxGpus) bad(what + o[key].dump() + " is too large");
  };
  objects("processes", true);
  for (auto& o : m["processes"]) {
    field(o, "processes", "nspid", &J::is_number_integer, "a number");
    field(o, "processes", "cuda", &J::is_boolean, "true or false", false);
    if (o.value("cuda", false)) field(o, "processes", "gpu_image", &J::is_string, "a path");
    for (const char* list : {"tids", "devices", "gpus"}) field(o, "processes", list, &J::is_array, "a list", false);
    for (auto& dv : o.value("devices", J::array())) {
      if (!dv.is_object()) bad("an entry of a process's \"devices\" is not an object");
      for (const char* key : {"device", "physical"}) number(dv, "devices", key, true, "a process's device number ");
    }
    for (auto& g : o.value("gpus", J::array())) {
      if (!g.is_object()) bad("an entry of a process's \"gpus\" is not an object");
      field(g, "gpus", "uuid", &J::is_string, "text", false);
      number(g, "gpus", "physical", false, "a process's GPU number ");
    }
  }
  objects("cpu_files", true);
  for (auto& o : m["cpu_files"]) {
    field(o, "cpu_files", "name", &J::is_string, "a name");
    field(o, "cpu_files", "size", &J::is_number_unsigned, "a size");
    field(o, "cpu_files", "xxh3", &J::is_string, "a hash");
  }
  objects("stdio", false);
  for (auto& o : m.value("stdio", J::array())) {
    field(o, "stdio", "fd", &J::is_number_unsigned, "a descriptor number");
    field(o, "stdio", "key", &J::is_string, "a name");
    field(o, "stdio", "key_hex", &J::is_string, "hex digits", false);
    if (o.contains("key_hex") && (o["key_hex"].get<std::string>().size() % 2 ||
                                  o["key_hex"].get<std::string>().find_first_not_of("0123456789abcdef") != std::string::npos))
      bad("an entry of \"stdio\" has a \"key_hex\" that is not hex digits");
    field(o, "stdio", "mode", &J::is_string, "r, w or rw", false);
    if (o.contains("mode") && !access_needed(o).has_value()) bad("an entry of \"stdio\" has a \"mode\" that is not r, w or rw");
  }
  objects("gpus", false);
  for (auto& o : m.value("gpus", J::array())) {
    number(o, "gpus", "index", true, "GPU number ");
    for (const char* key : {"name", "cc", "uuid"}) field(o, "gpus", key, &J::is_string, "text");
    field(o, "gpus", "memory", &J::is_number_unsigned, "a size");
  }
  objects("files", false);
  if (!is(m, "pid_namespace", &J::is_boolean, false)) bad("\"pid_namespace\" is not true or false");
  if (!is(m, "net_namespace", &J::is_boolean, false)) bad("\"net_namespace\" is not true or false");
  if (!is(m, "init_dir", &J::is_string, false)) bad("\"init_dir\" is not a path");
  if (!is(m, "sockets", &J::is_object, false)) bad("\"sockets\" is not an object");
}

nlohmann::json read_process_manifest(const std::string& dir) {
  std::string p = dir + "/process.json";
  std::ifstream in(p);
  if (!in) {
    if (access(dir.c_str(), F_OK) != 0) throw ClientError(kFixFirst, dir + ": no such image directory");
    throw ClientError(kFixFirst, dir + " has no process.json: it is not a whole-process image (ferry inspect " + dir +
                                     " describes it)");
  }
  nlohmann::json m;
  try {
    m = nlohmann::json::parse(in);
  } catch (const std::exception& e) {
    throw ClientError(kDataLost, p + " is damaged: " + e.what());
  }
  if (m.value("format", "") != "ferry-process" || !m.contains("version") || !m["version"].is_number_integer())
    throw ClientError(kDataLost, p + " is damaged: it does not describe a ferry whole-process image");
  int v = m["version"].get<int>();
  if (v > kProcessFormat)
    throw ClientError(kFixFirst, dir + " was written by a newer ferry (" + m.value("ferry", std::string("?")) +
                                     ", whole-process image format " + std::to_string(v) +
                                     "); this ferry reads format " + std::to_string(kProcessFormat) +
                                     ": use that ferry or a newer one");
  check_shape(m, p);
  return m;
}

// The CPU half: every CRIU file the manifest lists, with its size and hash.
void verify_cpu(const std::string& dir, const nlohmann::json& m) {
  for (auto& f : m.at("cpu_files")) {
    std::string name = f.at("name").get<std::string>();
    std::string p = dir + "/cpu/" + name;
    if (access(p.c_str(), R_OK) != 0)
      throw ClientError(kDataLost, p + " is missing: the CPU half of the image (CRIU's files) is incomplete");
    uint64_t size = 0;
    image::Hash h;
    try {
      h = image::hash_file(p, &size);
    } catch (const image::Error& e) {
      throw ClientError(kDataLost, e.message + " (CPU half of the image)");
    }
    if (size != f.at("size").get<uint64_t>())
      throw ClientError(kDataLost, p + " is damaged: " + std::to_string(size) + " bytes, the manifest says " +
                                       std::to_string(f.at("size").get<uint64_t>()) + " (CPU half of the image)");
    if (h.hex() != f.at("xxh3").get<std::string>())
      throw ClientError(kDataLost, p + " is damaged: its hash does not match the manifest (CPU half of the image)");
  }
}

// A GPU's chip as the driver's pairs compare them: its name and compute capability.
std::string chip_name(const std::string& name, const std::string& cc) {
  return name + ", compute capability " + cc;
}

// Bytes of device memory each program device of a GPU image needs.
std::map<int, uint64_t> need_by_device(const nlohmann::json& state) {
  std::map<int, uint64_t> need;
  for (auto& c : state.value("contexts", nlohmann::json::array())) need[c["vdev"].get<int>()] += 0;
  for (auto& p : state.value("physical", nlohmann::json::array())) need[p["vdev"].get<int>()] += p["size"].get<uint64_t>();
  return need;
}

// The driver for a dump: the one the job's CUDA processes use.
std::string driver_of(const std::vector<Task>& tasks) {
  for (auto& t : tasks)
    if (t.cuda)
      if (std::string d = environ_value(t.host, "FERRY_REAL_DRIVER"); !d.empty()) return d;
  return "libcuda.so.1";
}

void cont_all(const std::vector<Task>& tasks) {
  for (auto& t : tasks) kill(t.host, SIGCONT);
}

// Waits for a process's control socket to answer (after a detach). Its name is not
// enough: it exists from bind() on, a moment before listen(), when a connection is
// refused (seen once in CI as a restore failing with "no longer listens").
bool wait_socket(pid_t host, int seconds) {
  for (int i = 0; i < seconds * 50 && !dead(host); i++) {
    if (listens(sock_of(host))) return true;
    usleep(20000);
  }
  return false;
}

// How a zombie ended, as its parent will learn ("exit status 0", "killed by SIGSEGV");
// "" once it is reaped.
std::string how_it_ended(pid_t p) {
  std::istringstream in(stat_from_state("/proc/" + std::to_string(p) + "/stat"));
  std::vector<std::string> f{std::istream_iterator<std::string>(in), std::istream_iterator<std::string>()};
  // From the state on, exit_code (stat's field 52, Linux >= 3.5) is the 50th.
  if (f.size() < 50 || f[0] != "Z") return "";
  int st = std::atoi(f[49].c_str());
  if (WIFEXITED(st)) return "exit status " + std::to_string(WEXITSTATUS(st));
  if (WIFSIGNALED(st)) {
    const char* name = sigabbrev_np(WTERMSIG(st));
    return "killed by " + (name ? "SIG" + std::string(name) : "signal " + std::to_string(WTERMSIG(st)));
  }
  return "";
}

// Whether p has ended, or does within half a second: a process whose threads are gone
// may still be freeing its memory before it shows as a zombie. For failures only.
bool ended_soon(pid_t p) {
  for (int i = 0; i < 50 && !dead(p); i++) usleep(10000);
  return dead(p);
}

// Whether how_it_ended's words are a crash's, which ferry's own work in the process (or
// the driver's) may have caused: not to be taken for the program's own end.
bool crashed(const std::string& how) {
  for (const char* sig : {"SIGSEGV", "SIGBUS", "SIGILL", "SIGABRT", "SIGFPE", "SIGTRAP", "SIGSYS"})
    if (how == std::string("killed by ") + sig) return true;
  return false;
}

// A dump's failure that a CUDA process's end caused: the job's doing, so "try again"
// (75) -- unless it crashed, which a retry could meet again (70).
ClientError ended_during_dump(pid_t p, const std::string& what) {
  if (std::string how = how_it_ended(p); crashed(how))
    return ClientError(kBug, "process " + std::to_string(p) + " was " + how + " while the job was being dumped (" +
                                 what + ")");
  return ClientError(kRetryLater,
                     "process " + std::to_string(p) + " ended while the job was being dumped (" + what + "); dump it again");
}

// A CUDA process's `status`, its "status" object; ClientError when it answers otherwise.
nlohmann::json status_of_process(pid_t host) {
  nlohmann::json st = request(host, "status", nlohmann::json::object(), nullptr, 10);
  if (!st.is_object() || st.value("ok", nlohmann::json()) != true || !st.contains("status") ||
      !st["status"].is_object())
    throw ClientError(kBug, "process " + std::to_string(host) + " did not tell its state: " +
                                (st.is_object() && st.contains("error") && st["error"].is_string()
                                     ? st["error"].get<std::string>()
                                     : json_string(st, -1)));
  return st["status"];
}

void ask_reattach(pid_t host) {
  int fd = open(marker_of(host, ".reattach").c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
  if (fd >= 0) close(fd);
}

nlohmann::json op_request(pid_t host, const std::string& op, const ops::Options& o, ProgressView* view) {
  nlohmann::json reply = request(
      host, op, ops::to_json(o),
      [&](const nlohmann::json& p) {
        if (view) (*view)(p);
      },
      0);
  if (!reply.value("ok", false)) {
    std::string cls = reply.value("class", "bug");
    throw ClientError(exit_for_class(cls), op + " of process " + std::to_string(host) + " failed: " +
                                               reply.value("error", "?"));
  }
  return reply;
}

// A dump, step by step; undo() brings the job back to running on its GPUs from
// wherever it stopped.
struct Dump {
  pid_t init = 0;
  bool host_pids = false;  // a job without a PID namespace (job.hpp)
  uint64_t own_net = 0;    // the job's own network namespace (--net-namespace), else 0
  pid_t init_parent = 0;   // its ferry run or ferry restore, as the dump began
  std::vector<Task> tasks;
  std::string stage, cpu_dir;
  std::unique_ptr<CudaDriver> driver;
  std::set<pid_t> suspended, detached, driver_held;
  bool stopped_by_criu = false;
  JobSockets sockets;  // as before the dump, with each connection's SO_REUSEADDR

  std::vector<Task*> cuda() {
    std::vector<Task*> v;
    for (auto& t : tasks)
      if (t.cuda) v.push_back(&t);
    return v;
  }

  // Back to running; the image directory (if any) to resume from. Returns what could
  // not be undone ("" when all was).
  std::string undo(const std::string& from_dir) {
    std::string problems;
    if (stopped_by_criu) {
      problems += leave_repair(job_tasks(tasks), sockets);
      cont_all(tasks);
    }
    for (Task* t : cuda()) {
      if (dead(t->host)) {  // ended during the dump: nothing of it to bring back
        forget_files_of(t->host);
        continue;
      }
      if (driver_held.count(t->host)) {
        int st = 0;
        driver->state(t->host, &st);
        if (st == CU_PROCESS_STATE_CHECKPOINTED) driver->restore(t->host, {});
        // A lock that timed out left the process running: nothing to unlock (nor where
        // the driver could not say).
        driver->state(t->host, &st);
        if (st >= 0 && st != CU_PROCESS_STATE_RUNNING)
          if (int r = driver->unlock(t->host))
            problems += "; process " + std::to_string(t->host) + ": the driver did not unlock it (" +
                        cuda_error_text(r) + ")";
      }
      if (detached.count(t->host)) {
        ask_reattach(t->host);
        if (!wait_socket(t->host, 10)) {
          problems += "; process " + std::to_string(t->host) + " did not listen again";
          continue;
        }
      }
      if (suspended.count(t->host)) {
        ops::Options o;
        if (!from_dir.empty()) o.dir = from_dir + "/gpu/" + std::to_string(t->ns);
        try {
          op_request(t->host, "resume", o, nullptr);
        } catch (const ClientError& e) {
          problems += "; " + e.message;
        }
      }
    }
    return problems;
  }
};

}  // namespace

// The network namespace ferry run --net-namespace made for the job: its init's, which the
// init's parent (its ferry run or ferry restore) is outside of; else 0. *problem says why
// a dump cannot go on ("" when it can): CRIU would dump any other namespace whole, and a
// restore would bring back its addresses and routes but not its links to the outside (a
// container's veth) -- nor can CRIU restore a process in a namespace other than its
// init's unless the init has one of its own (driver-facts.md).
uint64_t own_network(const std::vector<Task>& tasks, pid_t parent, std::string* problem) {
  problem->clear();
  const uint64_t job = tasks.empty() ? 0 : net_namespace_of(tasks.front().host);
  if (job == 0) return 0;  // the init gone meanwhile: the dump finds that itself
  for (auto& t : tasks)
    if (uint64_t n = net_namespace_of(t.host); n && n != job) {
      *problem = "process " + std::to_string(t.host) + " (" + t.name + ") of the job is in a network namespace other "
                 "than its init's, which ferry does not dump";
      return 0;
    }
  if (job == net_namespace_of(getpid())) return 0;
  const uint64_t outside = net_namespace_of(parent);
  if (outside == 0 || outside == job) {
    *problem = "the job is in another network namespace than this ferry (" +
               (outside ? "that of its parent, " + std::to_string(parent)
                        : "and that of its parent, " + std::to_string(parent) + ", cannot be read") +
               "): run ferry dump in the job's network namespace";
    return 0;
  }
  return job;
}

// A GPU half written by an older ferry reads chunks from its own parent by relative
// path: publishing dir over one of those would break the parent chosen for this dump, so
// that is refused before anything stops. (This ferry's images hold their chunks.)
void refuse_breaking(const std::string& parent_dir, const nlohmann::json& parent, const std::string& dir) {
  for (auto& p : parent["processes"]) {
    if (!p.value("cuda", false)) continue;
    std::string g = parent_dir + "/" + p["gpu_image"].get<std::string>();
    if (!fs::exists(g + "/manifest.json")) continue;  // that process is dumped whole (cmd_dump)
    image::Manifest gm;
    try {
      gm = image::read_manifest(g);
    } catch (const image::Error& e) {
      throw ClientError(info(e.cls).exit_code, "--parent " + parent_dir + ": " + e.message);
    }
    for (const std::string& holder : image::chunks_held_elsewhere(g, gm)) {
      if (image::path_within(holder, dir))
        throw ClientError(kFixFirst, "--parent " + parent_dir + " (written by an older ferry) reads chunks from " +
                                         holder + ", which this dump would replace; dump into another directory");
    }
  }
}

int cmd_dump(pid_t pid, const DumpArgs& a, const Output& out) {
  auto t0 = Clock::now();
  Dump d;
  std::string dir = fs::absolute(a.dir).lexically_normal().string();
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  std::string criu, criu_ver;
  nlohmann::json parent;
  std::string parent_dir;
  std::vector<Stdio> stdio;
  JobSockets socks;
  std::string init_dir;
  std::optional<FileLock> image_lock;  // held until DIR is published (locks.hpp)
  std::optional<FileLock> init_lock;   // held until CRIU is done (init_dir.hpp)
  struct InProgress {
    std::string path;  // set once this dump made the marker
    ~InProgress() {
      if (!path.empty()) unlink(path.c_str());
    }
  } in_progress;
  try {
    d.init = job_init_of(pid);
    d.host_pids = host_pids_job(d.init);
    d.init_parent = parent_of(d.init);
    // Another dump of this job is refused at once; one of a copy (restored from the same
    // image) is waited for, before anything about the job is looked at.
    in_progress.path = mark_dumping(d.init);
    // DIR's parents, made here as they were always made: the lock file lives among them.
    if (std::error_code pe; fs::create_directories(fs::path(dir).parent_path(), pe), pe)
      throw ClientError(kFixFirst, "cannot create " + fs::path(dir).parent_path().string() + ": " + pe.message());
    image_lock.emplace(lock_image(dir, true, kInitDirWaitS, [&] {
      if (!out.json && out.progress != "never")
        fprintf(stderr, "ferry: waiting for another ferry's dump to or restore from %s\n", dir.c_str());
    }));
    init_lock.emplace(lock_for_dump(d.init, &init_dir, kInitDirWaitS, [&] {
      if (!out.json && out.progress != "never")
        fprintf(stderr, "ferry: waiting for another dump or restore of a job whose init works in %s too (a copy of "
                        "this one)\n", init_dir.c_str());
    }));
    if (is_init_dir(init_dir) && !json_text(init_dir))
      throw ClientError(kFixFirst, "the job's init works in " + init_dir + ", whose name is not UTF-8, which its "
                                   "image could not record (set FERRY_SOCKET_DIR to a UTF-8 path for the jobs "
                                   "ferry runs). Nothing was done; the job goes on running");
    criu = usable_criu();
    criu_ver = criu_version(criu);
    d.tasks = tree_of(d.init);
    std::string net_problem;
    d.own_net = own_network(d.tasks, d.init_parent, &net_problem);
    if (!net_problem.empty())
      throw ClientError(kFixFirst, net_problem + ". Nothing was done; the job goes on running");
    // What CRIU could not dump is refused here, before anything stops.
    stdio = stdio_of(d.init);
    socks = sockets_of(d.tasks, stdio);
    save_reuse(socks);
    d.sockets = socks;
    if (!socks.problems.empty())
      throw ClientError(socks.in_flight == socks.problems.size() ? kRetryLater : kFixFirst,
                        "cannot dump job " + std::to_string(d.init) + ": " + joined(socks.problems) +
                            ". Nothing was done; the job goes on running");
    if (std::string held = driver_files_outside_cuda(d.tasks); !held.empty())
      throw ClientError(kFixFirst, "cannot dump job " + std::to_string(d.init) + ": " + held +
                                       ". Nothing was done; the job goes on running");
    if (std::string why = socks.inet ? inet_sockets_refusal(criu_ver) : ""; !why.empty())
      throw ClientError(kFixFirst, "cannot dump job " + std::to_string(d.init) + ": it holds " + why +
                                       "; run scripts/setup.sh as root (it builds CRIU 4.2.1) or set FERRY_CRIU to a "
                                       "CRIU >= 4.2. Nothing was done; the job goes on running");
    if (!a.parent.empty()) {
      parent_dir = fs::absolute(a.parent).lexically_normal().string();
      while (parent_dir.size() > 1 && parent_dir.back() == '/') parent_dir.pop_back();
      try {
        parent = read_process_manifest(parent_dir);
        refuse_breaking(parent_dir, parent, dir);
      } catch (const ClientError&) {
        if (a.parent_failed) *a.parent_failed = true;
        throw;
      }
    }
    for (Task* t : d.cuda()) {
      // First: a dump killed after CRIU left the job stopped, which ferry resume undoes.
      if (access(marker_of(t->host, ".detached").c_str(), F_OK) == 0)
        throw ClientError(kRetryLater, "process " + std::to_string(t->host) +
                                           " is in the middle of another dump (or one that was interrupted: `ferry "
                                           "resume " + std::to_string(t->host) + "` brings it back)");
      // Stopped, it answers neither ferry nor the driver (whose lock on a stopped process
      // is reported to wait forever, its timeout not applying).
      if (std::string st = status_field(t->host, "State"); !st.empty() && (st[0] == 'T' || st[0] == 't'))
        throw ClientError(kFixFirst, "process " + std::to_string(t->host) +
                                         " is stopped (by a signal or a debugger): its GPU state cannot be taken while "
                                         "it is; continue it (kill -CONT " + std::to_string(t->host) +
                                         ") and dump again. Nothing was done; the job is as it was");
      std::string state = status_of_process(t->host).value("state", "?");
      if (state == "suspended")
        throw ClientError(kFixFirst, "process " + std::to_string(t->host) +
                                         " is suspended; resume it (ferry resume) before a whole-process dump");
    }
    if (!d.cuda().empty()) d.driver = std::make_unique<CudaDriver>(driver_of(d.tasks));
  } catch (const ClientError& e) {
    return fail(out, e);
  }
  d.stage = dir + ".partial";
  d.cpu_dir = d.stage + "/cpu";
  std::error_code ec;
  fs::remove_all(d.stage, ec);  // an interrupted dump's leftovers
  fs::create_directories(d.cpu_dir, ec);
  fs::create_directories(d.stage + "/gpu", ec);
  if (ec) return fail(out, kFixFirst, "fix-first", "cannot create " + d.stage + ": " + ec.message());

  auto abort = [&](int code, const std::string& why) {
    std::string left = d.undo("");
    fs::remove_all(d.stage, ec);
    return fail(out, code, class_of(code),
                "dump failed: " + why +
                    (left.empty() ? "; the job goes on running on its GPUs, nothing was written"
                                  : "; the job could not be brought back fully" + left));
  };
  auto abort_with = [&](const ClientError& e) { return abort(e.code, e.message); };

  ProgressView view(out);
  if (view.enabled) fprintf(stderr, "ferry: dump of job %d (%zu processes, %zu using CUDA) to %s\n", d.init,
                            d.tasks.size(), d.cuda().size(), dir.c_str());
  // 1. GPU state of every CUDA process to the image; then its socket is closed.
  auto t_stop = Clock::now();
  // Where the time went, for `--format json` (and bench/process_dump.sh).
  nlohmann::json phases = nlohmann::json::object();
  auto phase_end = [&, t = t_stop](const char* name) mutable {
    phases[name] = since(t);
    t = Clock::now();
  };
  uint64_t gpu_written = 0, gpu_reused = 0, gpu_carried = 0, gpu_bytes = 0;
  nlohmann::json procs = nlohmann::json::array();
  std::map<pid_t, nlohmann::json> status_of;
  for (Task* t : d.cuda()) {
    ops::Options o;
    o.dir = d.stage + "/gpu/" + std::to_string(t->ns);
    if (!parent.is_null() && fs::exists(parent_dir + "/gpu/" + std::to_string(t->ns) + "/manifest.json"))
      o.parent = parent_dir + "/gpu/" + std::to_string(t->ns);
    o.zstd_level = a.zstd;
    if (a.staging_mb) o.staging_bytes = static_cast<uint64_t>(a.staging_mb) << 20;
    o.fingerprints = !a.read_all;
    try {
      nlohmann::json before = status_of_process(t->host);
      nlohmann::json r = op_request(t->host, "suspend", o, &view);
      d.suspended.insert(t->host);
      auto& s = r["stats"];
      gpu_written += s.value("written", 0ull);
      gpu_reused += s.value("reused", 0ull);
      gpu_carried += s.value("carried", 0ull);
      gpu_bytes += s.value("device_bytes", 0ull);
      status_of[t->host] = before;
    } catch (const ClientError& e) {
      // Of the classes a parent can cause -- a refusal (too many packs to hold open; a full
      // disk looks the same, and the whole dump meets it again) or damage (a pack gone) --
      // not a driver lock that timed out (75) or a bug (70).
      if (e.code == kNoProcess ? ended_soon(t->host) : dead(t->host))
        return abort_with(ended_during_dump(t->host, e.message));
      if (a.parent_failed && !o.parent.empty() && (e.code == kFixFirst || e.code == kDataLost))
        *a.parent_failed = true;
      return abort(e.code, e.message);
    } catch (const std::exception& e) {  // an answer not shaped as one: the job is brought back
      return abort(kBug, "process " + std::to_string(t->host) + " answered its suspend unexpectedly: " + e.what());
    }
  }
  for (Task* t : d.cuda()) {
    try {
      nlohmann::json r = request(t->host, "detach", nlohmann::json::object(), nullptr, 30);
      if (!r.value("ok", false)) throw ClientError(kBug, "process " + std::to_string(t->host) +
                                                             " could not close its control socket: " +
                                                             r.value("error", "?"));
      d.detached.insert(t->host);
    } catch (const ClientError& e) {
      if (e.code == kNoProcess ? ended_soon(t->host) : dead(t->host))
        return abort_with(ended_during_dump(t->host, e.message));
      return abort(e.code, e.message);
    } catch (const std::exception& e) {
      return abort(kBug, "process " + std::to_string(t->host) + " answered its detach unexpectedly: " + e.what());
    }
  }
  phase_end("gpu_state");
  // 2. The driver lets go of each CUDA process.
  if (view.enabled) fprintf(stderr, "  driver checkpoint\n");
  // Every process locked before any is checkpointed, as CRIU's CUDA plugin does: a process
  // still running could otherwise wait on one whose GPU state is already gone.
  // A process that ended meanwhile is the job's doing, not the driver's: the job, changed,
  // may be dumped again.
  auto refused = [&](Task* t, const char* verb, int r, int code) {
    const std::string what = "the CUDA driver could not " + std::string(verb) + " process " +
                             std::to_string(t->host) + ": " + cuda_error_text(r);
    if (ended_soon(t->host)) return abort_with(ended_during_dump(t->host, what));
    return abort(code, what);
  };
  for (Task* t : d.cuda()) {
    d.driver_held.insert(t->host);
    if (int r = d.driver->lock(t->host, static_cast<unsigned>(a.lock_timeout_s) * 1000u))
      return refused(t, "lock", r, r == CUDA_ERROR_TIMEOUT || r == CUDA_ERROR_NOT_READY ? kRetryLater : kFixFirst);
  }
  for (Task* t : d.cuda()) {
    if (int r = d.driver->checkpoint(t->host)) return refused(t, "checkpoint", r, kFixFirst);
  }
  // A process that opened the driver's files after ferry looked at the job (cuInit then)
  // was neither suspended nor checkpointed: a race a second dump does not meet, not a leak.
  // Looked for again should CRIU fail: the window lasts until CRIU has frozen the tree.
  auto opened_late = [&](const std::vector<Task>& tree) {
    std::vector<Task> late;
    for (auto& t : tree)
      if (!d.driver_held.count(t.host)) late.push_back(t);
    std::string began = driver_files_held(late, true);
    return began.empty() ? began
                         : "the CUDA driver's files were opened while the job was being dumped, after ferry had "
                           "looked at its processes -- " + began +
                               "; dump it again (a process that began to use CUDA is then dumped with the rest)";
  };
  std::vector<Task> seen, tree = tree_of(d.init);
  if (std::string late = opened_late(tree); !late.empty()) return abort(kRetryLater, late);
  for (auto& t : tree)
    if (d.driver_held.count(t.host)) seen.push_back(t);
  // What NVIDIA's checkpoint left of the driver's files, CRIU would refuse naming only a
  // device number: named here instead (NVML's own, where the shim could not shut it down).
  if (std::string left = driver_files_held(seen, true); !left.empty())
    return abort(kFixFirst, "the CUDA driver's files are still held once NVIDIA's checkpoint released the GPUs -- " +
                                left +
                                "; CRIU cannot dump them. NVML (libnvidia-ml) keeps its own open where the program "
                                "linked to it directly (ferry shuts down only NVML reached through dlsym, PyTorch's "
                                "way); so does anything that opened them itself");
  phase_end("driver_checkpoint");
  // 3. CRIU dumps the tree and leaves it stopped.
  if (view.enabled) fprintf(stderr, "  criu dump\n");
  std::vector<std::string> argv = {criu,        "dump", "-t", std::to_string(d.init), "-D", d.cpu_dir, "-o",
                                   "dump.log",  "--leave-stopped", "--ghost-limit", std::to_string(a.ghost_limit)};
  for (auto& s : stdio)
    if (!s.external.empty()) argv.insert(argv.end(), {"--external", s.external});
  // Any TCP socket at all: a connection inside the job may form until CRIU freezes it
  // (one to outside is refused by the look after the dump).
  if (socks.inet) argv.insert(argv.end(), {"--tcp-established"});
  // The job's own network is made new at a restore (sockets.hpp): CRIU keeps none of it.
  if (d.own_net)
    argv.insert(argv.end(), {"--external", "net[" + std::to_string(d.own_net) + "]:" + kJobNetKey});
  // No network lock (CRIU's would be firewall rules in a namespace it dumps, the job's own
  // one): connections inside the job stop with it, and nothing outside reaches it.
  if (socks.inet || d.own_net) argv.insert(argv.end(), {"--network-lock", "skip"});
  // Datagram sockets sending to a named socket outside (/dev/log) are dumped alone; any
  // other Unix socket with its peer outside CRIU still refuses (it was refused above).
  argv.push_back("--ext-unix-sk");
  d.stopped_by_criu = true;  // from here on, whatever CRIU did, SIGCONT is safe
  std::string criu_failed;
  int rc = run_criu(argv, true, &criu_failed);
  init_lock.reset();
  // What CRIU saw: a process forked since the tree was listed is stopped too.
  if (auto now = tree_of(d.init, false); !now.empty()) d.tasks = now;
  if (rc != 0) {
    if (std::string late = opened_late(d.tasks); !late.empty()) return abort(kRetryLater, late);
    std::string why = criu_failed.empty() ? criu_errors(d.cpu_dir + "/dump.log") : criu_failed;
    std::string kept = dir + ".dump.log";
    fs::copy_file(d.cpu_dir + "/dump.log", kept, fs::copy_options::overwrite_existing, ec);
    std::string whole = ec ? "" : " (whole log: " + kept + ")";  // none where CRIU wrote none
    std::string hint = why.find("Can't dump ghost file") == std::string::npos
                           ? ""
                           : " (a file the job holds open was deleted; --ghost-limit lets larger ones into the image)";
    return abort(kFixFirst, "criu dump failed (exit " + std::to_string(rc) + "): " + why + whole + hint);
  }
  // The tree is stopped now: its sockets are exactly what CRIU saw (the names as seen
  // before, should the kernel not list Unix sockets this time).
  {
    JobSockets seen = sockets_of(d.tasks, stdio, true);
    if (!seen.unix_known) seen.unix_names = socks.unix_names, seen.external_dgram = socks.external_dgram;
    socks = seen;
  }
  if (!socks.problems.empty())
    return abort(socks.in_flight == socks.problems.size() ? kRetryLater : kFixFirst,
                 "while it was being dumped, " + joined(socks.problems));
  // Ends the dumped job; returns the processes killed but not reaped yet (their pids taken).
  auto end_job = [&] {
    std::vector<pid_t> left;
    if (d.host_pids)
      left = kill_tree(d.init);
    else
      kill(d.init, SIGKILL);
    for (Task* t : d.cuda()) unlink(marker_of(t->host, ".detached").c_str());
    // The init's directory goes with it (killed, it never runs there again): the image's
    // restore makes it again.
    remove_init_dir_if_unused(init_dir, d.init);
    return left;
  };
  // Its parent gone, the init has been told to end (or was, just before CRIU froze it,
  // and may have begun to): an image of it might end as soon as it was restored.
  if (d.host_pids && (told_to_end(d.init) || parent_of(d.init) != d.init_parent)) {
    // As its ferry run's death asked: undone, the job would only end itself.
    auto left = end_job();
    fs::remove_all(d.stage, ec);
    return fail(out, kNoProcess, class_of(kNoProcess),
                "dump failed: the job's ferry run (or ferry restore) died while CRIU dumped it, which ends the job; its "
                "image might end as soon as it was restored, so none was written; the job has ended" +
                    (left.empty() ? std::string() : " (its processes " + pid_list(left) + " are not reaped yet)"));
  }
  double stopped_cpu = since(t_stop);
  phase_end("criu_dump");
  // 4. The manifest, and the directory published.
  nlohmann::json m;
  m["format"] = "ferry-process";
  // Format 2 only where a restore must bring TCP connections back (older ferrys would
  // not ask CRIU to): they refuse it by its version instead of failing half-way.
  // Format 3 where it has the host's pids: an older ferry would restore it without
  // checking they are free, nor asking its processes to listen again.
  // Format 4 where the job holds descriptors from its launcher (--preserve-fds): an older
  // ferry would hand CRIU whatever it has open at those numbers itself.
  // Format 5 where a stdio file's name is not UTF-8 (its key is exact only as key_hex): an
  // older ferry would let CRIU open the old file again instead of the restorer's.
  // Format 6 where the job has a network of its own: an older ferry would not make one.
  const bool kept_fds = std::any_of(stdio.begin(), stdio.end(), [](const Stdio& s) { return s.fd > 2; });
  const bool hex_keys = std::any_of(stdio.begin(), stdio.end(), [](const Stdio& s) { return !json_text(s.key); });
  m["version"] = d.own_net    ? 6
                 : hex_keys   ? 5
                 : kept_fds   ? 4
                 : d.host_pids ? 3
                 : socks.connections.empty() ? 1
                                             : 2;
  m["ferry"] = FERRY_VERSION;
  m["created"] = now_iso();
  m["criu"] = {{"path", criu}, {"version", criu_ver}};
  m["parent"] = parent_dir;
  m["driver"] = {{"path", d.driver ? d.driver->path() : ""},
                 {"simulated", d.driver && d.driver->path() == emulator_driver()}};
  nlohmann::json gpus = nlohmann::json::array();
  if (d.driver)
    for (auto& g : d.driver->gpus())
      gpus.push_back({{"index", g.index}, {"name", g.name}, {"cc", g.cc}, {"uuid", g.uuid}, {"memory", g.memory}});
  m["gpus"] = gpus;
  // Without a namespace CRIU gives every process and thread its number back: a restore
  // checks they are free (the threads' ids are the host's there).
  m["pid_namespace"] = !d.host_pids;
  m["net_namespace"] = d.own_net != 0;
  for (auto& t : d.tasks) {
    nlohmann::json p = {{"nspid", t.ns}, {"parent", t.ns_parent}, {"name", t.name}, {"cmdline", t.cmd},
                        {"cuda", t.cuda}};
    if (d.host_pids) p["tids"] = t.tids;
    if (t.cuda) {
      p["gpu_image"] = "gpu/" + std::to_string(t.ns);
      p["devices"] = status_of[t.host].value("devices", nlohmann::json::array());
      p["gpus"] = status_of[t.host].value("gpus", nlohmann::json::array());  // by UUID, in its numbering
    }
    procs.push_back(p);
  }
  m["processes"] = procs;
  nlohmann::json sj = nlohmann::json::array();
  for (auto& s : stdio) {
    sj.push_back({{"fd", s.fd}, {"kind", s.kind}, {"key", s.key}, {"was", s.what}});
    if (!s.mode.empty()) sj.back()["mode"] = s.mode;
    if (!json_text(s.key)) sj.back()["key_hex"] = ::ferry::json_text::hex(s.key);
  }
  m["stdio"] = sj;
  m["sockets"] = socks.to_json();
  m["files"] = job_files(d.tasks, stdio);
  if (is_init_dir(init_dir)) m["init_dir"] = init_dir;
  nlohmann::json files = nlohmann::json::array();
  uint64_t cpu_bytes = 0;
  try {
    for (auto& e : fs::directory_iterator(d.cpu_dir)) {
      if (!e.is_regular_file() || e.path().filename() == "dump.log") continue;
      uint64_t size = 0;
      image::Hash h = image::hash_file(e.path().string(), &size);
      image::fsync_path(e.path().string());
      files.push_back({{"name", e.path().filename().string()}, {"size", size}, {"xxh3", h.hex()}});
      cpu_bytes += size;
    }
    std::sort(files.begin(), files.end(), [](auto& x, auto& y) { return x["name"] < y["name"]; });
    m["cpu_files"] = files;
    m["stats"] = {{"gpu_device_bytes", gpu_bytes}, {"gpu_bytes_written", gpu_written}, {"gpu_bytes_reused", gpu_reused},
                  {"gpu_bytes_carried", gpu_carried}, {"cpu_bytes", cpu_bytes}};
    std::string mp = d.stage + "/process.json";
    {
      std::ofstream f(mp);
      f << json_string(m) << "\n";
      if (!f.flush()) throw image::Error(ErrorClass::FixFirst, "cannot write " + mp + ": " + strerror(errno));
    }
    image::fsync_path(mp);
    image::fsync_path(d.cpu_dir);
    image::fsync_path(d.stage + "/gpu");
    image::publish_dir(d.stage, dir);
  } catch (const image::Error& e) {
    return abort(exit_for_class(image::class_name(e.cls)), e.message);
  } catch (const std::exception& e) {
    return abort(kBug, std::string("writing the manifest: ") + e.what());
  }
  phase_end("publish");
  // 5. The job ends, or goes on from the published image -- read under the lock, which
  // goes once nothing of this dump reads DIR any more.
  std::string left;
  if (a.leave_running) {
    d.stage.clear();
    left = d.undo(dir);
    image_lock.reset();
    phase_end("resume");
  } else {
    image_lock.reset();
    if (auto unreaped = end_job(); !unreaped.empty())
      fprintf(stderr, "ferry: the job's processes %s were killed but are not reaped yet: their pids stay taken, and "
                      "a restore of the image here is refused (75) until they are free\n", pid_list(unreaped).c_str());
  }
  double secs = since(t0), stopped = a.leave_running ? since(t_stop) : stopped_cpu;
  if (out.json) {
    nlohmann::json j = {{"ok", left.empty()},       {"dir", dir},
                        {"init", d.init},           {"processes", d.tasks.size()},
                        {"cuda_processes", d.cuda().size()},
                        {"seconds", secs},          {"stopped_seconds", stopped},
                        {"left_running", a.leave_running}};
    j["stats"] = m["stats"];
    j["phase_seconds"] = phases;
    if (!left.empty()) j["error"] = "the image is complete, but the job could not go on" + left;
    print_json(j);
  } else {
    fprintf(out.summary_on_stderr ? stderr : stdout,
            "%sdumped job %d (%zu processes, %zu using CUDA) to %s: GPU %s (%s written, %s from the parent%s), CPU "
            "%s, in %.2f s; %s\n",
            out.summary_on_stderr ? "ferry: " : "", d.init, d.tasks.size(), d.cuda().size(), dir.c_str(),
            human(gpu_bytes).c_str(), human(gpu_written).c_str(), human(gpu_reused).c_str(),
            carried_text(gpu_carried).c_str(), human(cpu_bytes).c_str(), secs,
            a.leave_running ? "the job goes on running" : "the job has ended (ferry restore brings it back)");
    if (!left.empty()) fprintf(stderr, "ferry: the image is complete, but the job could not go on%s\n", left.c_str());
  }
  return left.empty() ? kOk : kFailed;
}

bool recover_detached(pid_t pid, std::string* dir) {
  if (!left_detached(pid)) return false;
  pid_t init = job_init_of(pid);
  // Detached is what every CUDA process of a job is while it is being dumped.
  refuse_while_dumped(init, "it goes on when that has ended");
  std::vector<Task> tasks = tree_of(init);
  // CRIU may have left the job stopped, its TCP sockets in repair mode.
  std::string stuck = leave_repair(job_tasks(tasks), {});
  if (!stuck.empty()) fprintf(stderr, "ferry: %s\n", stuck.substr(2).c_str());
  cont_all(tasks);
  CudaDriver driver(driver_of(tasks));
  int st = 0;
  if (driver.state(pid, &st) == 0 && st == CU_PROCESS_STATE_CHECKPOINTED) driver.restore(pid, {});
  if (driver.state(pid, &st) == 0 && st == CU_PROCESS_STATE_LOCKED) driver.unlock(pid);
  ask_reattach(pid);
  if (!wait_socket(pid, 10))
    throw ClientError(kBug, "process " + std::to_string(pid) + " did not open its control socket again");
  // Its image may have been published under the dump's final name meanwhile.
  nlohmann::json s = status_of_process(pid);
  std::string to = s.value("suspended_to", "");
  if (to.rfind("image ", 0) == 0 && !fs::exists(to.substr(6))) {
    std::string p = to.substr(6);
    if (size_t at = p.rfind(".partial/gpu/"); at != std::string::npos) {
      p.erase(at, 8);
      if (fs::exists(p)) *dir = p;
    }
  }
  return true;
}

std::optional<StoppedJob> resume_job(pid_t pid) {
  if (uses_cuda(pid)) return std::nullopt;  // resumed by its own socket
  StoppedJob j;
  try {
    j.init = job_init_of(pid);
  } catch (const ClientError&) {
    return std::nullopt;
  }
  refuse_while_dumped(j.init, "it goes on when that has ended");
  std::vector<Task> tasks = tree_of(j.init);
  for (auto& t : tasks)
    if (left_detached(t.host)) j.forward.push_back(t.host);
  if (!j.forward.empty()) return j;  // their resume continues the whole tree
  size_t stopped = 0;
  for (auto& t : tasks) stopped += status_field(t.host, "State").rfind("T", 0) == 0;
  if (stopped == 0) {
    // Running: a CUDA process of the job may be suspended (ferry suspend), or says it runs.
    for (auto& t : tasks)
      if (t.cuda) j.forward.push_back(t.host);
    return j;
  }
  // CRIU's --leave-stopped leaves TCP sockets in repair mode: out of it first.
  j.problems = leave_repair(job_tasks(tasks), {});
  cont_all(tasks);
  j.continued = stopped;
  return j;
}

nlohmann::json dump_blockers(pid_t pid) {
  nlohmann::json j;
  std::vector<std::string> problems;
  pid_t init = 0;
  try {
    init = job_init_of(pid);
  } catch (const ClientError& e) {
    problems.push_back(e.message);
  }
  if (init > 0) {
    auto tasks = tree_of(init);
    JobSockets socks = sockets_of(tasks, stdio_of(init));
    problems = socks.problems;
    if (std::string held = driver_files_outside_cuda(tasks); !held.empty()) problems.push_back(held);
    std::string net_problem;
    own_network(tasks, parent_of(init), &net_problem);
    if (!net_problem.empty()) problems.push_back(net_problem);
    if (socks.inet) {
      std::string c = criu_path(), v = access(c.c_str(), X_OK) == 0 ? criu_version(c) : "";
      if (std::string why = v.empty() ? "" : inet_sockets_refusal(v); !why.empty())
        problems.push_back("the job holds " + why);
    }
    j["job_init"] = init;
    j["sockets"] = socks.to_json();
  }
  j["problems"] = problems;
  j["dumpable"] = problems.empty();
  return j;
}

// ---- restore ---------------------------------------------------------------------------------------

namespace {

std::string restore_driver(const RestoreArgs& a, const nlohmann::json& m) {
  if (!a.real_driver.empty()) return a.real_driver;
  if (a.emulator || m["driver"].value("simulated", false)) {
    setenv("FERRY_EMU_KERNELS", emulator_kernels().c_str(), 0);
    return emulator_driver();
  }
  if (const char* d = settings::raw("FERRY_REAL_DRIVER"); d && *d) return d;
  return "libcuda.so.1";
}

}  // namespace

namespace {

// A process of a host-pids image: its pid, then its threads' ids.
std::vector<int> ids_of(const nlohmann::json& p) {
  std::vector<int> ids = {p.at("nspid").get<int>()};
  for (auto& t : p.value("tids", nlohmann::json::array())) ids.push_back(t.get<int>());
  return ids;
}

// For an image of a job without a PID namespace: its pids and thread ids that a process
// or thread of this machine has ("pid 812 (process 812 of the job, mlp_trainer): taken
// by mlp_trainer"), at most five and a count. *later: whether each holder looks like the
// job itself (the same name, or dead and not yet reaped), which ends in time.
std::vector<std::string> pids_taken_here(const nlohmann::json& m, bool* later) {
  std::vector<std::string> taken;
  size_t more = 0;
  *later = true;
  for (auto& p : m["processes"]) {
    int pid = p["nspid"].get<int>();
    std::string name = p.value("name", "?");
    for (int id : ids_of(p)) {
      if (id <= 0 || no_process(id)) continue;
      // A thread's own name is its thread's: the process it belongs to is what counts.
      pid_t tgid = static_cast<pid_t>(atoi(status_field(id, "Tgid").c_str()));
      std::string holder = tgid > 0 ? status_field(tgid, "Name") : "";
      bool dead = status_field(id, "State").rfind("Z", 0) == 0;
      // Gone meanwhile (no name), dead, the job itself, or a copy CRIU is restoring: all end.
      // (The name as recorded: a byte that is not UTF-8, even half a character /proc cut
      // at 15 bytes, reads as U+FFFD there.)
      *later = *later && (dead || holder.empty() || as_recorded(holder) == name || holder == "criu");
      if (taken.size() == 5) {
        more++;
        continue;
      }
      std::string by = holder.empty() ? "a process" : holder;
      if (tgid > 0 && tgid != id) by = "a thread of " + by + " (pid " + std::to_string(tgid) + ")";
      taken.push_back((id == pid ? "pid " : "thread id ") + std::to_string(id) + " (" +
                      (id == pid ? "" : "a thread of ") + "process " + std::to_string(pid) + " of the job, " + name +
                      "): taken by " + by + (dead ? ", dead but not reaped" : ""));
    }
  }
  if (more) taken.push_back("and " + std::to_string(more) + " more");
  return taken;
}

// A job of the host's pids comes back with the pids it had, so its restore must take none
// of them for itself. In a container just started (a new pod), pids are handed out from
// 2 up, and the guard, CRIU and the CUDA driver's threads would take the job's: so the
// namespace's last pid handed out moves past the image's highest, where it is below.
// Best effort: a manifest without pids here is refused later, and a pid taken all the
// same is named by the check before CRIU.
void skip_pids_of(const nlohmann::json& m) {
  int top = 0;
  try {
    for (auto& p : m.at("processes"))
      for (int id : ids_of(p)) top = std::max(top, id);
  } catch (const std::exception&) {
    return;
  }
  std::fstream f("/proc/sys/kernel/ns_last_pid");
  int last = 0;
  if (f >> last && last < top) {
    f.clear();
    f.seekp(0);
    f << top << std::flush;
  }
}

// A signal with an action that has come and waits (blocked, deferred); 0 when none.
int deferred_signal(const SignalActions& actions) {
  sigset_t pending;
  sigpending(&pending);
  for (auto& [s, f] : actions)
    if (sigismember(&pending, s)) return s;
  return 0;
}

std::string pids_taken_message(const std::string& dir, const std::vector<std::string>& held, bool later) {
  return "cannot restore the job of " + dir + " here: it was run with --host-pids, so it comes back with the pids it "
         "had, and " + joined(held) + ". " +
         (later ? "Restore it once they are free (the original job has ended)"
                : "Restore it on a machine where they are free") +
         ", or run jobs with --pid-namespace where the CUDA driver allows. Nothing was started; the image is "
         "untouched";
}

int restore_job(const RestoreArgs& a, const Output& out, const SignalActions& actions, bool* running);

}  // namespace

// What check_shape does not look at (a GPU half's manifest) may be damaged too: named as
// such while the image is being read back. Whatever CRIU restored by then, the guard
// kills (RestoreGuard's destructor sees the exception). Once the job runs, nothing reads
// the image: anything thrown then is no damage of it.
int cmd_restore_process(const RestoreArgs& a, const Output& out, const SignalActions& actions) {
  bool running = false;
  try {
    return restore_job(a, out, actions, &running);
  } catch (const nlohmann::json::exception& e) {
    if (running) throw;
    return fail(out, kDataLost, class_of(kDataLost),
                "the image " + a.dir + " is damaged: " + e.what() + "; nothing is left running of it");
  }
}

namespace {

// Where a restore puts a CUDA process: the driver's GPU pairs (old UUID -> new), and
// where each program device holding state goes, by UUID (the process numbers GPUs its
// own way).
struct Placement {
  std::vector<std::pair<std::string, std::string>> pairs;
  std::map<int, std::string> uuid_of_device;
  std::vector<std::string> other_chip;  // the pairs across chips, said as "this machine's GPU n (chip) for its GPU m (chip)"
  std::map<int, uint64_t> bytes_of_device;  // device memory by program device, for --dry-run's report
};

// This machine's GPU of that UUID, nullptr where it has none.
const Gpu* gpu_with_uuid(const std::vector<Gpu>& gpus, const std::string& uuid) {
  for (auto& g : gpus)
    if (g.uuid == uuid) return &g;
  return nullptr;
}

// ferry restore --dry-run's report, once every check has passed: where each process's
// GPU memory would go (by ns pid), and what each GPU here would hold of the job's.
int report_dry_run(const std::string& dir, const nlohmann::json& m, const std::map<int, Placement>& placement,
                   const std::vector<Gpu>& gpus, const std::map<int, uint64_t>& need,
                   const std::map<std::string, uint64_t>& free_memory, const std::vector<std::string>& warnings,
                   const Output& out) {
  std::string text;
  nlohmann::json procs = nlohmann::json::array();
  for (auto& p : m["processes"]) {
    const int ns = p["nspid"].get<int>();
    const std::string name = p.value("name", std::string("?"));
    nlohmann::json pj = {{"nspid", ns}, {"name", name}, {"cuda", p.value("cuda", false)}};
    if (auto it = placement.find(ns); it != placement.end()) {
      nlohmann::json devs = nlohmann::json::array();
      for (auto& [v, uuid] : it->second.uuid_of_device) {
        const Gpu* g = gpu_with_uuid(gpus, uuid);
        const uint64_t bytes = it->second.bytes_of_device.count(v) ? it->second.bytes_of_device.at(v) : 0;
        devs.push_back({{"device", v}, {"gpu", g ? g->index : -1}, {"uuid", uuid}, {"bytes", bytes}});
        text += "  process " + std::to_string(ns) + " (" + name + "): its device " + std::to_string(v) + " (" +
                human(bytes) + ") onto GPU " + (g ? std::to_string(g->index) + " (" + g->name + ")" : uuid) + "\n";
      }
      for (auto& across : it->second.other_chip)
        text += "  process " + std::to_string(ns) + ": the driver is to swap in " + across +
                "; NVIDIA documents its restore onto the same chip only\n";
      pj["devices"] = devs;
      pj["other_chip"] = it->second.other_chip;
    }
    procs.push_back(pj);
  }
  nlohmann::json gj = nlohmann::json::array();
  for (auto& [i, bytes] : need) {
    const Gpu& g = gpus.at(static_cast<size_t>(i));
    const auto f = free_memory.find(g.uuid);
    const bool known = f != free_memory.end();
    gj.push_back({{"gpu", i},
                  {"name", g.name},
                  {"uuid", g.uuid},
                  {"memory", g.memory},
                  {"free", known ? nlohmann::json(f->second) : nlohmann::json()},
                  {"needed", bytes}});
    text += "  GPU " + std::to_string(i) + " (" + g.name + "): " + human(bytes) + " of its " + human(g.memory) +
            (known ? ", " + human(f->second) + " free" : "") + "\n";
  }
  const bool host_pids = !m.value("pid_namespace", true), own_net = m.value("net_namespace", false);
  if (out.json) {
    print_json({{"ok", true},
                {"dry_run", true},
                {"dir", dir},
                {"processes", procs},
                {"gpus", gj},
                {"pids", host_pids ? "host" : "own"},
                {"network", own_net ? "own" : "shared"},
                {"warnings", warnings}});
  } else {
    printf("%s: the job can be restored here (a dry run: nothing was started)\n%s", dir.c_str(), text.c_str());
  }
  return kOk;
}

int restore_job(const RestoreArgs& a, const Output& out, const SignalActions& actions, bool* running) {
  auto t0 = Clock::now();
  std::string dir = fs::absolute(a.dir).lexically_normal().string();
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  // A signal with an action (--on-signal TERM=dump:DIR) that comes while the job is being
  // restored waits for it to run again, and then dumps it (wait_job). Acted on at once,
  // or left to kill this process, it would end the restore with the signal's status,
  // which a scheduler takes for the job's failure rather than its preemption. Blocked
  // before the guard, CRIU and the driver's threads inherit the mask.
  sigset_t deferred;
  sigemptyset(&deferred);
  for (auto& [s, f] : actions) sigaddset(&deferred, s);
  pthread_sigmask(SIG_BLOCK, &deferred, nullptr);
  // Until the GPU state is read back, no dump publishes over the image (locks.hpp).
  std::optional<FileLock> image_lock;
  nlohmann::json m;
  try {
    image_lock.emplace(lock_image(
        dir, false, kInitDirWaitS,
        [&] {
          if (!out.json && out.progress != "never")
            fprintf(stderr, "ferry: waiting for another ferry's dump to %s\n", dir.c_str());
        },
        [&] {
          if (int s = deferred_signal(actions))
            throw ClientError(kRetryLater, std::string(sigabbrev_np(s)) + " came while the restore waited for a "
                                           "dump to " + dir + ": nothing was started; the image is untouched");
        }));
    m = read_process_manifest(dir);
  } catch (const ClientError& e) {
    return fail(out, e);
  }
  const bool host_pids = !m.value("pid_namespace", true);
  const bool own_net = m.value("net_namespace", false);
  if (host_pids && !a.dry_run) skip_pids_of(m);  // before this process forks or starts a thread
  // --detach: this process only waits to hear that the job runs (or for the child's exit
  // status, which a failed restore ends with, having said why on the same stderr).
  int running_told = -1;
  if (a.detach) {
    int told[2];
    if (pipe2(told, O_CLOEXEC) != 0)
      return fail(out, kFixFirst, "fix-first", std::string("--detach: cannot make a pipe: ") + strerror(errno));
    fflush(nullptr);
    const pid_t self = getpid();
    // Until the job runs, this pid is the one a scheduler knows: what it is sent goes to
    // the child, which does the restore and acts on it (or dies of it) as ferry restore
    // does. Taken by a signalfd, blocked from here on.
    sigset_t fwd;
    sigemptyset(&fwd);
    for (int s : forwarded_signals()) sigaddset(&fwd, s);
    for (auto& [s, f] : actions) sigaddset(&fwd, s);
    sigset_t before;
    pthread_sigmask(SIG_BLOCK, &fwd, &before);
    pid_t keeper = fork();
    if (keeper < 0)
      return fail(out, kFixFirst, "fix-first", std::string("--detach: cannot fork: ") + strerror(errno));
    if (keeper > 0) {
      close(told[1]);
      int sfd = signalfd(-1, &fwd, SFD_CLOEXEC | SFD_NONBLOCK);
      bool runs = false;
      for (;;) {
        pollfd w[2] = {{told[0], POLLIN, 0}, {sfd, POLLIN, 0}};
        if (poll(w, sfd >= 0 ? 2 : 1, -1) < 0) {
          if (errno == EINTR) continue;
          break;
        }
        signalfd_siginfo si;
        if (sfd >= 0 && (w[1].revents & POLLIN))
          while (read(sfd, &si, sizeof si) == static_cast<ssize_t>(sizeof si)) kill(keeper, static_cast<int>(si.ssi_signo));
        if (w[0].revents & (POLLIN | POLLHUP | POLLERR)) {
          char c = 0;
          ssize_t n;
          while ((n = read(told[0], &c, 1)) < 0 && errno == EINTR) {
          }
          runs = n == 1;
          break;
        }
      }
      // The locks held here are the child's too (one open file each): ended without
      // their destructors, which would let go of what the child still needs.
      if (runs) _exit(kOk);
      int st = 0, r;
      while ((r = static_cast<int>(waitpid(keeper, &st, 0))) < 0 && errno == EINTR) {
      }
      if (r < 0) _exit(kBug);
      _exit(WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
    }
    // Killed outright, the command takes the restore with it, as ferry restore's own death
    // would (the guard then ends what CRIU had restored).
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    if (getppid() != self) _exit(128 + SIGKILL);
    pthread_sigmask(SIG_SETMASK, &before, nullptr);
    close(told[0]);
    running_told = told[1];
  }
  // What the restored init had below it comes here should it be killed outright
  // (wait_job); ferry run does the same.
  if (host_pids && !a.dry_run) prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
  // Forked before the CUDA driver is loaded here; told what to kill as it comes to be.
  std::optional<RestoreGuard> guard;
  // CRIU's probe forks a child that stops under ptrace: done before the guard, whose
  // socket it would otherwise hold too (full_process.cpp).
  if (!a.dry_run) hardware_breakpoints_work();
  if (!a.dry_run) guard.emplace();
  std::string criu;
  std::unique_ptr<CudaDriver> driver;
  std::vector<int> dmap;
  std::vector<std::string> warnings;    // said on stderr, or in the JSON report
  auto warn = [&](std::string text) {
    warnings.push_back(std::move(text));
    if (!out.json && out.progress != "never") fprintf(stderr, "ferry: warning: %s\n", warnings.back().c_str());
  };
  std::map<int, Placement> placement;  // by ns pid
  std::map<int, uint64_t> need;         // target GPU -> bytes
  std::map<std::string, uint64_t> free_memory;  // GPU uuid -> bytes free now, where NVML says
  std::string init_dir;
  std::optional<FileLock> init_lock;  // held while CRIU restores (init_dir.hpp)
  try {
    criu = usable_criu();
    verify_cpu(dir, m);
    for (const std::string& fds : {launcher_fds_missing(m), stand_ins_lacking_access(m)})
      if (!fds.empty())
        throw ClientError(kFixFirst, "cannot restore the job of " + dir + " here: " + fds +
                                         ". Nothing was started; the image is untouched");
    if (own_net) {
      // Said now, as ferry run --net-namespace does, not when the next dump is refused.
      std::vector<int> given;
      const std::vector<int> relayed = relayed_stand_ins(m);
      for (auto& x : stand_ins(m))
        if (x.by == x.fd && std::find(relayed.begin(), relayed.end(), x.fd) == relayed.end()) given.push_back(x.fd);
      if (std::string u = unix_sockets_among(given); !u.empty()) {
        const std::string why = "this ferry restore's " + u + ", which the job, in a network namespace of its own, "
                                "would hold from outside it, where CRIU cannot find such a socket (" +
                                kRelayScope + ")";
        const char* fix = "; give ferry restore a pipe, a terminal or a file there";
        if (!actions.empty())
          throw ClientError(kFixFirst, "cannot restore the job of " + dir + " here: " + why +
                                           ": --on-signal's dump would fail" + fix +
                                           ". Nothing was started; the image is untouched");
        warn(why + ": ferry dump will refuse the job" + fix);
      }
    }
    bool missing = false;
    nlohmann::json socks = m.value("sockets", nlohmann::json::object());
    // In a network of its own, made new for it, nothing here holds its addresses or names.
    if (own_net) socks = {{"external_dgram", socks.value("external_dgram", nlohmann::json::array())}};
    auto taken = sockets_taken_here(socks, &missing);
    // Held by something here (not missing): in a network of its own, it would not be.
    const std::string own_net_hint =
        missing ? "" : "; a job run with ferry run --net-namespace has ports and socket names of its own";
    if (!taken.empty())
      throw ClientError(missing ? kFixFirst : kRetryLater, "cannot restore the job of " + dir + " here: " +
                                                               joined(taken) + own_net_hint +
                                                               ". Nothing was started; the image is untouched");
    bool later = false;
    if (host_pids)
      if (auto held = pids_taken_here(m, &later); !held.empty())
        throw ClientError(later ? kRetryLater : kFixFirst, pids_taken_message(dir, held, later));
    if (auto changed = files_changed_here(m.value("files", nlohmann::json::array())); !changed.empty()) {
      size_t n = changed.size();
      if (n > 6) changed.resize(5), changed.push_back("and " + std::to_string(n - 5) + " more");
      throw ClientError(kFixFirst, "cannot restore the job of " + dir + " here: CRIU reopens the job's files by "
                                   "path and this machine does not have them as they were at the dump: " +
                                       joined(changed) + ". Nothing was started; the image is untouched");
    }
    init_dir = m.value("init_dir", "");
    if (!init_dir.empty() && !is_init_dir(init_dir))
      throw ClientError(kDataLost, "the image's manifest names " + init_dir +
                                       " as the init's directory, which is no name ferry gives one");
    if (!a.device_map.empty()) {
      try {
        dmap = parse_device_map(a.device_map);
      } catch (const std::exception& e) {
        throw ClientError(kUsage, e.what());
      }
    }
    bool any_cuda = false;
    for (auto& p : m["processes"]) any_cuda = any_cuda || p.value("cuda", false);
    if (any_cuda) driver = std::make_unique<CudaDriver>(restore_driver(a, m));
    for (auto& p : m["processes"]) {
      if (!p.value("cuda", false)) continue;
      int ns = p["nspid"].get<int>();
      std::string gdir = dir + "/" + p["gpu_image"].get<std::string>();
      nlohmann::json state;
      try {
        state = image::read_manifest(gdir).state;
      } catch (const image::Error& e) {
        throw ClientError(kDataLost, "the GPU half of the image is damaged: " + e.message);
      }
      const auto& here = driver->gpus();
      auto index_here = [&](const std::string& uuid) {
        const Gpu* g = gpu_with_uuid(here, uuid);
        return g ? g->index : -1;
      };
      // The process's GPUs, in its own numbering (an image that does not record them:
      // the dumping ferry's numbering, taken to be the same).
      std::vector<std::string> old_uuids;
      bool own = p.contains("gpus") && !p["gpus"].empty();
      for (auto& g : own ? p["gpus"] : m["gpus"]) {
        size_t at = static_cast<size_t>(g.value(own ? "physical" : "index", static_cast<int>(old_uuids.size())));
        if (old_uuids.size() <= at) old_uuids.resize(at + 1);
        old_uuids[at] = g.value("uuid", "");
      }
      // Each GPU's chip, where the image says (the process's own record, else the dumping
      // machine's list): NVIDIA's checkpoint API documents restores onto the same chip only.
      std::map<std::string, std::string> chip_of;
      for (auto& g : m.value("gpus", nlohmann::json::array()))
        chip_of[g.value("uuid", "")] = chip_name(g.value("name", ""), g.value("cc", ""));
      for (auto& dv : state.value("devices", nlohmann::json::array())) {
        std::string u = dv.value("uuid", "");
        if (int pd = dv.value("pdev", -1); u.empty() && pd >= 0 && static_cast<size_t>(pd) < old_uuids.size())
          u = old_uuids[static_cast<size_t>(pd)];  // its own numbering, as old_uuids where the image has its GPUs
        if (!u.empty()) chip_of[u] = chip_name(dv.value("name", ""), dv.value("cc", ""));
      }
      Placement& pl = placement[ns];
      std::map<int, int> old_phys;
      for (auto& dv : p.value("devices", nlohmann::json::array()))
        old_phys[dv["device"].get<int>()] = dv["physical"].get<int>();
      auto used = need_by_device(state);
      auto was_of = [&](int v) { return old_phys.count(v) ? old_phys[v] : v; };  // its GPU, in its own numbering
      auto old_uuid_of = [&](int v) {
        int was = was_of(v);
        return was < static_cast<int>(old_uuids.size()) ? old_uuids[static_cast<size_t>(was)] : std::string();
      };
      // Where the driver is to put each of them: the same GPU where this machine has it,
      // else one this machine has that nothing else takes -- of the same chip where one
      // is free, the GPUs it held memory on choosing first.
      std::vector<std::string> by_need;
      for (auto& [v, bytes] : used) by_need.push_back(old_uuid_of(v));
      by_need.insert(by_need.end(), old_uuids.begin(), old_uuids.end());
      std::map<std::string, std::string> new_of;
      std::set<std::string> taken;
      for (auto& u : old_uuids)
        if (!u.empty() && index_here(u) >= 0) new_of[u] = u, taken.insert(u);
      for (bool same_chip : {true, false})
        for (auto& u : by_need)
          for (auto& g : here)
            if (!u.empty() && !new_of.count(u) && !taken.count(g.uuid) &&
                (!same_chip || (chip_of.count(u) && chip_of[u] == chip_name(g.name, g.cc))))
              new_of[u] = g.uuid, taken.insert(g.uuid);
      if (a.device >= 0 && used.size() > 1)
        throw ClientError(kUsage, "process " + std::to_string(ns) + " uses " + std::to_string(used.size()) +
                                      " devices; say where each goes with --device-map");
      std::map<std::string, std::vector<std::string>> held_for;  // target -> the process's GPUs whose memory goes there
      for (auto& [v, bytes] : used) {
        int to = -1;
        int was = was_of(v);
        std::string u = old_uuid_of(v);
        if (!dmap.empty()) {
          if (v >= static_cast<int>(dmap.size()))
            throw ClientError(kUsage, "--device-map " + a.device_map + " says nothing of device " + std::to_string(v) +
                                          ", which process " + std::to_string(ns) + " uses");
          to = dmap[static_cast<size_t>(v)];
        } else if (a.device >= 0) {
          to = a.device;
        } else {
          // The GPU it was on, or where the driver puts that GPU here.
          to = new_of.count(u) ? index_here(new_of[u]) : -1;
          if (to < 0)
            throw ClientError(kFixFirst, "process " + std::to_string(ns) + " held memory on GPU " +
                                             std::to_string(was) + (u.empty() ? "" : " (" + u + ")") + "; this machine has " +
                                             std::to_string(here.size()) + " GPU(s) and none left to take its place "
                                             "(choose with --device or --device-map). Nothing was started; the image "
                                             "is untouched");
        }
        if (to >= static_cast<int>(here.size()))
          throw ClientError(kFixFirst, "this machine has " + std::to_string(here.size()) + " GPU(s); the image needs GPU " +
                                           std::to_string(to) + " (choose others with --device or --device-map). "
                                           "Nothing was started; the image is untouched");
        const std::string& target = here[static_cast<size_t>(to)].uuid;
        pl.uuid_of_device[v] = target;
        pl.bytes_of_device[v] = bytes;
        held_for[target].push_back(u);
        need[to] += bytes;
      }
      // A target the process would not see (CUDA_VISIBLE_DEVICES gave it only some GPUs, or
      // the machine has more) takes the place of one of its GPUs that no target needs --
      // the one it held that memory on, where it can: the driver swaps it in.
      std::set<std::string> targets;
      for (auto& [v, t] : pl.uuid_of_device) targets.insert(t);
      auto free_to_swap = [&](const std::string& o) { return !o.empty() && (!new_of.count(o) || !targets.count(new_of[o])); };
      for (auto& t : targets) {
        bool seen = false;
        for (auto& [o, n] : new_of) seen = seen || n == t;
        if (seen) continue;
        std::string swap;
        for (auto& o : held_for[t])
          if (swap.empty() && free_to_swap(o)) swap = o;
        for (auto& o : old_uuids)
          if (swap.empty() && free_to_swap(o)) swap = o;
        if (!swap.empty()) new_of[swap] = t;
      }
      for (size_t i = 0; i < old_uuids.size(); i++) {
        const std::string& u = old_uuids[i];
        if (!new_of.count(u)) continue;
        pl.pairs.push_back({u, new_of[u]});
        const Gpu& g = here[static_cast<size_t>(index_here(new_of[u]))];
        if (new_of[u] != u && chip_of.count(u) && chip_of[u] != chip_name(g.name, g.cc))
          pl.other_chip.push_back("this machine's GPU " + std::to_string(g.index) + " (" + chip_name(g.name, g.cc) +
                                  ") for its GPU " + std::to_string(i) + " (" + chip_of[u] + ")");
      }
      if (std::all_of(pl.pairs.begin(), pl.pairs.end(), [](auto& x) { return x.first == x.second; })) pl.pairs.clear();
    }
    if (any_cuda) {
      // By total memory (78: not here), then by what is free now (NVML, where it answers;
      // 75: other processes may let go of it). Memory taken after this check is met at
      // the resume, once CRIU has run: the job is then killed.
      const auto& gpus = driver->gpus();
      std::string why;
      if (!need.empty()) free_memory = driver->free_memory(&why);
      if (!why.empty()) warn("free GPU memory not known (" + why + "): only the total memory was checked there");
      for (auto& [to, bytes] : need) {
        const Gpu& g = gpus[static_cast<size_t>(to)];
        if (g.memory < bytes)
          throw ClientError(kFixFirst, "GPU " + std::to_string(to) + " (" + g.name + ") has " + human(g.memory) +
                                           "; the job needs " + human(bytes) +
                                           " on it. Nothing was started; the image is untouched");
        if (auto f = free_memory.find(g.uuid); f != free_memory.end() && f->second < bytes)
          throw ClientError(kRetryLater, "GPU " + std::to_string(to) + " (" + g.name + ") has " + human(f->second) +
                                             " free of its " + human(g.memory) +
                                             " (other processes hold the rest); the job needs " + human(bytes) +
                                             " on it. Nothing was started; the image is untouched");
      }
    }
  } catch (const ClientError& e) {
    return fail(out, e);
  }
  // A job with a network of its own comes back in a new one (sockets.hpp), which lives as
  // long as something is in it. Made before a dry run ends too: a restore that could not
  // make one could not be done.
  struct NetFd {
    int fd = -1;
    void reset() {
      if (fd >= 0) close(fd);
      fd = -1;
    }
    ~NetFd() { reset(); }
  } net;
  if (own_net) {
    std::string why;
    net.fd = new_net_namespace(&why);
    if (net.fd < 0)
      return fail(out, kFixFirst, "fix-first", "cannot restore the job of " + dir + ", which had a network of its own: " +
                                                   why + ". Nothing was started; the image is untouched");
  }
  if (a.dry_run) {
    image_lock.reset();
    return report_dry_run(dir, m, placement, driver ? driver->gpus() : std::vector<Gpu>{}, need, free_memory, warnings,
                          out);
  }
  // Relayed from now until the job ends (a detached ferry's, this process, relays).
  OutputRelay relay;
  if (std::string why; own_net && !relay.wrap(relayed_stand_ins(m), &why))
    return fail(out, kFixFirst, "fix-first", "cannot restore the job of " + dir + ": " + why +
                                                 ". Nothing was started; the image is untouched");
  // CRIU's descriptor for each key relayed: a copy of the pipe's write end each, as each
  // key has its own without a relay (CRIU moves a number its restore needs for itself
  // out of the way once, for the first key given it).
  struct Closing {
    std::map<int, int> fd_for;  // the job's fd -> CRIU's
    void reset() {
      for (auto& [job_fd, fd] : fd_for) close(fd);
      fd_for.clear();
    }
    ~Closing() { reset(); }
  } relay_fds;
  for (auto& x : stand_ins(m))
    if (const int w = relay.write_end(x.fd); x.by == x.fd && w >= 0) {
      const int copy = fcntl(w, F_DUPFD_CLOEXEC, 3);
      if (copy < 0)
        return fail(out, kFixFirst, "fix-first", "cannot restore the job of " + dir + ": cannot copy a descriptor (" +
                                                     strerror(errno) + "). Nothing was started; the image is untouched");
      relay_fds.fd_for[x.fd] = copy;
    }

  // criu restore: the restorer becomes the new init's parent; its stdio, the job's.
  char tmpl[] = "/tmp/ferry-restore-XXXXXX";
  if (!mkdtemp(tmpl)) return fail(out, kFixFirst, "fix-first", std::string("cannot create a work directory: ") + strerror(errno));
  std::string work = tmpl;
  guard->work_dir(work);
  if (!init_dir.empty()) guard->init_dir(init_dir);
  if (host_pids) guard->whole_tree();
  const std::string log = work + "/" + kCriuLog, pidfile = work + "/" + kCriuPidFile;
  std::vector<std::string> argv = {criu, "restore", "-D", dir + "/cpu", "-W", work, "-o", kCriuLog, "--pidfile",
                                   pidfile, "-d", "--restore-sibling"};
  // This program as CRIU's action script names the init to the guard early; one replaced
  // since it started ("... (deleted)") would fail CRIU's every restore, and is left out.
  if (std::string self = self_exe(); access(self.c_str(), X_OK) == 0)
    argv.insert(argv.end(), {"--action-script", self});
  // A file the job had at two numbers (2>&1) is the restorer's first one at both: CRIU
  // would refuse a second number not open here.
  for (auto& x : stand_ins(m))
    if (x.by == x.fd) {
      const int fd = relay_fds.fd_for.count(x.fd) ? relay_fds.fd_for[x.fd] : x.fd;
      argv.insert(argv.end(), {"--inherit-fd", "fd[" + std::to_string(fd) + "]:" + stdio_key(*x.entry)});
    }
  const bool connections =
      !m.value("sockets", nlohmann::json::object()).value("connections", nlohmann::json::array()).empty();
  if (connections) argv.insert(argv.end(), {"--tcp-established"});
  // No network lock to take at a restore either (the dump's reason).
  if (connections || own_net) argv.insert(argv.end(), {"--network-lock", "skip"});
  argv.push_back("--ext-unix-sk");  // datagram sockets connect to their names outside again
  if (own_net) argv.insert(argv.end(), {"--inherit-fd", "fd[" + std::to_string(net.fd) + "]:" + kJobNetKey});
  if (!out.json && out.progress != "never") {
    // Said before anything starts: a refusal later says it again, a success would not.
    for (auto& [ns, pl] : placement)
      if (!pl.other_chip.empty())
        fprintf(stderr, "ferry: the driver is to swap in %s for the job's process %d; NVIDIA documents its restore "
                        "onto the same chip only, and whether its driver takes another chip for a process ferry "
                        "released is not known\n", joined(pl.other_chip).c_str(), ns);
    fprintf(stderr, "ferry: restoring the job of %s\n", dir.c_str());
  }
  try {
    if (!init_dir.empty())
      init_lock.emplace(lock_for_restore(
          init_dir, kInitDirWaitS,
          [&] {
            if (!out.json && out.progress != "never")
              fprintf(stderr, "ferry: waiting for a dump%s of a job whose init works in %s too (a copy of this "
                              "one)\n", host_pids ? " or restore" : "", init_dir.c_str());
          },
          host_pids,
          [&] {
            // A preemption now finds nothing of the job started: no dump to make.
            if (int s = deferred_signal(actions))
              throw ClientError(kRetryLater, std::string(sigabbrev_np(s)) + " came while the restore waited for "
                                             "the lock on " + init_dir + ": nothing was started; the image is "
                                             "untouched");
          }));
    if (host_pids) {
      // Again, now that no other restore of the image can be under way (it would hold
      // the lock, and its processes, restored, would be found here).
      bool later = false;
      if (auto held = pids_taken_here(m, &later); !held.empty())
        throw ClientError(later ? kRetryLater : kFixFirst, pids_taken_message(dir, held, later));
      // The restored processes get the names of the sockets and markers of the processes
      // that had their pids before: all gone, so what is left under those names (a restore
      // killed half-way, a process killed from outside) is stale, and would be taken for
      // the restored process's own.
      for (auto& p : m["processes"]) forget_files_of(p["nspid"].get<pid_t>());
    }
  } catch (const ClientError& e) {
    std::error_code gone;
    fs::remove_all(work, gone);
    init_lock.reset();
    remove_init_dir_if_unused(init_dir);  // made for this restore, or another's
    return fail(out, e);
  }
  std::string criu_failed;
  std::vector<int> relay_ends;
  for (auto& [job_fd, fd] : relay_fds.fd_for) relay_ends.push_back(fd);
  relay.start();
  int rc = run_criu(
      argv, false, &criu_failed, {{kRestoreWorkEnv, work}},
      [&](pid_t p, bool running) { running ? guard->watch(p) : guard->unwatch(p); }, relay_ends);
  relay_fds.reset();  // the job's now
  relay.close_write_ends();
  init_lock.reset();
  // The restored job is in its network now (or none was made): nothing this process runs
  // from here on (a dump's CRIU, its action script) is to inherit it.
  net.reset();
  // CRIU killed by a signal did not kill what it had restored; without a namespace, what
  // the guard killed comes here to be reaped.
  if (rc == -1) guard->clean_up();
  if (rc == -1 && host_pids) end_orphans();
  if (rc != 0) remove_init_dir_if_unused(init_dir);
  if (rc != 0) {
    const bool logged = access(log.c_str(), F_OK) == 0;
    std::error_code gone;
    if (!logged) fs::remove_all(work, gone);  // CRIU never ran: nothing in the work directory to keep
    return fail(out, kFixFirst, "fix-first",
                "criu restore failed (exit " + std::to_string(rc) + "): " +
                    (criu_failed.empty() ? criu_errors(log) : criu_failed) +
                    (logged ? " (whole log: " + log + ")" : std::string()) +
                    "; nothing was started, the image is untouched");
  }
  pid_t init = 0;
  {
    std::ifstream in(pidfile);
    in >> init;
  }
  if (init <= 0) {
    // Whatever CRIU restored is unknown by pid here; the guard knows it from CRIU's log.
    guard->clean_up();
    if (host_pids) end_orphans();
    remove_init_dir_if_unused(init_dir);
    return fail(out, kBug, "bug", "criu restore wrote no pid to " + pidfile + " (whole log: " + log +
                                      "); what it restored was killed");
  }
  std::map<int, pid_t> host_of;
  for (auto& t : tree_of(init)) host_of[t.ns] = t.host;
  auto kill_job = [&](const ClientError& e) {
    if (host_pids) {
      kill_tree(init);
      for (auto& [ns, host] : host_of) unlink(marker_of(host, ".reattach").c_str());  // not asked for by anyone now
    } else {
      kill(init, SIGKILL);
    }
    wait_unreaped(init);  // the guard is let go before the init's pid can be reused
    guard->done();
    int st;
    waitpid(init, &st, 0);
    relay.finish("ferry");  // what the job said before it was killed (a CUDA error, say)
    remove_init_dir_if_unused(init_dir);
    std::error_code gone;
    fs::remove_all(work, gone);  // CRIU's log: CRIU did its part
    return fail(out, e.code, class_of(e),
                "restore failed: " + e.message + "; the restored job was killed: nothing is left running, the image "
                                                 "is untouched");
  };
  ProgressView view(out);
  // The driver's part, then ferry's, for one restored CUDA process: its entry in the report.
  auto resume_restored = [&](pid_t host, int ns, const Placement& pl, const std::string& gpu_dir) {
    if (int r = driver->restore(host, pl.pairs)) {
      // Out of memory is not a chip's doing.
      const std::string across = pl.other_chip.empty() || r == CUDA_ERROR_OUT_OF_MEMORY
                                     ? ""
                                     : "; the driver was to swap in " + joined(pl.other_chip) +
                                           ", and NVIDIA documents its restore onto the same chip only";
      throw ClientError(kFixFirst, "the CUDA driver could not restore process " + std::to_string(host) + ": " +
                                       cuda_error_text(r) + across);
    }
    if (int r = driver->unlock(host))
      throw ClientError(kFixFirst, "the CUDA driver could not unlock process " + std::to_string(host) + ": " +
                                       cuda_error_text(r));
    // A restored copy listens again when it finds its pid changed; with the host's pids
    // it has not, so it is asked to, as after an undone dump.
    if (host_pids) ask_reattach(host);
    if (!wait_socket(host, 10))
      throw ClientError(kBug, "restored process " + std::to_string(host) + " does not listen on " + sock_of(host));
    ops::Options o;
    o.dir = gpu_dir;
    o.device_uuids = pl.uuid_of_device;
    nlohmann::json r = op_request(host, "resume", o, &view);
    return nlohmann::json{{"nspid", ns}, {"pid", host}, {"status", r["status"]}};
  };
  nlohmann::json placed = nlohmann::json::array();
  try {
    for (auto& p : m["processes"]) {
      if (!p.value("cuda", false)) continue;
      int ns = p["nspid"].get<int>();
      // Restored, a process runs on until a CUDA call waits for its GPU state; one that
      // ended before (a worker at its end when dumped) needs none, and the job goes on as
      // its program decides, as it would have without the dump. Gone from the tree
      // already, it was reaped (CRIU restores all of a tree or none of it). One that
      // crashed may have done so in the driver's restore or ferry's resume: a failure.
      auto ended = [&](pid_t host) {
        std::string how = host ? how_it_ended(host) : "";
        if (crashed(how))
          throw ClientError(kBug, "process " + std::to_string(ns) + " of the job (pid " + std::to_string(host) +
                                      ") was " + how + " before its GPU state was restored");
        warn("process " + std::to_string(ns) + " of the job" + (host ? " (pid " + std::to_string(host) + ")" : "") +
             " ended" + (how.empty() ? "" : " (" + how + ")") +
             " before its GPU state was restored; the rest of the job runs on");
        nlohmann::json e = {{"nspid", ns}, {"ended", how.empty() ? "ended" : how}};
        if (host) e["pid"] = host;
        placed.push_back(e);
        if (host_pids && host) forget_files_of(host);  // its .reattach asked for, never taken
      };
      if (!host_of.count(ns)) {
        ended(0);
        continue;
      }
      pid_t host = host_of[ns];
      try {
        placed.push_back(resume_restored(host, ns, placement[ns], dir + "/" + p["gpu_image"].get<std::string>()));
      } catch (const ClientError&) {
        if (!ended_soon(host)) throw;
        ended(host);
      }
    }
  } catch (const ClientError& e) {
    return kill_job(e);
  }
  image_lock.reset();
  std::error_code ec;
  fs::remove_all(work, ec);
  double secs = since(t0);
  guard->done();  // the job is its program's again
  *running = true;
  if (out.json) {
    nlohmann::json report = {{"ok", true}, {"dir", dir}, {"init", init}, {"seconds", secs}, {"processes", placed}};
    if (!warnings.empty()) report["warnings"] = warnings;
    if (a.detach) report["ferry"] = getpid();
    fprintf(stderr, "%s\n", json_string(report, -1).c_str());
  } else if (a.detach) {
    fprintf(stderr, "ferry: restored the job of %s in %.2f s: init is pid %d; it runs on, detached, under ferry pid "
                    "%d\n", dir.c_str(), secs, init, getpid());
  } else if (out.progress != "never") {
    fprintf(stderr, "ferry: restored the job of %s in %.2f s: init is pid %d; waiting for it to end\n", dir.c_str(), secs,
            init);
  }
  if (running_told >= 0) {
    // Until here a ^C on the terminal interrupted the restore, as without --detach; from
    // now on neither its hangup nor the command's end is the job's.
    prctl(PR_SET_PDEATHSIG, 0, 0, 0, 0);
    setsid();
    fflush(stderr);
    // The command killed meanwhile, or later whatever read its stderr: nobody to tell, and
    // no reason for this process -- and with it the job -- to die of it.
    struct sigaction ign {};
    ign.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &ign, nullptr);
    (void)!write(running_told, "1", 1);
    close(running_told);
  }
  if (int s = deferred_signal(actions); s && !out.json && out.progress != "never")
    fprintf(stderr, "ferry: %s came during the restore; the job is dumped now that it runs\n", sigabbrev_np(s));
  bool killed = false;
  int code = wait_job(init, actions, &killed);
  relay.finish("ferry");
  if (!killed) remove_init_dir_if_unused(init_dir);  // as ferry run does (job.cpp)
  // Nobody waits for this process's status: it is said where its report went.
  if (a.detach && out.json)
    fprintf(stderr, "%s\n",
            json_string({{"ended", true}, {"dir", dir}, {"init", init}, {"ferry", getpid()}, {"exit_code", code}}, -1)
                .c_str());
  else if (a.detach)
    fprintf(stderr, "ferry: the job restored from %s (init pid %d) has ended: exit status %d (what ferry restore "
                    "without --detach exits with)\n", dir.c_str(), init, code);
  return code;
}

}  // namespace

// ---- inspect and verify ---------------------------------------------------------------------------

std::optional<JobOf> job_of(pid_t pid) {
  for (pid_t p = pid; p > 1; p = parent_of(p)) {
    if (!is_job_init(p)) continue;
    JobOf j;
    j.init = p;
    j.host_pids = host_pids_job(p);
    pid_t parent = parent_of(p);
    const uint64_t in = net_namespace_of(p), out = net_namespace_of(parent);
    j.own_net = in && out && in != out;  // 0: unreadable (a root-owned ferry restore seen by its user)
    if (parent > 0 && status_field(parent, "Name") == "ferry") j.ferry = parent;
    return j;
  }
  return std::nullopt;
}

std::string dump_preflight(const std::string& dir, bool check_criu) {
  std::vector<std::string> problems, warnings;
  if (check_criu) criu_report(problems, warnings);
  if (!problems.empty()) return problems[0];
  // The dump writes DIR.partial beside DIR and renames it; it makes missing parents.
  fs::path p = fs::absolute(dir).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  fs::path up = p.parent_path();
  std::error_code ec;
  while (up != up.root_path() && !fs::exists(up, ec)) up = up.parent_path();
  struct stat st;
  if (stat(up.c_str(), &st) != 0) return "cannot look at " + up.string() + ": " + strerror(errno);
  if (!S_ISDIR(st.st_mode)) return up.string() + " is not a directory";
  if (access(up.c_str(), W_OK | X_OK) != 0)
    return "nothing can be written in " + up.string() + " (" + strerror(errno) + ")";
  return "";
}

bool is_process_image(const std::string& dir) { return access((dir + "/process.json").c_str(), F_OK) == 0; }

namespace {
int inspect_shaped(const std::string& dir, const Output& out);
}

// What check_shape does not look at (the text inspect prints) may still be of another
// type in a damaged manifest: named as damage, not a crash.
int inspect_process_image(const std::string& dir, const Output& out) {
  try {
    return inspect_shaped(dir, out);
  } catch (const nlohmann::json::exception& e) {
    return fail(out, kDataLost, class_of(kDataLost), dir + "/process.json is damaged: " + e.what());
  }
}

namespace {
int inspect_shaped(const std::string& dir, const Output& out) {
  nlohmann::json m;
  try {
    m = read_process_manifest(dir);
  } catch (const ClientError& e) {
    return fail(out, e);
  }
  uint64_t cpu = 0;
  for (auto& f : m["cpu_files"]) cpu += f["size"].get<uint64_t>();
  nlohmann::json gpu_images = nlohmann::json::object();
  for (auto& p : m["processes"]) {
    if (!p.value("cuda", false)) continue;
    std::string g = p["gpu_image"].get<std::string>();
    try {
      image::Manifest gm = image::read_manifest(dir + "/" + g);
      uint64_t total = 0;
      for (auto& b : gm.blobs) total += b.size;
      bool alone = image::chunks_held_elsewhere(dir + "/" + g, gm).empty();
      gpu_images[g] = {{"device_bytes", total}, {"bytes_written", gm.bytes_written}, {"bytes_reused", gm.bytes_reused},
                       {"bytes_carried", gm.bytes_carried}, {"stands_alone", alone}, {"parent", gm.parent}, {"devices", gm.state.value("devices", nlohmann::json::array())}};
    } catch (const image::Error& e) {
      gpu_images[g] = {{"error", e.message}};
    }
  }
  if (out.json) {
    nlohmann::json j = m;
    j["dir"] = dir;
    j["kind"] = "process";
    j["cpu_bytes"] = cpu;
    j["gpu_images"] = gpu_images;
    if (m.contains("files")) j["files_changed_here"] = files_changed_here(m["files"]);
    print_json(j);
    return kOk;
  }
  printf("%s: whole-process image (format %d), ferry %s, created %s\n", dir.c_str(), m["version"].get<int>(),
         m.value("ferry", std::string("?")).c_str(), m.value("created", std::string("?")).c_str());
  if (!m.value("parent", std::string()).empty()) {
    bool alone = std::all_of(gpu_images.begin(), gpu_images.end(), [](auto& g) { return g.value("stands_alone", true); });
    printf("%s", parent_text(m["parent"].get<std::string>(), alone, "some GPU chunks").c_str());
  }
  printf("  CPU half: %zu CRIU files, %s\n", m["cpu_files"].size(), human(cpu).c_str());
  if (!m.value("pid_namespace", true))
    printf("  pids: the host's (run with --host-pids): restored only where they are free\n");
  if (m.value("net_namespace", false))
    printf("  network: its own (run with --net-namespace): restored into a new one, loopback only\n");
  for (auto& p : m["processes"]) {
    std::string cmd;
    for (auto& c : p["cmdline"]) cmd += (cmd.empty() ? "" : " ") + c.get<std::string>();
    printf("  process %d (parent %d): %s\n", p["nspid"].get<int>(), p["parent"].get<int>(), cmd.c_str());
    if (!p.value("cuda", false)) continue;
    auto& g = gpu_images[p["gpu_image"].get<std::string>()];
    if (g.contains("error")) {
      printf("    GPU half: DAMAGED: %s\n", g["error"].get<std::string>().c_str());
      continue;
    }
    printf("    GPU half: %s of device memory in %s (%s written, %s from the parent%s)\n",
           human(g["device_bytes"].get<uint64_t>()).c_str(), p["gpu_image"].get<std::string>().c_str(),
           human(g["bytes_written"].get<uint64_t>()).c_str(), human(g["bytes_reused"].get<uint64_t>()).c_str(),
           carried_text(g["bytes_carried"].get<uint64_t>()).c_str());
    for (auto& dv : g["devices"])
      printf("    device %d: %s (compute capability %s), was GPU %d\n", dv["vdev"].get<int>(),
             dv["name"].get<std::string>().c_str(), dv["cc"].get<std::string>().c_str(), dv["pdev"].get<int>());
  }
  for (auto& g : m["gpus"])
    printf("  GPU %d of the dumping machine: %s, compute capability %s, %s, UUID %s\n", g["index"].get<int>(),
           g["name"].get<std::string>().c_str(), g["cc"].get<std::string>().c_str(),
           human(g["memory"].get<uint64_t>()).c_str(), g["uuid"].get<std::string>().c_str());
  if (std::string tcp = describe_sockets(m.value("sockets", nlohmann::json())); !tcp.empty())
    printf("  TCP: %s, restored with it (its addresses must be free where it is restored)\n", tcp.c_str());
  for (auto& n : m.value("sockets", nlohmann::json::object()).value("external_dgram", nlohmann::json::array()))
    printf("  datagrams to %s (outside the job): connected there again at restore, which needs a datagram "
           "socket there\n",
           n.get<std::string>().c_str());
  for (auto& x : stand_ins(m)) {
    const int need = access_needed(*x.entry).value_or(0);
    printf("  fd %d was %s (%s%s): the restorer's own fd %d takes its place%s%s\n", x.fd,
           x.entry->value("was", std::string("?")).c_str(), x.entry->value("kind", std::string("?")).c_str(),
           x.fd > 2 ? ", from the job's launcher" : "", x.by, need ? ", open for " : "", need ? access_text(need) : "");
  }
  if (m.contains("files")) {
    auto changed = files_changed_here(m["files"]);
    printf("  files: %zu (programs, libraries, open files, working directories) that a restore needs unchanged at "
           "the same paths; %s\n",
           m["files"].size(),
           changed.empty() ? "this machine has them all" : ("here " + std::to_string(changed.size()) +
                                                            " differ: " + joined(changed)).c_str());
  }
  return kOk;
}

}  // namespace

int verify_process_image(const std::string& dir, const Output& out) {
  ProgressView view(out);
  uint64_t gpu = 0;
  try {
    nlohmann::json m = read_process_manifest(dir);
    verify_cpu(dir, m);
    for (auto& p : m["processes"]) {
      if (!p.value("cuda", false)) continue;
      try {
        image::Reader r(dir + "/" + p["gpu_image"].get<std::string>());
        r.verify([&](uint64_t d, uint64_t t) { view({{"phase", "verifying GPU half"}, {"done", d}, {"total", t}}); });
        for (auto& b : r.manifest().blobs) gpu += b.size;
      } catch (const image::Error& e) {
        throw ClientError(exit_for_class(image::class_name(e.cls)), "the GPU half of the image is damaged: " + e.message);
      }
    }
    if (out.json)
      print_json(nlohmann::json({{"ok", true}, {"dir", dir}, {"cpu_files", m["cpu_files"].size()}, {"gpu_bytes", gpu}}));
    else
      printf("%s: intact (CPU half: %zu CRIU files hashed; GPU half: %s of device memory, every chunk's hash "
             "verified)\n",
             dir.c_str(), m["cpu_files"].size(), human(gpu).c_str());
    return kOk;
  } catch (const ClientError& e) {
    return fail(out, e);
  }
}

}  // namespace ferry::cli
