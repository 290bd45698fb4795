// CUDA_VISIBLE_DEVICES as the driver reads it at cuInit, for the two that must agree on
// it: the simulated GPU, which applies it to its machine, and the CLI, which initializes
// the driver with every GPU visible (a controller that hides some breaks NVIDIA's GPU
// pairs) and applies the restorer's CUDA_VISIBLE_DEVICES itself, as a choice of GPUs.
//
// NVIDIA documents indices, UUIDs and that an invalid entry ends the list; the rest
// follows PyTorch's model of the driver (torch.cuda._parse_visible_devices): the first
// entry decides the kind -- "GPU-" and a UUID or a prefix naming one GPU, else indices,
// each read like strtoul after its blanks ("1gpu" is 1). An entry of the other kind, or
// naming no GPU, ends the list; a GPU named twice leaves none.
#pragma once

#include <string>
#include <vector>

namespace ferry {

// The positions in `machine` (each GPU's UUID, 32 lower-case hex digits, in the driver's
// order) that `spec` makes visible, in its order; empty when it leaves none.
std::vector<int> visible_devices(const std::string& spec, const std::vector<std::string>& machine);

// A GPU's UUID (32 hex digits) as NVML and nvidia-smi write it -- and as a UUID in
// CUDA_VISIBLE_DEVICES is written: GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx.
std::string gpu_uuid_text(const std::string& hex);

}  // namespace ferry
