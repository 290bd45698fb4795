// The simulated machine: which GPUs it has and what each is, read from the FERRY_EMU_*
// settings. Shared by the simulated driver (each process builds its devices from it, and
// a restorer sends it to the process it restores) and the simulated NVML, which answers
// for the same GPUs without creating anything.
//
// Each simulated process has its GPUs to itself: what other simulated processes allocate
// is not seen by this one. Memory that *other* tenants of the machine hold on a GPU is
// set instead, per GPU ("held=" in FERRY_EMU_DEVICE<n>): the driver allocates only what
// is left beside it, cuMemGetInfo and NVML report it, and a driver restore needs room
// beside it -- as a real GPU shared with other jobs behaves.
#pragma once

#include <cuda.h>

#include <cstddef>
#include <string>

namespace ferry::emu {

constexpr int kMaxDevices = 16;
constexpr size_t kGranularity = 2u << 20;  // VMM granularity, as on current GPUs

struct DeviceConfig {
  std::string name;
  size_t total_mem = 0;
  size_t held = 0;  // held by other processes of the machine; never more than total_mem
  int cc_major = 9, cc_minor = 0;
  int sm_count = 132;
  CUuuid uuid{};
  int pci_domain = 0, pci_bus = 0, pci_device = 0;
};

// How many GPUs the machine has (FERRY_EMU_DEVICES, 2 by default, at most kMaxDevices).
int machine_device_count();
// The configuration of the machine's GPU `index` (FERRY_EMU_* settings).
DeviceConfig machine_device(int index);
std::string uuid_hex(const CUuuid& u);  // 32 lower-case hex digits
size_t parse_size(const char* s, size_t dflt);

}  // namespace ferry::emu
