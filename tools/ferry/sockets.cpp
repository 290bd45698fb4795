// The sockets of a job (sockets.hpp has the mechanism).
#include "sockets.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <net/if.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <linux/unix_diag.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <thread>
#include <vector>

#include <ferry_common/control.hpp>

#include "output.hpp"
#include "relay.hpp"

namespace ferry::cli {

namespace {

namespace fs = std::filesystem;

// Linux's TCP states, as /proc/net/tcp prints them.
enum : int {
  kEstablished = 0x01,
  kSynSent = 0x02,
  kFinWait1 = 0x04,
  kFinWait2 = 0x05,
  kTimeWait = 0x06,
  kClose = 0x07,
  kCloseWait = 0x08,
  kLastAck = 0x09,
  kListen = 0x0A,
  kClosing = 0x0B,
};

struct TcpEntry {
  int family = AF_INET;
  std::string local, remote;
  int state = 0;
  uint64_t ino = 0;
  unsigned long rx_queue = 0;  // of a listener: connections waiting to be accepted
};

// "0100007F:1F90" (IPv4) or 32 hex digits and a port (IPv6): each 32-bit word is printed
// as the number its bytes make in this machine's order.
std::string address_of(const std::string& hex, int family) {
  size_t colon = hex.find(':');
  if (colon == std::string::npos) return "";
  unsigned port = static_cast<unsigned>(strtoul(hex.c_str() + colon + 1, nullptr, 16));
  char text[INET6_ADDRSTRLEN] = {};
  if (family == AF_INET) {
    in_addr a{};
    a.s_addr = static_cast<uint32_t>(strtoul(hex.substr(0, colon).c_str(), nullptr, 16));
    inet_ntop(AF_INET, &a, text, sizeof text);
    return std::string(text) + ":" + std::to_string(port);
  }
  in6_addr a{};
  for (int w = 0; w < 4; w++) {
    uint32_t v = static_cast<uint32_t>(strtoul(hex.substr(static_cast<size_t>(w) * 8, 8).c_str(), nullptr, 16));
    memcpy(a.s6_addr + w * 4, &v, 4);
  }
  // An IPv4 peer of a dual-stack IPv6 socket (::ffff:a.b.c.d) is named as IPv4, as its
  // other end, in /proc/net/tcp, names itself.
  if (IN6_IS_ADDR_V4MAPPED(&a)) {
    inet_ntop(AF_INET, a.s6_addr + 12, text, sizeof text);
    return std::string(text) + ":" + std::to_string(port);
  }
  inet_ntop(AF_INET6, &a, text, sizeof text);
  return "[" + std::string(text) + "]:" + std::to_string(port);
}

std::vector<TcpEntry> read_table(const std::string& path, int family) {
  std::vector<TcpEntry> v;
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);  // the header
  while (std::getline(in, line)) {
    std::istringstream w(line);
    std::string sl, local, remote, st, queues, timer, retr, uid, timeout, inode;
    if (!(w >> sl >> local >> remote >> st >> queues >> timer >> retr >> uid >> timeout >> inode)) continue;
    TcpEntry e;
    e.family = family;
    e.local = address_of(local, family);
    e.remote = address_of(remote, family);
    e.state = static_cast<int>(strtol(st.c_str(), nullptr, 16));
    e.ino = strtoull(inode.c_str(), nullptr, 10);
    if (size_t c = queues.find(':'); c != std::string::npos) e.rx_queue = strtoul(queues.c_str() + c + 1, nullptr, 16);
    v.push_back(e);
  }
  return v;
}

std::vector<TcpEntry> tcp_tables(const std::string& net_dir) {
  auto v = read_table(net_dir + "/tcp", AF_INET);
  auto v6 = read_table(net_dir + "/tcp6", AF_INET6);
  v.insert(v.end(), v6.begin(), v6.end());
  return v;
}

// The inodes a /proc/net table lists in its column'th field (from 1), below its header.
std::set<uint64_t> inodes_of(const std::string& path, int column) {
  std::set<uint64_t> s;
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  while (std::getline(in, line)) {
    std::istringstream w(line);
    std::string f;
    int i = 0;
    while (i < column && (w >> f)) i++;
    if (i == column) s.insert(strtoull(f.c_str(), nullptr, 10));
  }
  return s;
}

// The sockets process pid has open: (descriptor, inode). Empty once it is gone.
std::vector<std::pair<int, uint64_t>> socket_fds(pid_t pid) {
  std::vector<std::pair<int, uint64_t>> v;
  for (auto& [fd, link] : fd_links(pid))
    if (link.rfind("socket:[", 0) == 0) v.push_back({fd, strtoull(link.c_str() + 8, nullptr, 10)});
  return v;
}

struct UnixInfo {
  uint64_t peer = 0;
  std::string name;  // bound path, "@name" for the abstract namespace, "" unnamed
  int type = 0;      // SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET
};

// Runs f on a thread of its own that first enters the network namespace nsfd names: a
// thread's network namespace is its own, so this process's stays as it was, whatever
// happens. False when the thread could not enter it (f not run).
bool in_net_namespace(int nsfd, const std::function<void()>& f) {
  bool entered = false;
  std::thread([&] {
    if (setns(nsfd, CLONE_NEWNET) != 0) return;
    entered = true;
    f();
  }).join();
  return entered;
}

// A NETLINK_SOCK_DIAG socket, which lists the sockets of the network namespace it was
// made in: pid's (0: this process's); -1 when it cannot be made.
int diag_socket(pid_t pid) {
  auto make = [] { return socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG); };
  if (pid == 0) return make();
  int ns = open(("/proc/" + std::to_string(pid) + "/ns/net").c_str(), O_RDONLY | O_CLOEXEC);
  if (ns < 0) return -1;
  int fd = -1;
  in_net_namespace(ns, [&] { fd = make(); });
  close(ns);
  return fd;
}

