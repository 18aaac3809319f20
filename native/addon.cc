// ovl native addon: the system calls and nothing else.
//
// Every export returns a Promise; the call itself runs on the libuv thread pool. errno is read right
// after the failing call and the promise is rejected with plain data ({ errno, syscall, ... }), which
// src/errors.ts turns into a Node-style Error. All argument checking beyond "is this the right type"
// lives in TypeScript; the type checks here only keep bad JavaScript from crashing the process.

#include <napi.h>
#include <uv.h>

#include "common.h"

#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

// --- constants the system headers may lack -------------------------------------------------------

#ifndef SYS_fsopen
#define SYS_fsopen 430
#endif
#ifndef SYS_fsconfig
#define SYS_fsconfig 431
#endif
#ifndef SYS_fsmount
#define SYS_fsmount 432
#endif
#ifndef SYS_move_mount
#define SYS_move_mount 429
#endif
#ifndef SYS_statmount
#define SYS_statmount 457
#endif

#ifndef STATX_MNT_ID_UNIQUE
#define STATX_MNT_ID_UNIQUE 0x00004000U
#endif

namespace ovl {
namespace {

constexpr unsigned kFsopenCloexec = 0x00000001;
// /dev/kmsg stamps records with local_clock(), which can trail CLOCK_MONOTONIC by a little.
constexpr uint64_t kKernelLogSlackMicros = 2000;
constexpr unsigned kFsmountCloexec = 0x00000001;
constexpr unsigned kMoveMountFEmptyPath = 0x00000004;
constexpr unsigned kFsconfigSetFlag = 0;
constexpr unsigned kFsconfigSetString = 1;
constexpr unsigned kFsconfigSetFd = 5;
constexpr unsigned kFsconfigCmdCreate = 6;

// uapi/linux/mount.h (6.8+); declared here because the build machine's headers predate it.
struct MntIdReq {
  uint32_t size;
  uint32_t spare;
  uint64_t mnt_id;
  uint64_t param;
  uint64_t mnt_ns_id;
};
constexpr uint32_t kMntIdReqSizeVer0 = 24;

struct StatMountBuf {
  uint32_t size;
  uint32_t mnt_opts;
  uint64_t mask;
  uint32_t sb_dev_major;
  uint32_t sb_dev_minor;
  uint64_t sb_magic;
  uint32_t sb_flags;
  uint32_t fs_type;
  uint64_t mnt_id;
  uint64_t mnt_parent_id;
  uint32_t mnt_id_old;
  uint32_t mnt_parent_id_old;
  uint64_t mnt_attr;
  uint64_t mnt_propagation;
  uint64_t mnt_peer_group;
  uint64_t mnt_master;
  uint64_t propagate_from;
  uint32_t mnt_root;
  uint32_t mnt_point;
  uint64_t mnt_ns_id;
  uint32_t fs_subtype;
  uint32_t sb_source;
  uint32_t opt_num;
  uint32_t opt_array;
  uint32_t opt_sec_num;
  uint32_t opt_sec_array;
  uint64_t supported_mask;
  uint32_t mnt_uidmap_num;
  uint32_t mnt_uidmap;
  uint32_t mnt_gidmap_num;
  uint32_t mnt_gidmap;
  uint64_t spare2[43];
  char str[];
};

constexpr uint64_t kStatmountSbBasic = 0x1;
constexpr uint64_t kStatmountMntBasic = 0x2;
constexpr uint64_t kStatmountPropagateFrom = 0x4;
constexpr uint64_t kStatmountMntRoot = 0x8;
constexpr uint64_t kStatmountMntPoint = 0x10;
constexpr uint64_t kStatmountFsType = 0x20;
constexpr uint64_t kStatmountFsSubtype = 0x100;
constexpr uint64_t kStatmountSbSource = 0x200;
constexpr uint64_t kStatmountOptArray = 0x400;

// --- mount(2) --------------------------------------------------------------------------------------

class MountWorker : public PromiseWorker {
 public:
  MountWorker(Napi::Env env, std::string source, std::string target, std::string fstype, unsigned long flags,
              std::string data, bool has_data)
      : PromiseWorker(env), source_(std::move(source)), target_(std::move(target)), fstype_(std::move(fstype)),
        flags_(flags), data_(std::move(data)), has_data_(has_data) {}

 protected:
  bool Run() override {
    const uint64_t started = MonotonicMicros();
    if (::mount(source_.c_str(), target_.c_str(), fstype_.c_str(), flags_, has_data_ ? data_.c_str() : nullptr) != 0) {
      Fail("mount", target_);
      ReadKernelLog(started - kKernelLogSlackMicros, &error_.kernel_log);
      return false;
    }
    return true;
  }

