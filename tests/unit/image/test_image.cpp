// The image format on its own: what is written reads back bit-identically, chunks are
// shared within an image and with its parent, compression is transparent, and every
// kind of damage or interruption gives a clear error and leaves earlier images intact.
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <thread>

#include "ferry_image/image.hpp"
#include "temp_dir.hpp"

namespace fs = std::filesystem;
using namespace ferry::image;
using Catch::Matchers::ContainsSubstring;
using Catch::Matchers::EndsWith;

// The image library is linked into this program, so its renameat2 is this one: a test
// can take the exchange away, as NFS does (EINVAL).
namespace {
bool g_no_exchange = false;
int g_exchanges_refused = 0;
}
extern "C" int renameat2(int olddirfd, const char* oldpath, int newdirfd, const char* newpath,
                         unsigned int flags) noexcept {
  if (g_no_exchange && (flags & RENAME_EXCHANGE)) {
    g_exchanges_refused++;
    errno = EINVAL;
    return -1;
  }
  return static_cast<int>(syscall(SYS_renameat2, olddirfd, oldpath, newdirfd, newpath, flags));
}

namespace {

struct TempDir : ferry_test::TempDir {
  TempDir() : ferry_test::TempDir("ferry-image") {}
};


std::vector<char> random_bytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<char> v(n);
  for (size_t i = 0; i < n; i += 8) {
    uint64_t x = rng();
    memcpy(v.data() + i, &x, std::min<size_t>(8, n - i));
  }
  return v;
}

struct Input {
  std::string id;
  std::vector<char> bytes;
};

// Cuts each input into chunks as the engine does, stores them and commits.
Manifest write_image(const std::string& dir, const std::vector<Input>& in, WriterOptions o = {},
                     uint64_t chunk = 64 * 1024) {
  Writer w(dir, o);
  Manifest m;
  m.chunk_size = chunk;
  m.state = {{"what", "test"}};
  for (const Input& x : in) {
    Blob b;
    b.id = x.id;
    b.size = x.bytes.size();
    for (size_t off = 0; off < x.bytes.size(); off += chunk) {
      size_t n = std::min<size_t>(chunk, x.bytes.size() - off);
      Hash h = hash_of(x.bytes.data() + off, n);
      b.chunks.push_back(h);
      if (w.known(h)) {
        w.put(h, nullptr, 0, static_cast<uint32_t>(n), Codec::None);  // counted as reused
        continue;
      }
      std::vector<char> z;
      size_t zn = o.zstd_level ? zstd::compress(x.bytes.data() + off, n, z, o.zstd_level) : 0;
      if (zn)
        w.put(h, z.data(), static_cast<uint32_t>(zn), static_cast<uint32_t>(n), Codec::Zstd);
      else
        w.put(h, x.bytes.data() + off, static_cast<uint32_t>(n), static_cast<uint32_t>(n), Codec::None);
    }
    m.blobs.push_back(std::move(b));
  }
  w.commit(m);
  return read_manifest(dir);
}

std::vector<char> read_back(const std::string& dir, const std::string& id) {
  Reader r(dir);
  for (const Blob& b : r.manifest().blobs)
    if (b.id == id) {
      std::vector<char> out(b.size);
      r.read_blob(b, out.data());
      return out;
    }
  FAIL("no blob " << id << " in " << dir);
  return {};
}

std::vector<std::string> leftovers(const std::string& dir) {
  std::vector<std::string> v;
  for (auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().find(".tmp-") != std::string::npos) v.push_back(e.path().string());
  return v;
}

template <class F>
Error error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e;
  }
  FAIL("no error was raised");
  return Error(ErrorClass::Bug, "");
}

void flip_byte(const std::string& file, uint64_t at) {
  std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(at));
  char c;
  f.read(&c, 1);
  c = static_cast<char>(c ^ 0x5a);
  f.seekp(static_cast<std::streamoff>(at));
  f.write(&c, 1);
}

}  // namespace

TEST_CASE("hashes print and parse back", "[image]") {
  Hash h = hash_of("ferry", 5);
  Hash back;
  REQUIRE(Hash::parse(h.hex(), &back));
  CHECK(back == h);
  CHECK_FALSE(Hash::parse("xyz", &back));
  CHECK_FALSE(Hash::parse(std::string(32, 'g'), &back));
  CHECK_FALSE(hash_of("ferry", 5) == hash_of("ferrz", 5));
}

