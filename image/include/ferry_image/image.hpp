// The ferry image: a checkpoint on disk.
//
// Layout of an image directory:
//   manifest.json   format name and version, creation time, parent image, the
//                   device-state log ("state", opaque here), the blobs (device memory
//                   ranges and module globals, each a list of chunk hashes) and the
//                   chunk index (hash -> where the bytes are)
//   packs/NNNN.pack chunks appended one after another, each behind a small header
//                   (magic, hash, raw and stored size, codec) so a pack can be
//                   scanned and a damaged chunk named
//
// Chunks are fixed-size pieces of a blob (4 MiB by default), addressed by their
// XXH3-128 hash and optionally zstd-compressed (kept raw when that does not shrink
// them). A chunk found in the parent image's index is not written again: an image is
// incremental by construction. Yet every image stands alone. The parent's packs that
// hold its chunks are hard-linked into the new image (no bytes are copied; the inode
// stays alive however the parent is later replaced, moved or removed), and where a
// link would keep more unreferenced bytes alive than referenced ones, or the file
// system has no hard links, the chunks it needs are copied into a pack of its own.
// The parent is read through descriptors opened once, on its directory as it was
// then, so a publish over it meanwhile -- the new image may even replace its own
// parent, the scheduler's one $CKPT -- cannot mix two images. (Images written before
// this refer to their parent's packs by relative path, `image` in the index; they are
// still read, and an image written with one of them as parent stands alone.)
//
// Writing goes to a temporary directory next to the target; the files are fsynced and
// the directory renamed into place (swapped with an existing image), so a crash or a
// full disk leaves any previous image intact. Reading verifies the hash of every chunk
// it returns.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include <ferry_common/errors.hpp>
#include <nlohmann/json.hpp>

namespace ferry::image {

constexpr int kFormatVersion = 1;
constexpr const char* kFormatName = "ferry-image";
constexpr uint64_t kDefaultChunkSize = 4ull << 20;

// Errors carry the classes of common's error table (ferry_common/errors.hpp).
using ferry::Error;
using ferry::ErrorClass;
using ferry::class_name;

struct Hash {
  uint64_t lo = 0, hi = 0;
  bool operator<(const Hash& o) const { return hi != o.hi ? hi < o.hi : lo < o.lo; }
  bool operator==(const Hash& o) const { return lo == o.lo && hi == o.hi; }
  std::string hex() const;
  static bool parse(const std::string& s, Hash* out);
};
Hash hash_of(const void* data, size_t n);
// The hash of a file's contents, read in pieces (size: its length); Error(DataLost) when
// it cannot be read.
Hash hash_file(const std::string& path, uint64_t* size = nullptr);

// Makes the finished directory tmp appear as dir in one step: a rename, or, when dir
// exists, an exchange followed by removing the old one (where the file system has no
// exchange, NFS: the old one renamed aside, the new one renamed in, the old one
// removed). tmp is synced first. Throws Error only when the new image is not in place
// (dir then holds the old one, or the message says where it went); a parent directory
// that cannot be synced afterwards is not reported.
void publish_dir(const std::string& tmp, const std::string& dir);
// Puts back an image publish_dir had renamed aside (DIR.ferry-aside-<boot id>-<PID
// namespace>-<pid>) when its publisher died before the new one was in place (DIR
// missing), and removes those of dead publishers otherwise. Dead: of this machine and
// namespace with its pid gone; of another, aside for over a minute by the file system's
// clock. publish_dir calls it; so do readers that hold the directory's lock.
void recover_dir(const std::string& dir);
void fsync_path(const std::string& path);

enum class Codec : uint32_t { None = 0, Zstd = 1 };

// Compression through libzstd, loaded on first use (the shim carries no link-time
// dependency on it). available() is false when the library is missing.
namespace zstd {
bool available();
// Returns the compressed size, or 0 when the data does not shrink (store it raw).
size_t compress(const void* src, size_t n, std::vector<char>& dst, int level);
bool decompress(const void* src, size_t n, void* dst, size_t raw);
}  // namespace zstd

struct ChunkLoc {
  std::string image;  // directory holding the pack, relative to this image ("" = this one)
  std::string pack;   // file name under packs/
  uint64_t offset = 0;  // of the chunk's header in the pack
  uint32_t stored = 0, raw = 0;
  Codec codec = Codec::None;
};

struct Blob {
  std::string id;  // what it is, for the engine ("phys:12", "global:3:name", ...)
  uint64_t size = 0;
  std::vector<Hash> chunks;
  // Change-detection fingerprints computed on the GPU, one per chunk (or none): a later
  // checkpoint whose fingerprint of a chunk matches reuses the chunk without copying it.
  // They never address data; the reader ignores them.
  std::vector<Hash> fingerprints;
};

struct Manifest {
  int version = kFormatVersion;
  std::string created;     // ISO 8601 UTC
  std::string parent;      // parent image (absolute path when written), "" if none
  uint64_t chunk_size = kDefaultChunkSize;
  nlohmann::json state;    // the device-state log, as the engine wrote it
  std::vector<Blob> blobs;
  std::map<Hash, ChunkLoc> index;
  uint64_t bytes_written = 0;  // chunk bytes this image wrote itself (stored)
  uint64_t bytes_reused = 0;   // raw bytes referenced from the parent or deduplicated
  // Stored bytes (with headers) of the parent's chunks copied into this image's own packs
  // so it stands alone; not in bytes_written, which counts what was new.
  uint64_t bytes_carried = 0;
};

nlohmann::json to_json(const Manifest& m);
// Throws Error(DataLost) for a manifest that is not a ferry image or is malformed,
// Error(FixFirst) for a format version this build does not read.
Manifest from_json(const nlohmann::json& j, const std::string& where);

// Reads an image's manifest; `dir` is the image directory.
Manifest read_manifest(const std::string& dir);

// The directories (absolute, normalized) outside image `dir` whose packs its index names:
// an image of an older ferry reads chunks from its parent chain by relative path. Empty
// for an image that stands alone.
std::set<std::string> chunks_held_elsewhere(const std::string& dir, const Manifest& m);

// Whether `path` is the directory `dir` or lies under it: by name, or by identity (a
// symbolic link or a bind mount naming the same directory), so that replacing `dir`
// would take `path` with it.
bool path_within(const std::string& path, const std::string& dir);

struct WriterOptions {
  std::string parent;        // an existing image to reference unchanged chunks from
  int zstd_level = 0;        // 0: no compression
  uint64_t pack_limit = 1ull << 30;
  uint64_t fail_after = 0;   // test hook (FERRY_TEST_ENOSPC_AFTER): ENOSPC after this many bytes
  bool no_links = false;     // test hook: as on a file system without hard links
};

// Writes an image. put() may be called from several threads; chunks are appended to
// the current pack in the order they arrive. commit() publishes atomically; the
// destructor of an uncommitted writer removes what it wrote.
class Writer {
 public:
  Writer(const std::string& dir, const WriterOptions& opts);
  ~Writer();
  Writer(const Writer&) = delete;
  Writer& operator=(const Writer&) = delete;

