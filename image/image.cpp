#include "ferry_image/image.hpp"

#include <dlfcn.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include <ferry_common/json_text.hpp>

namespace fs = std::filesystem;

namespace ferry::image {

std::string Hash::hex() const {
  char b[33];
  snprintf(b, sizeof b, "%016llx%016llx", static_cast<unsigned long long>(hi), static_cast<unsigned long long>(lo));
  return b;
}

bool Hash::parse(const std::string& s, Hash* out) {
  if (s.size() != 32) return false;
  for (char c : s)
    if (!isxdigit(static_cast<unsigned char>(c))) return false;
  out->hi = std::stoull(s.substr(0, 16), nullptr, 16);
  out->lo = std::stoull(s.substr(16), nullptr, 16);
  return true;
}

Hash hash_of(const void* data, size_t n) {
  XXH128_hash_t h = XXH3_128bits(data, n);
  return Hash{h.low64, h.high64};
}

// ---- zstd, loaded on demand -------------------------------------------------------------

namespace zstd {
namespace {
struct Api {
  size_t (*bound)(size_t) = nullptr;
  size_t (*compress)(void*, size_t, const void*, size_t, int) = nullptr;
  size_t (*decompress)(void*, size_t, const void*, size_t) = nullptr;
  unsigned (*is_error)(size_t) = nullptr;
  bool ok = false;
};
const Api& api() {
  static Api a = [] {
    Api x;
    void* h = dlopen("libzstd.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!h) return x;
    x.bound = reinterpret_cast<decltype(x.bound)>(dlsym(h, "ZSTD_compressBound"));
    x.compress = reinterpret_cast<decltype(x.compress)>(dlsym(h, "ZSTD_compress"));
    x.decompress = reinterpret_cast<decltype(x.decompress)>(dlsym(h, "ZSTD_decompress"));
    x.is_error = reinterpret_cast<decltype(x.is_error)>(dlsym(h, "ZSTD_isError"));
    x.ok = x.bound && x.compress && x.decompress && x.is_error;
    return x;
  }();
  return a;
}
}  // namespace

bool available() { return api().ok; }

size_t compress(const void* src, size_t n, std::vector<char>& dst, int level) {
  const Api& a = api();
  if (!a.ok) return 0;
  dst.resize(a.bound(n));
  size_t r = a.compress(dst.data(), dst.size(), src, n, level);
  if (a.is_error(r) || r >= n) return 0;
  return r;
}

bool decompress(const void* src, size_t n, void* dst, size_t raw) {
  const Api& a = api();
  if (!a.ok) return false;
  size_t r = a.decompress(dst, raw, src, n);
  return !a.is_error(r) && r == raw;
}
}  // namespace zstd

// ---- manifest ----------------------------------------------------------------------------

namespace {

constexpr uint32_t kChunkMagic = 0x4b4e4843;  // "CHNK"
constexpr char kPackMagic[8] = {'F', 'E', 'R', 'R', 'Y', 'P', 'K', '1'};

struct ChunkHeader {
  uint32_t magic;
  uint32_t codec;
  uint64_t hash_lo, hash_hi;
  uint32_t raw, stored;
};
static_assert(sizeof(ChunkHeader) == 32);

const char* codec_name(Codec c) { return c == Codec::Zstd ? "zstd" : "none"; }

// Whether a chunk's header in its pack says what the index says of it.
bool header_matches(const ChunkHeader& ch, const Hash& h, const ChunkLoc& loc) {
  return ch.magic == kChunkMagic && ch.hash_lo == h.lo && ch.hash_hi == h.hi && ch.raw == loc.raw &&
         ch.stored == loc.stored && ch.codec == static_cast<uint32_t>(loc.codec);
}

std::string now_iso() {
  time_t t = time(nullptr);
  struct tm tm;
  gmtime_r(&t, &tm);
  char b[32];
  strftime(b, sizeof b, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return b;
}

[[noreturn]] void io_error(const std::string& what, const std::string& path, int err) {
  if (err == ENOSPC || err == EDQUOT)
    throw Error(ErrorClass::FixFirst, what + " " + path + ": no space left on the device (" + strerror(err) +
                                          "); the previous image, if any, is untouched");
  throw Error(ErrorClass::FixFirst, what + " " + path + ": " + strerror(err));
}

void sync_path(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) io_error("cannot open", path, errno);
  if (fsync(fd) != 0) {
    int e = errno;
    close(fd);
    io_error("cannot sync", path, e);
  }
  close(fd);
}

}  // namespace

void fsync_path(const std::string& path) { sync_path(path); }

Hash hash_file(const std::string& path, uint64_t* size) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) io_error("cannot open", path, errno);
  XXH3_state_t st;
  XXH3_128bits_reset(&st);
  std::vector<char> buf(4 << 20);
  uint64_t total = 0;
  for (;;) {
    ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int e = errno;
      close(fd);
      io_error("cannot read", path, e);
    }
    if (n == 0) break;
    XXH3_128bits_update(&st, buf.data(), static_cast<size_t>(n));
    total += static_cast<uint64_t>(n);
  }
  close(fd);
  if (size) *size = total;
  XXH128_hash_t h = XXH3_128bits_digest(&st);
  return Hash{h.high64, h.low64};
}