TEST_CASE("blobs read back bit-identically, whatever their size", "[image]") {
  TempDir t;
  std::vector<Input> in = {{"phys:1", random_bytes(3 * 65536, 1)},
                           {"phys:2", random_bytes(65536 * 2 + 17, 2)},  // a short last chunk
                           {"global:3:x", random_bytes(5, 3)},
                           {"empty", {}}};
  Manifest m = write_image(t / "img", in);
  CHECK(m.version == kFormatVersion);
  CHECK(m.parent.empty());
  CHECK(m.state["what"] == "test");
  CHECK(m.blobs.size() == 4);
  CHECK(m.bytes_reused == 0);
  for (const Input& x : in) CHECK(read_back(t / "img", x.id) == x.bytes);
  Reader r(t / "img");
  uint64_t last = 0, total = 0;
  r.verify([&](uint64_t done, uint64_t all) {
    CHECK(done > last);
    last = done, total = all;
  });
  CHECK(last == total);
  CHECK(total == 3 * 65536 + 65536 * 2 + 17 + 5);
  CHECK(leftovers(t.path).empty());
}

TEST_CASE("a chunk is stored once however often it occurs", "[image]") {
  TempDir t;
  auto a = random_bytes(65536, 7);
  std::vector<char> twice = a;
  twice.insert(twice.end(), a.begin(), a.end());
  Manifest m = write_image(t / "img", {{"x", twice}, {"y", a}});
  CHECK(m.index.size() == 1);
  CHECK(m.bytes_reused == 2 * 65536);
  CHECK(m.bytes_written < 65536 + 1024);  // one chunk plus headers
  CHECK(read_back(t / "img", "x") == twice);
  CHECK(read_back(t / "img", "y") == a);
}

// How many names each pack of an image has, smallest first (which of the parent's packs
// gets which name follows the order of its chunk hashes).
static std::vector<nlink_t> pack_links(const std::string& dir) {
  std::vector<nlink_t> v;
  for (auto& e : fs::directory_iterator(dir + "/packs")) {
    struct stat st{};
    REQUIRE(stat(e.path().c_str(), &st) == 0);
    v.push_back(st.st_nlink);
  }
  std::sort(v.begin(), v.end());
  return v;
}

