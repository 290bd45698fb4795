// Kernel launch: blocks of host-implemented kernels run CUDA threads as fibers.
//
// Each CUDA thread of a block is a fiber with its own small stack, switched by a
// hand-written x86-64 context switch (callee-saved registers, MXCSR and the x87
// control word; ~10 ns). The block scheduler runs every runnable fiber in turn; a
// fiber leaves the CPU only at a barrier (__syncthreads, warp shuffle/vote) or when it
// returns, so a kernel without barriers costs one switch pair per thread. Blocks of a
// grid are spread over a small pool of OS threads. A fault (SIGSEGV/SIGBUS) while a
// kernel runs ends the launch with CUDA_ERROR_ILLEGAL_ADDRESS instead of the process.
#include <dlfcn.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <csetjmp>
#include <cstring>
#include <vector>

#include "emu.hpp"

#include <ferry_common/settings.hpp>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define FERRY_ASAN 1
#endif
#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#define FERRY_TSAN 1
#endif

extern "C" void ferry_emu_switch(void** save_sp, void* new_sp);
extern "C" void ferry_emu_fiber_start();

asm(R"(
  .text
  .globl ferry_emu_switch
  .hidden ferry_emu_switch
  .type ferry_emu_switch,@function
ferry_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $16, %rsp
  stmxcsr 8(%rsp)
  fnstcw (%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr 8(%rsp)
  fldcw (%rsp)
  addq $16, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size ferry_emu_switch, .-ferry_emu_switch

  .globl ferry_emu_fiber_start
  .hidden ferry_emu_fiber_start
  .type ferry_emu_fiber_start,@function
ferry_emu_fiber_start:
  movq %r12, %rdi
  callq *%r13
  ud2
  .size ferry_emu_fiber_start, .-ferry_emu_fiber_start
)");

namespace ferry::emu {

namespace {

enum FiberState { kRunnable, kBlockBarrier, kWarpBarrier, kDone };

struct Fiber {
  void* sp = nullptr;
  void* stack_lo = nullptr;
  size_t stack_size = 0;
  FiberState state = kRunnable;
  ferry_emu_dim tid{};
  unsigned linear = 0;
  uint64_t deposit = 0;
  int src_lane = 0;
  uint64_t result = 0;
  int pred = 0;
#ifdef FERRY_TSAN
  void* tsan_fiber = nullptr;
#endif
};

struct BlockRun {
  const ferry_emu_kernel_entry* entry = nullptr;
  void* const* params = nullptr;
  std::vector<Fiber> fibers;
  void* sched_sp = nullptr;
  int cur = -1;
  int live = 0;
  int barrier_arrived = 0;
  std::vector<int> warp_live, warp_arrived;
  const char* trap = nullptr;
#ifdef FERRY_TSAN
  void* tsan_sched = nullptr;
#endif
};

thread_local BlockRun* t_run = nullptr;
thread_local ferry_emu_thread_state t_state{};
thread_local sigjmp_buf* t_fault_jmp = nullptr;
struct StackSlot {
  void* lo;
  size_t size;
  void* tsan_fiber;  // TSan's fiber for this stack, created once and reused
};
// Fiber stacks, reused by the thread's later launches and unmapped when it exits:
// stream worker threads come and go (a restore re-creates every stream), and
// leaked stacks would run the process out of mappings.
struct Stacks : std::vector<StackSlot> {
  ~Stacks();
};
thread_local Stacks t_stacks;
#ifdef FERRY_ASAN
thread_local void* t_sched_stack_lo = nullptr;  // the scheduler's own stack, for ASan's bookkeeping
thread_local size_t t_sched_stack_size = 0;
#endif

// Leaving a fiber by longjmp (fault or trap): tell ASan which stack we land on.
void before_escape() {
#ifdef FERRY_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, t_sched_stack_lo, t_sched_stack_size);
#endif
}

size_t stack_size() {
  static size_t sz = [] {
    size_t v = ferry::settings::size("FERRY_EMU_FIBER_STACK", 64 * 1024);
    return std::max<size_t>((v + kPage - 1) / kPage * kPage, 16 * 1024);
  }();
  return sz;
}

size_t stack_size();

Stacks::~Stacks() {
  for (StackSlot& s : *this) {
#ifdef FERRY_TSAN
    if (s.tsan_fiber) __tsan_destroy_fiber(s.tsan_fiber);
#endif
#ifdef FERRY_ASAN
    // Kernels' frames leave redzones in the shadow; the next mmap at this address
    // (a host buffer, say) would inherit them.
    __asan_unpoison_memory_region(s.lo, stack_size());
#endif
    munmap(static_cast<char*>(s.lo) - kPage, stack_size() + kPage);
  }
}

const StackSlot& get_stack(size_t i) {
  while (t_stacks.size() <= i) {
    size_t sz = stack_size();
    void* p = mmap(nullptr, sz + kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) fatal("cannot allocate fiber stacks");
    mprotect(p, kPage, PROT_NONE);  // guard page: an overflowing kernel faults
    StackSlot slot{static_cast<char*>(p) + kPage, sz, nullptr};
#ifdef FERRY_TSAN
    slot.tsan_fiber = __tsan_create_fiber(0);
#endif
    t_stacks.push_back(slot);
  }
  return t_stacks[i];
}

void switch_to_fiber(BlockRun& r, int i) {
  Fiber& f = r.fibers[static_cast<size_t>(i)];
  r.cur = i;
  t_state.thread_idx = f.tid;
#ifdef FERRY_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, f.stack_lo, f.stack_size);
#endif
#ifdef FERRY_TSAN
  __tsan_switch_to_fiber(f.tsan_fiber, 0);
#endif
  ferry_emu_switch(&r.sched_sp, f.sp);
#ifdef FERRY_ASAN
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
}

void yield_to_scheduler() {
  BlockRun& r = *t_run;
  Fiber& f = r.fibers[static_cast<size_t>(r.cur)];
#ifdef FERRY_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(f.state == kDone ? nullptr : &fake, t_sched_stack_lo, t_sched_stack_size);
#endif
#ifdef FERRY_TSAN
  __tsan_switch_to_fiber(r.tsan_sched, 0);
#endif
  ferry_emu_switch(&f.sp, r.sched_sp);
#ifdef FERRY_ASAN
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
}

void release_block_barrier(BlockRun& r) {
  // op codes (kernel_abi.h): 0 sync, 1 count, 2 and, 3 or
  int count = 0, waiting = 0;
  for (auto& f : r.fibers)
    if (f.state == kBlockBarrier) waiting++, count += f.pred != 0;
  for (auto& f : r.fibers) {
    if (f.state != kBlockBarrier) continue;
    switch (f.src_lane) {
      case 1: f.result = static_cast<uint64_t>(count); break;
      case 2: f.result = count == waiting; break;
      case 3: f.result = count != 0; break;
      default: f.result = 0; break;
    }
    f.state = kRunnable;
  }
  r.barrier_arrived = 0;
}

void release_warp(BlockRun& r, unsigned warp) {
  Fiber* lanes[32] = {};
  uint64_t ballot = 0;
  for (auto& f : r.fibers) {
    if (f.linear / 32 != warp || f.state != kWarpBarrier) continue;
    lanes[f.linear % 32] = &f;
    if (f.deposit) ballot |= 1ull << (f.linear % 32);
  }
  for (auto* f : lanes) {
    if (!f) continue;
    if (f->src_lane < 0)
      f->result = ballot;
    else if (f->src_lane < 32 && lanes[f->src_lane])
      f->result = lanes[f->src_lane]->deposit;
    else
      f->result = f->deposit;
    f->state = kRunnable;
  }
  r.warp_arrived[warp] = 0;
}

int rt_block_barrier(int op, int pred) {
  BlockRun& r = *t_run;
  Fiber& f = r.fibers[static_cast<size_t>(r.cur)];
  f.pred = pred;
  f.src_lane = op;
  f.state = kBlockBarrier;
  if (++r.barrier_arrived == r.live)
    release_block_barrier(r);  // the last to arrive continues without a switch
  else
    yield_to_scheduler();
  return static_cast<int>(f.result);
}

uint64_t rt_warp_exchange(uint64_t value, int src_lane) {
  BlockRun& r = *t_run;
  Fiber& f = r.fibers[static_cast<size_t>(r.cur)];
  unsigned warp = f.linear / 32;
  f.deposit = value;
  f.src_lane = src_lane;
  f.state = kWarpBarrier;
  if (++r.warp_arrived[warp] == r.warp_live[warp])
    release_warp(r, warp);
  else
    yield_to_scheduler();
  return f.result;
}

void rt_trap(const char* why) {
  BlockRun& r = *t_run;
  r.trap = why ? why : "trap";
  if (t_fault_jmp) {
    before_escape();
    siglongjmp(*t_fault_jmp, 2);
  }
  fatal("kernel trap outside a launch: %s", r.trap);
}

const ferry_emu_runtime kRuntime = {FERRY_EMU_KERNEL_ABI, rt_block_barrier, rt_warp_exchange, rt_trap};

void fiber_main(Fiber* self) {
#ifdef FERRY_ASAN
  __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);
#endif
  BlockRun& r = *t_run;
  r.entry->invoke(r.params);
  self->state = kDone;
  r.live--;
  unsigned warp = self->linear / 32;
  r.warp_live[warp]--;
  // A thread that exits no longer holds back barriers the others are waiting at.
  if (r.barrier_arrived > 0 && r.barrier_arrived == r.live) release_block_barrier(r);
  if (r.warp_arrived[warp] > 0 && r.warp_arrived[warp] == r.warp_live[warp]) release_warp(r, warp);
  yield_to_scheduler();
  fatal("a finished fiber was resumed");
}

void make_fiber(Fiber& f, size_t index) {
  const StackSlot& slot = get_stack(index);
  f.stack_lo = slot.lo;
  f.stack_size = slot.size;
  auto top = reinterpret_cast<uintptr_t>(slot.lo) + slot.size;
  top &= ~uintptr_t{15};
  auto* sp = reinterpret_cast<uint64_t*>(top);
  // Frame popped by ferry_emu_switch: fpu cw/mxcsr, r15..r12, rbx, rbp, return address.
  *--sp = reinterpret_cast<uint64_t>(&ferry_emu_fiber_start);  // at top-8: ret lands 16-aligned
  *--sp = 0;                                                   // rbp
  *--sp = 0;                                                   // rbx
  *--sp = reinterpret_cast<uint64_t>(&f);                      // r12: argument
  *--sp = reinterpret_cast<uint64_t>(&fiber_main);             // r13: entry
  *--sp = 0;                                                   // r14
  *--sp = 0;                                                   // r15
  uint32_t mxcsr;
  uint16_t fpucw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpucw));
  *--sp = mxcsr;                                               // mxcsr at +8
  *--sp = fpucw;                                               // x87 control word at +0
  f.sp = sp;
  f.state = kRunnable;
#ifdef FERRY_TSAN
  f.tsan_fiber = slot.tsan_fiber;
#endif
}