namespace {

// What names the publishers of this machine and PID namespace: a pid alone means
// nothing on another host sharing the file system (NFS), or in another namespace.
std::string publisher_scope() {
  std::string boot;
  std::ifstream("/proc/sys/kernel/random/boot_id") >> boot;
  boot.erase(std::remove(boot.begin(), boot.end(), '-'), boot.end());
  struct stat ns {};
  stat("/proc/self/ns/pid", &ns);
  return boot.substr(0, 16) + "-" + std::to_string(ns.st_ino);
}

constexpr char kAside[] = ".ferry-aside-";  // DIR + kAside + scope + "-" + pid
constexpr char kTmp[] = ".tmp-";             // DIR + kTmp + scope + "-" + pid + "-" + n: a writer's work
constexpr char kAlive[] = "/.writer";        // in it, locked while its writer lives

// The entries beside d whose names are d's followed by `tail` and more: what publishers
// and writers of d leave there.
std::vector<fs::path> beside(const fs::path& d, const std::string& tail) {
  const std::string prefix = d.filename().string() + tail;
  std::error_code ec;
  std::vector<fs::path> v;
  for (fs::directory_iterator it(d.parent_path(), ec), end; !ec && it != end; it.increment(ec)) {
    std::string n = it->path().filename().string();
    if (n.size() > prefix.size() && n.compare(0, prefix.size(), prefix) == 0) v.push_back(it->path());
  }
  return v;
}

// A writer killed before it published (the grace period of a preemption ran out) left
// its work beside DIR: up to the whole image's new bytes, and links that keep its
// parent's packs. Its lock file tells: locked while its writer (or a child it forked)
// lives, in any PID namespace (a job's is gone with the job). The next writer of DIR on
// this machine (by its boot id in the name) removes the work of one that is gone; another
// host's is not judged (an NFS mount without server locks keeps each client's locks to
// itself), nor one without a lock file (an older ferry's, or no locks on that file system).
void remove_dead_writers(const fs::path& d) {
  std::error_code ec;
  for (auto& p : beside(d, kTmp + publisher_scope().substr(0, 16))) {
    int fd = open((p.string() + kAlive).c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) continue;
    bool dead = flock(fd, LOCK_EX | LOCK_NB) == 0;
    close(fd);  // first: on NFS a file removed while open would stay behind as .nfsXXXX
    if (dead) fs::remove_all(p, ec);
  }
}

}  // namespace

void recover_dir(const std::string& dir) {
  fs::path d = fs::absolute(dir).lexically_normal();
  if (d.filename().empty()) d = d.parent_path();
  const std::string here = publisher_scope() + "-";
  std::vector<fs::path> stale;
  for (const fs::path& entry : beside(d, kAside)) {
    std::string tag = entry.filename().string().substr(d.filename().string().size() + sizeof kAside - 1);
    // Its publisher is dead: of this machine and namespace, when its pid is gone; of
    // another (a host sharing the file system), when the aside has stood for a minute
    // (the two renames follow each other at once) -- by the file system's clock, which
    // is not this machine's on NFS.
    if (tag.compare(0, here.size(), here) == 0) {
      char* rest = nullptr;
      long pid = strtol(tag.c_str() + here.size(), &rest, 10);
      if (!*rest && pid > 0 && kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) stale.push_back(entry);
      continue;
    }
    struct stat aside, now;
    const std::string probe = (d.parent_path() / (d.filename().string() + ".ferry-now-" +
                                                  std::to_string(getpid()))).string();
    int fd = open(probe.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) continue;  // no clock to judge by: left alone
    bool judged = fstat(fd, &now) == 0 && lstat(entry.c_str(), &aside) == 0;
    close(fd);
    unlink(probe.c_str());
    if (judged && now.st_ctime - aside.st_ctime > 60) stale.push_back(entry);
  }
  for (auto& old : stale) {
    std::error_code gone;
    if (!fs::exists(d, gone) && !gone && rename(old.c_str(), d.c_str()) == 0) continue;  // back in place
    fs::remove_all(old, gone);
  }
}