// Every Unix socket of pid's network namespace (0: this process's) with its peer and
// name, added to out; false when the kernel would not say.
bool unix_sockets(std::map<uint64_t, UnixInfo>& out, pid_t pid = 0) {
  int fd = diag_socket(pid);
  if (fd < 0) return false;
  struct {
    nlmsghdr h;
    unix_diag_req r;
  } req{};
  req.h.nlmsg_len = sizeof req;
  req.h.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  req.h.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
  req.r.sdiag_family = AF_UNIX;
  req.r.udiag_states = ~0u;
  req.r.udiag_show = UDIAG_SHOW_NAME | UDIAG_SHOW_PEER;
  if (send(fd, &req, sizeof req, 0) != static_cast<ssize_t>(sizeof req)) {
    close(fd);
    return false;
  }
  std::vector<uint64_t> words(8192);  // 64 KiB, aligned for the headers
  char* buf = reinterpret_cast<char*>(words.data());
  bool done = false, ok = true;
  while (!done) {
    ssize_t n = recv(fd, buf, words.size() * sizeof(uint64_t), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      ok = false;
      break;
    }
    int len = static_cast<int>(n);
    for (auto* h = reinterpret_cast<nlmsghdr*>(buf); NLMSG_OK(h, len); h = NLMSG_NEXT(h, len)) {
      if (h->nlmsg_type == NLMSG_DONE) {
        done = true;
        break;
      }
      if (h->nlmsg_type == NLMSG_ERROR) {
        done = true;
        ok = false;
        break;
      }
      auto* m = static_cast<unix_diag_msg*>(NLMSG_DATA(h));
      UnixInfo u;
      u.type = m->udiag_type;
      int alen = static_cast<int>(h->nlmsg_len - NLMSG_LENGTH(sizeof *m));
      for (auto* a = reinterpret_cast<rtattr*>(m + 1); RTA_OK(a, alen); a = RTA_NEXT(a, alen)) {
        if (a->rta_type == UNIX_DIAG_PEER && RTA_PAYLOAD(a) >= 4) {
          uint32_t p;
          memcpy(&p, RTA_DATA(a), 4);
          u.peer = p;
        } else if (a->rta_type == UNIX_DIAG_NAME && RTA_PAYLOAD(a) > 0) {
          const char* s = static_cast<const char*>(RTA_DATA(a));
          size_t l = RTA_PAYLOAD(a);
          u.name = s[0] == '\0' ? "@" + std::string(s + 1, l - 1) : std::string(s, strnlen(s, l));
        }
      }
      out[m->udiag_ino] = u;
    }
  }
  close(fd);
  return ok;
}

