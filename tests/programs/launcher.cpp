// The shape of torchrun: a launcher starts N workers, worker i running the given
// command with "--device i" appended, its stdout a pipe to the launcher, which prints
// every line as "[worker i] LINE" and ends when they all have (exit 1 if any failed).
// --connect PORT|PATH: the launcher also holds a connection to something outside the
// job, which CRIU cannot dump: TCP to 127.0.0.1:PORT, or the Unix socket at PATH.
// --tcp-store: the lines travel over TCP inside the job, as torchrun's rendezvous
// store talks to its agents: the launcher listens dual-stack on [::] (an ephemeral port,
// kept open all along, as PyTorch's TCPStore does), starts a store client that connects
// to it by 127.0.0.1, and sends every line there; the client prints it and answers "ok"
// for each. The launcher counts the answers and fails (exit 3) when a line or an answer
// went missing or arrived twice.
//   launcher [--tcp-store] [--connect PORT|PATH] N CMD [ARGS...]
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace {

bool write_all(int fd, const std::string& s) {
  size_t done = 0;
  while (done < s.size()) {
    ssize_t n = write(fd, s.data() + done, s.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

// A connection to 127.0.0.1:PORT, or to the Unix socket at PATH; -1 on failure.
int connect_to(const std::string& to) {
  int sock;
  int r;
  if (to.find('/') != std::string::npos) {
    sock = socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    snprintf(a.sun_path, sizeof a.sun_path, "%s", to.c_str());
    r = connect(sock, reinterpret_cast<sockaddr*>(&a), sizeof a);
  } else {
    sock = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(atoi(to.c_str())));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    r = connect(sock, reinterpret_cast<sockaddr*>(&a), sizeof a);
  }
  return r == 0 ? sock : -1;
}

// The store client: prints every line that arrives and answers "ok" for it.
[[noreturn]] void store(uint16_t port) {
  int s = connect_to(std::to_string(port));
  if (s < 0) {
    perror("store: connect");
    _exit(2);
  }
  std::string partial;
  char buf[4096];
  for (;;) {
    ssize_t r = read(s, buf, sizeof buf);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    partial.append(buf, static_cast<size_t>(r));
    size_t nl;
    while ((nl = partial.find('\n')) != std::string::npos) {
      printf("%s\n", partial.substr(0, nl).c_str());
      fflush(stdout);
      partial.erase(0, nl + 1);
      if (!write_all(s, "ok\n")) _exit(2);
    }
  }
  _exit(partial.empty() ? 0 : 2);
}


}  // namespace

int main(int argc, char** argv) {
  int i = 1, sock = -1;
  bool tcp_store = false;
  for (; i < argc && argv[i][0] == '-'; i++) {
    std::string o = argv[i];
    if (o == "--tcp-store") {
      tcp_store = true;
    } else if (o == "--connect" && i + 1 < argc) {
      sock = connect_to(argv[++i]);
      if (sock < 0) {
        perror("launcher: connect");
        return 2;
      }
    } else {
      break;
    }
  }
  if (i + 1 >= argc) {
    fprintf(stderr, "usage: launcher [--tcp-store] [--connect PORT|PATH] N CMD [ARGS...]\n");
    return 64;
  }
  int n = atoi(argv[i++]);
  int listener = -1, conn = -1;
  pid_t store_pid = -1;
  if (tcp_store) {
    // Dual-stack on every address, as PyTorch's TCPStore listens; its client comes by IPv4.
    listener = socket(AF_INET6, SOCK_STREAM, 0);
    int no = 0;
    setsockopt(listener, IPPROTO_IPV6, IPV6_V6ONLY, &no, sizeof no);
    sockaddr_in6 a{};
    a.sin6_family = AF_INET6;
    a.sin6_addr = in6addr_any;
    socklen_t len = sizeof a;
    if (bind(listener, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || listen(listener, 4) != 0 ||
        getsockname(listener, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
      perror("launcher: listen");
      return 2;
    }
    fflush(stdout);
    store_pid = fork();
    if (store_pid == 0) {
      close(listener);
      store(ntohs(a.sin6_port));
    }
    conn = accept(listener, nullptr, nullptr);
    if (conn < 0) {
      perror("launcher: accept");
      return 2;
    }
  }
  std::vector<int> fds;
  std::vector<pid_t> pids;
  for (int w = 0; w < n; w++) {
    int p[2];
    if (pipe(p) != 0) return 2;
    pid_t pid = fork();
    if (pid == 0) {
      dup2(p[1], 1);
      close(p[0]);
      close(p[1]);
      std::vector<std::string> args(argv + i, argv + argc);
      args.push_back("--device");
      args.push_back(std::to_string(w));
      std::vector<char*> a;
      for (auto& s : args) a.push_back(s.data());
      a.push_back(nullptr);
      execv(a[0], a.data());
      _exit(127);
    }
    close(p[1]);
    fds.push_back(p[0]);
    pids.push_back(pid);
  }
  std::vector<std::string> partial(static_cast<size_t>(n));
  int open_fds = n;
  long sent = 0, acked = 0;
  std::string acks;
  auto read_acks = [&](bool block) {
    char buf[4096];
    ssize_t r = recv(conn, buf, sizeof buf, block ? 0 : MSG_DONTWAIT);
    if (r <= 0) return r == 0 || !(errno == EAGAIN || errno == EINTR) ? -1 : 0;
    acks.append(buf, static_cast<size_t>(r));
    size_t nl;
    while ((nl = acks.find('\n')) != std::string::npos) {
      acked += acks.compare(0, nl, "ok") == 0 ? 1 : 1000000;  // anything else is a garbled answer
      acks.erase(0, nl + 1);
    }
    return 1;
  };
  while (open_fds > 0) {
    std::vector<pollfd> pf;
    for (int fd : fds) pf.push_back({fd, POLLIN, 0});  // a negative fd is skipped by poll
    if (conn >= 0) pf.push_back({conn, POLLIN, 0});
    if (poll(pf.data(), pf.size(), -1) < 0) continue;
    if (conn >= 0 && (pf.back().revents & POLLIN)) read_acks(false);
    for (size_t w = 0; w < fds.size(); w++) {
      if (pf[w].fd < 0 || !(pf[w].revents & (POLLIN | POLLHUP))) continue;
      char buf[4096];
      ssize_t r = read(fds[w], buf, sizeof buf);
      if (r <= 0) {
        close(fds[w]);
        fds[w] = -1;
        open_fds--;
        continue;
      }
      partial[w].append(buf, static_cast<size_t>(r));
      size_t nl;
      while ((nl = partial[w].find('\n')) != std::string::npos) {
        std::string line = "[worker " + std::to_string(w) + "] " + partial[w].substr(0, nl) + "\n";
        if (conn >= 0) {
          if (!write_all(conn, line)) return 2;
          sent++;
        } else {
          fputs(line.c_str(), stdout);
        }
        partial[w].erase(0, nl + 1);
      }
      fflush(stdout);
    }
  }
  int failed = 0;
  for (pid_t p : pids) {
    int st = 0;
    waitpid(p, &st, 0);
    failed += !(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  }
  if (sock >= 0) close(sock);
  if (conn >= 0) {
    while (acked < sent && read_acks(true) > 0) {
    }
    shutdown(conn, SHUT_WR);
    int st = 0;
    waitpid(store_pid, &st, 0);
    if (acked != sent || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
      fprintf(stderr, "launcher: %ld lines sent to the store, %ld answers\n", sent, acked);
      return 3;
    }
    close(listener);
  }
  return failed ? 1 : 0;
}