void fault_handler(int sig, siginfo_t* info, void* uctx);
struct sigaction g_prev_segv, g_prev_bus;

void install_fault_handler() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa {};
    sa.sa_sigaction = fault_handler;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &g_prev_segv);
    sigaction(SIGBUS, &sa, &g_prev_bus);
  });
  thread_local bool alt = false;
  if (!alt) {
    alt = true;
    stack_t ss{};
    ss.ss_size = 64 * 1024;
    ss.ss_sp = mmap(nullptr, ss.ss_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    sigaltstack(&ss, nullptr);
  }
}

void fault_handler(int sig, siginfo_t* info, void* uctx) {
  if (t_fault_jmp) {
    before_escape();
    siglongjmp(*t_fault_jmp, 1);
  }
  // Not ours: hand the fault to whoever was installed before us, or die as usual.
  struct sigaction& prev = sig == SIGSEGV ? g_prev_segv : g_prev_bus;
  if (prev.sa_flags & SA_SIGINFO) {
    if (prev.sa_sigaction) return prev.sa_sigaction(sig, info, uctx);
  } else if (prev.sa_handler != SIG_DFL && prev.sa_handler != SIG_IGN) {
    return prev.sa_handler(sig);
  }
  signal(sig, SIG_DFL);
}

// Runs one block; returns CUDA_SUCCESS or the launch error.
CUresult run_block(const ferry_emu_kernel_entry* entry, void* const* params, ferry_emu_dim bidx, ferry_emu_dim bdim,
                   size_t nthreads, std::vector<char>& smem) {
  BlockRun r;
  r.entry = entry;
  r.params = params;
  r.fibers.resize(nthreads);
  r.live = static_cast<int>(nthreads);
  size_t nwarps = (nthreads + 31) / 32;
  r.warp_live.assign(nwarps, 0);
  r.warp_arrived.assign(nwarps, 0);
  for (size_t i = 0; i < nthreads; i++) {
    Fiber& f = r.fibers[i];
    f.linear = static_cast<unsigned>(i);
    f.tid.x = static_cast<unsigned>(i % bdim.x);
    f.tid.y = static_cast<unsigned>((i / bdim.x) % bdim.y);
    f.tid.z = static_cast<unsigned>(i / (static_cast<size_t>(bdim.x) * bdim.y));
    r.warp_live[i / 32]++;
    make_fiber(f, i);
  }
  t_state.block_idx = bidx;
  t_state.dynamic_shared = smem.empty() ? nullptr : smem.data();
  t_run = &r;
#ifdef FERRY_TSAN
  r.tsan_sched = __tsan_get_current_fiber();
#endif
#ifdef FERRY_ASAN
  if (!t_sched_stack_lo) {
    pthread_attr_t attr;
    pthread_getattr_np(pthread_self(), &attr);
    pthread_attr_getstack(&attr, &t_sched_stack_lo, &t_sched_stack_size);
    pthread_attr_destroy(&attr);
  }
#endif
  sigjmp_buf jb;
  volatile CUresult result = CUDA_SUCCESS;
  int why = sigsetjmp(jb, 1);
  if (why == 0) {
    t_fault_jmp = &jb;
    while (r.live > 0) {
      bool ran = false;
      for (size_t i = 0; i < nthreads; i++) {
        if (r.fibers[i].state != kRunnable) continue;
        ran = true;
        switch_to_fiber(r, static_cast<int>(i));
      }
      if (!ran) {  // every live thread waits at a barrier the others never reach
        log("kernel deadlocked at a barrier (divergent __syncthreads?)");
        result = CUDA_ERROR_LAUNCH_FAILED;
        break;
      }
    }
  } else {
#ifdef FERRY_ASAN
    __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);
#endif
#ifdef FERRY_TSAN
    __tsan_switch_to_fiber(r.tsan_sched, 0);
#endif
    if (why == 1) {
      log("kernel %s faulted (illegal address)", entry->name);
      result = CUDA_ERROR_ILLEGAL_ADDRESS;
    } else {
      log("kernel %s trapped: %s", entry->name, r.trap);
      result = CUDA_ERROR_LAUNCH_FAILED;
    }
  }
  t_fault_jmp = nullptr;
  t_run = nullptr;
  return result;
}