 private:
  std::string source_, target_, fstype_;
  unsigned long flags_;
  std::string data_;
  bool has_data_;
};

// mount(source, target, fstype, flags, data|null)
Napi::Value Mount(const Napi::CallbackInfo& info) {
  std::string source, target, fstype, data;
  uint64_t flags = 0;
  bool has_data = false;
  if (!ReadString(info, 0, "source", &source) || !ReadString(info, 1, "target", &target) ||
      !ReadString(info, 2, "fstype", &fstype) || !ReadUint(info, 3, "flags", 4294967295.0, &flags) ||
      !ReadOptionalString(info, 4, "data", &data, &has_data))
    return info.Env().Undefined();
  return Queue(new MountWorker(info.Env(), source, target, fstype, static_cast<unsigned long>(flags), data, has_data));
}

// --- umount2(2) ------------------------------------------------------------------------------------

class UmountWorker : public PromiseWorker {
 public:
  UmountWorker(Napi::Env env, std::string target, int flags)
      : PromiseWorker(env), target_(std::move(target)), flags_(flags) {}

 protected:
  bool Run() override {
    if (::umount2(target_.c_str(), flags_) != 0) return Fail("umount2", target_);
    return true;
  }

 private:
  std::string target_;
  int flags_;
};

// umount(target, flags)
Napi::Value Umount(const Napi::CallbackInfo& info) {
  std::string target;
  uint64_t flags = 0;
  if (!ReadString(info, 0, "target", &target) || !ReadUint(info, 1, "flags", 2147483647.0, &flags))
    return info.Env().Undefined();
  return Queue(new UmountWorker(info.Env(), target, static_cast<int>(flags)));
}

// --- the new mount API: fsopen, fsconfig..., fsmount, move_mount -----------------------------------

struct ConfigStep {
  unsigned kind;      // FSCONFIG_SET_FLAG, _SET_STRING, or _SET_FD (value is a path, opened O_PATH here)
  std::string key;
  std::string value;
};

// Reads the mount id of an open mount fd: the unique 64-bit id where the kernel has it (6.8+),
// else the reusable id shown in mountinfo.
bool StatxMountId(int dirfd, const char* path, int flags, uint64_t* id, bool* unique, bool want_unique = true) {
  struct statx stx;
  std::memset(&stx, 0, sizeof(stx));
  if (statx(dirfd, path, flags, STATX_MNT_ID | (want_unique ? STATX_MNT_ID_UNIQUE : 0), &stx) != 0) return false;
  *unique = (stx.stx_mask & STATX_MNT_ID_UNIQUE) != 0;
  *id = stx.stx_mnt_id;
  return true;
}

bool StatMountInto(uint64_t id, size_t size_hint, std::vector<char>* buf);
Napi::Object StatMountToObject(Napi::Env env, const std::vector<char>& buf);

class FsMountWorker : public PromiseWorker {
 public:
  FsMountWorker(Napi::Env env, std::string fstype, std::vector<ConfigStep> steps, unsigned attr_flags,
                std::string target, bool create, size_t describe_hint)
      : PromiseWorker(env), fstype_(std::move(fstype)), steps_(std::move(steps)), attr_flags_(attr_flags),
        target_(std::move(target)), create_(create), describe_hint_(describe_hint) {}

 protected:
  bool Run() override {
    started_ = MonotonicMicros();
    Fd fsfd(static_cast<int>(syscall(SYS_fsopen, fstype_.c_str(), kFsopenCloexec)));
    if (fsfd.get() < 0) return Fail("fsopen");
    for (size_t i = 0; i < steps_.size(); i++) {
      const ConfigStep& s = steps_[i];
      long rc;
      if (s.kind == kFsconfigSetFd) {
        Fd layer(open(s.value.c_str(), O_PATH | O_CLOEXEC));
        if (layer.get() < 0) return FailStep("open", static_cast<int>(i), s.value, -1);
        rc = syscall(SYS_fsconfig, fsfd.get(), kFsconfigSetFd, s.key.c_str(), nullptr, layer.get());
      } else if (s.kind == kFsconfigSetString) {
        rc = syscall(SYS_fsconfig, fsfd.get(), kFsconfigSetString, s.key.c_str(), s.value.c_str(), 0);
      } else {
        rc = syscall(SYS_fsconfig, fsfd.get(), kFsconfigSetFlag, s.key.c_str(), nullptr, 0);
      }
      if (rc != 0) return FailStep("fsconfig", static_cast<int>(i), std::string(), fsfd.get());
    }
    if (!create_) {
      DrainFsLog(fsfd.get(), &messages_);
      return true;
    }
    if (syscall(SYS_fsconfig, fsfd.get(), kFsconfigCmdCreate, nullptr, nullptr, 0) != 0)
      return FailStep("fsconfig", -1, std::string(), fsfd.get());
    Fd mfd(static_cast<int>(syscall(SYS_fsmount, fsfd.get(), kFsmountCloexec, attr_flags_)));
    if (mfd.get() < 0) return FailStep("fsmount", -1, std::string(), fsfd.get());
    DrainFsLog(fsfd.get(), &messages_);  // warnings of a mount that succeeded
    if (!StatxMountId(mfd.get(), "", AT_EMPTY_PATH, &mnt_id_, &unique_)) return Fail("statx");
    if (syscall(SYS_move_mount, mfd.get(), "", AT_FDCWD, target_.c_str(), kMoveMountFEmptyPath) != 0)
      return Fail("move_mount", target_);
    // Describe the new mount in this same trip; a kernel without statmount (ENOSYS) leaves it to the caller.
    if (describe_hint_ > 0 && unique_) described_ = StatMountInto(mnt_id_, describe_hint_, &statmount_);
    return true;
  }

