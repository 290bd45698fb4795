// The output relay: what a job writes to its pipe reaches the socket ferry holds at fd 1
// or 2, in order and whole; it ends with the job's writers; a reader that has gone fails
// the job's next write, not ferry; one that stops reading does not hold ferry at its end.
#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch_test_macros.hpp>

#include "relay.hpp"

using ferry::cli::OutputRelay;

namespace {

// This process's fds 1 and 2 put on two descriptors for the scope (the relay works on
// its own process's stdio); Catch2 reports after the scope has given them back.
struct StdioOn {
  int saved1, saved2;
  StdioOn(int one, int two) : saved1(dup(1)), saved2(dup(2)) {
    dup2(one, 1);
    dup2(two, 2);
  }
  ~StdioOn() {
    dup2(saved1, 1);
    dup2(saved2, 2);
    close(saved1);
    close(saved2);
  }
};

struct Pair {
  int reader = -1, writer = -1;  // the reader's end, the end ferry would hold
  Pair() {
    int s[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s) == 0) reader = s[0], writer = s[1];
  }
  ~Pair() {
    if (reader >= 0) close(reader);
    if (writer >= 0) close(writer);
  }
};

std::string pattern(size_t n, char seed) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; i++) s[i] = static_cast<char>(seed + static_cast<char>(i * 7 % 251));
  return s;
}

bool write_all(int fd, const std::string& s) {
  for (size_t done = 0; done < s.size();) {
    ssize_t n = write(fd, s.data() + done, s.size() - done);
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

std::string read_n(int fd, size_t n) {
  std::string s(n, '\0');
  size_t done = 0;
  while (done < n) {
    ssize_t k = read(fd, s.data() + done, n - done);
    if (k <= 0) break;
    done += static_cast<size_t>(k);
  }
  s.resize(done);
  return s;
}

// The relay of fd 1 started, as ferry starts it once the job holds its end; the job's end.
int started_on_fd1(OutputRelay& relay) {
  std::string why;
  REQUIRE(relay.wrap({1}, &why));
  int job = dup(relay.write_end(1));
  relay.close_write_ends();
  relay.start();
  return job;
}

}  // namespace

TEST_CASE("the relay copies each pipe to its socket whole and in order, and ends when the job's writers have",
          "[relay]") {
  Pair out, err;
  REQUIRE(out.reader >= 0);
  REQUIRE(err.reader >= 0);
  const std::string big = pattern(4u << 20, 'a'), small = pattern(1000, 'z');
  std::string got_out, got_err, why;
  bool wrapped = false;
  int w1 = -1, w2 = -1;
  std::vector<int> fds;
  {
    StdioOn on(out.writer, err.writer);
    OutputRelay relay;
    wrapped = relay.wrap({0, 1, 2}, &why);  // fd 0 is never taken
    w1 = relay.write_end(1);
    w2 = relay.write_end(2);
    fds = relay.wrapped();
    int job1 = dup(w1), job2 = dup(w2);  // the job's ends
    relay.close_write_ends();
    relay.start();
    // More than a pipe and a socket hold: read while the job writes.
    std::thread reader([&] {
      got_out = read_n(out.reader, big.size());
      got_err = read_n(err.reader, small.size());
    });
    write_all(job1, big);
    write_all(job2, small);
    close(job1);
    close(job2);
    relay.finish("test");
    reader.join();
  }
  CHECK(wrapped);
  CHECK(why.empty());
  CHECK(w1 > 2);
  CHECK(w2 > 2);
  CHECK(w1 != w2);  // two sockets, two pipes
  CHECK(fds == std::vector<int>{1, 2});
  CHECK(got_out == big);
  CHECK(got_err == small);
}

TEST_CASE("one socket at fds 1 and 2 is one pipe (2>&1); a pipe, a file or a datagram socket is not relayed",
          "[relay]") {
  Pair both;
  int dgram[2];
  REQUIRE(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, dgram) == 0);
  int w1 = -1, w2 = -1, w_dgram = -1;
  bool taken_pipe = true, taken_dgram = true;
  {
    StdioOn on(both.writer, both.writer);
    OutputRelay relay;
    std::string why;
    relay.wrap({1, 2}, &why);
    w1 = relay.write_end(1);
    w2 = relay.write_end(2);
  }
  {
    int p[2];
    REQUIRE(pipe(p) == 0);
    StdioOn on(p[1], dgram[0]);
    taken_pipe = OutputRelay::takes(1);
    taken_dgram = OutputRelay::takes(2);
    OutputRelay relay;
    std::string why;
    relay.wrap({1, 2}, &why);
    w_dgram = relay.write_end(2);
    close(p[0]);
    close(p[1]);
  }
  close(dgram[0]);
  close(dgram[1]);
  CHECK(w1 > 2);
  CHECK(w1 == w2);
  CHECK_FALSE(taken_pipe);
  CHECK_FALSE(taken_dgram);
  CHECK(w_dgram == -1);
}

TEST_CASE("a reader that has gone fails the job's next write (EPIPE), not ferry", "[relay]") {
  Pair out, err;
  int wrote_errno = 0;
  {
    StdioOn on(out.writer, err.writer);
    OutputRelay relay;
    // Its thread with SIGPIPE as ferry has it: a send without MSG_NOSIGNAL would end this test.
    int job = started_on_fd1(relay);
    close(out.reader);
    out.reader = -1;
    sigset_t pipe_sig, old;
    sigemptyset(&pipe_sig);
    sigaddset(&pipe_sig, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_sig, &old);  // this thread's own SIGPIPE, from its write, is taken below
    for (int i = 0; i < 500 && !wrote_errno; i++) {
      if (write(job, "line\n", 5) < 0) wrote_errno = errno;
      usleep(10000);
    }
    timespec now{};
    while (sigtimedwait(&pipe_sig, nullptr, &now) == SIGPIPE) {}
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    close(job);
    relay.finish("test");
  }
  CHECK(wrote_errno == EPIPE);
}

TEST_CASE("a reader that stops reading does not hold ferry at its end: given up 5 s after the job, said on fd 2",
          "[relay]") {
  Pair out, err;
  std::string said;
  {
    StdioOn on(out.writer, err.writer);
    OutputRelay relay;
    int job = started_on_fd1(relay);
    // fd 1's reader reads nothing: the job's output fills the socket, then the pipe.
    fcntl(job, F_SETFL, O_NONBLOCK);
    const std::string chunk(65536, 'x');
    for (int idle_ms = 0; idle_ms < 500;) {  // until the relay, stuck, no longer drains the pipe
      if (write(job, chunk.data(), chunk.size()) > 0) {
        idle_ms = 0;
      } else {
        usleep(10000);
        idle_ms += 10;
      }
    }
    close(job);
    relay.finish("test");  // five seconds
  }
  fcntl(err.reader, F_SETFL, O_NONBLOCK);
  char buf[4096];
  for (ssize_t n; (n = read(err.reader, buf, sizeof buf)) > 0;) said.append(buf, static_cast<size_t>(n));
  CHECK(said ==
        "test: the job has ended, but the reader of fd 1 (a Unix socket) had not taken all of its output 5 s "
        "later; the rest is dropped\n");
}
