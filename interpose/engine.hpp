// The engine: checkpoint, suspend, resume, migrate and restore of the GPU state of the
// process the shim lives in.
//
// Every operation runs with the world stopped (gate closed, every context drained):
//   snapshot  the device-state log is serialized (serialize_state) and every byte of
//             device memory -- each physical allocation once, plus every module
//             global -- is copied device-to-host through pinned staging buffers on
//             several streams; worker threads hash, compress and write the chunks
//             (checkpoint/snapshot.cpp) into an image (ferry_image) or keep them in
//             RAM (suspend, migrate, --leave-running);
//   release   every real object is destroyed and every byte of GPU memory returned
//             (restore/rebuild.cpp); the virtual handles and the log stay;
//   rebuild   contexts, streams, events, pools, libraries, modules, kernels and
//             functions are re-created on the target devices, reservations re-made
//             at their addresses (verified), physical memory re-created, mapped,
//             granted and filled, globals written back; the virtual handles are
//             pointed at the new objects; every application thread re-syncs its real
//             context stack on its next call (gate epoch).
// States: running -> stopped (checkpoint, world still stopped) -> running (resume);
// running -> suspended (GPU released; snapshot in RAM or an image) -> running
// (resume, possibly on other devices). One operation at a time.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <cuda.h>

#include <ferry_image/image.hpp>
#include <nlohmann/json.hpp>

namespace ferry::engine {

using image::Error;
using image::ErrorClass;

struct Progress {
  std::function<void(const char* phase, uint64_t done, uint64_t total)> fn;
  void operator()(const char* phase, uint64_t done, uint64_t total) const {
    if (fn) fn(phase, done, total);
  }
};

struct Options {
  std::string dir;          // image directory (checkpoint, restore, suspend to disk)
  std::string parent;       // incremental: reference chunks of this image
  bool leave_running = false;
  bool stay_stopped = false;
  bool discard = false;     // suspend: drop the GPU state instead of keeping it
  int zstd_level = 0;
  std::vector<int> device_map;  // program device i -> physical device device_map[i]
  int device = -1;              // shorthand: the program's only device goes here
  uint64_t staging_bytes = 256ull << 20;
  bool fingerprints = true;  // GPU fingerprints spare reading chunks unchanged since the parent
  Progress progress;
};

struct Stats {
  uint64_t device_bytes = 0;   // bytes of device memory in the snapshot
  uint64_t written = 0;        // bytes written to disk (after dedup and compression)
  uint64_t reused = 0;         // bytes referenced from the parent image
  uint64_t copied = 0;         // device bytes copied to the host
  double seconds = 0;          // the whole operation
  double stopped_seconds = 0;  // how long the program's CUDA calls were held
};

// Host memory for a snapshot kept in RAM: its own mapping, backed by huge pages where
// the kernel allows (fresh memory costs a page fault per page, and these are large).
struct HostBuffer {
  char* p = nullptr;
  size_t n = 0;
  HostBuffer() = default;
  explicit HostBuffer(size_t bytes);  // throws Error(RetryLater) when memory is short
  HostBuffer(HostBuffer&& o) noexcept : p(o.p), n(o.n) { o.p = nullptr, o.n = 0; }
  HostBuffer& operator=(HostBuffer&& o) noexcept;
  ~HostBuffer();
  char* get() const { return p; }
};

// One blob of a snapshot kept in RAM.
struct RamBlob {
  std::string id;
  uint64_t size = 0;
  HostBuffer bytes;
};
struct RamSnapshot {
  nlohmann::json state;
  std::vector<RamBlob> blobs;
  uint64_t bytes = 0;
};

// ---- checkpoint/snapshot.cpp ------------------------------------------------------
// Throws FixFirst when the process has state ferry cannot capture.
void check_capturable();

// A blob of device memory as the engine reads or fills it: where it is readable now.
struct BlobRef {
  std::string id;
  uint64_t size = 0;
  CUdeviceptr at = 0;                     // 0: a physical allocation not mapped anywhere
  CUmemGenericAllocationHandle phys = 0;  // its real handle (for a temporary mapping)
  int pdev = 0;
  CUcontext ctx = nullptr;  // the real context to copy in (0: the device's primary)
  uintptr_t program_addr = 0;  // globals: the address the program was given
};

// The device-state log as JSON (world stopped). With refs, also where every blob is now
// (this looks globals up in the driver, loading a library's module where it was not).
nlohmann::json serialize_state(std::vector<BlobRef>* refs = nullptr);
// The parts of a state that must match for an image to be restored into this process.
nlohmann::json structure_of(const nlohmann::json& state);

// Device memory into RAM / into an image (chunks hashed, compressed, written by workers).
void capture_to_ram(const std::vector<BlobRef>& refs, RamSnapshot& out, const Options& o);
// Returns the bytes it copied from the device (chunks whose GPU fingerprint matches the
// parent's are taken from the parent unread).
uint64_t capture_to_image(const std::vector<BlobRef>& refs, image::Writer& w, image::Manifest& m, const Options& o);
// A RAM snapshot into an image.
void persist(const RamSnapshot& s, image::Writer& w, image::Manifest& m, const Options& o);

// ---- restore/rebuild.cpp ------------------------------------------------------------
// Where the bytes of each blob come from during a rebuild.
struct BlobSource {
  virtual ~BlobSource() = default;
  virtual bool has(const std::string& id, uint64_t size) = 0;
  // RAM snapshots: the blob's bytes, copied straight to the device.
  virtual const char* direct(const std::string& id) = 0;
  // Images: chunk `index` (chunk_size() bytes, less for the last) of blob `id` into dst,
  // verified.
  virtual void read(const std::string& id, uint64_t index, void* dst) = 0;
  virtual uint64_t chunk_size() = 0;
};
std::unique_ptr<BlobSource> ram_source(const RamSnapshot& s);
std::unique_ptr<BlobSource> image_source(image::Reader& r);

// The virtual -> physical device map a rebuild should use, from the options and the
// current map. Throws FixFirst for an impossible request.
std::vector<int> target_map(const nlohmann::json& state, const Options& o);
// Throws FixFirst (and changes nothing) when the targets lack memory, devices or code
// for their architecture.
void check_targets(const nlohmann::json& state, const std::vector<int>& map);
// Destroys every real object and returns all GPU memory; the log stays.
void release_gpu_state();
// Re-creates everything in the log on the devices of `map` and fills memory from src.
// On failure, what was re-created is released again before the error propagates.
void rebuild(const nlohmann::json& state, BlobSource& src, const std::vector<int>& map, const Options& o);

// ---- engine.cpp --------------------------------------------------------------------
Stats checkpoint(const Options& o);
Stats suspend(const Options& o);
Stats resume(const Options& o);
Stats migrate(const Options& o);
Stats restore(const Options& o);
// {"state": "running|stopped|suspended", "devices": [...], "last": {...}, ...}
nlohmann::json status();

// Called around each operation (the C++ API's hooks).
using Hook = void (*)(const char* op, int after, void* user);
void add_hook(Hook h, void* user);

}  // namespace ferry::engine