  Napi::Value Resolve(Napi::Env env) override {
    Napi::Object o = Napi::Object::New(env);
    if (create_) {
      o.Set("mountId", Napi::Number::New(env, static_cast<double>(mnt_id_)));
      o.Set("unique", Napi::Boolean::New(env, unique_));
      if (described_) o.Set("statmount", StatMountToObject(env, statmount_));
    }
    Napi::Array msgs = Napi::Array::New(env, messages_.size());
    for (size_t i = 0; i < messages_.size(); i++) msgs.Set(i, Napi::String::New(env, messages_[i]));
    o.Set("messages", msgs);
    return o;
  }

 private:
  bool FailStep(const char* syscall, int step, const std::string& path, int fsfd) {
    Fail(syscall, path);
    error_.step = step;
    DrainFsLog(fsfd, &error_.messages);
    if (error_.messages.empty()) ReadKernelLog(started_ - kKernelLogSlackMicros, &error_.kernel_log);
    return false;
  }
  uint64_t started_ = 0;

  std::string fstype_;
  std::vector<ConfigStep> steps_;
  unsigned attr_flags_;
  std::string target_;
  bool create_;
  size_t describe_hint_;
  uint64_t mnt_id_ = 0;
  bool unique_ = false;
  bool described_ = false;
  std::vector<char> statmount_;
  std::vector<std::string> messages_;
};

// fsMount(fstype, steps: [kind, key, value?][], attrFlags, target|null, describeSizeHint?)
// A describeSizeHint > 0 also returns the new mount's statmount fields (sized by the hint).
// With target null the context is configured and then dropped: a probe of what the kernel accepts.
Napi::Value FsMount(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string fstype, target;
  uint64_t attr = 0;
  bool has_target = false;
  if (!ReadString(info, 0, "fstype", &fstype)) return env.Undefined();
  Napi::Array arr;
  if (!CheckArray(env, info.Length() < 2 ? env.Undefined() : info[1], "argument 'steps'", &arr))
    return env.Undefined();
  std::vector<ConfigStep> steps;
  steps.reserve(arr.Length());
  for (uint32_t i = 0; i < arr.Length(); i++) {
    Napi::Value v = arr.Get(i);
    if (env.IsExceptionPending()) return env.Undefined();
    Napi::Array s;
    if (!CheckArray(env, v, "each step ([kind, key, value?])", &s)) return env.Undefined();
    Napi::Value kind = s.Get(0u), key = s.Get(1u), value = s.Get(2u);
    if (env.IsExceptionPending()) return env.Undefined();
    if (!kind.IsNumber() || !key.IsString()) {
      Napi::TypeError::New(env, "ovl native: step kind must be a number and key a string")
          .ThrowAsJavaScriptException();
      return env.Undefined();
    }
    ConfigStep step;
    double k = kind.As<Napi::Number>().DoubleValue();
    if (k != kFsconfigSetFlag && k != kFsconfigSetString && k != kFsconfigSetFd) {
      Napi::RangeError::New(env, "ovl native: step kind must be 0 (flag), 1 (string) or 5 (fd)")
          .ThrowAsJavaScriptException();
      return env.Undefined();
    }
    step.kind = static_cast<unsigned>(k);
    step.key = key.As<Napi::String>().Utf8Value();
    if (step.kind != kFsconfigSetFlag) {
      if (!value.IsString()) {
        Napi::TypeError::New(env, "ovl native: string and fd steps need a string value")
            .ThrowAsJavaScriptException();
        return env.Undefined();
      }
      step.value = value.As<Napi::String>().Utf8Value();
    }
    if (HasNul(step.key) || HasNul(step.value)) {
      Napi::TypeError::New(env, "ovl native: step key or value contains a NUL byte").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    steps.push_back(std::move(step));
  }
  uint64_t describe = 0;
  if (!ReadUint(info, 2, "attrFlags", 4294967295.0, &attr) ||
      !ReadOptionalString(info, 3, "target", &target, &has_target))
    return env.Undefined();
  if (info.Length() > 4 && !info[4].IsUndefined() && !ReadUint(info, 4, "describeSizeHint", 16777216.0, &describe))
    return env.Undefined();
  return Queue(new FsMountWorker(env, fstype, std::move(steps), static_cast<unsigned>(attr), target, has_target,
                                 static_cast<size_t>(describe)));
}

// --- statx: the mount id of a path -------------------------------------------------------------------

class MountIdWorker : public PromiseWorker {
 public:
  MountIdWorker(Napi::Env env, std::string path, bool want_unique)
      : PromiseWorker(env), path_(std::move(path)), want_unique_(want_unique) {}

 protected:
  bool Run() override {
    if (!StatxMountId(AT_FDCWD, path_.c_str(), AT_NO_AUTOMOUNT, &id_, &unique_, want_unique_))
      return Fail("statx", path_);
    return true;
  }
  Napi::Value Resolve(Napi::Env env) override {
    Napi::Object o = Napi::Object::New(env);
    o.Set("mountId", Napi::Number::New(env, static_cast<double>(id_)));
    o.Set("unique", Napi::Boolean::New(env, unique_));
    return o;
  }

 private:
  std::string path_;
  bool want_unique_;
  uint64_t id_ = 0;
  bool unique_ = false;
};

// mountId(path, unique): the unique 64-bit id where the kernel has one and `unique` is true, else the
// reusable id that mountinfo shows.
Napi::Value MountId(const Napi::CallbackInfo& info) {
  std::string path;
  if (!ReadString(info, 0, "path", &path)) return info.Env().Undefined();
  if (info.Length() < 2 || !info[1].IsBoolean()) {
    Napi::TypeError::New(info.Env(), "ovl native: argument 'unique' must be a boolean").ThrowAsJavaScriptException();
    return info.Env().Undefined();
  }
  return Queue(new MountIdWorker(info.Env(), path, info[1].As<Napi::Boolean>().Value()));
}

// --- realpath + statx for many paths in one trip (validation input) --------------------------------

struct PathFacts {
  int err = 0;
  const char* syscall = "";
  std::string real;
  uint32_t mode = 0;
  uint32_t dev_major = 0, dev_minor = 0;
  uint64_t ino = 0;
  uint64_t mnt_id = 0;
  bool unique = false;
  bool listed = false;           // the directory's entries were asked for
  int list_err = 0;              // errno of opendir/readdir
  uint64_t entry_count = 0;      // entries other than . and ..
  std::vector<std::string> entries;  // the first kMaxListedEntries of them
};

constexpr size_t kMaxListedEntries = 16;

class InspectWorker : public PromiseWorker {
 public:
  InspectWorker(Napi::Env env, std::vector<std::string> paths, std::vector<bool> list)
      : PromiseWorker(env), paths_(std::move(paths)), list_(std::move(list)) {}

 protected:
  bool Run() override {
    facts_.resize(paths_.size());
    for (size_t i = 0; i < paths_.size(); i++) {
      PathFacts& f = facts_[i];
      char* real = realpath(paths_[i].c_str(), nullptr);
      if (real == nullptr) {
        f.err = errno;
        f.syscall = "realpath";
        continue;
      }
      f.real = real;
      free(real);
      struct statx stx;
      std::memset(&stx, 0, sizeof(stx));
      if (statx(AT_FDCWD, f.real.c_str(), AT_NO_AUTOMOUNT,
                STATX_TYPE | STATX_MODE | STATX_INO | STATX_MNT_ID | STATX_MNT_ID_UNIQUE, &stx) != 0) {
        f.err = errno;
        f.syscall = "statx";
        continue;
      }
      f.mode = stx.stx_mode;
      f.dev_major = stx.stx_dev_major;
      f.dev_minor = stx.stx_dev_minor;
      f.ino = stx.stx_ino;
      f.mnt_id = stx.stx_mnt_id;
      f.unique = (stx.stx_mask & STATX_MNT_ID_UNIQUE) != 0;
      if (list_[i] && S_ISDIR(stx.stx_mode)) ListDir(f);
    }
    return true;
  }

  static void ListDir(PathFacts& f) {
    f.listed = true;
    DIR* dir = opendir(f.real.c_str());
    if (dir == nullptr) {
      f.list_err = errno;
      return;
    }
    errno = 0;
    while (struct dirent* e = readdir(dir)) {
      if (std::strcmp(e->d_name, ".") == 0 || std::strcmp(e->d_name, "..") == 0) continue;
      if (f.entries.size() < kMaxListedEntries) f.entries.emplace_back(e->d_name);
      f.entry_count++;
    }
    if (errno != 0) f.list_err = errno;
    closedir(dir);
  }
  Napi::Value Resolve(Napi::Env env) override {
    Napi::Array out = Napi::Array::New(env, facts_.size());
    for (size_t i = 0; i < facts_.size(); i++) {
      const PathFacts& f = facts_[i];
      Napi::Object o = Napi::Object::New(env);
      if (f.err != 0) {
        o.Set("errno", Napi::Number::New(env, f.err));
        o.Set("syscall", Napi::String::New(env, f.syscall));
      } else {
        o.Set("realpath", Napi::String::New(env, f.real));
        o.Set("mode", Napi::Number::New(env, f.mode));
        o.Set("devMajor", Napi::Number::New(env, f.dev_major));
        o.Set("devMinor", Napi::Number::New(env, f.dev_minor));
        o.Set("ino", Napi::Number::New(env, static_cast<double>(f.ino)));
        o.Set("mountId", Napi::Number::New(env, static_cast<double>(f.mnt_id)));
        o.Set("uniqueMountId", Napi::Boolean::New(env, f.unique));
        if (f.listed) {
          if (f.list_err != 0) o.Set("listErrno", Napi::Number::New(env, f.list_err));
          o.Set("entryCount", Napi::Number::New(env, static_cast<double>(f.entry_count)));
          Napi::Array names = Napi::Array::New(env, f.entries.size());
          for (size_t k = 0; k < f.entries.size(); k++) names.Set(k, Napi::String::New(env, f.entries[k]));
          o.Set("entries", names);
        }
      }
      out.Set(i, o);
    }
    return out;
  }

 private:
  std::vector<std::string> paths_;
  std::vector<bool> list_;
  std::vector<PathFacts> facts_;
};

// inspectPaths(paths: string[], list?: number[]) -> [{ realpath, mode, devMajor, devMinor, ino, mountId,
// uniqueMountId, entryCount?, entries?, listErrno? } | { errno, syscall }]: `list` names the indexes of
// directories whose entries to read as well (the first 16 names and the count).
Napi::Value InspectPaths(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Array arr;
  if (!CheckArray(env, info.Length() < 1 ? env.Undefined() : info[0], "argument 'paths'", &arr))
    return env.Undefined();
  std::vector<std::string> paths;
  paths.reserve(arr.Length());
  for (uint32_t i = 0; i < arr.Length(); i++) {
    Napi::Value v = arr.Get(i);
    if (env.IsExceptionPending()) return env.Undefined();
    if (!v.IsString()) {
      Napi::TypeError::New(env, "ovl native: argument 'paths' must be an array of strings")
          .ThrowAsJavaScriptException();
      return env.Undefined();
    }
    std::string s = v.As<Napi::String>().Utf8Value();
    if (HasNul(s)) {
      Napi::TypeError::New(env, "ovl native: a path contains a NUL byte").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    paths.push_back(std::move(s));
  }
  std::vector<bool> list(paths.size(), false);
  if (info.Length() > 1 && !info[1].IsUndefined()) {
    Napi::Array idx;
    if (!CheckArray(env, info[1], "argument 'list'", &idx)) return env.Undefined();
    for (uint32_t i = 0; i < idx.Length(); i++) {
      Napi::Value v = idx.Get(i);
      if (env.IsExceptionPending()) return env.Undefined();
      double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1;
      if (!(d >= 0) || d >= static_cast<double>(paths.size()) || d != static_cast<double>(static_cast<size_t>(d))) {
        Napi::RangeError::New(env, "ovl native: 'list' must hold indexes into 'paths'").ThrowAsJavaScriptException();
        return env.Undefined();
      }
      list[static_cast<size_t>(d)] = true;
    }
  }
  return Queue(new InspectWorker(env, std::move(paths), std::move(list)));
}

// --- statmount(2): one mount's fields by its unique id ----------------------------------------------

// statmount(2) of one mount into `buf`, growing it until the strings fit. `size_hint` is the caller's guess
// of the size (options of a 500-layer overlay run to tens of KiB). Returns false with errno set.
bool StatMountInto(uint64_t id, size_t size_hint, std::vector<char>* buf) {
  MntIdReq req;
  std::memset(&req, 0, sizeof(req));
  req.size = kMntIdReqSizeVer0;
  req.mnt_id = id;
  req.param = kStatmountSbBasic | kStatmountMntBasic | kStatmountPropagateFrom | kStatmountMntRoot |
              kStatmountMntPoint | kStatmountFsType | kStatmountFsSubtype | kStatmountSbSource | kStatmountOptArray;
  size_t size = sizeof(StatMountBuf) + (size_hint > 4096 ? size_hint : 4096);
  for (;;) {
    buf->resize(size);
    if (syscall(SYS_statmount, &req, buf->data(), buf->size(), 0) == 0) return true;
    if (errno != EOVERFLOW || size >= (64u << 20)) return false;
    size *= 4;
  }
}

Napi::Object StatMountToObject(Napi::Env env, const std::vector<char>& buf) {
  const auto* sm = reinterpret_cast<const StatMountBuf*>(buf.data());
  const char* strs = sm->str;
  const size_t str_room = buf.size() - sizeof(StatMountBuf);
  auto str_at = [&](uint32_t off) -> Napi::Value {
    if (off >= str_room) return env.Undefined();
    return Napi::String::New(env, strs + off, strnlen(strs + off, str_room - off));
  };
  Napi::Object o = Napi::Object::New(env);
  o.Set("mask", Napi::Number::New(env, static_cast<double>(sm->mask)));
  o.Set("mountId", Napi::Number::New(env, static_cast<double>(sm->mnt_id)));
  o.Set("parentMountId", Napi::Number::New(env, static_cast<double>(sm->mnt_parent_id)));
  o.Set("mountIdOld", Napi::Number::New(env, sm->mnt_id_old));
  o.Set("parentMountIdOld", Napi::Number::New(env, sm->mnt_parent_id_old));
  o.Set("devMajor", Napi::Number::New(env, sm->sb_dev_major));
  o.Set("devMinor", Napi::Number::New(env, sm->sb_dev_minor));
  o.Set("sbFlags", Napi::Number::New(env, sm->sb_flags));
  o.Set("mountAttr", Napi::Number::New(env, static_cast<double>(sm->mnt_attr)));
  o.Set("propagation", Napi::Number::New(env, static_cast<double>(sm->mnt_propagation)));
  o.Set("peerGroup", Napi::Number::New(env, static_cast<double>(sm->mnt_peer_group)));
  o.Set("master", Napi::Number::New(env, static_cast<double>(sm->mnt_master)));
  o.Set("propagateFrom", Napi::Number::New(env, static_cast<double>(sm->propagate_from)));
  if (sm->mask & kStatmountMntRoot) o.Set("root", str_at(sm->mnt_root));
  if (sm->mask & kStatmountMntPoint) o.Set("point", str_at(sm->mnt_point));
  if (sm->mask & kStatmountFsType) o.Set("fsType", str_at(sm->fs_type));
  if (sm->mask & kStatmountFsSubtype) o.Set("fsSubtype", str_at(sm->fs_subtype));
  if (sm->mask & kStatmountSbSource) o.Set("source", str_at(sm->sb_source));
  if (sm->mask & kStatmountOptArray) {
    Napi::Array opts = Napi::Array::New(env);
    size_t off = sm->opt_array;
    for (uint32_t i = 0; i < sm->opt_num && off < str_room; i++) {
      size_t len = strnlen(strs + off, str_room - off);
      opts.Set(i, Napi::String::New(env, strs + off, len));
      off += len + 1;
    }
    o.Set("options", opts);
  }
  return o;
}

class StatMountWorker : public PromiseWorker {
 public:
  StatMountWorker(Napi::Env env, uint64_t id, size_t size_hint) : PromiseWorker(env), id_(id), size_hint_(size_hint) {}

 protected:
  bool Run() override { return StatMountInto(id_, size_hint_, &buf_) || Fail("statmount"); }
  Napi::Value Resolve(Napi::Env env) override { return StatMountToObject(env, buf_); }

 private:
  uint64_t id_;
  size_t size_hint_;
  std::vector<char> buf_;
};

// statMount(uniqueMountId, sizeHint?)
Napi::Value StatMount(const Napi::CallbackInfo& info) {
  uint64_t id = 0, hint = 0;
  if (!ReadUint(info, 0, "mountId", 9007199254740991.0, &id)) return info.Env().Undefined();
  if (info.Length() > 1 && !info[1].IsUndefined() && !ReadUint(info, 1, "sizeHint", 16777216.0, &hint))
    return info.Env().Undefined();
  return Queue(new StatMountWorker(info.Env(), id, static_cast<size_t>(hint)));
}

// --- reading a whole /proc file in one trip -----------------------------------------------------------

// Reads `fd` from its start to the end (proc files are generated as they are read, a page or so per read()).
bool ReadWhole(int fd, const std::string& path, std::string* out, SysError* error) {
  if (lseek(fd, 0, SEEK_SET) < 0) {
    error->err = errno;
    error->syscall = "lseek";
    error->path = path;
    return false;
  }
  char buf[65536];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      error->err = errno;
      error->syscall = "read";
      error->path = path;
      return false;
    }
    if (n == 0) return true;
    out->append(buf, static_cast<size_t>(n));
  }
}

class ReadTextWorker : public PromiseWorker {
 public:
  ReadTextWorker(Napi::Env env, std::string path) : PromiseWorker(env), path_(std::move(path)) {}

