// The shape of torchrun: a launcher starts N workers, worker i running the given
// command with "--device i" appended, its stdout a pipe to the launcher, which prints
// every line as "[worker i] LINE" and ends when they all have (exit 1 if any failed).
// --connect PORT: the launcher also holds a TCP connection to 127.0.0.1:PORT (something
// outside the job CRIU cannot dump).
//   launcher [--connect PORT] N CMD [ARGS...]
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  int i = 1, sock = -1;
  if (i + 1 < argc && std::string(argv[i]) == "--connect") {
    sock = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(atoi(argv[i + 1])));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(sock, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      perror("launcher: connect");
      return 2;
    }
    i += 2;
  }
  if (i + 1 >= argc) {
    fprintf(stderr, "usage: launcher [--connect PORT] N CMD [ARGS...]\n");
    return 64;
  }
  int n = atoi(argv[i++]);
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
  while (open_fds > 0) {
    std::vector<pollfd> pf;
    for (int fd : fds) pf.push_back({fd, POLLIN, 0});  // a negative fd is skipped by poll
    if (poll(pf.data(), pf.size(), -1) < 0) continue;
    for (size_t w = 0; w < pf.size(); w++) {
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
        printf("[worker %zu] %s\n", w, partial[w].substr(0, nl).c_str());
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
  return failed ? 1 : 0;
}