  // True when the chunk is already known (parent or this image): the caller can skip
  // hashing-dependent work such as compression.
  bool known(const Hash& h);
  // Stores a chunk (raw bytes, or already compressed with `codec` when stored < raw).
  // A known chunk is only counted as reused: its data is not read (may be null).
  void put(const Hash& h, const void* data, uint32_t stored, uint32_t raw, Codec codec);
  // The parent's blob of that id and size cut into chunks of chunk_size, if it has one.
  const Blob* parent_blob(const std::string& id, uint64_t size, uint64_t chunk_size) const;
  // Publishes the image; returns the manifest as written (index and byte counts filled in).
  Manifest commit(Manifest m);
  const std::string& final_dir() const { return dir_; }

 private:
  // A pack of the parent's (or, for an older parent, of one it refers to), open since
  // the writer was made.
  struct ParentPack {
    int fd = -1;
    std::string path;  // for messages
  };
  struct ParentChunk {
    ChunkLoc loc;     // as the parent's index has it
    size_t pack = 0;  // in parent_packs_
  };
  void open_parent(const std::string& parent);
  void close_parent();  // its descriptors
  // Makes the parent's chunks this image uses its own (linked or copied packs); returns
  // where each now is.
  std::map<Hash, ChunkLoc> take_parent_chunks(const std::vector<Hash>& used);
  void open_pack();
  void write_all(const void* data, size_t n);
  std::string dir_, tmp_;
  WriterOptions opts_;
  std::mutex mu_;
  int fd_ = -1;
  std::string pack_name_;
  uint64_t pack_off_ = 0;
  uint64_t flushed_off_ = 0;  // the pack's bytes before this offset are being written back
  int pack_no_ = 0;
  uint64_t written_ = 0, reused_ = 0, carried_ = 0;
  bool carrying_ = false;  // write_all counts into carried_, not written_
  std::map<Hash, ChunkLoc> index_;  // chunks of this image
  std::vector<ParentPack> parent_packs_;
  std::map<Hash, ParentChunk> parent_index_;  // chunks of the parent
  std::map<std::string, Blob> parent_blobs_;
  uint64_t parent_chunk_size_ = 0;
  bool committed_ = false;
  int alive_fd_ = -1;  // tmp_/.writer, locked while this writer lives (remove_dead_writers)
};

// Reads chunks of an image (and of the images it references).
class Reader {
 public:
  explicit Reader(const std::string& dir);
  ~Reader();
  Reader(const Reader&) = delete;
  Reader& operator=(const Reader&) = delete;
  const Manifest& manifest() const { return m_; }
  const std::string& dir() const { return dir_; }
  // Copies the chunk's raw bytes into dst (raw size from the index), verifying its
  // hash. Throws Error(DataLost) naming the file and the chunk.
  void read_chunk(const Hash& h, void* dst);
  // Reads a whole blob into dst (blob.size bytes).
  void read_blob(const Blob& b, void* dst);
  // Every chunk of every blob, read and verified; progress(done, total bytes).
  void verify(const std::function<void(uint64_t, uint64_t)>& progress);

 private:
  int pack_fd(const ChunkLoc& loc);
  std::string dir_;
  Manifest m_;
  std::mutex mu_;
  std::map<std::string, int> fds_;
};

}  // namespace ferry::image
