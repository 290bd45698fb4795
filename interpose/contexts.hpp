// Virtual contexts: the per-thread current-context stack as the program sees it, and
// the records behind virtual context handles (primary and created).
//
// The shim keeps each thread's stack itself, in step with the driver's (every way to
// change it is an intercepted call), so cuCtxGetCurrent -- which cudart calls all the
// time -- is answered without a lookup and without calling the driver.
#pragma once

#include <cuda.h>

#include "tracker.hpp"

namespace ferry::ctx {

tr::Ctx* current();
void push(tr::Ctx* c);
tr::Ctx* pop();
void set(tr::Ctx* c);
// Removes c from the calling thread's stack (it was destroyed).
void drop_from_stack(tr::Ctx* c);
// Makes the driver's context stack of the calling thread match the mirror again,
// after a restore replaced the real contexts (gate::g_resync).
void resync_thread();

// Record behind a virtual context handle, or nullptr (not ours / NULL).
tr::Ctx* of(CUcontext v);
// Record for `v`, or the current context when v is NULL.
tr::Ctx* of_or_current(CUcontext v);
// The primary context record of virtual device vdev (created on first use); `real`
// is the driver's primary context handle when the caller has it.
tr::Ctx* primary(int vdev, CUcontext real);
// A new created-context record (tracker lock taken inside).
tr::Ctx* make_created(int vdev, CUcontext real, unsigned flags);
// The program destroyed (or reset, or released for the last time) a context: its
// context-local storage destructors run, its objects leave the log.
void retire(tr::Ctx* c);

}  // namespace ferry::ctx