TEST_CASE("an image with a parent writes only what changed, and stands alone", "[image]") {
  TempDir t;
  auto base = random_bytes(8 * 65536, 11);
  write_image(t / "p", {{"mem", base}});
  auto changed = base;
  changed[3 * 65536 + 100] ^= 1;  // one chunk differs
  WriterOptions o;
  o.parent = t / "p";
  Manifest c = write_image(t / "c", {{"mem", changed}}, o);
  CHECK(c.parent == t / "p");
  CHECK(c.bytes_reused == 7 * 65536);
  CHECK(c.bytes_written < 65536 + 1024);
  CHECK(c.bytes_carried == 0);  // 7 of the parent's 8 chunks are used: its pack is linked
  for (auto& [h, loc] : c.index) CHECK(loc.image.empty());
  // The child's own pack, and the parent's, linked.
  CHECK(pack_links(t / "c") == std::vector<nlink_t>{1, 2});
  CHECK(read_back(t / "c", "mem") == changed);
  CHECK(read_back(t / "p", "mem") == base);

  SECTION("a grandchild takes the chunks from its parent alone") {
    WriterOptions o2;
    o2.parent = t / "c";
    Manifest g = write_image(t / "g", {{"mem", changed}}, o2);
    CHECK(g.bytes_written == 0);
    CHECK(g.bytes_carried == 0);
    CHECK(pack_links(t / "g") == std::vector<nlink_t>{2, 3});  // c's own pack, and p's
    fs::remove_all(t / "p");
    fs::remove_all(t / "c");
    CHECK(read_back(t / "g", "mem") == changed);
    Reader(t / "g").verify({});
  }
  SECTION("a parent whose path is not UTF-8 (a Latin-1 name) is used; the manifest names it with U+FFFD") {
    fs::rename(t / "p", t / "caf\xe9");
    WriterOptions latin;
    latin.parent = t / "caf\xe9";
    Manifest l = write_image(t / "l", {{"mem", changed}}, latin);
    CHECK(l.bytes_reused == 8 * 65536 - 65536);
    CHECK(read_manifest(t / "l").parent == t / "caf\xef\xbf\xbd");
    fs::remove_all(t / "caf\xe9");
    CHECK(read_back(t / "l", "mem") == changed);
  }
  SECTION("the child moved alone, or its parent removed, still reads") {
    fs::create_directory(t / "moved");
    fs::rename(t / "c", t / "moved/c");
    fs::remove_all(t / "p");
    CHECK(read_back(t / "moved/c", "mem") == changed);
  }
  SECTION("an image can replace its own parent (one directory for every checkpoint)") {
    auto again = changed;
    again[6 * 65536] ^= 1;
    Manifest p2 = write_image(t / "p", {{"mem", again}}, o);
    CHECK(p2.parent == t / "p");
    CHECK(p2.bytes_written == 16 + 2 * (65536 + 32));  // the two chunks that differ from base
    CHECK(p2.bytes_carried == 0);
    CHECK(read_back(t / "p", "mem") == again);
    CHECK(read_back(t / "c", "mem") == changed);  // its links keep the old image's pack
    CHECK(leftovers(t.path).empty());
  }
  SECTION("a parent mostly changed: the few chunks used are copied, not its whole pack linked") {
    auto most = base;
    for (int i = 0; i < 6; i++) most[static_cast<size_t>(i) * 65536] ^= 1;  // 2 of 8 chunks stay
    Manifest m = write_image(t / "m", {{"mem", most}}, o);
    CHECK(m.bytes_reused == 2 * 65536);
    CHECK(m.bytes_carried == 16 + 2 * (65536 + 32));  // a pack header, two chunks with theirs
    CHECK(m.bytes_written == 16 + 6 * (65536 + 32));
    CHECK(pack_links(t / "m") == std::vector<nlink_t>{1, 1});
    fs::remove_all(t / "p");
    CHECK(read_back(t / "m", "mem") == most);
  }
  SECTION("chunks copied from several parent packs go into one pack") {
    WriterOptions small;
    small.pack_limit = 3 * (65536 + 32);  // the parent's 8 chunks in packs of 3, 3 and 2
    write_image(t / "p3", {{"mem", base}}, small);
    REQUIRE(pack_links(t / "p3").size() == 3);
    auto most = base;
    for (int i : {1, 2, 4, 5, 7}) most[static_cast<size_t>(i) * 65536] ^= 1;  // 0, 3 and 6 stay: one of each pack
    WriterOptions o3;
    o3.parent = t / "p3";
    Manifest m = write_image(t / "m", {{"mem", most}}, o3);
    CHECK(m.bytes_carried == 16 + 3 * (65536 + 32));
    CHECK(pack_links(t / "m") == std::vector<nlink_t>{1, 1});  // its own, and the one with the copies
    fs::remove_all(t / "p3");
    CHECK(read_back(t / "m", "mem") == most);
  }
  SECTION("out of descriptors for the parent's packs: a limit to raise, not an image lost") {
#ifdef __SANITIZE_ADDRESS__
    // The sanitizers' runtime needs descriptors of its own to check the exception thrown
    // then (a pipe, to probe memory): with none left it reports the check itself. The
    // plain build runs this section.
    WARN("not under the sanitizers: they need free descriptors when none are left");
    return;
#endif
    WriterOptions small;
    small.pack_limit = 3 * (65536 + 32);
    write_image(t / "p3", {{"mem", base}}, small);
    REQUIRE(pack_links(t / "p3").size() == 3);
    // A limit that leaves two descriptors free: the parent's directory and its first pack.
    std::set<int> open_fds;
    for (auto& e : fs::directory_iterator("/proc/self/fd")) open_fds.insert(std::stoi(e.path().filename().string()));
    rlim_t limit = 0;
    for (int free = 0; free < 2; limit++) free += !open_fds.count(static_cast<int>(limit));
    struct rlimit was {};
    REQUIRE(getrlimit(RLIMIT_NOFILE, &was) == 0);
    struct rlimit low = was;
    low.rlim_cur = limit;
    REQUIRE(setrlimit(RLIMIT_NOFILE, &low) == 0);
    WriterOptions o3;
    o3.parent = t / "p3";
    Error e = error_of([&] { Writer w(t / "m", o3); });
    setrlimit(RLIMIT_NOFILE, &was);
    CHECK(e.cls == ErrorClass::FixFirst);
    CHECK_THAT(e.message, ContainsSubstring(": Too many open files (each pack of the parent image " + (t / "p3") +
                                            " is held open while the image is written, "));
    CHECK_THAT(e.message, EndsWith(" so far; raise the program's open-file limit, ulimit -n, or write a full image)"));
    CHECK(leftovers(t.path).empty());
  }
  SECTION("without hard links the chunks used are copied") {
    WriterOptions nl = o;
    nl.no_links = true;
    Manifest m = write_image(t / "m", {{"mem", changed}}, nl);
    CHECK(m.bytes_carried == 16 + 7 * (65536 + 32));
    CHECK(m.bytes_written < 65536 + 1024);
    fs::remove_all(t / "p");
    CHECK(read_back(t / "m", "mem") == changed);
  }
  SECTION("a parent published over while the child is written: the child keeps the one it began with") {
    const bool c_kept = GENERATE(true, false);
    INFO((c_kept ? "c keeps a name of p's pack" : "c removed: p's pack has no name once p is replaced"));
    if (!c_kept) fs::remove_all(t / "c");
    Writer w(t / "w", o);
    auto other = random_bytes(8 * 65536, 99);
    write_image(t / "p", {{"mem", other}});
    Manifest m;
    m.chunk_size = 65536;
    Blob b{"mem", changed.size(), {}, {}};
    for (size_t off = 0; off < changed.size(); off += 65536) {
      Hash h = hash_of(changed.data() + off, 65536);
      b.chunks.push_back(h);
      w.put(h, w.known(h) ? nullptr : changed.data() + off, 65536, 65536, Codec::None);
    }
    m.blobs.push_back(b);
    Manifest got = w.commit(m);
    // A file without a name cannot be linked again: then it is copied from the descriptor.
    CHECK(got.bytes_carried == (c_kept ? 0 : 16 + 7 * (65536 + 32)));
    fs::remove_all(t / "p");
    CHECK(read_back(t / "w", "mem") == changed);
  }
  SECTION("a damaged parent chunk is named, nothing is published") {
    flip_byte(t / "p/packs/0000.pack", 16 + 5 * (65536 + 32) + 8);  // the sixth chunk's header
    WriterOptions nl = o;
    nl.no_links = GENERATE(false, true);  // checked before a link as before a copy
    Error e = error_of([&] { write_image(t / "m", {{"mem", changed}}, nl); });
    CHECK(e.cls == ErrorClass::DataLost);
    CHECK_THAT(e.message, ContainsSubstring("p/packs/0000.pack: chunk "));
    CHECK_THAT(e.message, ContainsSubstring("damaged or truncated in the parent image"));
    CHECK(!fs::exists(t / "m"));
    CHECK(leftovers(t.path).empty());
  }
  SECTION("a full disk while the parent's chunks are copied in: nothing is published") {
    WriterOptions nl = o;
    nl.no_links = true;
    nl.fail_after = 16 + 65536 + 32 + 16 + 3 * (65536 + 32);  // the new chunk, then three of the seven
    Error e = error_of([&] { write_image(t / "m", {{"mem", changed}}, nl); });
    CHECK(e.cls == ErrorClass::FixFirst);
    CHECK_THAT(e.message, ContainsSubstring("no space left on the device"));
    CHECK(!fs::exists(t / "m"));
    CHECK(leftovers(t.path).empty());
    CHECK(read_back(t / "p", "mem") == base);
  }
  SECTION("a parent with a truncated pack is refused at the start") {
    fs::resize_file(t / "p/packs/0000.pack", 16 + 7 * (65536 + 32));  // the last chunk cut off
    Error e = error_of([&] { Writer w(t / "m", o); });
    CHECK(e.cls == ErrorClass::DataLost);
    CHECK_THAT(e.message, ContainsSubstring("p/packs/0000.pack: truncated (458992 bytes, its chunks reach 524560"));
    CHECK(leftovers(t.path).empty());
  }
  SECTION("a parent without one of its packs is refused at the start") {
    fs::remove(t / "p/packs/0000.pack");
    Error e = error_of([&] { Writer w(t / "m", o); });
    CHECK(e.cls == ErrorClass::DataLost);
    CHECK_THAT(e.message, ContainsSubstring("p/packs/0000.pack: No such file or directory (a pack of the parent image"));
    CHECK(leftovers(t.path).empty());
  }
}