void publish_dir(const std::string& tmp, const std::string& dir) {
  recover_dir(dir);
  sync_path(tmp);
  if (rename(tmp.c_str(), dir.c_str()) != 0) {
    if (errno != ENOTEMPTY && errno != EEXIST) io_error("cannot publish", dir, errno);
    std::error_code ec;
    if (renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, dir.c_str(), RENAME_EXCHANGE) == 0) {
      fs::remove_all(tmp, ec);  // now the old one
    } else {
      // NFS and other network file systems have no exchange (EINVAL): the old image
      // steps aside first, so for a moment no image is at dir -- never a half one.
      if (errno != EINVAL && errno != ENOSYS && errno != EOPNOTSUPP) io_error("cannot replace", dir, errno);
      const std::string aside = dir + kAside + publisher_scope() + "-" + std::to_string(getpid());
      fs::remove_all(aside, ec);  // this pid's, from a publish that died after the first rename
      if (rename(dir.c_str(), aside.c_str()) != 0) io_error("cannot replace", dir, errno);
      if (rename(tmp.c_str(), dir.c_str()) != 0) {
        int e = errno;
        if (rename(aside.c_str(), dir.c_str()) != 0)
          throw Error(ErrorClass::FixFirst, "cannot replace " + dir + ": " + strerror(e) +
                                                "; the previous image is at " + aside + " now");
        io_error("cannot replace", dir, e);
      }
      fs::remove_all(aside, ec);
    }
  }
  // The new image is in place now, whole (its files were synced): a parent directory
  // that cannot be synced leaves only the rename's durability to the file system. Not
  // a failed publish -- a caller would undo what is no longer undone by that.
  try {
    sync_path(fs::absolute(dir).lexically_normal().parent_path().string());
  } catch (const Error&) {
  }
}

nlohmann::json to_json(const Manifest& m) {
  nlohmann::json j;
  j["format"] = kFormatName;
  j["version"] = m.version;
  j["created"] = m.created;
  j["parent"] = m.parent;
  j["chunk_size"] = m.chunk_size;
  j["bytes_written"] = m.bytes_written;
  j["bytes_reused"] = m.bytes_reused;
  j["bytes_carried"] = m.bytes_carried;
  j["state"] = m.state;
  auto& blobs = j["blobs"] = nlohmann::json::array();
  for (auto& b : m.blobs) {
    nlohmann::json hs = nlohmann::json::array();
    for (auto& h : b.chunks) hs.push_back(h.hex());
    blobs.push_back({{"id", b.id}, {"size", b.size}, {"chunks", hs}});
    if (!b.fingerprints.empty()) {
      nlohmann::json fs = nlohmann::json::array();
      for (auto& h : b.fingerprints) fs.push_back(h.hex());
      blobs.back()["fingerprints"] = fs;
    }
  }
  auto& idx = j["chunks"] = nlohmann::json::object();
  for (auto& [h, l] : m.index)
    idx[h.hex()] = {{"image", l.image}, {"pack", l.pack},   {"offset", l.offset},
                    {"stored", l.stored}, {"raw", l.raw}, {"codec", codec_name(l.codec)}};
  return j;
}

Manifest from_json(const nlohmann::json& j, const std::string& where) {
  auto bad = [&](const std::string& why) -> Error {
    return Error(ErrorClass::DataLost, where + ": not a valid ferry image manifest (" + why + ")");
  };
  if (!j.is_object() || j.value("format", "") != kFormatName) throw bad("no \"format\": \"ferry-image\"");
  if (!j.contains("version") || !j["version"].is_number_integer()) throw bad("no version");
  int v = j["version"].get<int>();
  if (v != kFormatVersion)
    throw Error(ErrorClass::FixFirst, where + ": image format version " + std::to_string(v) +
                                          " is not supported by this ferry (it reads version " +
                                          std::to_string(kFormatVersion) + ")");
  Manifest m;
  try {
    m.version = v;
    m.created = j.value("created", "");
    m.parent = j.value("parent", "");
    m.chunk_size = j.at("chunk_size").get<uint64_t>();
    if (m.chunk_size == 0 || m.chunk_size > (1ull << 31)) throw bad("chunk size " + std::to_string(m.chunk_size));
    m.bytes_written = j.value("bytes_written", 0ull);
    m.bytes_reused = j.value("bytes_reused", 0ull);
    m.bytes_carried = j.value("bytes_carried", 0ull);
    m.state = j.at("state");
    for (auto& b : j.at("blobs")) {
      Blob blob;
      blob.id = b.at("id").get<std::string>();
      blob.size = b.at("size").get<uint64_t>();
      for (auto& h : b.at("chunks")) {
        Hash x;
        if (!Hash::parse(h.get<std::string>(), &x)) throw bad("malformed chunk hash in blob " + blob.id);
        blob.chunks.push_back(x);
      }
      if (blob.chunks.size() != (blob.size + m.chunk_size - 1) / m.chunk_size) throw bad("blob " + blob.id + " is incomplete");
      if (b.contains("fingerprints")) {
        for (auto& h : b.at("fingerprints")) {
          Hash x;
          if (!Hash::parse(h.get<std::string>(), &x)) throw bad("malformed fingerprint in blob " + blob.id);
          blob.fingerprints.push_back(x);
        }
        if (blob.fingerprints.size() != blob.chunks.size())
          throw bad("blob " + blob.id + " has " + std::to_string(blob.fingerprints.size()) + " fingerprints for " +
                    std::to_string(blob.chunks.size()) + " chunks");
      }
      m.blobs.push_back(std::move(blob));
    }
    for (auto& [k, l] : j.at("chunks").items()) {
      Hash x;
      if (!Hash::parse(k, &x)) throw bad("malformed chunk hash " + k);
      ChunkLoc loc;
      loc.image = l.at("image").get<std::string>();
      loc.pack = l.at("pack").get<std::string>();
      loc.offset = l.at("offset").get<uint64_t>();
      loc.stored = l.at("stored").get<uint32_t>();
      loc.raw = l.at("raw").get<uint32_t>();
      loc.codec = l.at("codec").get<std::string>() == "zstd" ? Codec::Zstd : Codec::None;
      if (loc.pack.find('/') != std::string::npos) throw bad("pack name " + loc.pack);
      // Readers size their buffers by the chunk size: a larger chunk would overrun them.
      if (loc.raw > m.chunk_size || (loc.codec == Codec::None && loc.stored != loc.raw))
        throw bad("chunk " + k + " has impossible sizes");
      m.index[x] = loc;
    }
    for (auto& b : m.blobs)
      for (auto& h : b.chunks)
        if (!m.index.count(h)) throw bad("chunk " + h.hex() + " of blob " + b.id + " is not in the index");
  } catch (const nlohmann::json::exception& e) {
    throw bad(e.what());
  }
  return m;
}

