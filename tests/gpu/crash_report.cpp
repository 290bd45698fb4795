// A crash reporter for the GPU kit (run_suite.py preloads it into what it runs; the GPU
// machine has no debugger). On SIGSEGV, SIGBUS, SIGILL, SIGFPE or SIGABRT it writes to
// stderr the signal, the faulting address, the instruction that faulted and the native
// stack, each frame as object+offset and symbol when one is exported, all on lines
// starting with "crash-report:" -- then the signal takes its default course, so exit
// statuses stay what they were. Python's faulthandler, when on, runs first and chains
// here.
#include <dlfcn.h>
#include <execinfo.h>
#include <signal.h>
#include <ucontext.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <initializer_list>

namespace {

char g_alt_stack[256 * 1024];

void say(const char* s, int n) {
  while (n > 0) {
    ssize_t w = write(2, s, static_cast<size_t>(n));
    if (w <= 0) return;
    s += w;
    n -= static_cast<int>(w);
  }
}

// One frame: where it is (dladdr is not async-signal-safe; good enough when dying).
void frame(const char* tag, void* pc) {
  char line[640];
  Dl_info info{};
  int n;
  if (dladdr(pc, &info) && info.dli_fname) {
    const char* obj = strrchr(info.dli_fname, '/');
    obj = obj ? obj + 1 : info.dli_fname;
    auto off = reinterpret_cast<char*>(pc) - static_cast<char*>(info.dli_fbase);
    if (info.dli_sname)
      n = snprintf(line, sizeof line, "crash-report: %s %p %s+%#lx (%s+%#lx)\n", tag, pc, obj, static_cast<long>(off),
                   info.dli_sname, static_cast<long>(reinterpret_cast<char*>(pc) - static_cast<char*>(info.dli_saddr)));
    else
      n = snprintf(line, sizeof line, "crash-report: %s %p %s+%#lx\n", tag, pc, obj, static_cast<long>(off));
  } else {
    n = snprintf(line, sizeof line, "crash-report: %s %p (no object)\n", tag, pc);
  }
  say(line, n < static_cast<int>(sizeof line) ? n : static_cast<int>(sizeof line) - 1);
}

void on_fatal(int sig, siginfo_t* si, void* uc) {
  char line[256];
  int n = snprintf(line, sizeof line, "crash-report: signal %d (%s), address %p, pid %d\n", sig, sigabbrev_np(sig),
                   si ? si->si_addr : nullptr, static_cast<int>(getpid()));
  say(line, n);
#if defined(__x86_64__)
  if (uc) frame("faulting", reinterpret_cast<void*>(static_cast<ucontext_t*>(uc)->uc_mcontext.gregs[REG_RIP]));
#endif
  void* pcs[64];
  int k = backtrace(pcs, 64);
  for (int i = 0; i < k; i++) {
    char tag[16];
    snprintf(tag, sizeof tag, "#%d", i);
    frame(tag, pcs[i]);
  }
  signal(sig, SIG_DFL);
  raise(sig);
}

__attribute__((constructor)) void install() {
  void* warm[1];
  backtrace(warm, 1);  // loads the unwinder now, not inside the handler
  stack_t ss{};
  ss.ss_sp = g_alt_stack;
  ss.ss_size = sizeof g_alt_stack;
  sigaltstack(&ss, nullptr);
  struct sigaction sa {};
  sa.sa_sigaction = on_fatal;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESETHAND;
  sigemptyset(&sa.sa_mask);
  for (int s : {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT}) sigaction(s, &sa, nullptr);
}

}  // namespace