// ---- block pool ------------------------------------------------------------------------

struct Grid {
  const ferry_emu_kernel_entry* entry;
  const ferry_emu_kernel_library* lib;
  void* const* params;
  ferry_emu_dim grid, block;
  size_t nthreads, nblocks, smem;
  std::atomic<size_t> next{0};
  std::atomic<int> error{CUDA_SUCCESS};
};

void run_blocks(Grid& g) {
  install_fault_handler();
  g.lib->bind_thread(&t_state);
  t_state.rt = &kRuntime;
  t_state.block_dim = g.block;
  t_state.grid_dim = g.grid;
  std::vector<char> smem(g.smem);
  for (;;) {
    if (g.error.load() != CUDA_SUCCESS) return;
    size_t b = g.next.fetch_add(1);
    if (b >= g.nblocks) return;
    ferry_emu_dim bidx{static_cast<unsigned>(b % g.grid.x), static_cast<unsigned>((b / g.grid.x) % g.grid.y),
                       static_cast<unsigned>(b / (static_cast<size_t>(g.grid.x) * g.grid.y))};
    CUresult e = run_block(g.entry, g.params, bidx, g.block, g.nthreads, smem);
    if (e != CUDA_SUCCESS) {
      int expected = CUDA_SUCCESS;
      g.error.compare_exchange_strong(expected, e);
    }
  }
}

