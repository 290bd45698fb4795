// Whole-process checkpoints (CPU state by CRIU, GPU state by ferry): what the CLI
// needs from the machine, and the pre-flight that `ferry check` reports.
//
// CRIU is found as FERRY_CRIU, else `criu` on PATH, else the private build that
// scripts/criu-setup.sh makes (FERRY_DEFAULT_CRIU, compiled in). It must be >= 4 and
// pass `criu check` (as root). The driver must have NVIDIA's checkpoint API
// (cuCheckpointProcess*, CUDA 12.8 / driver r570 and later): ferry releases the GPU
// state itself, and the API makes the driver drop what is left before CRIU dumps.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

namespace ferry::cli {

// The criu binary to use (it may not exist; criu_report says why it cannot be used).
std::string criu_path();
// What `criu --version` says ("4.1.1"), "" when it does not answer like CRIU.
std::string criu_version(const std::string& criu);

// {"criu": {"path", "version", "check"}, "driver_checkpoint_api": bool, "ready": bool,
//  "problems": [...]}; driver: a dlopen handle of the CUDA driver, or nullptr.
nlohmann::json full_process_report(void* driver);

}  // namespace ferry::cli
