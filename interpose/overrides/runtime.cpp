// Runtime-level interception. Everything ferry needs arrives at the driver boundary,
// which also catches the static cudart inside cuBLAS, NCCL and friends; the one thing
// the runtime knows earlier is which fatbins a program registered before their lazy
// load. When the program uses the shared libcudart, __cudaRegisterFatBinary is
// observed here (passed on unchanged) so the log lists images not loaded yet.
#include <dlfcn.h>

#include "../shim.hpp"
#include "../tracker.hpp"

extern "C" FERRY_API void** __cudaRegisterFatBinary(void* fatCubin) {
  static auto next = reinterpret_cast<void** (*)(void*)>(dlsym(RTLD_NEXT, "__cudaRegisterFatBinary"));
  if (fatCubin && ferry::active()) {
    auto& st = ferry::tr::state();
    std::lock_guard lk(st.mu);
    st.registered_fatbins.push_back(fatCubin);
  }
  return next ? next(fatCubin) : nullptr;
}

extern "C" FERRY_API void __cudaUnregisterFatBinary(void** handle) {
  static auto next = reinterpret_cast<void (*)(void**)>(dlsym(RTLD_NEXT, "__cudaUnregisterFatBinary"));
  if (next) next(handle);
}
