// Capture: the device-state log turned into a serialized state, and device memory
// copied out of the GPU into an image or into host RAM.
//
// Mechanism
// - The serialized state (serialize_state) is JSON with a schema version
//   (kStateSchema): devices, contexts, streams, events, pools, libraries and modules
//   with their images, kernels and functions by name, reservations, physical
//   allocations and mappings with access rights, allocations, host memory, globals.
//   Every piece of device memory becomes a blob with a stable id: "phys:<handle>" for
//   a physical allocation (captured once however often it is mapped), "global:<module>:
//   <name>" for a module's __device__ variable (restore/restore.hpp lists the ids and
//   the order they are rebuilt in). A reader refuses a state of another schema with
//   both versions named (check_schema).
// - Copy-out goes through the transfer component (transfer.hpp): pinned staging slots
//   on several streams per context; worker threads hash (XXH3-128), compress (zstd)
//   and write chunks while the next copies run. Host memory in flight is bounded by
//   Options::staging_bytes.
// - Fingerprints (kernels/fingerprint.cu): before copying, a kernel loaded into each
//   context for the capture only computes a 128-bit fingerprint of every chunk on the
//   GPU; with a parent image, chunks whose fingerprint is unchanged are taken from the
//   parent unread. Host-RAM snapshots get the same fingerprints computed on the host.
// Everything here runs with the world stopped (engine/).
#pragma once

#include <cuda.h>

#include <cstdint>
#include <string>
#include <vector>

#include <ferry_common/errors.hpp>
#include <ferry_common/ops.hpp>
#include <ferry_image/image.hpp>
#include <nlohmann/json.hpp>

namespace ferry::engine {

using ops::Options;
using ops::Progress;
using ops::Stats;

// The version of the serialized state's layout, written into every image's state.
// Bump it when a field changes meaning or a reader would need a new field.
constexpr int kStateSchema = 1;
// Throws FixFirst naming both versions when `state` (from `where`) has another schema.
void check_schema(const nlohmann::json& state, const std::string& where);

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
// The UUID of physical device pdev as images, status and GPU pairs name it (32 hex
// digits); "" when the driver does not say.
std::string gpu_uuid(int pdev);
// The parts of a state that must match for an image to be restored into this process.
nlohmann::json structure_of(const nlohmann::json& state);

// Device memory into RAM / into an image (chunks hashed, compressed, written by workers).
void capture_to_ram(const std::vector<BlobRef>& refs, RamSnapshot& out, const Options& o);
// Returns the bytes it copied from the device (chunks whose GPU fingerprint matches the
// parent's are taken from the parent unread).
uint64_t capture_to_image(const std::vector<BlobRef>& refs, image::Writer& w, image::Manifest& m, const Options& o);
// A RAM snapshot into an image.
void persist(const RamSnapshot& s, image::Writer& w, image::Manifest& m, const Options& o);

}  // namespace ferry::engine
