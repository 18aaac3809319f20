// Shared pieces of the ovl addon: argument readers that never crash on bad JavaScript, an fd guard, and the
// one way every system call runs: a Call, run on the libuv thread pool behind a promise, or inline for the
// `*Sync` twin. Either way a failure is plain data ({ errno, syscall, ... }), never an Error.
#pragma once

#include <napi.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace ovl {

// A failed system call, as plain data for the rejection.
struct SysError {
  int err = 0;
  std::string syscall;
  std::string path;          // the path the call was about, if any
  int step = -1;             // index of the fsconfig step that failed, if any
  std::vector<std::string> messages;    // fs-context log ("e overlay: ..."), if any
  std::vector<std::string> kernel_log;  // overlay's lines in the kernel log written during the call
  bool has_found_id = false;            // umountAt: the mount id found where the expected one was not
  uint64_t found_id = 0;
  bool has_fs_magic = false;            // cloneIdmapped: statfs f_type of the layer the kernel refused
  uint64_t fs_magic = 0;
};

// Closes a file descriptor when it goes out of scope (on every exit path of a call).
class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { reset(); }
  int get() const { return fd_; }
  int release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }
  void reset(int fd = -1) {
    if (fd_ >= 0) {
      int saved = errno;  // closing never clobbers the errno a failure is about to report
      close(fd_);
      errno = saved;
    }
    fd_ = fd;
  }

 private:
  int fd_;
};

// "/proc/self/fd/N" (+ "/name"): the exact object an fd holds, for calls that take no directory fd.
inline std::string FdPath(int fd, const std::string& name = std::string()) {
  std::string p = "/proc/self/fd/" + std::to_string(fd);
  if (!name.empty()) p += "/" + name;
  return p;
}

// openat2(2) (5.6+; the build machine's headers may predate it): its argument and RESOLVE_* flags.
#ifndef SYS_openat2
#define SYS_openat2 437
#endif
struct OpenHow {
  uint64_t flags;
  uint64_t mode;
  uint64_t resolve;
};
constexpr uint64_t kResolveNoXdev = 0x01;
constexpr uint64_t kResolveNoMagiclinks = 0x02;
constexpr uint64_t kResolveNoSymlinks = 0x04;
constexpr uint64_t kResolveBeneath = 0x08;

// openat2(dirfd, path, flags | O_CLOEXEC, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | more):
// a name below `dirfd` that no symlink, `..` or magic link can lead out of.
inline int OpenBeneath(int dirfd, const std::string& path, uint64_t flags, uint64_t more_resolve = 0) {
  OpenHow how{flags | O_CLOEXEC, 0, kResolveBeneath | kResolveNoSymlinks | kResolveNoMagiclinks | more_resolve};
  return static_cast<int>(syscall(SYS_openat2, dirfd, path.empty() ? "." : path.c_str(), &how, sizeof(how)));
}

inline bool HasNul(const std::string& s) { return s.find('\0') != std::string::npos; }

// More entries than any real call needs (the kernel takes at most 500 layers); refusing early keeps a
// sparse `new Array(1e9)` from exhausting memory.
constexpr uint32_t kMaxArrayLength = 65536;

inline bool ThrowType(Napi::Env env, const std::string& message) {
  Napi::TypeError::New(env, "ovl native: " + message).ThrowAsJavaScriptException();
  return false;
}

inline bool ThrowRange(Napi::Env env, const std::string& message) {
  Napi::RangeError::New(env, "ovl native: " + message).ThrowAsJavaScriptException();
  return false;
}

inline bool CheckArray(Napi::Env env, Napi::Value v, const std::string& what, Napi::Array* out) {
  if (!v.IsArray()) return ThrowType(env, what + " must be an array");
  *out = v.As<Napi::Array>();
  if (out->Length() > kMaxArrayLength) return ThrowRange(env, what + " has too many entries");
  return true;
}