namespace {
// Not the image's fault: it is not lost (74), a limit is to be raised (78).
[[noreturn]] void out_of_descriptors(const std::string& path, int e, const std::string& why = "") {
  throw Error(ErrorClass::FixFirst, path + ": " + strerror(e) + " (" + why + "raise the program's open-file limit, " +
                                        "ulimit -n" + (why.empty() ? ")" : ", or write a full image)"));
}

// The manifest of image `dir`, read relative to dirfd when it is given (an open
// descriptor of dir: the directory as it was when opened, whatever is published there
// since), else by path.
Manifest read_manifest_from(const std::string& dir, int dirfd) {
  std::string path = dir + "/manifest.json";
  int fd = dirfd >= 0 ? openat(dirfd, "manifest.json", O_RDONLY | O_CLOEXEC) : open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0 && (errno == EMFILE || errno == ENFILE)) out_of_descriptors(path, errno);
  std::string text;
  bool ok = fd >= 0;
  for (char buf[65536]; ok;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      ok = n == 0;
      break;
    }
    text.append(buf, static_cast<size_t>(n));
  }
  if (fd >= 0) close(fd);
  if (!ok) {
    if (dirfd < 0 && !fs::exists(dir)) throw Error(ErrorClass::FixFirst, dir + ": no such image directory");
    throw Error(ErrorClass::DataLost, path + ": missing or unreadable; the image is incomplete");
  }
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw Error(ErrorClass::DataLost, path + ": damaged (" + std::string(e.what()) + ")");
  }
  return from_json(j, path);
}
}  // namespace

Manifest read_manifest(const std::string& dir) { return read_manifest_from(dir, -1); }

std::set<std::string> chunks_held_elsewhere(const std::string& dir, const Manifest& m) {
  std::set<std::string> held;
  for (auto& [h, loc] : m.index) {
    if (loc.image.empty()) continue;
    // Resolved by name, as the reader resolves it.
    fs::path holder = (fs::path(dir) / loc.image).lexically_normal();
    if (holder.filename().empty()) holder = holder.parent_path();
    held.insert(holder.string());
  }
  return held;
}

bool path_within(const std::string& path, const std::string& dir) {
  if (path == dir || path.rfind(dir + "/", 0) == 0) return true;
  struct stat d {};
  if (stat(dir.c_str(), &d) != 0) return false;  // nothing there to replace
  for (fs::path p = path; !p.empty(); p = p.parent_path()) {
    struct stat s {};
    if (stat(p.c_str(), &s) == 0 && s.st_dev == d.st_dev && s.st_ino == d.st_ino) return true;
    if (p == p.parent_path()) break;
  }
  return false;
}

// ---- writer --------------------------------------------------------------------------------

