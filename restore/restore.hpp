// Restore: tearing the real GPU state down, checking that targets can take it, and
// building it again -- the same objects behind the same virtual handles, memory at the
// same addresses -- on the devices of a (possibly new) device map, filled from host
// RAM or from an image.
//
// Blob ids (from checkpoint/checkpoint.hpp's serialized state):
//   phys:h<virtual handle>   a cuMemCreate allocation the program holds a handle to
//   phys:<first va>          an allocation the shim made (the arena's pieces), named by
//                            the first address it is mapped at
//   global:<owner>:<ctx>:<name>  a module's __device__ variable in one context
//                            (owner: the module's or library's virtual handle)
// Each blob is captured once and filled once, however often it is mapped.
//
// Rebuild order (rebuild()), each step needing the ones before it:
//   1. the device map is applied (program device i -> physical device map[i]);
//   2. contexts: primary ones retained with their flags, created ones re-created;
//   3. streams, events (recorded, so they read as completed), memory pools with their
//      attributes and access, libraries and modules from their recorded images,
//      kernels and functions looked up by name, function attributes replayed;
//   4. reservations re-made at their exact addresses (a different address is an
//      error), physical memory re-created, mapped and granted; the program's handle
//      reference counts restored;
//   5. memory filled from the blob source (RAM snapshot or image, verified);
//      globals that moved are published to the address translation (remap.hpp);
//   6. pinned host memory registered again;
//   7. CUDA graphs re-captured from their recipes and instantiated (graphs.cpp).
// Then the engine reopens the gate with a new epoch: every thread re-syncs its
// driver-side context stack at its next call. On failure, what was re-created is
// released again before the error propagates.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <checkpoint.hpp>

namespace ferry::engine {

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
// current map (program device i -> physical current[i]). Throws FixFirst for an
// impossible request. --device N moves the program's one device to N and keeps the map
// a permutation. Targets are checked against the machine's device count, which after a
// whole-process restore may differ from the program's; program devices the state does
// not use are pointed at a device the machine has.
std::vector<int> target_map(const nlohmann::json& state, const Options& o, std::vector<int> current);
// The map in force now.
std::vector<int> current_map();
// Throws FixFirst (and changes nothing) when the targets lack memory, devices or code
// for their architecture.
void check_targets(const nlohmann::json& state, const std::vector<int>& map);
// Destroys every real object and returns all GPU memory; the log stays.
void release_gpu_state();
// Re-creates everything in the log on the devices of `map` and fills memory from src.
// On failure, what was re-created is released again before the error propagates.
void rebuild(const nlohmann::json& state, BlobSource& src, const std::vector<int>& map, const Options& o);


// CUDA graphs (graphs.cpp): the real graphs and instantiated graphs are destroyed /
// re-captured from the recipes the shim recorded (interpose/graphs.hpp).
void release_graphs();
void rebuild_graphs();

}  // namespace ferry::engine