struct Holder {
  pid_t pid;
  std::string name;
  int fd;
};

std::string who(const Holder& h) {
  return "process " + std::to_string(h.pid) + " (" + h.name + ", fd " + std::to_string(h.fd) + ")";
}

bool parse_address(const std::string& a, sockaddr_storage& ss, socklen_t& len) {
  size_t colon = a.rfind(':');
  if (colon == std::string::npos) return false;
  int port = atoi(a.c_str() + colon + 1);
  memset(&ss, 0, sizeof ss);
  if (a[0] == '[') {
    auto* s6 = reinterpret_cast<sockaddr_in6*>(&ss);
    s6->sin6_family = AF_INET6;
    s6->sin6_port = htons(static_cast<uint16_t>(port));
    if (inet_pton(AF_INET6, a.substr(1, colon - 2).c_str(), &s6->sin6_addr) != 1) return false;
    len = sizeof *s6;
    return true;
  }
  auto* s4 = reinterpret_cast<sockaddr_in*>(&ss);
  s4->sin_family = AF_INET;
  s4->sin_port = htons(static_cast<uint16_t>(port));
  if (inet_pton(AF_INET, a.substr(0, colon).c_str(), &s4->sin_addr) != 1) return false;
  len = sizeof *s4;
  return true;
}

// 0 when a socket with SO_REUSEADDR (as CRIU restores them) can bind addr here, else errno.
int bind_error(const std::string& addr) {
  sockaddr_storage ss;
  socklen_t len = 0;
  if (!parse_address(addr, ss, len)) return EINVAL;
  int s = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s < 0) return errno;
  int one = 1;
  setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  int r = bind(s, reinterpret_cast<sockaddr*>(&ss), len) == 0 ? 0 : errno;
  close(s);
  return r;
}

// A copy of descriptor fd of process pid (root may take any); -1 when it is gone.
int take_fd(pid_t pid, int fd) {
  int pidfd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  if (pidfd < 0) return -1;
  int r = static_cast<int>(syscall(SYS_pidfd_getfd, pidfd, fd, 0));
  close(pidfd);
  return r;
}

}  // namespace

void save_reuse(JobSockets& js) {
  for (auto& c : js.connections) {
    int s = take_fd(c.pid, c.fd);
    if (s < 0) continue;
    int v = 0;
    socklen_t len = sizeof v;
    if (getsockopt(s, SOL_SOCKET, SO_REUSEADDR, &v, &len) == 0) c.reuse = v;
    close(s);
  }
}

std::string leave_repair(const std::vector<JobTask>& tasks, const JobSockets& saved) {
  std::map<uint64_t, int> reuse;  // by inode: one socket may be open in several processes
  for (auto& c : saved.connections)
    if (c.reuse >= 0) reuse[c.ino] = c.reuse;
  std::set<uint64_t> done;
  std::string problems;
  for (auto& t : tasks) {
    for (auto [fd, ino] : socket_fds(t.pid)) {
      if (done.count(ino)) continue;
      int s = take_fd(t.pid, fd);
      if (s < 0) continue;
      int on = 0;
      socklen_t len = sizeof on;
      // Not TCP (or not in repair mode): nothing to do.
      if (getsockopt(s, IPPROTO_TCP, TCP_REPAIR, &on, &len) == 0 && on) {
        int off = 0;
        auto it = reuse.find(ino);
        int r = it != reuse.end() ? it->second : 0;
        if (setsockopt(s, IPPROTO_TCP, TCP_REPAIR, &off, sizeof off) != 0 ||
            setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &r, sizeof r) != 0)
          problems += "; process " + std::to_string(t.pid) + ": its TCP socket (fd " + std::to_string(fd) +
                      ") stays in CRIU's repair mode (" + strerror(errno) + ")";
      }
      done.insert(ino);
      close(s);
    }
  }
  return problems;
}

