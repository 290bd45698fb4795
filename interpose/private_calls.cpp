#include "private_calls.hpp"

#include <atomic>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "gate.hpp"
#include "handles.hpp"
#include "log.hpp"

namespace {

constexpr unsigned kThunks = 2048;  // slots of all private tables together; a driver's are a few hundred

struct Thunk {
  uintptr_t target = 0;
  std::atomic<bool> reported{false};
  char what[56] = {};
};
Thunk g_thunks[kThunks];

}  // namespace

#if defined(__x86_64__)

// The stubs (16 bytes each: endbr64, index into r11d, jump, nop) and the routine they share.
// Frame: 6 integer argument registers at 0..47, rax (al: vector registers used by a
// variadic call) at 48, xmm0-7 at 64..191; rsp is 16-byte aligned at the call.
asm(R"(
  .text
  .p2align 4
  .type ferry_private_common, @function
ferry_private_common:
  push %rbp
  mov %rsp, %rbp
  sub $192, %rsp
  mov %rdi, 0(%rsp)
  mov %rsi, 8(%rsp)
  mov %rdx, 16(%rsp)
  mov %rcx, 24(%rsp)
  mov %r8, 32(%rsp)
  mov %r9, 40(%rsp)
  mov %rax, 48(%rsp)
  movdqa %xmm0, 64(%rsp)
  movdqa %xmm1, 80(%rsp)
  movdqa %xmm2, 96(%rsp)
  movdqa %xmm3, 112(%rsp)
  movdqa %xmm4, 128(%rsp)
  movdqa %xmm5, 144(%rsp)
  movdqa %xmm6, 160(%rsp)
  movdqa %xmm7, 176(%rsp)
  mov %rsp, %rdi
  mov %r11d, %esi
  call ferry_private_translate
  mov %rax, %r11
  mov 0(%rsp), %rdi
  mov 8(%rsp), %rsi
  mov 16(%rsp), %rdx
  mov 24(%rsp), %rcx
  mov 32(%rsp), %r8
  mov 40(%rsp), %r9
  mov 48(%rsp), %rax
  movdqa 64(%rsp), %xmm0
  movdqa 80(%rsp), %xmm1
  movdqa 96(%rsp), %xmm2
  movdqa 112(%rsp), %xmm3
  movdqa 128(%rsp), %xmm4
  movdqa 144(%rsp), %xmm5
  movdqa 160(%rsp), %xmm6
  movdqa 176(%rsp), %xmm7
  leave
  jmp *%r11
  .size ferry_private_common, .-ferry_private_common

  .p2align 4
  .type ferry_private_stubs, @function
ferry_private_stubs:
  .set ferry_stub_index, 0
  .rept 2048
  endbr64
  movl $ferry_stub_index, %r11d
  {disp32} jmp ferry_private_common
  nop
  .set ferry_stub_index, ferry_stub_index + 1
  .endr
  .size ferry_private_stubs, .-ferry_private_stubs
  .previous
)");

extern "C" {
extern char ferry_private_stubs[];

// Called by the common routine with the saved argument registers; returns where to go.
__attribute__((visibility("hidden"), used)) uintptr_t ferry_private_translate(uint64_t* regs, uint32_t index) {
  Thunk& t = g_thunks[index];
  // Through the gate and out again: a stopped world holds the call here, and after a
  // restore the thread re-syncs its contexts before the handles are read.
  ferry::gate::enter();
  ferry::gate::exit();
  bool any = false;
  for (int i = 0; i < 6; i++) {
    if (!ferry::vh::is_virtual(regs[i])) continue;
    ferry::vh::Obj* o = ferry::vh::obj(regs[i]);
    if (o->kind == ferry::vh::Kind::Free) continue;  // a stale handle: the driver's answer is the program's
    regs[i] = reinterpret_cast<uintptr_t>(o->real);
    any = true;
  }
  if (any && !t.reported.exchange(true, std::memory_order_relaxed))
    FERRY_DEBUG("%s: called with virtual handles; passed the real ones", t.what);
  return t.target;
}
}

#endif

namespace ferry::private_calls {

namespace {

struct CodeRanges {
  std::vector<std::pair<uintptr_t, uintptr_t>> ranges;
  void load() {
    ranges.clear();
    FILE* f = fopen("/proc/self/maps", "re");
    if (!f) return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
      uintptr_t lo = 0, hi = 0;
      char perms[8] = {};
      if (sscanf(line, "%" SCNxPTR "-%" SCNxPTR " %7s", &lo, &hi, perms) == 3 && perms[2] == 'x')
        ranges.emplace_back(lo, hi);
    }
    fclose(f);
  }
  bool has(uintptr_t p) const {
    for (auto& [lo, hi] : ranges)
      if (p >= lo && p < hi) return true;
    return false;
  }
};

std::mutex g_mu;
CodeRanges g_code;
std::map<uintptr_t, void*> g_by_target;
unsigned g_used = 0;

bool code_locked(uintptr_t a) {
  if (g_code.has(a)) return true;
  g_code.load();  // a library loaded since the last look
  return g_code.has(a);
}

}  // namespace

bool is_code(const void* p) {
  std::lock_guard lk(g_mu);
  return code_locked(reinterpret_cast<uintptr_t>(p));
}

void* translating(void* real, const char* what) {
#if defined(__x86_64__)
  if (!real) return real;
  std::lock_guard lk(g_mu);
  auto a = reinterpret_cast<uintptr_t>(real);
  if (!code_locked(a)) return real;
  if (auto it = g_by_target.find(a); it != g_by_target.end()) return it->second;
  // The stubs' 16-byte stride is the assembler's to keep: check it once.
  static const bool stride_ok = [] {
    const unsigned char endbr[4] = {0xf3, 0x0f, 0x1e, 0xfa};
    return memcmp(ferry_private_stubs + 16, endbr, 4) == 0 &&
           memcmp(ferry_private_stubs + 16 * static_cast<size_t>(kThunks - 1), endbr, 4) == 0;
  }();
  if (!stride_ok) return real;
  if (g_used == kThunks) {
    static bool said = false;
    if (!std::exchange(said, true))
      FERRY_WARN("more than %u private driver functions: %s and later ones get the program's handles untranslated",
                 kThunks, what);
    return real;
  }
  unsigned i = g_used++;
  g_thunks[i].target = a;
  snprintf(g_thunks[i].what, sizeof g_thunks[i].what, "%s", what);
  void* stub = ferry_private_stubs + 16 * static_cast<size_t>(i);
  g_by_target.emplace(a, stub);
  return stub;
#else
  (void)what;
  return real;
#endif
}

}  // namespace ferry::private_calls