 protected:
  bool Run() override {
    Fd fd(open(path_.c_str(), O_RDONLY | O_CLOEXEC));
    if (fd.get() < 0) return Fail("open", path_);
    return ReadWhole(fd.get(), path_, &text_, &error_);
  }
  Napi::Value Resolve(Napi::Env env) override { return Napi::String::New(env, text_); }

 private:
  std::string path_;
  std::string text_;
};

// readText(path): the whole file as UTF-8 text, opened, read and closed in one trip to the thread pool.
Napi::Value ReadText(const Napi::CallbackInfo& info) {
  std::string path;
  if (!ReadString(info, 0, "path", &path)) return info.Env().Undefined();
  return Queue(new ReadTextWorker(info.Env(), path));
}

// --- watching the mount table: EPOLLPRI on an open mountinfo file, in libuv's own event loop --------------
//
// The kernel marks an open mountinfo file with POLLPRI|POLLERR once per change to the mount table (since the
// file was opened or last reported). Waiting is done by the event loop itself (uv_poll, UV_PRIORITIZED), so
// a watcher holds no thread; only the re-read of the table runs on the thread pool.
//
// One trap: mounts_poll() reports a change once and forgets it, and epoll polls a file twice for one report
// (at EPOLL_CTL_ADD, and again to deliver it), so a change made before the registration is consumed and
// never delivered (libuv's uv_poll_init even probes with an ADD/DEL). Changes during a registered wait are
// delivered. So once the registration is live (a check handle runs after the poll phase that made it), the
// table is read once more.

struct WatchState;

// Reads the whole table from the watcher's fd (opening it first on the first call) on the thread pool, and
// settles `deferred` with the text.
class WatchReadWorker : public Napi::AsyncWorker {
 public:
  WatchReadWorker(Napi::Env env, std::shared_ptr<WatchState> state, Napi::Promise::Deferred deferred)
      : Napi::AsyncWorker(env), state_(std::move(state)), deferred_(deferred) {}
  void Execute() override;
  void OnOK() override;
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  std::shared_ptr<WatchState> state_;
  Napi::Promise::Deferred deferred_;
  bool opened_here_ = false;
  SysError error_;
  std::string text_;
};

struct WatchState : std::enable_shared_from_this<WatchState> {
  Napi::Env env;
  std::string path;
  int fd = -1;
  bool reading = false;   // a WatchReadWorker is using fd
  bool closed = false;
  bool changed = false;   // a change arrived while no next() was waiting
  uv_poll_t* poll = nullptr;
  uv_timer_t* timer = nullptr;
  uv_check_t* check = nullptr;  // one shot: fires after the poll phase that registered `poll`
  std::unique_ptr<Napi::Promise::Deferred> waiting;  // a next() waiting for a change or its timeout
  std::unique_ptr<Napi::AsyncContext> context;       // for settling promises from libuv callbacks