TEST_CASE("an image written by an older ferry, referring to its parent's packs by path, is read, and a child of it "
          "stands alone",
          "[image]") {
  TempDir t;
  auto base = random_bytes(4 * 65536, 21);
  write_image(t / "p", {{"mem", base}});
  // The older form: every chunk in the parent's packs, named by a relative path.
  fs::create_directories(t / "old/packs");
  auto j = nlohmann::json::parse(std::ifstream(t / "p/manifest.json"));
  j["parent"] = t / "p";
  for (auto& [k, loc] : j["chunks"].items()) loc["image"] = "../p";
  std::ofstream(t / "old/manifest.json") << j.dump();
  CHECK(read_back(t / "old", "mem") == base);

  WriterOptions o;
  o.parent = t / "old";
  Manifest c = write_image(t / "c", {{"mem", base}}, o);
  CHECK(c.bytes_written == 0);
  CHECK(pack_links(t / "c") == std::vector<nlink_t>{2});
  SECTION("the image it refers to cannot be replaced by its child: that would break it") {
    Error e = error_of([&] { write_image(t / "p", {{"mem", base}}, o); });
    CHECK(e.cls == ErrorClass::FixFirst);
    CHECK_THAT(e.message, ContainsSubstring("cannot be replaced by an image whose parent"));
    CHECK(read_back(t / "old", "mem") == base);
    CHECK(leftovers(t.path).empty());
    // Nor by another name for it (a symbolic link; a bind mount alike), nor by replacing
    // the directory it lies in.
    fs::create_directory_symlink(t / "p", t / "alias");
    for (std::string other : {t / "alias", t.path}) {
      INFO(other);
      Error a = error_of([&] { Writer w(other, o); });
      CHECK(a.cls == ErrorClass::FixFirst);
      CHECK_THAT(a.message, ContainsSubstring("cannot be replaced by an image whose parent"));
    }
    CHECK(path_within(t / "p/packs", t / "alias"));
    CHECK_FALSE(path_within(t / "p", t / "c"));
    CHECK_FALSE(path_within(t / "p", t / "nothing"));
  }
  SECTION("once its own parent is gone, it is named") {
    fs::remove_all(t / "p");
    CHECK(read_back(t / "c", "mem") == base);
    Error e = error_of([&] { read_back(t / "old", "mem"); });
    CHECK(e.cls == ErrorClass::DataLost);
    CHECK_THAT(e.message, ContainsSubstring("a chunk of the parent image ../p"));
  }
}

