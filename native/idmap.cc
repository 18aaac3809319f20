// Idmapped layers: a user namespace made from id maps (its fd is what an idmapped mount takes), namespace fds
// opened and told apart, and detached clones of layer directories with an idmapping set on them.
// Syscalls only: which maps, which layers and what a refusal means are decided in TypeScript.
#include "common.h"

#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef SYS_open_tree
#define SYS_open_tree 428
#endif
#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442
#endif

namespace ovl {
namespace {

constexpr unsigned kOpenTreeClone = 1;
constexpr unsigned kOpenTreeCloexec = O_CLOEXEC;
constexpr uint64_t kMountAttrIdmap = 0x00100000;
constexpr unsigned long kNsGetNsType = _IO(0xb7, 0x3);

// struct mount_attr (MOUNT_ATTR_SIZE_VER0); the build machine's headers may predate it.
struct MountAttr {
  uint64_t attr_set;
  uint64_t attr_clr;
  uint64_t propagation;
  uint64_t userns_fd;
};

// Writes all of `text` to `path` in one write(), as /proc/PID/{uid,gid}_map require.
bool WriteWhole(const std::string& path, const std::string& text) {
  Fd fd(open(path.c_str(), O_WRONLY | O_CLOEXEC));
  if (fd.get() < 0) return false;
  ssize_t n = write(fd.get(), text.data(), text.size());
  if (n < 0) return false;
  if (static_cast<size_t>(n) != text.size()) {
    errno = EIO;
    return false;
  }
  return true;
}

// A user namespace with the given maps, as an fd: a child is cloned straight into a new user namespace
// (clone(CLONE_NEWUSER), so the namespace exists when the call returns: no wait for the child to unshare),
// its maps are written from here, its /proc/PID/ns/user opened, and the child ended and reaped. The child only
// blocks in read() on a pipe and exits: the few calls that are safe in the child of a threaded process.
class NewUsernsCall : public Call {
 public:
  NewUsernsCall(std::string uid_map, std::string gid_map, bool deny_setgroups)
      : uid_map_(std::move(uid_map)), gid_map_(std::move(gid_map)), deny_setgroups_(deny_setgroups) {}
  ~NewUsernsCall() override {
    if (fd_ >= 0) close(fd_);
  }

  bool Run() override {
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) != 0) return Fail("pipe2");
    Fd rd(pipefd[0]), wr(pipefd[1]);
    long pid = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, nullptr, nullptr, nullptr, nullptr);
    if (pid < 0) return Fail("clone");
    if (pid == 0) {
      close(wr.get());  // its copy of the write end, or it never sees EOF
      char c;
      while (read(rd.get(), &c, 1) < 0 && errno == EINTR) {
      }
      _exit(0);
    }
    std::string proc = "/proc/" + std::to_string(pid);
    bool ok = true;
    if (deny_setgroups_ && !WriteWhole(proc + "/setgroups", "deny")) ok = Fail("write", proc + "/setgroups");
    if (ok && !WriteWhole(proc + "/uid_map", uid_map_)) ok = Fail("write", proc + "/uid_map");
    if (ok && !WriteWhole(proc + "/gid_map", gid_map_)) ok = Fail("write", proc + "/gid_map");
    if (ok) {
      fd_ = open((proc + "/ns/user").c_str(), O_RDONLY | O_CLOEXEC);
      if (fd_ < 0) ok = Fail("open", proc + "/ns/user");
    }
    int saved = errno;
    wr.reset();  // EOF: the child exits
    if (!ok) kill(static_cast<pid_t>(pid), SIGKILL);
    while (waitpid(static_cast<pid_t>(pid), nullptr, 0) < 0 && errno == EINTR) {
    }
    errno = saved;
    return ok;
  }

  Napi::Value Resolve(Napi::Env env) override {
    int fd = fd_;
    fd_ = -1;  // JavaScript owns it now
    return Napi::Number::New(env, fd);
  }

 private:
  std::string uid_map_, gid_map_;
  bool deny_setgroups_;
  int fd_ = -1;
};

// newUserns(uidMapText, gidMapText, denySetgroups) -> fd of a new user namespace with those maps.
Napi::Value NewUserns(const Napi::CallbackInfo& info, bool sync) {
  std::string uid_map, gid_map;
  if (!ReadString(info, 0, "uidMap", &uid_map) || !ReadString(info, 1, "gidMap", &gid_map)) return info.Env().Undefined();
  if (!Arg(info, 2).IsBoolean())
    return ThrowType(info.Env(), "argument 'denySetgroups' must be a boolean"), info.Env().Undefined();
  return Dispatch(info.Env(), std::make_unique<NewUsernsCall>(uid_map, gid_map, info[2].As<Napi::Boolean>().Value()),
                  sync);
}

// The CLONE_NEW* type of a namespace fd (ioctl NS_GET_NSTYPE, 4.11+).
class NamespaceTypeCall : public Call {
 public:
  explicit NamespaceTypeCall(int fd) : fd_(fd) {}
  bool Run() override {
    type_ = ioctl(fd_, kNsGetNsType);
    return type_ >= 0 || Fail("ioctl");
  }
  Napi::Value Resolve(Napi::Env env) override { return Napi::Number::New(env, type_); }

 private:
  int fd_;
  int type_ = -1;
};