class BlockPool {
 public:
  static BlockPool& get() {
    static BlockPool* p = new BlockPool;  // leaked: helpers may outlive static destruction
    return *p;
  }
  // Runs the grid on the calling thread plus up to n-1 helpers. The helpers serve one
  // grid at a time; a stream that finds them busy runs its grid on its own thread.
  void run(Grid& g) {
    size_t helpers = std::min(threads_ - 1, g.nblocks - 1);
    std::unique_lock busy(run_mu_, std::try_to_lock);
    if (helpers == 0 || !busy.owns_lock()) {
      run_blocks(g);
      return;
    }
    {
      std::lock_guard lk(mu_);
      ensure_helpers(helpers);
      job_ = &g;
      wanted_ = helpers;
      joined_ = 0;
      finished_ = 0;
      ++generation_;
    }
    cv_.notify_all();
    run_blocks(g);
    std::unique_lock lk(mu_);
    wanted_ = 0;  // no helper may join once the grid is exhausted
    done_cv_.wait(lk, [&] { return finished_ == joined_; });
    job_ = nullptr;
  }

 private:
  BlockPool() {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    threads_ = static_cast<size_t>(n > 0 ? n : 1);
    if (ferry::settings::raw("FERRY_EMU_BLOCK_THREADS"))
      threads_ = static_cast<size_t>(std::max(1L, ferry::settings::count("FERRY_EMU_BLOCK_THREADS", 1)));
    threads_ = std::min<size_t>(threads_, 16);
  }
  void ensure_helpers(size_t n) {
    while (started_ < n) {
      started_++;
      std::thread([this] { helper(); }).detach();
    }
  }
  void helper() {
    uint64_t seen = 0;
    std::unique_lock lk(mu_);
    for (;;) {
      cv_.wait(lk, [&] { return generation_ != seen; });
      seen = generation_;
      if (!job_ || joined_ >= wanted_) continue;
      joined_++;
      Grid* g = job_;
      lk.unlock();
      run_blocks(*g);
      lk.lock();
      finished_++;
      done_cv_.notify_all();
    }
  }
  std::mutex run_mu_;  // held by the one grid using the helpers
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  size_t threads_ = 1, started_ = 0, wanted_ = 0, joined_ = 0, finished_ = 0;
  uint64_t generation_ = 0;
  Grid* job_ = nullptr;
};

