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
// The TCP tables are read through /proc/<pid>/net of a job process in each network
// namespace the job has. The Unix query lists the sockets of ferry's network namespace,
// and of the job's own where it has one: a peer may be in either.
//
// A network of its own (ferry run --net-namespace): the job gets a network namespace with
// only its loopback, made for it, so that its TCP ports and abstract Unix names are its
// own -- a copy restored beside the original, or twice at once, binds them again without
// colliding with anything on the machine (torchrun's store always takes port 29500) --
// and nothing outside can connect to it. CRIU is told the namespace is external (a
// dump's --external net[INODE]:KEY): it keeps no addresses, routes or firewall rules,
// only the sockets in it; a restore makes a new one, its loopback up, and hands it to
// CRIU (--inherit-fd fd[N]:KEY), so none of the checks for addresses taken here apply.
// CRIU finds a Unix socket only in the network namespaces of the processes it dumps (and
// restores a process in a namespace other than the init's only below one the init has of
// its own, so the init must be in the job's): a Unix socket from outside -- stdin that is
// one, the daemon a datagram socket sends to (/dev/log) -- is refused by name for such a
// job before anything stops. Its output to a stream socket (a journald stream) does not
// reach CRIU: ferry run and ferry restore relay it through a pipe (relay.hpp).
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

// The open flags of process pid's descriptor fd (/proc/PID/fdinfo; 0 once it is gone, and
// *read false: 0 is also O_RDONLY's).
unsigned long fd_flags(pid_t pid, int fd, bool* read = nullptr);

// CRIU's key for a job's own network namespace (--external at a dump, --inherit-fd at a restore).
constexpr const char* kJobNetKey = "ferry-job-net";

// The inode of pid's network namespace (0 where /proc does not say).
uint64_t net_namespace_of(pid_t pid);

// Brings up the loopback of the calling thread's network namespace (a new one starts with
// it down, and a job's TCP store listens on 127.0.0.1); "" or why not.
std::string loopback_up();

// A new network namespace with its loopback up, as a descriptor that is not close-on-exec
// (for CRIU's --inherit-fd); -1 with *why when it cannot be made. This process's own
// namespace is left as it was.
int new_net_namespace(std::string* why);

// Whether socket inode ino is a Unix socket (in pid's network namespace or this process's).
bool is_unix_socket(pid_t pid, uint64_t ino);

// Of this process's descriptors fds, those that are Unix sockets, said as "fd 1 is a Unix
// socket" or "fds 1 and 2 are Unix sockets"; "" when none is. What a job with a network
// of its own cannot be dumped with as its stdio (CRIU cannot find a socket from outside
// the namespace): ferry run and ferry restore say so before it starts.
std::string unix_sockets_among(const std::vector<int>& fds);

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