// A path: a string (its UTF-8 bytes) or a Buffer (its bytes as they are), non-empty is not required here,
// without NUL. On a wrong type it throws a TypeError into JavaScript and returns false.
inline bool ValueToPath(Napi::Env env, Napi::Value v, const std::string& what, std::string* out) {
  if (v.IsString()) {
    *out = v.As<Napi::String>().Utf8Value();
  } else if (v.IsBuffer()) {
    auto b = v.As<Napi::Buffer<char>>();
    out->assign(b.Data(), b.Length());
  } else {
    return ThrowType(env, what + " must be a string or a Buffer");
  }
  if (HasNul(*out)) return ThrowType(env, what + " contains a NUL byte");
  return true;
}

inline Napi::Value Arg(const Napi::CallbackInfo& info, size_t i) {
  return info.Length() > i ? info[i] : info.Env().Undefined();
}

inline bool ReadPath(const Napi::CallbackInfo& info, size_t i, const char* name, std::string* out) {
  return ValueToPath(info.Env(), Arg(info, i), std::string("argument '") + name + "'", out);
}

inline bool ReadString(const Napi::CallbackInfo& info, size_t i, const char* name, std::string* out) {
  Napi::Value v = Arg(info, i);
  if (!v.IsString()) return ThrowType(info.Env(), std::string("argument '") + name + "' must be a string");
  *out = v.As<Napi::String>().Utf8Value();
  if (HasNul(*out)) return ThrowType(info.Env(), std::string("argument '") + name + "' contains a NUL byte");
  return true;
}

inline bool ReadOptionalString(const Napi::CallbackInfo& info, size_t i, const char* name, std::string* out,
                               bool* present) {
  *present = false;
  Napi::Value v = Arg(info, i);
  if (v.IsNull() || v.IsUndefined()) return true;
  *present = true;
  return ReadString(info, i, name, out);
}

inline bool ValueToUint(Napi::Env env, Napi::Value v, const std::string& what, double max, uint64_t* out) {
  if (v.IsBigInt()) {
    bool lossless = false;
    uint64_t u = v.As<Napi::BigInt>().Uint64Value(&lossless);
    if (!lossless || static_cast<double>(u) > max) return ThrowRange(env, what + " must be a non-negative integer in range");
    *out = u;
    return true;
  }
  if (!v.IsNumber()) return ThrowType(env, what + " must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= 0) || d > max || d != static_cast<double>(static_cast<uint64_t>(d)))
    return ThrowRange(env, what + " must be a non-negative integer in range");
  *out = static_cast<uint64_t>(d);
  return true;
}

inline bool ReadUint(const Napi::CallbackInfo& info, size_t i, const char* name, double max, uint64_t* out) {
  return ValueToUint(info.Env(), Arg(info, i), std::string("argument '") + name + "'", max, out);
}

// A file descriptor argument: an integer from 0 to INT_MAX.
inline bool ReadFd(Napi::Env env, Napi::Value v, const std::string& what, int* out) {
  uint64_t u = 0;
  if (!v.IsNumber()) return ThrowType(env, what + " must be a file descriptor (a number)");
  if (!ValueToUint(env, v, what, 2147483647.0, &u)) return false;
  *out = static_cast<int>(u);
  return true;
}

// Drains the fs-context message log of an fsopen() fd. Each read() returns one message.
inline void DrainFsLog(int fsfd, std::vector<std::string>* out) {
  if (fsfd < 0) return;
  int saved = errno;
  char buf[4096];
  for (int i = 0; i < 64; i++) {
    ssize_t n = read(fsfd, buf, sizeof(buf));
    if (n <= 0) break;
    out->emplace_back(buf, static_cast<size_t>(n));
  }
  errno = saved;
}

// Bytes as a JavaScript string of one character per byte (latin1): how ovl's TypeScript holds paths, so that
// every byte survives (a UTF-8 decode would turn the bytes of an invalid name into U+FFFD).
inline Napi::String Latin1(Napi::Env env, const char* data, size_t len) {
  napi_value v;
  napi_create_string_latin1(env, data, len, &v);
  return Napi::String(env, v);
}
inline Napi::String Latin1(Napi::Env env, const std::string& s) { return Latin1(env, s.data(), s.size()); }

inline Napi::Array StringsToArray(Napi::Env env, const std::vector<std::string>& v) {
  Napi::Array a = Napi::Array::New(env, v.size());
  for (size_t i = 0; i < v.size(); i++) a.Set(i, Napi::String::New(env, v[i]));
  return a;
}

inline Napi::Object SysErrorToObject(Napi::Env env, const SysError& e) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("errno", Napi::Number::New(env, e.err));
  o.Set("syscall", Napi::String::New(env, e.syscall));
  if (!e.path.empty()) o.Set("path", Napi::String::New(env, e.path));
  if (e.step >= 0) o.Set("step", Napi::Number::New(env, e.step));
  o.Set("messages", StringsToArray(env, e.messages));
  o.Set("kernelLog", StringsToArray(env, e.kernel_log));
  if (e.has_found_id) o.Set("foundMountId", Napi::Number::New(env, static_cast<double>(e.found_id)));
  if (e.has_fs_magic) o.Set("fsMagic", Napi::Number::New(env, static_cast<double>(e.fs_magic)));
  return o;
}

