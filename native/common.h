// Shared pieces of the ovl addon: argument readers that never crash on bad JavaScript, an fd guard, and the
// promise worker every system call runs in (libuv thread pool; rejects with plain data).
#pragma once

#include <napi.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include <fcntl.h>
#include <time.h>
#include <unistd.h>

namespace ovl {


// A failed system call, as plain data for the rejection.
struct SysError {
  int err = 0;
  std::string syscall;
  std::string path;          // the path the call was about, if any
  int step = -1;             // index of the fsconfig step that failed, if any
  std::vector<std::string> messages;  // fs-context log ("e overlay: ..."), if any
  std::vector<std::string> kernel_log;  // overlay's lines in the kernel log (dmesg) printed during the call
};

// CLOCK_MONOTONIC in microseconds: the clock /dev/kmsg stamps its records with.
inline uint64_t MonotonicMicros() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000u + static_cast<uint64_t>(ts.tv_nsec) / 1000u;
}

// Overlay reports most superblock-stage refusals only to the kernel log. Collects the overlay lines
// stamped at or after `since_us` ("prio,seq,usec,flags;message" records, one per read()). Needs
// CAP_SYSLOG (or dmesg_restrict=0); without it, or on any error, collects nothing.
inline void ReadKernelLog(uint64_t since_us, std::vector<std::string>* out) {
  int fd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return;
  char buf[8192];
  for (int i = 0; i < 100000; i++) {
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    if (n < 0) {
      if (errno == EPIPE || errno == EINTR) continue;  // EPIPE: records were overwritten while reading
      break;                                            // EAGAIN: no more records
    }
    if (n == 0) break;
    std::string rec(buf, static_cast<size_t>(n));
    size_t semi = rec.find(';');
    size_t c1 = rec.find(',');
    size_t c2 = c1 == std::string::npos ? c1 : rec.find(',', c1 + 1);
    size_t c3 = c2 == std::string::npos ? c2 : rec.find(',', c2 + 1);
    if (semi == std::string::npos || c3 == std::string::npos || c3 > semi) continue;
    uint64_t usec = std::strtoull(rec.c_str() + c2 + 1, nullptr, 10);
    if (usec < since_us) continue;
    std::string msg = rec.substr(semi + 1);
    size_t nl = msg.find('\n');  // continuation lines (" KEY=value") follow the message
    if (nl != std::string::npos) msg.resize(nl);
    if (msg.rfind("overlayfs: ", 0) == 0 || msg.rfind("overlay: ", 0) == 0) out->push_back(msg);
  }
  close(fd);
}

// Closes a file descriptor when it goes out of scope (on every exit path of a worker).
class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { reset(); }
  int get() const { return fd_; }
  void reset(int fd = -1) {
    if (fd_ >= 0) close(fd_);
    fd_ = fd;
  }

 private:
  int fd_;
};

inline bool HasNul(const std::string& s) { return s.find('\0') != std::string::npos; }

// More entries than any real call needs (the kernel takes at most 500 layers); refusing early keeps a
// sparse `new Array(1e9)` from exhausting memory.
constexpr uint32_t kMaxArrayLength = 65536;

inline bool CheckArray(Napi::Env env, Napi::Value v, const char* what, Napi::Array* out) {
  if (!v.IsArray()) {
    Napi::TypeError::New(env, std::string("ovl native: ") + what + " must be an array").ThrowAsJavaScriptException();
    return false;
  }
  *out = v.As<Napi::Array>();
  if (out->Length() > kMaxArrayLength) {
    Napi::RangeError::New(env, std::string("ovl native: ") + what + " has too many entries")
        .ThrowAsJavaScriptException();
    return false;
  }
  return true;
}

// Argument readers: on a wrong type they throw a TypeError into JavaScript and return false.
inline bool ReadString(const Napi::CallbackInfo& info, size_t i, const char* name, std::string* out) {
  if (info.Length() <= i || !info[i].IsString()) {
    Napi::TypeError::New(info.Env(), std::string("ovl native: argument '") + name + "' must be a string")
        .ThrowAsJavaScriptException();
    return false;
  }
  *out = info[i].As<Napi::String>().Utf8Value();
  if (HasNul(*out)) {
    Napi::TypeError::New(info.Env(), std::string("ovl native: argument '") + name + "' contains a NUL byte")
        .ThrowAsJavaScriptException();
    return false;
  }
  return true;
}

