// The output relay of a job with a network of its own.
//
// CRIU finds a job's Unix sockets through the job's network namespace. A socket made
// outside it -- a systemd service's stdout and stderr, journald's stream -- is not found
// there, so a job run with --net-namespace could not be dumped while holding one. Yet it
// is what a service has. So where ferry run's (or ferry restore's) own fd 1 or 2 is a Unix
// stream socket, the job gets the write end of a pipe there instead, and a thread of
// ferry's, outside the job and its namespace, copies what comes out of the pipe into the
// socket. CRIU dumps that pipe like any pipe at the job's stdio: outside the job, the
// restorer's own descriptor at a restore (which a restore relays again where it is such a
// socket too).
//
// Only fds 1 and 2: output, which one pipe carries. The job's stdin, and descriptors from
// its launcher (--preserve-fds), may be read as well; such a socket is still refused by
// name. fds 1 and 2 on one socket (2>&1) share one pipe, so the job sees one file there
// as it did. Order is kept per pipe. Where the socket's reader has gone (EPIPE), the
// pipe is closed at this end: the job's next write fails there as it would have on the
// socket. The relay ends when every pipe has ended (no writer left: the job has ended,
// the last of its processes too) or when it is stopped.
#pragma once

#include <atomic>
#include <condition_variable>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace ferry::cli {

// What is relayed, in the words of every refusal of a Unix socket a relay does not take.
inline constexpr char kRelayScope[] = "ferry relays the job's output to a stream socket at fds 1 and 2, nothing else";

class OutputRelay {
 public:
  OutputRelay() = default;
  OutputRelay(const OutputRelay&) = delete;
  OutputRelay& operator=(const OutputRelay&) = delete;
  ~OutputRelay();  // stops at once, without waiting for the job's last words

  // Whether this process's fd is one a relay takes: fd 1 or 2, a Unix stream socket.
  static bool takes(int fd);
  // Those of fds (this process's own) that it takes get a pipe; false, with *why, where a
  // pipe cannot be made (nothing is left made then).
  bool wrap(const std::vector<int>& fds, std::string* why);
  // The pipe's write end (close-on-exec, above 2) standing in for fd, or -1.
  int write_end(int fd) const;
  // The fds wrap found, in order ("fds 1 and 2"), for messages.
  std::vector<int> wrapped() const;
  bool empty() const { return pipes_.empty(); }
  // In the job's first process, before anything else runs there: the write ends go to
  // the fds they stand in for, and no other end of the relay's stays open in the job.
  void adopt_in_job();
  // Once the job holds its ends: from now on the pipes end when the job's writers do.
  void close_write_ends();
  void start();
  // After the job has ended: waits up to 5 s for what it wrote to reach the sockets,
  // then stops; says so (as `who`) where a pipe had not ended by then (something still
  // held the job's end of it, or the socket's reader was not reading).
  void finish(const char* who);

 private:
  struct Pipe {
    int sock = -1, read = -1, write = -1;
    std::vector<int> fds;
  };
  void pump();
  bool send_all(int sock, const char* p, size_t n);
  void stop();

  std::vector<Pipe> pipes_;
  int stop_fd_ = -1;                  // an eventfd: readable once the relay is to stop
  std::atomic<bool> sending_{false};  // waiting for the socket's reader
  std::thread thread_;
  std::mutex m_;
  std::condition_variable cv_;
  bool done_ = false;
};

}  // namespace ferry::cli
