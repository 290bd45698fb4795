// The dlsym interposer. Built without sanitizer instrumentation: sanitizer runtimes
// call dlsym(RTLD_NEXT, ...) while they initialize, before instrumented code may run.
//
// Interposed so that a program which dlopens the real driver by absolute path still
// gets our entry points (loader.cpp: dlsym_lookup), and one that reaches NVML through a
// library handle (ctypes) gets the counting wrappers of nvml.hpp. RTLD_NEXT lookups must resolve
// relative to *our caller*, which glibc derives from the return address: the
// trampoline tail-jumps to the real dlsym for them, leaving that address in place.
#include <dlfcn.h>

namespace ferry {
void* dlsym_lookup(void* handle, const char* name);
namespace nvml {
void* dlsym_lookup(void* handle, const char* name, void* (*real_dlsym)(void*, const char*));
}
}

extern "C" {
__attribute__((visibility("hidden"))) void* ferry_real_dlsym = nullptr;

__attribute__((visibility("hidden"))) void* ferry_resolve_real_dlsym() {
  void* p = __atomic_load_n(&ferry_real_dlsym, __ATOMIC_ACQUIRE);
  if (!p) {
    p = dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.34");
    if (!p) p = dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.2.5");
    __atomic_store_n(&ferry_real_dlsym, p, __ATOMIC_RELEASE);
  }
  return p;
}

__attribute__((visibility("hidden"))) void* ferry_dlsym_impl(void* handle, const char* name) {
  auto real = reinterpret_cast<void* (*)(void*, const char*)>(ferry_resolve_real_dlsym());
  if (handle && name && name[0] == 'c' && name[1] == 'u')
    if (void* w = ferry::dlsym_lookup(handle, name)) return w;
  if (handle && name && name[0] == 'n' && name[1] == 'v' && name[2] == 'm' && name[3] == 'l')
    if (void* w = ferry::nvml::dlsym_lookup(handle, name, real)) return w;  // interpose/nvml.hpp
  return real(handle, name);
}
}

asm(R"(
  .text
  .globl dlsym
  .type dlsym,@function
dlsym:
  cmpq $-1, %rdi
  jne ferry_dlsym_impl
  movq ferry_real_dlsym(%rip), %rax
  testq %rax, %rax
  jz 1f
  jmp *%rax
1:
  pushq %rdi
  pushq %rsi
  subq $8, %rsp
  call ferry_resolve_real_dlsym
  addq $8, %rsp
  popq %rsi
  popq %rdi
  jmp *%rax
  .size dlsym, .-dlsym
)");