Writer::Writer(const std::string& dir, const WriterOptions& opts) : opts_(opts) {
  fs::path d = fs::absolute(dir).lexically_normal();
  if (d.filename().empty()) d = d.parent_path();
  dir_ = d.string();
  fs::path parent_dir = d.parent_path();
  std::error_code ec;
  if (!fs::is_directory(parent_dir, ec))
    throw Error(ErrorClass::FixFirst, parent_dir.string() + ": no such directory to write the image in");
  // A constructor that throws runs no destructor: what it opened is closed here.
  try {
    if (!opts_.parent.empty()) open_parent(opts_.parent);
    static std::atomic<int> counter{0};
    remove_dead_writers(d);
    // Named by machine, PID namespace and pid: two restored copies of one job share a pid
    // (and this counter), each in its own namespace. A name taken (a writer of this pid
    // before, its work left) is never reused.
    const std::string mine = dir_ + kTmp + publisher_scope() + "-" + std::to_string(getpid()) + "-";
    for (;;) {
      tmp_ = mine + std::to_string(counter++);
      if (mkdir(tmp_.c_str(), 0755) == 0) break;
      if (errno != EEXIST) io_error("cannot create", tmp_, errno);
    }
    // Locked before it has its name, so it is never seen unlocked while this writer lives.
    // Where it cannot be (no locks on this file system) the work is simply not judged.
    const std::string fresh = tmp_ + kAlive + ".new";
    alive_fd_ = open(fresh.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (alive_fd_ >= 0 && (flock(alive_fd_, LOCK_EX | LOCK_NB) != 0 || rename(fresh.c_str(), (tmp_ + kAlive).c_str()) != 0))
      unlink(fresh.c_str());
    if (mkdir((tmp_ + "/packs").c_str(), 0755) != 0) {
      int e = errno;
      fs::remove_all(tmp_, ec);
      io_error("cannot create", tmp_ + "/packs", e);
    }
  } catch (...) {
    close_parent();
    if (alive_fd_ >= 0) close(alive_fd_);
    throw;
  }
}

void Writer::close_parent() {
  for (auto& pp : parent_packs_) close(pp.fd);
  parent_packs_.clear();
}

void Writer::open_parent(const std::string& parent) {
  fs::path p = fs::absolute(parent).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  opts_.parent = p.string();
  // One descriptor of the parent's directory, and every pack opened through it now: a
  // publish over the parent (even by this very writer, replacing its own parent) cannot
  // give this image chunks of two images.
  int dirfd = open(opts_.parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dirfd < 0) {
    int e = errno;
    if (e == EMFILE || e == ENFILE) out_of_descriptors(opts_.parent, e);
    read_manifest(opts_.parent);  // names a missing image as every reader does
    io_error("cannot open", opts_.parent, e);
  }
  struct Closer {
    int fd;
    ~Closer() { close(fd); }
  } closer{dirfd};
  Manifest pm = read_manifest_from(opts_.parent, dirfd);
  // An older parent still depends on the images it reads from: replacing one would break
  // the parent chosen here.
  const auto held = chunks_held_elsewhere(opts_.parent, pm);
  if (std::any_of(held.begin(), held.end(), [&](const std::string& h) { return path_within(h, dir_); }))
    throw Error(ErrorClass::FixFirst, dir_ + ": cannot be replaced by an image whose parent (" + opts_.parent +
                                          ", written by an older ferry) refers to it; write the new image to "
                                          "another directory");
  std::map<std::string, size_t> opened;
  for (auto& [h, loc] : pm.index) {
    std::string rel = (fs::path(loc.image) / "packs" / loc.pack).string();
    auto [it, fresh] = opened.try_emplace(rel, parent_packs_.size());
    if (fresh) {
      // An older image's `image` is a path relative to its directory's name, opened by
      // name as its Reader does.
      std::string path = (p / rel).lexically_normal().string();
      int fd = loc.image.empty() ? openat(dirfd, rel.c_str(), O_RDONLY | O_CLOEXEC) : open(path.c_str(), O_RDONLY | O_CLOEXEC);
      if (int e = errno; fd < 0 && (e == EMFILE || e == ENFILE))
        out_of_descriptors(path, e, "each pack of the parent image " + opts_.parent +
                                            " is held open while the image is written, " +
                                            std::to_string(parent_packs_.size()) + " so far; ");
      if (fd < 0)
        throw Error(ErrorClass::DataLost, path + ": " + strerror(errno) + " (a pack of the parent image " + opts_.parent +
                                              "; write a full image, without a parent)");
      parent_packs_.push_back({fd, path});
    }
    parent_index_[h] = {loc, it->second};
  }
  // A truncated pack is named now, before any GPU memory is copied (the header of each
  // chunk used is read at commit).
  std::vector<uint64_t> ends(parent_packs_.size(), 0);
  for (auto& [h, pc] : parent_index_)
    ends[pc.pack] = std::max<uint64_t>(ends[pc.pack], pc.loc.offset + sizeof(ChunkHeader) + pc.loc.stored);
  for (size_t i = 0; i < parent_packs_.size(); i++) {
    struct stat st{};
    if (fstat(parent_packs_[i].fd, &st) != 0) io_error("cannot read", parent_packs_[i].path, errno);
    if (static_cast<uint64_t>(st.st_size) < ends[i])
      throw Error(ErrorClass::DataLost, parent_packs_[i].path + ": truncated (" + std::to_string(st.st_size) +
                                            " bytes, its chunks reach " + std::to_string(ends[i]) +
                                            "; a pack of the parent image " + opts_.parent +
                                            "; write a full image, without a parent)");
  }
  parent_chunk_size_ = pm.chunk_size;
  for (auto& b : pm.blobs) parent_blobs_[b.id] = std::move(b);
}

Writer::~Writer() {
  if (fd_ >= 0) close(fd_);
  close_parent();
  if (alive_fd_ >= 0) close(alive_fd_);  // before its file is removed (NFS: no .nfsXXXX left)
  if (!committed_) {
    std::error_code ec;
    fs::remove_all(tmp_, ec);
  }
}

bool Writer::known(const Hash& h) {
  std::lock_guard lk(mu_);
  return index_.count(h) || parent_index_.count(h);
}

void Writer::write_all(const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  std::string path = tmp_ + "/packs/" + pack_name_;
  while (n > 0) {
    if (opts_.fail_after && written_ + carried_ + n > opts_.fail_after) io_error("cannot write", path, ENOSPC);
    ssize_t w = ::write(fd_, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      io_error("cannot write", path, errno);
    }
    p += w;
    n -= static_cast<size_t>(w);
    pack_off_ += static_cast<uint64_t>(w);
    (carrying_ ? carried_ : written_) += static_cast<uint64_t>(w);
  }
  // The disk starts on what is written while more is copied, so the fsync at the end
  // waits for the last stretch only, not for the whole image (without this the kernel
  // begins writing back only at its dirty thresholds or after 30 s).
  constexpr uint64_t kWriteBehind = 32ull << 20;
  if (pack_off_ - flushed_off_ >= kWriteBehind) {
    sync_file_range(fd_, static_cast<off_t>(flushed_off_), static_cast<off_t>(pack_off_ - flushed_off_),
                    SYNC_FILE_RANGE_WRITE);
    flushed_off_ = pack_off_;
  }
}

void Writer::open_pack() {
  if (fd_ >= 0) {
    if (fsync(fd_) != 0) io_error("cannot sync", tmp_ + "/packs/" + pack_name_, errno);
    close(fd_);
  }
  char name[32];
  snprintf(name, sizeof name, "%04d.pack", pack_no_++);
  pack_name_ = name;
  std::string path = tmp_ + "/packs/" + pack_name_;
  fd_ = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) io_error("cannot create", path, errno);
  pack_off_ = 0;
  flushed_off_ = 0;
  char header[16] = {};
  memcpy(header, kPackMagic, 8);
  uint32_t v = kFormatVersion;
  memcpy(header + 8, &v, 4);
  write_all(header, sizeof header);
}