TEST_CASE("fingerprints travel with the blobs and are checked", "[image]") {
  TempDir t;
  {
    Writer w(t / "p", {});
    Manifest m;
    m.chunk_size = 64;
    auto bytes = random_bytes(100, 3);
    Blob b{"mem", 100, {hash_of(bytes.data(), 64), hash_of(bytes.data() + 64, 36)}, {{1, 2}, {3, 4}}};
    w.put(b.chunks[0], bytes.data(), 64, 64, Codec::None);
    w.put(b.chunks[1], bytes.data() + 64, 36, 36, Codec::None);
    m.blobs.push_back(b);
    m.blobs.push_back({"plain", 0, {}, {}});
    w.commit(m);
  }
  Manifest m = read_manifest(t / "p");
  REQUIRE(m.blobs.size() == 2);
  CHECK(m.blobs[0].fingerprints == std::vector<Hash>{{1, 2}, {3, 4}});
  CHECK(m.blobs[1].fingerprints.empty());

  WriterOptions o;
  o.parent = t / "p";
  Writer w(t / "c", o);
  const Blob* b = w.parent_blob("mem", 100, 64);
  REQUIRE(b);
  CHECK(b->fingerprints.size() == 2);
  CHECK(w.parent_blob("mem", 101, 64) == nullptr);  // another size: other chunks
  CHECK(w.parent_blob("mem", 100, 32) == nullptr);  // another chunk size
  CHECK(w.parent_blob("other", 100, 64) == nullptr);

  auto j = nlohmann::json::parse(std::ifstream(t / "p/manifest.json"));
  j["blobs"][0]["fingerprints"].erase(1);
  std::ofstream(t / "p/manifest.json") << j.dump();
  Error e = error_of([&] { read_manifest(t / "p"); });
  CHECK(e.cls == ErrorClass::DataLost);
  CHECK_THAT(e.message, ContainsSubstring("blob mem has 1 fingerprints for 2 chunks"));
}

