// The sockets of a job, as CRIU will find them.
//
// CRIU brings back by itself every socket whose other end it dumps too: Unix socket
// pairs and connections, and -- with --tcp-established -- TCP connections with both ends
// in the tree (restored in repair mode, with their sequence numbers and queued bytes).
// That is the shape of torchrun: the launcher's TCP store and its workers, all in the
// job. What nothing can bring back is a connection to something that stays outside and
// moves on: a TCP peer outside the job, a Unix connection to a daemon. So before a dump
// ferry finds every socket the job's processes hold, and its other end:
//   TCP   /proc/<pid>/net/tcp and tcp6 (the job's network namespace): local and remote
//         address, state, queue and inode of every socket. A connection's other end is
//         the socket with the mirrored addresses; it is inside the job when a job
//         process holds its inode. A listener with connections not yet accepted, or a
//         connection still being set up, is in flight (CRIU refuses both): try again.
//   Unix  NETLINK_SOCK_DIAG with each socket's peer inode, type and bound name; a peer
//         that no job process holds is outside. One kind of those CRIU can bring back
//         (--ext-unix-sk): a datagram socket connected to a named datagram socket --
//         syslog's /dev/log, journald's socket --, which it connects to that name again.
//         The names go into the image; a restore wants them on its machine.
// A refusal then names process, descriptor and peer before anything is stopped. TCP is
// looked at again once CRIU has dumped the stopped tree (when nothing can change any
// more): with --tcp-established CRIU would dump a connection to outside as well.
//
// Exempt: the job's stdio (descriptors 0-2 of its init), outside by design -- the dump
// names it external and a restore hands over the restorer's -- and the shim's control
// socket (<dir>/<host pid>.sock and the connections it accepted), which every CUDA
// process closes before CRIU runs.
//
// Connections inside the job need no network lock (CRIU's --network-lock skip): both
// ends are stopped together and nothing outside talks to them. Their addresses go into
// the image, and a restore first checks that nothing on the machine holds them (the
// original job still running, say): CRIU would otherwise fail half-way through.
//
// Jobs share ferry's network namespace (ferry run makes none), which the Unix query
// relies on; the TCP tables are read through the job's own /proc/<pid>/net.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace ferry::cli {

struct JobTask {
  pid_t pid = 0;  // host pid
  std::string name;
};

struct TcpConnection {
  std::string local, remote;  // "127.0.0.1:29500", "[::1]:41234"
  pid_t pid = 0;              // a job process holding this end, on descriptor fd
  int fd = -1;
  int reuse = -1;             // its SO_REUSEADDR, once save_reuse has read it
  uint64_t ino = 0;
};

struct JobSockets {
  std::vector<std::string> listening;      // TCP listeners' addresses
  std::vector<TcpConnection> connections;  // TCP connections inside the job, each end once
  std::vector<std::string> unix_names;     // abstract names ("@...") the job's Unix sockets are bound to
  std::vector<std::string> external_dgram; // names outside the job its datagram sockets send to (/dev/log)
  bool inet = false;                       // any TCP or UDP socket at all
  bool unix_known = false;                 // the kernel listed the Unix sockets (names above are complete)
  std::vector<std::string> problems;       // what CRIU cannot dump, by process, descriptor and peer
  size_t in_flight = 0;                    // problems that last only a moment (try again)

  // {"listening": [...], "connections": [{"local", "remote"}...], "unix": [...],
  // "external_dgram": [...]}: what an image keeps (the last two only when not empty).
  nlohmann::json to_json() const;
};

// The sockets of tasks (the job's processes; tasks[0]'s network namespace is read).
// exempt: socket inodes that are the job's stdio. stopped: CRIU has dumped the tree and
// holds it stopped -- Unix sockets with a peer outside are no problem any more (CRIU
// refused those it could not dump itself), their names are still recorded.
JobSockets job_sockets(const std::vector<JobTask>& tasks, const std::set<uint64_t>& exempt, bool stopped = false);

// CRIU dumps a TCP connection in repair mode and turns that off again only for tasks it
// lets run: with --leave-stopped the job's sockets stay in repair mode. That suits a job
// that is then killed (a socket closed in repair mode sends nothing, so no reset reaches
// its restored twin); a job that goes on instead (--leave-running, a roll-back) must get
// its sockets back first, as CRIU would. Turning repair mode off resets SO_REUSEADDR,
// so save_reuse reads it beforehand (through pidfd_getfd, as root).
void save_reuse(JobSockets& js);
// Takes every TCP socket of tasks out of repair mode (with its saved SO_REUSEADDR, else
// 0); "" when all went well, else what did not.
std::string leave_repair(const std::vector<JobTask>& tasks, const JobSockets& saved);

// The descriptors process pid holds, each with what /proc says it is open on (its link:
// a path, "socket:[ino]", "anon_inode:[...]"). Empty once it is gone.
std::vector<std::pair<int, std::string>> fd_links(pid_t pid);

// The open flags of process pid's descriptor fd (/proc/PID/fdinfo; 0 once it is gone).
unsigned long fd_flags(pid_t pid, int fd);

// Whether socket inode ino is a Unix socket (in pid's network namespace).
bool is_unix_socket(pid_t pid, uint64_t ino);

// "listening on 127.0.0.1:29500; 2 connection end(s) inside the job" for an image's or
// a job's sockets (JobSockets::to_json); "" when it has no TCP socket.
std::string describe_sockets(const nlohmann::json& sockets);

// What on this machine holds the addresses and Unix socket names an image's sockets
// (JobSockets::to_json) need: one line each; empty when a restore can bind them all.
// *missing: some address does not exist here at all (waiting will not help).
std::vector<std::string> sockets_taken_here(const nlohmann::json& sockets, bool* missing = nullptr);

// Whether CRIU of this version dumps TCP and UDP sockets on the running kernel: before
// 4.2 CRIU asks every socket for SO_PASSCRED, which Linux 6.16 and later refuse for
// them ("Can't get 1:16 opt: Operation not supported").
bool criu_dumps_inet_sockets(const std::string& criu_version);
// "" when it does, else "TCP or UDP sockets, which CRIU 4.1.1 cannot dump on Linux ..."
// (what a job holding them is refused for).
std::string inet_sockets_refusal(const std::string& criu_version);
// "6.18" of the running kernel.
std::string kernel_release();

}  // namespace ferry::cli
