// Calls into the driver's private export tables, with virtual handles translated.
//
// Mechanism
// - Libraries other than cudart fetch private tables with cuGetExportTable and call
//   their slots with the handles they hold: cuBLAS fetches 21318c60-... and passes it
//   its context and stream (docs/driver-facts.md §7.10). Those handles are ours
//   (virtual: addresses in the shim's slab), and a real driver that takes one for its
//   own object crashes the process. The signatures are not public, so no slot can be
//   wrapped by its type.
// - Instead each function slot of such a table gets a thunk: a 16-byte stub that loads
//   its index and jumps to one common routine. That saves the argument registers (six
//   integer ones, xmm0-7 and al), replaces each integer argument that lies in the
//   slab by the real handle it stands for, restores everything and tail-jumps to the
//   driver's function. The stack is untouched, so stack arguments and the return
//   address are the caller's and the driver returns straight to it. A value in the
//   slab range can only be one of our handles: nothing else has addresses there, and
//   a 32-bit argument is zero-extended, far below it.
// - Only slots that point into executable code are replaced (a table may hold data);
//   the size word stays. Handles a private function *returns* are the driver's own:
//   they pass through every later call unchanged, untracked.
// - Not done: handles inside structures passed by pointer, and device ordinals (the
//   device map) -- neither can be told apart without the signature. A private call
//   passes the gate on its way in (a stopped world holds it; after a restore the
//   thread re-syncs first) but is not marked in flight, so a stop-the-world that
//   begins during one does not wait for it to return.
// - x86-64 only; elsewhere slots are handed out unchanged.
#pragma once

#include <cstddef>

namespace ferry::private_calls {

// A function that calls `real` with virtual handles translated; `real` itself when no
// thunk is left, off x86-64, or when `real` is not code. The same `real` always gets the
// same thunk. `what` names the table and slot in debug messages.
void* translating(void* real, const char* what);

// Whether `p` points into an executable mapping of this process.
bool is_code(const void* p);

}  // namespace ferry::private_calls