nlohmann::json JobSockets::to_json() const {
  nlohmann::json c = nlohmann::json::array();
  for (auto& x : connections) c.push_back({{"local", x.local}, {"remote", x.remote}});
  nlohmann::json j = {{"listening", listening}, {"connections", c}};
  if (!unix_names.empty()) j["unix"] = unix_names;
  if (!external_dgram.empty()) j["external_dgram"] = external_dgram;
  return j;
}

JobSockets job_sockets(const std::vector<JobTask>& tasks, const std::set<uint64_t>& exempt, bool stopped) {
  JobSockets js;
  if (tasks.empty()) return js;
  // Which job process holds each socket, and on which descriptor.
  std::map<uint64_t, std::vector<Holder>> held;
  for (auto& t : tasks)
    for (auto [fd, ino] : socket_fds(t.pid)) held[ino].push_back({t.pid, t.name, fd});
  if (held.empty()) return js;
  auto first = [&](uint64_t ino) -> const Holder& { return held.at(ino).front(); };
  auto add = [&](const std::string& p, bool moment) {
    js.problems.push_back(p);
    js.in_flight += moment ? 1 : 0;
  };

  // Each network namespace of the job's processes -- ferry's, and the program's own where
  // it has one (--net-namespace) --, read through a process in it: a connection's two
  // ends are in one namespace.
  std::map<uint64_t, pid_t> nets;
  for (auto& t : tasks)
    if (uint64_t n = net_namespace_of(t.pid)) nets.emplace(n, t.pid);
  if (nets.empty()) nets.emplace(0, tasks[0].pid);  // none readable: the init's tables, as ever
  for (auto& [ns, in] : nets) {
    std::string net = "/proc/" + std::to_string(in) + "/net";
    std::vector<TcpEntry> tcp = tcp_tables(net);
    std::map<std::pair<std::string, std::string>, const TcpEntry*> by_ends;
    for (auto& e : tcp)
      if (e.state != kListen) by_ends[{e.local, e.remote}] = &e;
    for (auto& e : tcp) {
      if (!e.ino || !held.count(e.ino) || exempt.count(e.ino)) continue;
      js.inet = true;
      const Holder& h = first(e.ino);
      switch (e.state) {
        case kListen:
          js.listening.push_back(e.local);
          // Once CRIU has the job stopped (and has dumped this socket), a connection
          // someone makes meanwhile is theirs to lose, not a flaw of the image.
          if (e.rx_queue && !stopped)
            add(who(h) + " listens on " + e.local + " with " + std::to_string(e.rx_queue) +
                    " connection(s) not yet accepted, which CRIU cannot dump; try again in a moment",
                true);
          break;
        case kSynSent:
          add(who(h) + " is connecting to " + e.remote + "; try again in a moment", true);
          break;
        case kEstablished:
        case kFinWait1:
        case kFinWait2:
        case kCloseWait:
        case kLastAck:
        case kClosing: {
          auto it = by_ends.find({e.remote, e.local});
          const TcpEntry* peer = it != by_ends.end() ? it->second : nullptr;
          // The peer has closed its end and no process holds it any more: nothing will
          // come from it but what our end has already received (CRIU dumps it as it is).
          bool peer_closed = (!peer || peer->ino == 0) &&
                             (e.state == kCloseWait || e.state == kLastAck || e.state == kClosing);
          if (peer && peer->ino == 0 && peer->state == kEstablished) {
            add(who(h) + " has a TCP connection " + e.local + " -> " + e.remote +
                    " whose other end is not accepted yet; try again in a moment",
                true);
          } else if ((peer && held.count(peer->ino)) || peer_closed) {
            js.connections.push_back({e.local, e.remote, h.pid, h.fd, -1, e.ino});
          } else {
            for (auto& each : held.at(e.ino))  // every process that has it open must close it
              add(who(each) + " has a TCP connection " + e.local + " -> " + e.remote +
                      " to outside the job: CRIU cannot dump it without its peer; close it before a dump",
                  false);
          }
          break;
        }
        default:
          break;  // closed or bound only: CRIU makes it again
      }
    }
    for (const char* udp : {"/udp", "/udp6"})
      for (uint64_t ino : inodes_of(net + udp, 10))
        if (held.count(ino)) js.inet = true;
  }

  std::map<uint64_t, UnixInfo> unix;
  if (!unix_sockets(unix)) return js;  // CRIU will say it, if it matters
  // A job with a network of its own: its sockets are listed there (socket inodes are
  // the machine's, so one map holds every namespace's).
  std::map<uint64_t, UnixInfo> own;
  bool own_net = false;
  for (auto& [ns, in] : nets)
    if (ns && ns != net_namespace_of(getpid())) {
      own_net = true;
      if (!unix_sockets(own, in)) return js;
    }
  // CRIU finds no socket outside the namespaces it dumps (sockets.hpp): with a network of
  // the job's own, a Unix socket of ferry's namespace the job holds cannot be dumped.
  auto outside_own = [&](uint64_t ino) { return own_net && !own.count(ino); };
  for (auto& [ino, u] : own) unix[ino] = u;
  js.unix_known = true;
  // The shim's control socket, and connections it accepted: <dir>/<pid>.sock in its
  // user's socket directory (the default one, or this process's FERRY_SOCKET_DIR).
  auto is_control = [&](uint64_t ino, const std::string& name) {
    fs::path p(name);
    for (auto& h : held.at(ino)) {
      if (p.filename() != control::socket_name(h.pid)) continue;
      struct stat sb;
      if (stat(("/proc/" + std::to_string(h.pid)).c_str(), &sb) != 0) continue;
      std::string dir = p.parent_path().string();
      if (dir == control::socket_dir() || dir == control::socket_dir_for(sb.st_uid, nullptr)) return true;
    }
    return false;
  };
  // Abstract names only: CRIU unlinks a path a socket was bound to and binds it again,
  // so only those collide with a copy of the job that holds them (JSON text only).
  std::set<std::string> names;
  for (auto& [ino, u] : unix)
    if (held.count(ino) && !exempt.count(ino) && u.name.size() > 1 && u.name[0] == '@' && !is_control(ino, u.name) &&
        json_text(u.name))
      names.insert(u.name);
  js.unix_names.assign(names.begin(), names.end());
  std::set<std::string> dgram;
  for (auto& [ino, u] : unix) {
    if (!held.count(ino) || exempt.count(ino) || u.peer == 0 || held.count(u.peer)) continue;
    if (is_control(ino, u.name)) continue;
    auto peer = unix.find(u.peer);
    std::string pname = peer != unix.end() && !peer->second.name.empty() ? peer->second.name : "";
    // A datagram socket sending to a named one outside (syslog's /dev/log, journald):
    // CRIU dumps it alone (--ext-unix-sk) and connects it to that name again at restore.
    if (u.type == SOCK_DGRAM && peer != unix.end() && peer->second.type == SOCK_DGRAM && pname.size() > 1 &&
        json_text(pname)) {
      if (outside_own(u.peer)) {
        if (!stopped)
          for (auto& each : held.at(ino))
            add(who(each) + " sends datagrams to " + pname + ", outside the job's own network namespace (ferry run "
                "--net-namespace), where CRIU cannot find it; run such a job without --net-namespace",
                false);
        continue;
      }
      dgram.insert(pname);
      continue;
    }
    if (stopped) continue;  // CRIU has refused it itself, or it did not exist then
    for (auto& each : held.at(ino))
      add(who(each) + " is connected to a Unix socket outside the job (" + (pname.empty() ? "unnamed" : pname) +
              "): CRIU cannot dump it without its peer; close it before a dump",
          false);
  }
  js.external_dgram.assign(dgram.begin(), dgram.end());
  if (!stopped)
    for (uint64_t ino : exempt)
      if (held.count(ino) && unix.count(ino) && outside_own(ino))
        add(who(first(ino)) + " holds the job's stdio, a Unix socket from outside the job's own network namespace "
            "(ferry run --net-namespace), where CRIU cannot find it (" +
            kRelayScope + "); give the job a pipe, a terminal or a file, or run it without --net-namespace",
            false);
  return js;
}