// One system-call job: Run() does the calls (on a pool thread, or inline for *Sync) and touches no
// JavaScript; Resolve() builds the plain result on the main thread.
class Call {
 public:
  virtual ~Call() = default;
  virtual bool Run() = 0;
  virtual Napi::Value Resolve(Napi::Env env) { return env.Undefined(); }
  SysError error_;

 protected:
  // Records errno of the call that just failed (read first, before anything else can change it).
  bool Fail(const char* syscall, const std::string& path = std::string()) {
    error_.err = errno;
    error_.syscall = syscall;
    error_.path = path;
    return false;
  }
};

// Runs a Call on the libuv thread pool and settles a promise with its result or its failure.
class CallWorker : public Napi::AsyncWorker {
 public:
  CallWorker(Napi::Env env, std::unique_ptr<Call> call)
      : Napi::AsyncWorker(env), call_(std::move(call)), deferred_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }

 private:
  void Execute() override { ok_ = call_->Run(); }
  void OnOK() override {
    Napi::HandleScope scope(Env());
    if (ok_) deferred_.Resolve(call_->Resolve(Env()));
    else deferred_.Reject(SysErrorToObject(Env(), call_->error_));
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

  std::unique_ptr<Call> call_;
  Napi::Promise::Deferred deferred_;
  bool ok_ = false;
};

// The promise of a Call on the thread pool, or (sync) its result now, a failure thrown as its plain data.
inline Napi::Value Dispatch(Napi::Env env, std::unique_ptr<Call> call, bool sync) {
  if (sync) {
    if (call->Run()) return call->Resolve(env);
    napi_throw(env, SysErrorToObject(env, call->error_));
    return env.Undefined();
  }
  auto* worker = new CallWorker(env, std::move(call));
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

// A binding with an async form (`name`) and a sync twin (`nameSync`).
template <Napi::Value (*F)(const Napi::CallbackInfo&, bool)>
void ExportBoth(Napi::Env env, Napi::Object exports, const char* name) {
  exports.Set(name, Napi::Function::New(env, [](const Napi::CallbackInfo& info) { return F(info, false); }, name));
  std::string sync = std::string(name) + "Sync";
  exports.Set(sync, Napi::Function::New(env, [](const Napi::CallbackInfo& info) { return F(info, true); }, sync));
}

// The exports of each native module file.
void RegisterMount(Napi::Env env, Napi::Object exports);
void RegisterTable(Napi::Env env, Napi::Object exports);
void RegisterWalk(Napi::Env env, Napi::Object exports);
void RegisterTree(Napi::Env env, Napi::Object exports);
void RegisterIdmap(Napi::Env env, Napi::Object exports);

}  // namespace ovl