void Writer::put(const Hash& h, const void* data, uint32_t stored, uint32_t raw, Codec codec) {
  std::lock_guard lk(mu_);
  if (index_.count(h) || parent_index_.count(h)) {
    reused_ += raw;
    return;
  }
  if (fd_ < 0 || pack_off_ >= opts_.pack_limit) open_pack();
  ChunkHeader ch{kChunkMagic, static_cast<uint32_t>(codec), h.lo, h.hi, raw, stored};
  ChunkLoc loc;
  loc.pack = pack_name_;
  loc.offset = pack_off_;
  loc.stored = stored;
  loc.raw = raw;
  loc.codec = codec;
  write_all(&ch, sizeof ch);
  write_all(data, stored);
  index_[h] = loc;
}

std::map<Hash, ChunkLoc> Writer::take_parent_chunks(const std::vector<Hash>& used) {
  std::map<size_t, std::vector<Hash>> by_pack;
  for (const Hash& h : used) by_pack[parent_index_.at(h).pack].push_back(h);
  std::map<Hash, ChunkLoc> at;
  std::vector<char> buf;
  for (auto& [i, hashes] : by_pack) {
    const ParentPack& pp = parent_packs_[i];
    uint64_t needed = 0;
    for (const Hash& h : hashes) needed += sizeof(ChunkHeader) + parent_index_.at(h).loc.stored;
    struct stat st{};
    if (fstat(pp.fd, &st) != 0) io_error("cannot read", pp.path, errno);
    // The headers, at least, before anything is linked or copied (32 bytes a chunk): a
    // pack that does not hold what the parent's index says is named now, not at restore.
    for (const Hash& h : hashes) {
      const ChunkLoc& src = parent_index_.at(h).loc;
      ChunkHeader ch{};
      ssize_t n = pread(pp.fd, &ch, sizeof ch, static_cast<off_t>(src.offset));
      if (n != static_cast<ssize_t>(sizeof ch) || !header_matches(ch, h, src) ||
          src.offset + sizeof ch + src.stored > static_cast<uint64_t>(st.st_size))
        throw Error(ErrorClass::DataLost, pp.path + ": chunk " + h.hex() + " at offset " + std::to_string(src.offset) +
                                              ": damaged or truncated in the parent image " + opts_.parent +
                                              "; write a full image, without a parent");
    }
    // A link keeps the whole pack alive: worth it while at least half of it is used, so
    // a chain of images never holds more unused bytes than used ones.
    if (!opts_.no_links && needed * 2 >= static_cast<uint64_t>(st.st_size)) {
      char name[32];
      snprintf(name, sizeof name, "%04d.pack", pack_no_);
      // Through /proc: linkat(fd, "", AT_EMPTY_PATH) would need CAP_DAC_READ_SEARCH.
      std::string self = "/proc/self/fd/" + std::to_string(pp.fd);
      if (linkat(AT_FDCWD, self.c_str(), AT_FDCWD, (tmp_ + "/packs/" + name).c_str(), AT_SYMLINK_FOLLOW) == 0) {
        pack_no_++;
        for (const Hash& h : hashes) {
          ChunkLoc l = parent_index_.at(h).loc;
          l.image.clear();
          l.pack = name;
          at[h] = l;
        }
        continue;
      }
      // Not linked (another file system, one without links, or the parent was replaced
      // and removed meanwhile, which its open descriptor survives): copied instead.
    }
    // Copies from every parent pack go into one pack of this image's (a new one at the
    // pack limit), not one each.
    carrying_ = true;
    for (const Hash& h : hashes) {
      if (fd_ < 0 || pack_off_ >= opts_.pack_limit) open_pack();
      const ChunkLoc& src = parent_index_.at(h).loc;
      buf.resize(sizeof(ChunkHeader) + src.stored);
      ssize_t n = pread(pp.fd, buf.data(), buf.size(), static_cast<off_t>(src.offset));
      if (n != static_cast<ssize_t>(buf.size()))
        throw Error(ErrorClass::DataLost, pp.path + ": chunk " + h.hex() + " at offset " + std::to_string(src.offset) +
                                              ": truncated in the parent image " + opts_.parent +
                                              "; write a full image, without a parent");
      ChunkLoc l = src;
      l.image.clear();
      l.pack = pack_name_;
      l.offset = pack_off_;
      write_all(buf.data(), buf.size());
      at[h] = l;
    }
  }
  if (fd_ >= 0) {
    if (fsync(fd_) != 0) io_error("cannot sync", tmp_ + "/packs/" + pack_name_, errno);
    close(fd_);
    fd_ = -1;
  }
  carrying_ = false;
  return at;
}