std::vector<std::string> sockets_taken_here(const nlohmann::json& sockets, bool* missing) {
  std::vector<std::string> taken;
  if (missing) *missing = false;
  if (!sockets.is_object()) return taken;
  auto why = [&](int err) {
    if (missing && err != EADDRINUSE) *missing = true;
    return err == EADDRNOTAVAIL ? "does not exist on this machine" : strerror(err);
  };
  auto here = tcp_tables("/proc/self/net");
  auto port_of = [](const std::string& a) { return a.substr(a.rfind(':') + 1); };
  // Whether only connections closed moments ago (no process holds them: TIME_WAIT,
  // FIN_WAIT2, ...) hold a port: from a socket without SO_REUSEADDR they block it for
  // as long as they last (about a minute).
  auto closing_only = [&](const std::string& port) {
    bool any = false;
    for (auto& e : here)
      if (port_of(e.local) == port) {
        if (e.ino || e.state == kListen) return false;
        any = true;
      }
    return any;
  };
  for (auto& l : sockets.value("listening", nlohmann::json::array())) {
    std::string a = l.get<std::string>();
    if (int err = bind_error(a))
      taken.push_back(a + ", where the job listened: " +
                      (err != EADDRINUSE        ? std::string("the address ") + why(err)
                       : closing_only(port_of(a)) ? std::string("connections on it closed moments ago block it "
                                                                "(TIME_WAIT, at most a minute)")
                                                  : std::string("something on this machine holds it already")));
  }
  // A connection end is restored in repair mode, which binds regardless of other
  // sockets on its port; only the very same four addresses collide -- also with an
  // end no process holds any more, closed moments ago.
  std::map<std::pair<std::string, std::string>, const TcpEntry*> ends;
  for (auto& e : here)
    if (e.state != kListen) ends[{e.local, e.remote}] = &e;
  for (auto& c : sockets.value("connections", nlohmann::json::array())) {
    std::string local = c.value("local", ""), remote = c.value("remote", "");
    auto it = ends.find({local, remote});
    if (it == ends.end()) continue;
    taken.push_back("the job's TCP connection " + local + " -> " + remote +
                    (it->second->ino ? " exists on this machine already (held by another copy of the job?)"
                                     : " closed moments ago on this machine and lingers (at most a minute)"));
  }
  // An abstract Unix socket name is the machine's (its network namespace's) once bound:
  // CRIU's bind of the job's would fail half-way through.
  if (auto names = sockets.value("unix", nlohmann::json::array()); !names.empty()) {
    std::map<uint64_t, UnixInfo> unix;
    std::set<std::string> bound;
    if (unix_sockets(unix))
      for (auto& [ino, u] : unix) bound.insert(u.name);
    for (auto& n : names)
      if (bound.count(n.get<std::string>()))
        taken.push_back("the Unix socket name " + n.get<std::string>() +
                        ", which the job had bound, is bound on this machine already (by the original job, still "
                        "running?)");
  }
  // A name the job's datagram sockets sent to is connected to as CRIU will connect it (a
  // datagram connect sends nothing): a missing name, a stale file nobody listens on and a
  // stream socket all fail here.
  for (auto& n : sockets.value("external_dgram", nlohmann::json::array())) {
    std::string name = n.get<std::string>();
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    if (name.size() >= sizeof a.sun_path) continue;
    memcpy(a.sun_path, name.c_str(), name.size());
    if (name[0] == '@') a.sun_path[0] = '\0';
    int s = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) continue;
    int err = connect(s, reinterpret_cast<sockaddr*>(&a),
                      static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size())) == 0
                  ? 0
                  : errno;
    close(s);
    if (err == 0) continue;
    taken.push_back("the job's datagram socket was connected to " + name +
                    ", which no datagram socket on this machine answers to (" + strerror(err) +
                    "; start what listens there, e.g. syslog)");
    if (missing) *missing = true;
  }
  return taken;
}

