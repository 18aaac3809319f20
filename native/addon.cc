// ovl native addon: the system calls and nothing else, split by concern:
//   mount.cc  looking paths up once into fds, the mount calls, unmounting
//   table.cc  statmount, reading the table, watching it
//   walk.cc   walking layers beneath their root fds, with overlay's xattrs
//   idmap.cc  user namespaces from id maps, detached idmapped clones of layers
//   tree.cc   building and removing trees beneath a root fd (applying layers)
//   kmsg.h    the kernel log, by position
// Every export returns a Promise (the call runs on the libuv thread pool) and has a `*Sync` twin; a failure
// is plain data ({ errno, syscall, ... }), which src/kernel/errors.ts turns into a Node-style Error. All argument
// checking beyond "is this the right type" lives in TypeScript; the type checks here only keep bad JavaScript
// from crashing the process.
#include <napi.h>

#include "common.h"

namespace ovl {
namespace {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  RegisterMount(env, exports);
  RegisterTable(env, exports);
  RegisterWalk(env, exports);
  RegisterTree(env, exports);
  RegisterIdmap(env, exports);
  return exports;
}

}  // namespace
}  // namespace ovl

// NODE_API_MODULE pastes the function name into a symbol, so it needs an unqualified one.
static Napi::Object InitOvl(Napi::Env env, Napi::Object exports) { return ovl::Init(env, exports); }
NODE_API_MODULE(ovl, InitOvl)
