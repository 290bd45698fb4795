// Spellings that differ between nvcc and the CUDA-on-host build, for the rare kernel
// that needs them. Include it from a .cu that uses dynamic shared memory.
#ifndef FERRY_EMU_PORTABLE_H
#define FERRY_EMU_PORTABLE_H
#ifndef FERRY_EMU_KERNEL_BUILD
#define FERRY_DYNAMIC_SHARED(T, name) extern __shared__ T name[]
#endif
#endif