TEST_CASE("compression is transparent and skipped where it does not pay", "[image]") {
  REQUIRE(zstd::available());
  TempDir t;
  std::vector<char> zeros(4 * 65536, 0);
  auto noise = random_bytes(4 * 65536, 5);
  WriterOptions o;
  o.zstd_level = 3;
  Manifest m = write_image(t / "img", {{"zeros", zeros}, {"noise", noise}}, o);
  int zstd_chunks = 0, raw_chunks = 0;
  for (auto& [h, loc] : m.index) (loc.codec == Codec::Zstd ? zstd_chunks : raw_chunks)++;
  CHECK(zstd_chunks == 1);  // all zero chunks are one chunk
  CHECK(raw_chunks == 4);   // random data does not shrink
  CHECK(read_back(t / "img", "zeros") == zeros);
  CHECK(read_back(t / "img", "noise") == noise);
  CHECK(m.bytes_written < 4 * 65536 + 2048);
}

TEST_CASE("damage is detected and named with the file and the chunk", "[image]") {
  TempDir t;
  auto a = random_bytes(4 * 65536, 9);
  Manifest m = write_image(t / "img", {{"mem", a}});
  Hash second = m.blobs[0].chunks[1];
  const ChunkLoc& loc = m.index.at(second);
  std::string pack = t / "img/packs/" + loc.pack;
  std::string pack_norm = fs::path(pack).lexically_normal().string();

  SECTION("a flipped data byte") {
    flip_byte(pack, loc.offset + 32 + 1000);
    Error e = error_of([&] { read_back(t / "img", "mem"); });
    CHECK(e.cls == ErrorClass::DataLost);
    CHECK(e.message == pack_norm + ": chunk " + second.hex() + " at offset " + std::to_string(loc.offset) +
                           ": its contents do not match its hash (corrupted)");
  }
  SECTION("a damaged chunk header") {
    flip_byte(pack, loc.offset + 9);
    Error e = error_of([&] { Reader(t / "img").verify(nullptr); });
    CHECK_THAT(e.message, ContainsSubstring("does not match the index (damaged pack)"));
  }
  SECTION("a truncated pack") {
    fs::resize_file(pack, loc.offset + 100);
    Error e = error_of([&] { read_back(t / "img", "mem"); });
    CHECK(e.message == pack_norm + ": chunk " + second.hex() + " at offset " + std::to_string(loc.offset) +
                           ": the pack is truncated");
  }
  SECTION("a missing manifest") {
    fs::remove(t / "img/manifest.json");
    Error e = error_of([&] { Reader r(t / "img"); });
    CHECK(e.cls == ErrorClass::DataLost);
    CHECK(e.message == t / "img/manifest.json: missing or unreadable; the image is incomplete");
  }
  SECTION("no image at all") {
    Error e = error_of([&] { Reader r(t / "none"); });
    CHECK(e.cls == ErrorClass::FixFirst);
    CHECK(e.message == t / "none: no such image directory");
  }
  SECTION("manifests that lie") {
    auto j = to_json(m);
    auto reject = [&](nlohmann::json bad, const std::string& why) {
      Error e = error_of([&] { from_json(bad, "M"); });
      CHECK(e.cls == ErrorClass::DataLost);
      CHECK(e.message == "M: not a valid ferry image manifest (" + why + ")");
    };
    auto k = j;
    k["chunk_size"] = 0;
    reject(k, "chunk size 0");
    k = j;
    k["chunks"][second.hex()]["raw"] = 2 * 65536;
    reject(k, "chunk " + second.hex() + " has impossible sizes");
    k = j;
    k["blobs"][0]["size"] = 9 * 65536;
    reject(k, "blob mem is incomplete");
    k = j;
    k["chunks"].erase(second.hex());
    reject(k, "chunk " + second.hex() + " of blob mem is not in the index");
    k = j;
    k["chunks"][second.hex()]["pack"] = "../../etc/passwd";
    reject(k, "pack name ../../etc/passwd");
    k = j;
    k["format"] = "other";
    reject(k, "no \"format\": \"ferry-image\"");
    k = j;
    k["version"] = 99;
    Error e = error_of([&] { from_json(k, "M"); });
    CHECK(e.cls == ErrorClass::FixFirst);
    CHECK(e.message == "M: image format version 99 is not supported by this ferry (it reads version 1)");
  }
}