const Blob* Writer::parent_blob(const std::string& id, uint64_t size, uint64_t chunk_size) const {
  auto it = parent_blobs_.find(id);
  if (it == parent_blobs_.end() || it->second.size != size || parent_chunk_size_ != chunk_size) return nullptr;
  return &it->second;
}

Manifest Writer::commit(Manifest m) {
  std::lock_guard lk(mu_);
  if (fd_ >= 0) {
    if (fsync(fd_) != 0) io_error("cannot sync", tmp_ + "/packs/" + pack_name_, errno);
    close(fd_);
    fd_ = -1;
  }
  m.version = kFormatVersion;
  m.created = now_iso();
  m.parent = opts_.parent;
  std::vector<Hash> from_parent;
  for (auto& b : m.blobs)
    for (auto& h : b.chunks) {
      if (index_.count(h)) continue;
      if (!parent_index_.count(h)) throw Error(ErrorClass::Bug, "chunk " + h.hex() + " of blob " + b.id + " was never written");
      from_parent.push_back(h);
    }
  std::sort(from_parent.begin(), from_parent.end());
  from_parent.erase(std::unique(from_parent.begin(), from_parent.end()), from_parent.end());
  std::map<Hash, ChunkLoc> taken = take_parent_chunks(from_parent);
  // Done with the parent. Open, its files would stay behind as .nfsXXXX on NFS when the
  // image being replaced is the parent itself.
  close_parent();
  m.bytes_written = written_;
  m.bytes_reused = reused_;
  m.bytes_carried = carried_;
  m.index.clear();
  for (auto& b : m.blobs)
    for (auto& h : b.chunks) {
      auto it = index_.find(h);
      m.index[h] = it != index_.end() ? it->second : taken.at(h);
    }
  // The parent's path is only for reading (chunks are found by the index): one that is not
  // UTF-8 has its bad bytes replaced rather than failing the commit. What a restore reads
  // back (the state's names) must be exact, and fails the commit otherwise.
  nlohmann::json mj = to_json(m);
  mj["parent"] = json_text::as_recorded(m.parent);
  std::string text = mj.dump(1);
  std::string mpath = tmp_ + "/manifest.json";
  int fd = open(mpath.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) io_error("cannot create", mpath, errno);
  size_t off = 0;
  while (off < text.size()) {
    if (opts_.fail_after && written_ + carried_ + text.size() > opts_.fail_after) {
      close(fd);
      io_error("cannot write", mpath, ENOSPC);
    }
    ssize_t w = ::write(fd, text.data() + off, text.size() - off);
    if (w < 0) {
      int e = errno;
      close(fd);
      io_error("cannot write", mpath, e);
    }
    off += static_cast<size_t>(w);
  }
  if (fsync(fd) != 0) {
    int e = errno;
    close(fd);
    io_error("cannot sync", mpath, e);
  }
  close(fd);
  fsync_path(tmp_ + "/packs");
  unlink((tmp_ + kAlive).c_str());  // not part of the image; still held until published
  publish_dir(tmp_, dir_);
  if (alive_fd_ >= 0) close(alive_fd_), alive_fd_ = -1;
  committed_ = true;
  return m;
}