uint64_t net_namespace_of(pid_t pid) {
  struct stat sb;
  return stat(("/proc/" + std::to_string(pid) + "/ns/net").c_str(), &sb) == 0 ? sb.st_ino : 0;
}

std::string loopback_up() {
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) return std::string("cannot make a socket: ") + strerror(errno);
  ifreq r{};
  memcpy(r.ifr_name, "lo", 3);
  std::string why;
  if (ioctl(s, SIOCGIFFLAGS, &r) != 0) {
    why = std::string("cannot read the loopback's flags: ") + strerror(errno);
  } else {
    r.ifr_flags = static_cast<short>(r.ifr_flags | IFF_UP);
    if (ioctl(s, SIOCSIFFLAGS, &r) != 0) why = std::string("cannot bring the loopback up: ") + strerror(errno);
  }
  close(s);
  return why;
}

int new_net_namespace(std::string* why) {
  int fd = -1;
  // The thread's namespace is left with it; the descriptor keeps the new one alive.
  std::thread([&] {
    if (unshare(CLONE_NEWNET) != 0) {
      *why = std::string("cannot make a network namespace: ") + strerror(errno) +
             (errno == EPERM ? " (it needs root: CAP_SYS_ADMIN)" : "");
      return;
    }
    if (std::string e = loopback_up(); !e.empty()) {
      *why = "in a new network namespace, " + e;
      return;
    }
    fd = open("/proc/thread-self/ns/net", O_RDONLY);
    if (fd < 0) *why = std::string("cannot open the new network namespace: ") + strerror(errno);
  }).join();
  return fd;
}

