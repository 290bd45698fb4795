// Kernel-library build only: the CUDA headers' host declarations are not needed by
// device code compiled for the simulated GPU, so this stands in for <cuda_runtime.h>.
#pragma once
#include <ferry_emu/cuda_on_host.h>