// ---- reader --------------------------------------------------------------------------------

Reader::Reader(const std::string& dir) {
  fs::path d = fs::absolute(dir).lexically_normal();
  if (d.filename().empty()) d = d.parent_path();
  dir_ = d.string();
  m_ = read_manifest(dir_);
}

Reader::~Reader() {
  for (auto& [p, fd] : fds_) close(fd);
}

int Reader::pack_fd(const ChunkLoc& loc) {
  std::string path = (fs::path(dir_) / loc.image / "packs" / loc.pack).lexically_normal().string();
  std::lock_guard lk(mu_);
  auto it = fds_.find(path);
  if (it != fds_.end()) return it->second;
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    throw Error(ErrorClass::DataLost, path + ": " + strerror(errno) +
                                          (loc.image.empty() ? "" : " (a chunk of the parent image " + loc.image + ")"));
  fds_[path] = fd;
  return fd;
}

void Reader::read_chunk(const Hash& h, void* dst) {
  auto it = m_.index.find(h);
  if (it == m_.index.end()) throw Error(ErrorClass::DataLost, dir_ + ": chunk " + h.hex() + " is not in the index");
  const ChunkLoc& loc = it->second;
  int fd = pack_fd(loc);
  std::string file = (fs::path(dir_) / loc.image / "packs" / loc.pack).lexically_normal().string();
  auto lost = [&](const std::string& why) {
    return Error(ErrorClass::DataLost, file + ": chunk " + h.hex() + " at offset " + std::to_string(loc.offset) + ": " + why);
  };
  ChunkHeader ch;
  ssize_t n = pread(fd, &ch, sizeof ch, static_cast<off_t>(loc.offset));
  if (n != static_cast<ssize_t>(sizeof ch)) throw lost("the pack is truncated");
  if (!header_matches(ch, h, loc)) throw lost("the chunk header does not match the index (damaged pack)");
  std::vector<char> stored;
  char* target = static_cast<char*>(dst);
  if (loc.codec != Codec::None) {
    stored.resize(loc.stored);
    target = stored.data();
  }
  n = pread(fd, target, loc.stored, static_cast<off_t>(loc.offset + sizeof ch));
  if (n != static_cast<ssize_t>(loc.stored)) throw lost("the pack is truncated");
  if (loc.codec == Codec::Zstd) {
    if (!zstd::available()) throw Error(ErrorClass::FixFirst, file + ": compressed chunks need libzstd.so.1");
    if (!zstd::decompress(stored.data(), loc.stored, dst, loc.raw)) throw lost("damaged compressed data");
  }
  if (!(hash_of(dst, loc.raw) == h)) throw lost("its contents do not match its hash (corrupted)");
}

void Reader::read_blob(const Blob& b, void* dst) {
  char* p = static_cast<char*>(dst);
  if (b.chunks.size() != (b.size + m_.chunk_size - 1) / m_.chunk_size)
    throw Error(ErrorClass::DataLost, dir_ + ": blob " + b.id + " of " + std::to_string(b.size) + " bytes lists " +
                                          std::to_string(b.chunks.size()) + " chunks");
  for (size_t i = 0; i < b.chunks.size(); i++) {
    auto it = m_.index.find(b.chunks[i]);
    if (it == m_.index.end())
      throw Error(ErrorClass::DataLost, dir_ + ": chunk " + b.chunks[i].hex() + " of blob " + b.id + " is not in the index");
    const ChunkLoc& loc = it->second;
    uint64_t off = i * m_.chunk_size;
    uint64_t want = std::min<uint64_t>(m_.chunk_size, b.size - off);
    if (loc.raw != want)
      throw Error(ErrorClass::DataLost, dir_ + ": chunk " + b.chunks[i].hex() + " of blob " + b.id + " has the wrong size");
    read_chunk(b.chunks[i], p + off);
  }
}

void Reader::verify(const std::function<void(uint64_t, uint64_t)>& progress) {
  uint64_t total = 0, done = 0;
  for (auto& b : m_.blobs) total += b.size;
  std::vector<char> buf(m_.chunk_size);
  for (auto& b : m_.blobs)
    for (size_t i = 0; i < b.chunks.size(); i++) {
      read_chunk(b.chunks[i], buf.data());
      done += m_.index.at(b.chunks[i]).raw;
      if (progress) progress(done, total);
    }
}

}  // namespace ferry::image
