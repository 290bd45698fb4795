// Runs a command with its stdout and stderr on Unix stream sockets -- as systemd hands
// a service's output to journald -- and copies what arrives to its own stdout and
// stderr. Exits with the command's status (128+N for signal N).
//   sock_stdio CMD [ARGS...]
#include <poll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <vector>

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: sock_stdio CMD [ARGS...]\n");
    return 64;
  }
  int out[2], err[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, out) != 0 || socketpair(AF_UNIX, SOCK_STREAM, 0, err) != 0) {
    perror("sock_stdio: socketpair");
    return 2;
  }
  pid_t pid = fork();
  if (pid == 0) {
    dup2(out[1], 1);
    dup2(err[1], 2);
    for (int fd : {out[0], out[1], err[0], err[1]}) close(fd);
    execvp(argv[1], argv + 1);
    perror("sock_stdio: exec");
    _exit(127);
  }
  close(out[1]);
  close(err[1]);
  pollfd pf[2] = {{out[0], POLLIN, 0}, {err[0], POLLIN, 0}};
  int open_fds = 2;
  while (open_fds > 0) {
    if (poll(pf, 2, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    for (int i = 0; i < 2; i++) {
      if (pf[i].fd < 0 || !(pf[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      char buf[4096];
      ssize_t n = read(pf[i].fd, buf, sizeof buf);
      if (n <= 0) {
        close(pf[i].fd);
        pf[i].fd = -1;
        open_fds--;
        continue;
      }
      for (ssize_t done = 0; done < n;) {
        ssize_t w = write(i == 0 ? 1 : 2, buf + done, static_cast<size_t>(n - done));
        if (w <= 0) break;
        done += w;
      }
    }
  }
  int st = 0;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}