// namespaceType(fd) -> CLONE_NEW* number of the namespace the fd holds (ENOTTY: not a namespace).
Napi::Value NamespaceType(const Napi::CallbackInfo& info, bool sync) {
  int fd = -1;
  if (!ReadFd(info.Env(), Arg(info, 0), "argument 'fd'", &fd)) return info.Env().Undefined();
  return Dispatch(info.Env(), std::make_unique<NamespaceTypeCall>(fd), sync);
}

// Opens a namespace file (e.g. /proc/PID/ns/user) for reading (mount_setattr takes no O_PATH fd) and reads its
// type from that same fd.
class OpenNamespaceCall : public Call {
 public:
  explicit OpenNamespaceCall(std::string path) : path_(std::move(path)) {}
  ~OpenNamespaceCall() override {
    if (fd_ >= 0) close(fd_);
  }
  bool Run() override {
    fd_ = open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) return Fail("open", path_);
    type_ = ioctl(fd_, kNsGetNsType);
    if (type_ < 0) {
      Fail("ioctl", path_);
      close(fd_);
      fd_ = -1;
      return false;
    }
    return true;
  }
  Napi::Value Resolve(Napi::Env env) override {
    Napi::Object o = Napi::Object::New(env);
    o.Set("fd", Napi::Number::New(env, fd_));
    o.Set("type", Napi::Number::New(env, type_));
    fd_ = -1;  // JavaScript owns it now
    return o;
  }

 private:
  std::string path_;
  int fd_ = -1;
  int type_ = -1;
};

// openNamespace(path) -> { fd, type }
Napi::Value OpenNamespace(const Napi::CallbackInfo& info, bool sync) {
  std::string path;
  if (!ReadPath(info, 0, "path", &path)) return info.Env().Undefined();
  return Dispatch(info.Env(), std::make_unique<OpenNamespaceCall>(path), sync);
}

// Detached clones of the directories `fds` hold (open_tree(OPEN_TREE_CLONE) on each fd itself: the directory
// that was checked, never a path looked up again), each idmapped to `userns_fd` (mount_setattr
// MOUNT_ATTR_IDMAP). A clone is attached nowhere: it lives as long as its fd. On a failure every clone made so
// far is closed, and the failure names the index of the fd refused and its filesystem's statfs f_type.
class CloneIdmappedCall : public Call {
 public:
  CloneIdmappedCall(std::vector<int> fds, int userns_fd) : fds_(std::move(fds)), userns_fd_(userns_fd) {}
  ~CloneIdmappedCall() override {
    for (int fd : clones_)
      if (fd >= 0) close(fd);
  }

  bool Run() override {
    for (size_t i = 0; i < fds_.size(); i++) {
      int tree = static_cast<int>(
          syscall(SYS_open_tree, fds_[i], "", kOpenTreeClone | kOpenTreeCloexec | AT_EMPTY_PATH));
      if (tree < 0) return FailLayer("open_tree", i);
      clones_.push_back(tree);
      MountAttr attr{kMountAttrIdmap, 0, 0, static_cast<uint64_t>(userns_fd_)};
      if (syscall(SYS_mount_setattr, tree, "", AT_EMPTY_PATH, &attr, sizeof(attr)) != 0)
        return FailLayer("mount_setattr", i);
    }
    return true;
  }

  Napi::Value Resolve(Napi::Env env) override {
    Napi::Array a = Napi::Array::New(env, clones_.size());
    for (size_t i = 0; i < clones_.size(); i++) a.Set(i, Napi::Number::New(env, clones_[i]));
    clones_.clear();  // JavaScript owns them now
    return a;
  }

 private:
  bool FailLayer(const char* syscall, size_t index) {
    Fail(syscall);
    error_.step = static_cast<int>(index);
    struct statfs sfs;
    if (fstatfs(fds_[index], &sfs) == 0) {
      error_.has_fs_magic = true;
      error_.fs_magic = static_cast<uint64_t>(sfs.f_type);
    }
    for (int fd : clones_) close(fd);
    clones_.clear();
    return false;
  }

  std::vector<int> fds_;
  int userns_fd_;
  std::vector<int> clones_;
};

// cloneIdmapped(fds: number[], usernsFd) -> number[]: one detached, idmapped clone of each directory.
Napi::Value CloneIdmapped(const Napi::CallbackInfo& info, bool sync) {
  Napi::Env env = info.Env();
  Napi::Array arr;
  if (!CheckArray(env, Arg(info, 0), "argument 'fds'", &arr)) return env.Undefined();
  std::vector<int> fds(arr.Length());
  for (uint32_t i = 0; i < arr.Length(); i++) {
    Napi::Value v = arr.Get(i);
    if (env.IsExceptionPending() || !ReadFd(env, v, "each of 'fds'", &fds[i])) return env.Undefined();
  }
  int userns_fd = -1;
  if (!ReadFd(env, Arg(info, 1), "argument 'usernsFd'", &userns_fd)) return env.Undefined();
  return Dispatch(env, std::make_unique<CloneIdmappedCall>(std::move(fds), userns_fd), sync);
}

}  // namespace

void RegisterIdmap(Napi::Env env, Napi::Object exports) {
  ExportBoth<NewUserns>(env, exports, "newUserns");
  ExportBoth<NamespaceType>(env, exports, "namespaceType");
  ExportBoth<OpenNamespace>(env, exports, "openNamespace");
  ExportBoth<CloneIdmapped>(env, exports, "cloneIdmapped");
}

}  // namespace ovl