TEST_CASE("an interrupted write leaves the previous image as it was", "[image]") {
  TempDir t;
  auto old_bytes = random_bytes(4 * 65536, 21);
  auto new_bytes = random_bytes(4 * 65536, 22);
  write_image(t / "img", {{"mem", old_bytes}});

  SECTION("abandoned before commit") {
    {
      Writer w(t / "img", {});
      std::vector<char> c(new_bytes.begin(), new_bytes.begin() + 65536);
      w.put(hash_of(c.data(), c.size()), c.data(), 65536, 65536, Codec::None);
      CHECK(leftovers(t.path).size() == 1);
    }
    CHECK(leftovers(t.path).empty());
    CHECK(read_back(t / "img", "mem") == old_bytes);
  }
  SECTION("a writer killed before it published (a preemption's grace period ran out): the next writer of the "
          "directory removes what it left, not a live writer's") {
    // Each child writes a chunk and stops there, as if killed: its destructor never runs.
    int sv[2] = {-1, -1};
    auto writer_in_child = [&](int hold_fd) {
      pid_t p = fork();
      if (p == 0) {
        if (hold_fd >= 0) close(sv[0]);  // the test's end: its close is this child's cue too
        Writer* w = new Writer(t / "img", {});
        std::vector<char> c(new_bytes.begin(), new_bytes.begin() + 65536);
        w->put(hash_of(c.data(), c.size()), c.data(), 65536, 65536, Codec::None);
        char b;
        if (hold_fd >= 0) (void)!write(hold_fd, "w", 1), (void)!read(hold_fd, &b, 1);
        _exit(0);
      }
      return p;
    };
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
    pid_t live = writer_in_child(sv[1]);
    char b;
    REQUIRE(read(sv[0], &b, 1) == 1);  // its work is there
    pid_t killed = writer_in_child(-1);  // it leaves the live one's alone, too
    REQUIRE(waitpid(killed, nullptr, 0) == killed);
    auto left = leftovers(t.path);
    REQUIRE(left.size() == 2);
    // Each holds its lock file, locked while its writer lives (the killed one's is free).
    for (auto& l : left) CHECK(fs::is_regular_file(l + "/.writer"));
    // Another PID namespace's of this machine (a job's, gone with it), its lock free too:
    // removed. Another host's (NFS) with its lock free, and an older ferry's without one:
    // not judged.
    std::string boot;
    std::ifstream("/proc/sys/kernel/random/boot_id") >> boot;
    boot.erase(std::remove(boot.begin(), boot.end(), '-'), boot.end());
    const std::string other_ns = "img.tmp-" + boot.substr(0, 16) + "-1-999999-0",
                      other_host = "img.tmp-0123456789abcdef-4026531836-999999-0", older = "img.tmp-999999-0";
    for (auto& n : {other_ns, other_host, older}) fs::create_directory(t / n);
    for (auto& n : {other_ns, other_host}) std::ofstream(t / (n + "/.writer")) << "";
    write_image(t / "img", {{"mem", new_bytes}});
    CHECK(!fs::exists(t / "img/.writer"));  // not published with the image
    auto after = leftovers(t.path);
    std::sort(after.begin(), after.end());
    std::vector<std::string> want = {t / other_host, t / older};
    for (auto& l : left)
      if (l.find("-" + std::to_string(live) + "-") != std::string::npos) want.push_back(l);
    std::sort(want.begin(), want.end());
    CHECK(after == want);
    CHECK(read_back(t / "img", "mem") == new_bytes);
    REQUIRE(write(sv[0], "x", 1) == 1);
    waitpid(live, nullptr, 0);
    close(sv[0]);
    close(sv[1]);
  }
  SECTION("the disk fills up") {
    WriterOptions o;
    o.fail_after = 2 * 65536;
    Error e = error_of([&] { write_image(t / "img", {{"mem", new_bytes}}, o); });
    CHECK(e.cls == ErrorClass::FixFirst);
    CHECK_THAT(e.message, ContainsSubstring("no space left on the device"));
    CHECK(leftovers(t.path).empty());
    CHECK(read_back(t / "img", "mem") == old_bytes);
  }
  SECTION("a committed replacement swaps in whole") {
    write_image(t / "img", {{"mem", new_bytes}});
    CHECK(read_back(t / "img", "mem") == new_bytes);
    CHECK(leftovers(t.path).empty());
    CHECK(fs::is_regular_file(t / "img/manifest.json"));
  }
  SECTION("a committed replacement on a file system without RENAME_EXCHANGE (NFS) replaces it too") {
    g_no_exchange = true;
    write_image(t / "img", {{"mem", new_bytes}});
    g_no_exchange = false;
    CHECK(g_exchanges_refused == 1);
    CHECK(read_back(t / "img", "mem") == new_bytes);
    CHECK(leftovers(t.path).empty());
    for (auto& e : fs::directory_iterator(t.path)) CHECK(e.path().filename().string().find("aside") == std::string::npos);
  }
  SECTION("a publisher without RENAME_EXCHANGE that died between its two renames: the old image comes back") {
    // The moment it died: the old image aside under its (now dead) pid, none in place.
    pid_t dead = fork();
    if (dead == 0) _exit(0);
    REQUIRE(dead > 0);
    waitpid(dead, nullptr, 0);
    std::string boot;
    std::ifstream("/proc/sys/kernel/random/boot_id") >> boot;
    boot.erase(std::remove(boot.begin(), boot.end(), '-'), boot.end());
    struct stat ns {};
    stat("/proc/self/ns/pid", &ns);
    const std::string scope = boot.substr(0, 16) + "-" + std::to_string(ns.st_ino) + "-";
    const std::string aside = t / ("img.ferry-aside-" + scope + std::to_string(dead));
    fs::rename(t / "img", aside);
    recover_dir(t / "img");
    CHECK(read_back(t / "img", "mem") == old_bytes);
    CHECK(!fs::exists(aside));
    // A live publisher's is its own business; so is another host's (NFS), for a minute;
    // and a user's directory that only looks alike is never touched.
    for (std::string name : {"img.ferry-aside-" + scope + std::to_string(getpid()),
                             std::string("img.ferry-aside-0123456789abcdef-4026531836-1"), std::string("img.old-7")}) {
      fs::create_directory(t / name);
      recover_dir(t / "img");
      CHECK(fs::exists(t / name));
    }
  }

  SECTION("the directory to write in does not exist") {
    Error e = error_of([&] { Writer w(t / "no/such/img", {}); });
    CHECK(e.cls == ErrorClass::FixFirst);
    CHECK(e.message == t / "no/such: no such directory to write the image in");
  }
}

TEST_CASE("chunks may be stored from several threads at once", "[image]") {
  TempDir t;
  const size_t chunk = 65536, n = 64;
  auto bytes = random_bytes(chunk * n, 31);
  WriterOptions o;
  o.pack_limit = 8 * chunk;  // several packs
  {
    Writer w(t / "img", o);
    Manifest m;
    m.chunk_size = chunk;
    Blob b;
    b.id = "mem";
    b.size = bytes.size();
    for (size_t i = 0; i < n; i++) b.chunks.push_back(hash_of(bytes.data() + i * chunk, chunk));
    std::vector<std::thread> th;
    for (int k = 0; k < 4; k++)
      th.emplace_back([&, k] {
        for (size_t i = static_cast<size_t>(k); i < n; i += 4)
          w.put(b.chunks[i], bytes.data() + i * chunk, chunk, chunk, Codec::None);
      });
    for (auto& x : th) x.join();
    m.blobs.push_back(b);
    w.commit(m);
  }
  CHECK(read_back(t / "img", "mem") == bytes);
  size_t packs = 0;
  for ([[maybe_unused]] auto& e : fs::directory_iterator(t / "img/packs")) packs++;
  CHECK(packs >= 7);
}