  explicit WatchState(Napi::Env e) : env(e) {}

  uv_loop_t* Loop() {
    uv_loop_t* loop = nullptr;
    napi_get_uv_event_loop(env, &loop);
    return loop;
  }

  void Read(Napi::Promise::Deferred deferred) {
    reading = true;
    (new WatchReadWorker(env, shared_from_this(), deferred))->Queue();
  }

  // Settles the waiting next() from a libuv callback, inside a callback scope so promise reactions run.
  void SettleWaiting(bool with_read) {
    if (!waiting) return;
    Napi::Promise::Deferred d = *waiting;
    waiting.reset();
    if (timer) uv_timer_stop(timer);
    Napi::HandleScope handles(env);
    Napi::CallbackScope scope(env, *context);
    if (with_read) Read(d);
    else d.Resolve(env.Null());
  }

  static void OnPoll(uv_poll_t* handle, int status, int events) {
    auto* self = static_cast<WatchState*>(handle->data);
    if (status < 0 || (events & UV_PRIORITIZED)) {
      if (self->waiting) self->SettleWaiting(true);
      else self->changed = true;
    }
  }

  static void OnTimer(uv_timer_t* handle) { static_cast<WatchState*>(handle->data)->SettleWaiting(false); }

  static void OnRegistered(uv_check_t* handle) {
    auto* self = static_cast<WatchState*>(handle->data);
    uv_check_stop(handle);
    // Whatever changed between the first read and the registration is read now.
    if (self->waiting) self->SettleWaiting(true);
    else self->changed = true;
  }