// Copies the launch arguments: the kernel runs after cuLaunchKernel has returned.
struct ArgPack {
  std::vector<char> bytes;
  std::vector<void*> ptrs;
};

CUresult pack_args(const ferry_emu_kernel_entry* e, void** params, void** extra, ArgPack& out) {
  std::vector<size_t> offs(e->param_count);
  size_t total = 0;
  for (uint32_t i = 0; i < e->param_count; i++) {
    size_t a = e->param_aligns[i];
    total = (total + a - 1) / a * a;
    offs[i] = total;
    total += e->param_sizes[i];
  }
  out.bytes.assign(total + 16, 0);
  out.ptrs.resize(e->param_count);
  const char* buf = nullptr;
  if (!params && extra) {
    size_t buf_size = 0;
    for (size_t i = 0; extra[i] != CU_LAUNCH_PARAM_END; i += 2) {
      if (extra[i] == CU_LAUNCH_PARAM_BUFFER_POINTER) buf = static_cast<const char*>(extra[i + 1]);
      else if (extra[i] == CU_LAUNCH_PARAM_BUFFER_SIZE) buf_size = *static_cast<size_t*>(extra[i + 1]);
      else return CUDA_ERROR_INVALID_VALUE;
    }
    if (!buf || buf_size < total) return CUDA_ERROR_INVALID_VALUE;
  } else if (!params && e->param_count) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  for (uint32_t i = 0; i < e->param_count; i++) {
    const void* src = buf ? buf + offs[i] : params[i];
    memcpy(out.bytes.data() + offs[i], src, e->param_sizes[i]);
    out.ptrs[i] = out.bytes.data() + offs[i];
  }
  return CUDA_SUCCESS;
}

}  // namespace

Function* function_for_launch(CUfunction f, Context* c, CUresult* err);