inline bool ReadOptionalString(const Napi::CallbackInfo& info, size_t i, const char* name, std::string* out,
                        bool* present) {
  *present = false;
  if (info.Length() <= i || info[i].IsNull() || info[i].IsUndefined()) return true;
  *present = true;
  return ReadString(info, i, name, out);
}

inline bool ReadUint(const Napi::CallbackInfo& info, size_t i, const char* name, double max, uint64_t* out) {
  if (info.Length() <= i || !info[i].IsNumber()) {
    Napi::TypeError::New(info.Env(), std::string("ovl native: argument '") + name + "' must be a number")
        .ThrowAsJavaScriptException();
    return false;
  }
  double v = info[i].As<Napi::Number>().DoubleValue();
  if (!(v >= 0) || v > max || v != static_cast<double>(static_cast<uint64_t>(v))) {
    Napi::RangeError::New(info.Env(), std::string("ovl native: argument '") + name +
                                          "' must be a non-negative integer in range")
        .ThrowAsJavaScriptException();
    return false;
  }
  *out = static_cast<uint64_t>(v);
  return true;
}

// Drains the fs-context message log of an fsopen() fd. Each read() returns one message.
inline void DrainFsLog(int fsfd, std::vector<std::string>* out) {
  if (fsfd < 0) return;
  char buf[4096];
  for (int i = 0; i < 64; i++) {
    ssize_t n = read(fsfd, buf, sizeof(buf) - 1);
    if (n <= 0) break;
    out->emplace_back(buf, static_cast<size_t>(n));
  }
}

inline Napi::Object SysErrorToObject(Napi::Env env, const SysError& e) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("errno", Napi::Number::New(env, e.err));
  o.Set("syscall", Napi::String::New(env, e.syscall));
  if (!e.path.empty()) o.Set("path", Napi::String::New(env, e.path));
  if (e.step >= 0) o.Set("step", Napi::Number::New(env, e.step));
  Napi::Array msgs = Napi::Array::New(env, e.messages.size());
  for (size_t i = 0; i < e.messages.size(); i++) msgs.Set(i, Napi::String::New(env, e.messages[i]));
  o.Set("messages", msgs);
  Napi::Array log = Napi::Array::New(env, e.kernel_log.size());
  for (size_t i = 0; i < e.kernel_log.size(); i++) log.Set(i, Napi::String::New(env, e.kernel_log[i]));
  o.Set("kernelLog", log);
  return o;
}

// Base worker: runs Run() on the thread pool, then settles a promise. Run() returns false and fills
// error_ on failure; Resolve() builds the value on the main thread.
class PromiseWorker : public Napi::AsyncWorker {
 public:
  explicit PromiseWorker(Napi::Env env) : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }

 protected:
  virtual bool Run() = 0;
  virtual Napi::Value Resolve(Napi::Env env) { return env.Undefined(); }
  bool Fail(const char* syscall, const std::string& path = std::string()) {
    error_.err = errno;
    error_.syscall = syscall;
    error_.path = path;
    return false;
  }
  SysError error_;

 private:
  void Execute() override { ok_ = Run(); }
  void OnOK() override {
    Napi::HandleScope scope(Env());
    if (ok_) {
      deferred_.Resolve(Resolve(Env()));
    } else {
      deferred_.Reject(SysErrorToObject(Env(), error_));
    }
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

  Napi::Promise::Deferred deferred_;
  bool ok_ = false;
};


// Queues a worker on the thread pool and returns the promise it will settle.
inline Napi::Value Queue(PromiseWorker* worker) {
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

// Registers the exports of one native module file on `exports`.
void RegisterXattr(Napi::Env env, Napi::Object exports);

}  // namespace ovl
