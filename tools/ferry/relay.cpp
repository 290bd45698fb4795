#include "relay.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>

#include "output.hpp"

namespace ferry::cli {
namespace {

bool unix_stream_socket(int fd) {
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode)) return false;
  int domain = 0, type = 0;
  socklen_t len = sizeof domain;
  if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) != 0) return false;
  len = sizeof type;
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0) return false;
  return domain == AF_UNIX && type == SOCK_STREAM;
}

// Above 2: a ferry started with stdin closed would get a pipe end at 0, which the job's
// own descriptors are put over.
int above_stdio(int fd) {
  if (fd > 2) return fd;
  int moved = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  int e = errno;
  close(fd);
  errno = e;
  return moved;
}

void close_fd(int& fd) {
  if (fd >= 0) close(fd);
  fd = -1;
}

}  // namespace

OutputRelay::~OutputRelay() {
  stop();
  for (auto& p : pipes_) {
    close_fd(p.read);
    close_fd(p.write);
  }
  close_fd(stop_fd_);
}

bool OutputRelay::takes(int fd) { return (fd == 1 || fd == 2) && unix_stream_socket(fd); }

bool OutputRelay::wrap(const std::vector<int>& fds, std::string* why) {
  auto fail = [&](const std::string& what) {
    *why = what + ": " + strerror(errno);
    for (auto& p : pipes_) {
      close_fd(p.read);
      close_fd(p.write);
    }
    pipes_.clear();
    close_fd(stop_fd_);
    return false;
  };
  for (int fd : fds) {
    if (!takes(fd)) continue;
    struct stat st;
    fstat(fd, &st);
    Pipe* same = nullptr;
    for (auto& p : pipes_)
      if (struct stat o; fstat(p.sock, &o) == 0 && o.st_ino == st.st_ino && o.st_dev == st.st_dev) same = &p;
    if (same) {
      same->fds.push_back(fd);
      continue;
    }
    // The thread is stopped through it: made now, or a relay that could not be stopped
    // would wait at ferry's end for a reader that never reads.
    if (stop_fd_ < 0 && (stop_fd_ = eventfd(0, EFD_CLOEXEC)) < 0)
      return fail("cannot make an eventfd to relay fd " + std::to_string(fd) + ", a Unix socket");
    int ends[2];
    if (pipe2(ends, O_CLOEXEC) != 0)
      return fail("cannot make a pipe to relay fd " + std::to_string(fd) + ", a Unix socket");
    pipes_.push_back({fd, ends[0], ends[1], {fd}});
    if ((pipes_.back().read = above_stdio(ends[0])) < 0 || (pipes_.back().write = above_stdio(ends[1])) < 0)
      return fail("cannot move the pipe relaying fd " + std::to_string(fd) + " above fd 2");
  }
  return true;
}

int OutputRelay::write_end(int fd) const {
  for (auto& p : pipes_)
    for (int f : p.fds)
      if (f == fd) return p.write;
  return -1;
}

std::vector<int> OutputRelay::wrapped() const {
  std::vector<int> v;
  for (int fd : {1, 2})
    for (auto& p : pipes_)
      if (std::find(p.fds.begin(), p.fds.end(), fd) != p.fds.end()) v.push_back(fd);
  return v;
}

void OutputRelay::adopt_in_job() {
  for (auto& p : pipes_)
    for (int fd : p.fds) dup2(p.write, fd);
  for (auto& p : pipes_) {
    close_fd(p.read);
    close_fd(p.write);
  }
}

void OutputRelay::close_write_ends() {
  for (auto& p : pipes_) close_fd(p.write);
}

void OutputRelay::start() {
  if (pipes_.empty() || thread_.joinable()) return;
  thread_ = std::thread([this] {
    pump();
    std::lock_guard<std::mutex> l(m_);
    done_ = true;
    cv_.notify_all();
  });
}

void OutputRelay::finish(const char* who) {
  if (!thread_.joinable()) return;
  constexpr int kSeconds = 5;
  bool ended;
  {
    std::unique_lock<std::mutex> l(m_);
    ended = cv_.wait_for(l, std::chrono::seconds(kSeconds), [this] { return done_; });
  }
  const bool sending = sending_;
  stop();
  if (ended) return;
  const std::string fds = (wrapped().size() == 1 ? "fd " : "fds ") + numbers_text(wrapped());
  const std::string n = std::to_string(kSeconds);
  const std::string said =
      sending ? std::string(who) + ": the job has ended, but the reader of " + fds +
                    " (a Unix socket) had not taken all of its output " + n + " s later; the rest is dropped\n"
              : std::string(who) +
                    ": the job has ended, but something still held its end of the pipe relaying its "
                    "output to " +
                    fds + " (a Unix socket) " + n + " s later; what comes there now is not passed on\n";
  // Not waited for either, where fd 2 is such a socket: its reader may be the one that
  // stopped reading.
  if (send(2, said.data(), said.size(), MSG_DONTWAIT | MSG_NOSIGNAL) < 0 && errno == ENOTSOCK)
    fputs(said.c_str(), stderr);
}

void OutputRelay::stop() {
  if (!thread_.joinable()) return;
  uint64_t one = 1;
  (void)!write(stop_fd_, &one, sizeof one);
  thread_.join();
}

bool OutputRelay::send_all(int sock, const char* p, size_t n) {
  while (n > 0) {
    // Never blocked where the stop cannot reach: a reader that stopped reading must not
    // hold this process at its end.
    ssize_t k = send(sock, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (k > 0) {
      p += k;
      n -= static_cast<size_t>(k);
      continue;
    }
    if (k < 0 && errno == EINTR) continue;
    if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      sending_ = true;
      pollfd w[2] = {{sock, POLLOUT, 0}, {stop_fd_, POLLIN, 0}};
      int r = poll(w, 2, -1);
      sending_ = false;
      if ((r < 0 && errno != EINTR) || w[1].revents) return false;
      continue;
    }
    return false;  // the reader has gone
  }
  return true;
}

void OutputRelay::pump() {
  std::vector<char> buf(64 * 1024);
  for (;;) {
    std::vector<pollfd> fds;
    std::vector<Pipe*> of;
    for (auto& p : pipes_)
      if (p.read >= 0) {
        fds.push_back({p.read, POLLIN, 0});
        of.push_back(&p);
      }
    if (fds.empty()) return;
    fds.push_back({stop_fd_, POLLIN, 0});
    if (poll(fds.data(), fds.size(), -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (fds.back().revents) return;
    for (size_t i = 0; i < of.size(); i++) {
      if (!fds[i].revents) continue;
      Pipe& p = *of[i];
      ssize_t n = read(p.read, buf.data(), buf.size());
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (n <= 0 || !send_all(p.sock, buf.data(), static_cast<size_t>(n))) close_fd(p.read);
    }
  }
}

}  // namespace ferry::cli