CUresult launch(Function* f, Context* c, const std::shared_ptr<Stream>& s, ferry_emu_dim grid, ferry_emu_dim block,
                unsigned smem, void** params, void** extra) {
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || block.x == 0 || block.y == 0 || block.z == 0)
    return CUDA_ERROR_INVALID_VALUE;
  if (grid.y > 65535 || grid.z > 65535 || grid.x > 2147483647u) return CUDA_ERROR_INVALID_VALUE;
  size_t nthreads = static_cast<size_t>(block.x) * block.y * block.z;
  if (block.x > 1024 || block.y > 1024 || block.z > 64 || nthreads > 1024) return CUDA_ERROR_INVALID_VALUE;
  if (smem > static_cast<unsigned>(f->max_dynamic_smem)) return CUDA_ERROR_INVALID_VALUE;
  if (CUresult e = c->sticky.load()) return e;
  auto args = std::make_shared<ArgPack>();
  if (CUresult e = pack_args(f->entry, params, extra, *args)) return e;
  const ferry_emu_kernel_entry* entry = f->entry;
  const ferry_emu_kernel_library* lib = f->module->inst->lib;
  size_t nblocks = static_cast<size_t>(grid.x) * grid.y * grid.z;
  enqueue(s, Op{{}, [=]() {
                  if (c->sticky.load() != CUDA_SUCCESS) return CUDA_SUCCESS;
                  Grid g{entry, lib, args->ptrs.data(), grid, block, nthreads, nblocks, smem, {0}, {CUDA_SUCCESS}};
                  BlockPool::get().run(g);
                  return static_cast<CUresult>(g.error.load());
                }});
  return CUDA_SUCCESS;
}

}  // namespace ferry::emu

using namespace ferry::emu;

namespace {

CUstream ptsz(CUstream s) { return s ? s : CU_STREAM_PER_THREAD; }

CUresult launch_kernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                       unsigned smem, CUstream h, void** params, void** extra) {
  Context* c = nullptr;
  CUresult err;
  auto s = resolve_stream(h, &c, &err);
  if (!s) return err;
  if (!f) return CUDA_ERROR_INVALID_HANDLE;
  Function* fn = function_for_launch(f, c, &err);
  if (!fn) return err;
  if (fn->module->ctx != c) return CUDA_ERROR_INVALID_CONTEXT;
  return launch(fn, c, s, {gx, gy, gz}, {bx, by, bz}, smem, params, extra);
}

CUresult launch_ex(const CUlaunchConfig* cfg, CUfunction f, void** params, void** extra, bool per_thread) {
  if (!cfg) return CUDA_ERROR_INVALID_VALUE;
  for (unsigned i = 0; i < cfg->numAttrs; i++) {
    switch (cfg->attrs[i].id) {
      case CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION:
        if (cfg->attrs[i].value.clusterDim.x * cfg->attrs[i].value.clusterDim.y * cfg->attrs[i].value.clusterDim.z > 1)
          return CUDA_ERROR_NOT_SUPPORTED;
        break;
      default: break;  // priorities, access policies, PDL: hints without effect here
    }
  }
  CUstream s = per_thread ? ptsz(cfg->hStream) : cfg->hStream;
  return launch_kernel(f, cfg->gridDimX, cfg->gridDimY, cfg->gridDimZ, cfg->blockDimX, cfg->blockDimY, cfg->blockDimZ,
                       cfg->sharedMemBytes, s, params, extra);
}

}  // namespace

FERRY_EXPORT CUresult cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,
                                     unsigned int by, unsigned int bz, unsigned int smem, CUstream h, void** params,
                                     void** extra) {
  return launch_kernel(f, gx, gy, gz, bx, by, bz, smem, h, params, extra);
}

FERRY_EXPORT CUresult cuLaunchKernel_ptsz(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                                          unsigned int bx, unsigned int by, unsigned int bz, unsigned int smem,
                                          CUstream h, void** params, void** extra) {
  return launch_kernel(f, gx, gy, gz, bx, by, bz, smem, ptsz(h), params, extra);
}

FERRY_EXPORT CUresult cuLaunchKernelEx(const CUlaunchConfig* config, CUfunction f, void** params, void** extra) {
  return launch_ex(config, f, params, extra, false);
}

FERRY_EXPORT CUresult cuLaunchKernelEx_ptsz(const CUlaunchConfig* config, CUfunction f, void** params, void** extra) {
  return launch_ex(config, f, params, extra, true);
}

FERRY_EXPORT CUresult cuLaunchCooperativeKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                                                unsigned int bx, unsigned int by, unsigned int bz, unsigned int smem,
                                                CUstream h, void** params) {
  return launch_kernel(f, gx, gy, gz, bx, by, bz, smem, h, params, nullptr);
}

FERRY_EXPORT CUresult cuLaunchCooperativeKernel_ptsz(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                                                     unsigned int bx, unsigned int by, unsigned int bz,
                                                     unsigned int smem, CUstream h, void** params) {
  return launch_kernel(f, gx, gy, gz, bx, by, bz, smem, ptsz(h), params, nullptr);
}