  // Starts watching the fd once it is open (on the main thread, after the first read).
  void StartPolling() {
    if (closed || poll != nullptr || fd < 0) return;
    poll = new uv_poll_t;
    if (uv_poll_init(Loop(), poll, fd) != 0) {
      delete poll;
      poll = nullptr;
      return;
    }
    poll->data = this;
    uv_poll_start(poll, UV_PRIORITIZED, OnPoll);
    uv_unref(reinterpret_cast<uv_handle_t*>(poll));  // a watcher alone does not keep the process alive
    check = new uv_check_t;
    uv_check_init(Loop(), check);
    check->data = this;
    uv_check_start(check, OnRegistered);
    uv_unref(reinterpret_cast<uv_handle_t*>(check));
  }

  void Close() {
    if (closed) return;
    closed = true;
    // The handles hold a raw pointer to this state: keep it alive until libuv has closed them.
    auto* keep = new std::shared_ptr<WatchState>(shared_from_this());
    int handles = (poll ? 1 : 0) + (timer ? 1 : 0) + (check ? 1 : 0);
    auto on_closed = [](uv_handle_t* h) {
      auto* holder = static_cast<std::shared_ptr<WatchState>*>(h->data);
      WatchState* st = holder->get();
      if (h == reinterpret_cast<uv_handle_t*>(st->poll)) { delete st->poll; st->poll = nullptr; }
      else if (h == reinterpret_cast<uv_handle_t*>(st->timer)) { delete st->timer; st->timer = nullptr; }
      else { delete st->check; st->check = nullptr; }
      if (st->poll == nullptr && st->timer == nullptr && st->check == nullptr) delete holder;
    };
    if (poll) {
      uv_poll_stop(poll);
      poll->data = keep;
      uv_close(reinterpret_cast<uv_handle_t*>(poll), on_closed);
    }
    if (timer) {
      uv_timer_stop(timer);
      timer->data = keep;
      uv_close(reinterpret_cast<uv_handle_t*>(timer), on_closed);
    }
    if (check) {
      uv_check_stop(check);
      check->data = keep;
      uv_close(reinterpret_cast<uv_handle_t*>(check), on_closed);
    }
    if (handles == 0) delete keep;
    if (waiting) {
      waiting->Resolve(env.Null());
      waiting.reset();
    }
    if (!reading && fd >= 0) {
      close(fd);
      fd = -1;
    }
  }
};

void WatchReadWorker::Execute() {
  WatchState& st = *state_;
  if (st.fd < 0) {
    st.fd = open(st.path.c_str(), O_RDONLY | O_CLOEXEC);
    if (st.fd < 0) {
      error_.err = errno;
      error_.syscall = "open";
      error_.path = st.path;
      return;
    }
    opened_here_ = true;
  }
  ReadWhole(st.fd, st.path, &text_, &error_);
}

void WatchReadWorker::OnOK() {
  Napi::Env env = Env();
  Napi::HandleScope scope(env);
  WatchState& st = *state_;
  st.reading = false;
  if (st.closed) {
    if (st.fd >= 0) close(st.fd);
    st.fd = -1;
    deferred_.Resolve(env.Null());
    return;
  }
  if (error_.err != 0) {
    deferred_.Reject(SysErrorToObject(env, error_));
    return;
  }
  if (opened_here_) st.StartPolling();
  deferred_.Resolve(Napi::String::New(env, text_));
}

class MountWatcher : public Napi::ObjectWrap<MountWatcher> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "MountWatcher",
                       {InstanceMethod<&MountWatcher::Next>("next"), InstanceMethod<&MountWatcher::Close>("close")});
  }

  // new MountWatcher(path)
  explicit MountWatcher(const Napi::CallbackInfo& info) : Napi::ObjectWrap<MountWatcher>(info) {
    state_ = std::make_shared<WatchState>(info.Env());
    state_->context = std::make_unique<Napi::AsyncContext>(info.Env(), "ovl.MountWatcher");
    ReadString(info, 0, "path", &state_->path);
  }

  ~MountWatcher() override { state_->Close(); }

 private:
  // next(timeoutMs): the first call reads the table; later calls wait up to timeoutMs for the table to change
  // and resolve with its new text, or null when it did not change in that time. One call at a time.
  Napi::Value Next(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    WatchState& st = *state_;
    uint64_t timeout = 0;
    if (!ReadUint(info, 0, "timeoutMs", 3600000.0, &timeout)) return env.Undefined();
    if (st.closed || st.path.empty()) {
      Napi::Error::New(env, "ovl native: the watcher is closed").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    if (st.waiting || st.reading) {
      Napi::Error::New(env, "ovl native: next() is already pending").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    Napi::Promise::Deferred d = Napi::Promise::Deferred::New(env);
    if (st.fd < 0 || st.changed) {
      st.changed = false;
      st.Read(d);
      return d.Promise();
    }
    if (st.timer == nullptr) {
      st.timer = new uv_timer_t;
      uv_timer_init(st.Loop(), st.timer);
      st.timer->data = &st;
    }
    st.waiting = std::make_unique<Napi::Promise::Deferred>(d);
    uv_timer_start(st.timer, WatchState::OnTimer, timeout, 0);
    return d.Promise();
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    state_->Close();
    return info.Env().Undefined();
  }

  std::shared_ptr<WatchState> state_;
};

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("mount", Napi::Function::New(env, Mount, "mount"));
  exports.Set("umount", Napi::Function::New(env, Umount, "umount"));
  exports.Set("fsMount", Napi::Function::New(env, FsMount, "fsMount"));
  exports.Set("mountId", Napi::Function::New(env, MountId, "mountId"));
  exports.Set("inspectPaths", Napi::Function::New(env, InspectPaths, "inspectPaths"));
  exports.Set("statMount", Napi::Function::New(env, StatMount, "statMount"));
  exports.Set("readText", Napi::Function::New(env, ReadText, "readText"));
  exports.Set("MountWatcher", MountWatcher::Define(env));
  RegisterXattr(env, exports);
  return exports;
}

}  // namespace
}  // namespace ovl

// NODE_API_MODULE pastes the function name into a symbol, so it needs an unqualified one.
static Napi::Object InitOvl(Napi::Env env, Napi::Object exports) { return ovl::Init(env, exports); }
NODE_API_MODULE(ovl, InitOvl)