bool is_unix_socket(pid_t pid, uint64_t ino) {
  // In ferry's namespace where the job has its own: what its launcher gave it was made outside.
  return inodes_of("/proc/" + std::to_string(pid) + "/net/unix", 7).count(ino) > 0 ||
         inodes_of("/proc/self/net/unix", 7).count(ino) > 0;
}

std::string unix_sockets_among(const std::vector<int>& fds) {
  std::vector<int> found;
  for (int fd : fds)
    if (struct stat st; fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode) && is_unix_socket(getpid(), st.st_ino))
      found.push_back(fd);
  if (found.empty()) return "";
  return found.size() == 1 ? "fd " + numbers_text(found) + " is a Unix socket"
                           : "fds " + numbers_text(found) + " are Unix sockets";
}

std::string describe_sockets(const nlohmann::json& sockets) {
  if (!sockets.is_object()) return "";
  std::string ls;
  for (auto& l : sockets.value("listening", nlohmann::json::array())) ls += (ls.empty() ? "" : ", ") + l.get<std::string>();
  size_t n = sockets.value("connections", nlohmann::json::array()).size();
  if (ls.empty() && n == 0) return "";
  return "listening on " + (ls.empty() ? std::string("nothing") : ls) + "; " + std::to_string(n) +
         " connection end(s) inside the job";
}

std::string inet_sockets_refusal(const std::string& v) {
  if (criu_dumps_inet_sockets(v)) return "";
  return "TCP or UDP sockets, which CRIU " + v + " cannot dump on Linux " + kernel_release() +
         " (it needs CRIU 4.2 or newer there)";
}

std::string kernel_release() {
  utsname u{};
  uname(&u);
  return u.release;
}

bool criu_dumps_inet_sockets(const std::string& v) {
  int maj = 0, min = 0;
  if (sscanf(v.c_str(), "%d.%d", &maj, &min) < 1) return true;  // cannot tell: CRIU will say
  if (maj > 4 || (maj == 4 && min >= 2)) return true;
  int kmaj = 0, kmin = 0;
  sscanf(kernel_release().c_str(), "%d.%d", &kmaj, &kmin);
  return kmaj < 6 || (kmaj == 6 && kmin < 16);
}

std::vector<std::pair<int, std::string>> fd_links(pid_t pid) {
  std::vector<std::pair<int, std::string>> v;
  std::error_code ec;
  fs::directory_iterator it("/proc/" + std::to_string(pid) + "/fd", ec), end;
  for (; !ec && it != end; it.increment(ec)) {
    char buf[4096];
    ssize_t n = readlink(it->path().c_str(), buf, sizeof buf - 1);
    if (n > 0) v.push_back({atoi(it->path().filename().c_str()), std::string(buf, static_cast<size_t>(n))});
  }
  return v;
}

unsigned long fd_flags(pid_t pid, int fd, bool* read) {
  std::ifstream info("/proc/" + std::to_string(pid) + "/fdinfo/" + std::to_string(fd));
  std::string key;
  unsigned long flags = 0;
  bool found = false;
  while (!found && info >> key)
    if (key == "flags:") found = static_cast<bool>(info >> std::oct >> flags);
  if (read) *read = found;
  return found ? flags : 0;
}

}  // namespace ferry::cli
