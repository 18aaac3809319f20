// Mounting: looking paths up once into O_PATH fds and reading facts off those fds (openPaths), the new mount
// API driven by those fds (fsMount), mount(2) for old kernels, and unmounting (umount, umountAt).
// Syscalls only: which facts matter, and what a rule says about them, is decided in TypeScript.
#include "common.h"
#include "kmsg.h"

#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <dirent.h>
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>

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
#ifndef STATX_MNT_ID_UNIQUE
#define STATX_MNT_ID_UNIQUE 0x00004000U
#endif
#ifndef STATX_ATTR_MOUNT_ROOT
#define STATX_ATTR_MOUNT_ROOT 0x00002000
#endif

namespace ovl {

// Declared in table.cc: statmount(2) into a buffer, and its plain object.
bool StatMountInto(uint64_t id, size_t size_hint, std::vector<char>* buf);
Napi::Object StatMountToObject(Napi::Env env, const std::vector<char>& buf);

namespace {

constexpr unsigned kFsopenCloexec = 0x00000001;
constexpr unsigned kFsmountCloexec = 0x00000001;
constexpr unsigned kMoveMountFEmptyPath = 0x00000004;
constexpr unsigned kMoveMountTEmptyPath = 0x00000040;
constexpr unsigned kFsconfigSetFlag = 0;
constexpr unsigned kFsconfigSetString = 1;
constexpr unsigned kFsconfigSetFd = 5;
constexpr unsigned kFsconfigCmdCreate = 6;
constexpr long kOverlayMagic = 0x794c7630;

// The facts every rule is checked on, read from one fd (statx AT_EMPTY_PATH).
struct Facts {
  uint32_t mode = 0, uid = 0, gid = 0, nlink = 0;
  uint32_t dev_major = 0, dev_minor = 0;
  uint64_t ino = 0, mnt_id = 0;
  bool unique = false, mount_root = false;
};

bool StatFd(int fd, const char* path, int flags, Facts* f) {
  struct statx stx;
  std::memset(&stx, 0, sizeof(stx));
  if (statx(fd, path, flags | AT_NO_AUTOMOUNT,
            STATX_TYPE | STATX_MODE | STATX_UID | STATX_GID | STATX_NLINK | STATX_INO | STATX_MNT_ID |
                STATX_MNT_ID_UNIQUE,
            &stx) != 0)
    return false;
  f->mode = stx.stx_mode;
  f->uid = stx.stx_uid;
  f->gid = stx.stx_gid;
  f->nlink = stx.stx_nlink;
  f->dev_major = stx.stx_dev_major;
  f->dev_minor = stx.stx_dev_minor;
  f->ino = stx.stx_ino;
  f->mnt_id = stx.stx_mnt_id;
  f->unique = (stx.stx_mask & STATX_MNT_ID_UNIQUE) != 0;
  f->mount_root = (stx.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT) && (stx.stx_attributes & STATX_ATTR_MOUNT_ROOT);
  return true;
}

void SetFacts(Napi::Env env, Napi::Object o, const Facts& f) {
  o.Set("mode", Napi::Number::New(env, f.mode));
  o.Set("uid", Napi::Number::New(env, f.uid));
  o.Set("gid", Napi::Number::New(env, f.gid));
  o.Set("nlink", Napi::Number::New(env, f.nlink));
  o.Set("devMajor", Napi::Number::New(env, f.dev_major));
  o.Set("devMinor", Napi::Number::New(env, f.dev_minor));
  o.Set("ino", Napi::BigInt::New(env, f.ino));
  o.Set("mountId", Napi::Number::New(env, static_cast<double>(f.mnt_id)));
  o.Set("uniqueMountId", Napi::Boolean::New(env, f.unique));
  o.Set("mountRoot", Napi::Boolean::New(env, f.mount_root));
}

// The path the kernel holds for an fd (readlink of its /proc/self/fd link), as bytes.
bool FdRealpath(int fd, std::string* out) {
  std::string link = FdPath(fd);
  std::vector<char> buf(PATH_MAX + 1);
  ssize_t n = readlink(link.c_str(), buf.data(), buf.size());
  if (n < 0) return false;
  out->assign(buf.data(), static_cast<size_t>(n));
  return true;
}

constexpr size_t kMaxListedEntries = 16;

// Reads a directory through its own fd: how many entries besides . and .., and the first names.
struct Listing {
  bool listed = false;
  int err = 0;
  uint64_t count = 0;
  std::vector<std::string> names;
};

void ListFd(int fd, Listing* l) {
  l->listed = true;
  int dfd = openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) {
    l->err = errno;
    return;
  }
  DIR* dir = fdopendir(dfd);
  if (dir == nullptr) {
    l->err = errno;
    close(dfd);
    return;
  }
  for (;;) {
    errno = 0;
    struct dirent* e = readdir(dir);
    if (e == nullptr) {
      if (errno != 0) l->err = errno;
      break;
    }
    if (std::strcmp(e->d_name, ".") == 0 || std::strcmp(e->d_name, "..") == 0) continue;
    if (l->names.size() < kMaxListedEntries) l->names.emplace_back(e->d_name);
    l->count++;
  }
  closedir(dir);
}

void SetListing(Napi::Env env, Napi::Object o, const Listing& l) {
  if (!l.listed) return;
  if (l.err != 0) o.Set("listErrno", Napi::Number::New(env, l.err));
  o.Set("entryCount", Napi::Number::New(env, static_cast<double>(l.count)));
  Napi::Array names = Napi::Array::New(env, l.names.size());
  for (size_t k = 0; k < l.names.size(); k++)
    names.Set(k, Latin1(env, l.names[k]));
  o.Set("entries", names);
}

// --- openPaths: every path looked up once ----------------------------------------------------------------

struct OpenedPath {
  int fd = -1;  // handed to JavaScript, which closes it
  int err = 0;
  const char* syscall = "";
  bool exists_as_non_dir = false;  // ENOTDIR because the path itself (not a component) is no directory
  std::string real;
  Facts facts;
  Listing listing;
};

// A name looked up below one of the opened paths, never leaving it (openat2 RESOLVE_BENEATH, no symlinks).
struct Probe {
  size_t base = 0;
  std::string rel;
  int err = 0;
  Facts facts;
  Listing listing;
};

class OpenPathsCall : public Call {
 public:
  OpenPathsCall(std::vector<std::string> paths, std::vector<bool> list, std::vector<Probe> probes,
                std::string table)
      : paths_(std::move(paths)), list_(std::move(list)), probes_(std::move(probes)), table_path_(std::move(table)) {}
  ~OpenPathsCall() override {
    // Fds are closed here unless Resolve() handed them over.
    for (auto& p : opened_)
      if (p.fd >= 0) close(p.fd);
  }

  bool Run() override {
    opened_.resize(paths_.size());
    for (size_t i = 0; i < paths_.size(); i++) {
      OpenedPath& p = opened_[i];
      // The one lookup: symlinks and `..` resolved as the kernel resolves any path.
      p.fd = open(paths_[i].c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
      if (p.fd < 0) {
        p.err = errno;
        p.syscall = "open";
        if (p.err == ENOTDIR) {
          // Only to word the message: is the path itself something else, or a component?
          Fd probe(open(paths_[i].c_str(), O_PATH | O_CLOEXEC));
          p.exists_as_non_dir = probe.get() >= 0;
        }
        continue;
      }
      if (!StatFd(p.fd, "", AT_EMPTY_PATH, &p.facts)) {
        p.err = errno;
        p.syscall = "statx";
      } else if (!FdRealpath(p.fd, &p.real)) {
        p.err = errno;
        p.syscall = "readlink";
      } else if (list_[i]) {
        ListFd(p.fd, &p.listing);
      }
      if (p.err != 0) {
        close(p.fd);
        p.fd = -1;
      }
    }
    for (Probe& pr : probes_) {
      const OpenedPath& base = opened_[pr.base];
      if (base.fd < 0) {
        pr.err = EBADF;
        continue;
      }
      Fd fd(OpenBeneath(base.fd, pr.rel, O_PATH | O_NOFOLLOW));
      if (fd.get() < 0 || !StatFd(fd.get(), "", AT_EMPTY_PATH, &pr.facts)) {
        pr.err = errno;
        continue;
      }
      if (S_ISDIR(pr.facts.mode)) ListFd(fd.get(), &pr.listing);
    }
    if (!table_path_.empty()) {
      Fd t(open(table_path_.c_str(), O_RDONLY | O_CLOEXEC));
      if (t.get() >= 0) {
        char buf[65536];
        for (;;) {
          ssize_t n = read(t.get(), buf, sizeof(buf));
          if (n < 0 && errno == EINTR) continue;
          if (n <= 0) {
            table_ok_ = n == 0;
            break;
          }
          table_.append(buf, static_cast<size_t>(n));
        }
      }
    }
    return true;
  }

  Napi::Value Resolve(Napi::Env env) override {
    Napi::Object out = Napi::Object::New(env);
    Napi::Array paths = Napi::Array::New(env, opened_.size());
    for (size_t i = 0; i < opened_.size(); i++) {
      OpenedPath& p = opened_[i];
      Napi::Object o = Napi::Object::New(env);
      if (p.err != 0) {
        o.Set("errno", Napi::Number::New(env, p.err));
        o.Set("syscall", Napi::String::New(env, p.syscall));
        if (p.exists_as_non_dir) o.Set("notDirectory", Napi::Boolean::New(env, true));
      } else {
        o.Set("fd", Napi::Number::New(env, p.fd));
        p.fd = -1;  // JavaScript owns it now
        o.Set("realpath", Latin1(env, p.real));
        SetFacts(env, o, p.facts);
        SetListing(env, o, p.listing);
      }
      paths.Set(i, o);
    }
    out.Set("paths", paths);
    Napi::Array probes = Napi::Array::New(env, probes_.size());
    for (size_t i = 0; i < probes_.size(); i++) {
      const Probe& pr = probes_[i];
      Napi::Object o = Napi::Object::New(env);
      if (pr.err != 0) {
        o.Set("errno", Napi::Number::New(env, pr.err));
      } else {
        SetFacts(env, o, pr.facts);
        SetListing(env, o, pr.listing);
      }
      probes.Set(i, o);
    }
    out.Set("probes", probes);
    if (table_ok_) out.Set("table", Latin1(env, table_));
    return out;
  }

 private:
  std::vector<std::string> paths_;
  std::vector<bool> list_;
  std::vector<Probe> probes_;
  std::string table_path_;
  std::vector<OpenedPath> opened_;
  std::string table_;
  bool table_ok_ = false;
};

// openPaths(paths: (string|Buffer)[], list: number[], probes: [index, relPath][], table: string|null)
//   -> { paths: Array<{ fd, realpath, mode, uid, gid, nlink, devMajor, devMinor, ino: bigint, mountId,
//        uniqueMountId, mountRoot, entryCount?, entries?, listErrno? } | { errno, syscall, notDirectory? }>,
//        probes: Array<facts | { errno }>, table? }   (realpath, entries and table as latin1 byte strings)
// Each path is opened once (O_PATH|O_DIRECTORY|O_CLOEXEC); the fds are the caller's to use and close. `list`
// names paths whose directories are read through their fd; each probe is a name below an opened path.
// `table` names a file (the mount table) read whole in the same trip.
Napi::Value OpenPaths(const Napi::CallbackInfo& info, bool sync) {
  Napi::Env env = info.Env();
  Napi::Array arr;
  if (!CheckArray(env, Arg(info, 0), "argument 'paths'", &arr)) return env.Undefined();
  std::vector<std::string> paths(arr.Length());
  for (uint32_t i = 0; i < arr.Length(); i++) {
    Napi::Value v = arr.Get(i);
    if (env.IsExceptionPending() || !ValueToPath(env, v, "each of 'paths'", &paths[i])) return env.Undefined();
  }
  std::vector<bool> list(paths.size(), false);
  Napi::Value lv = Arg(info, 1);
  if (!lv.IsUndefined()) {
    Napi::Array idx;
    if (!CheckArray(env, lv, "argument 'list'", &idx)) return env.Undefined();
    for (uint32_t i = 0; i < idx.Length(); i++) {
      uint64_t k = 0;
      Napi::Value v = idx.Get(i);
      if (env.IsExceptionPending() || !ValueToUint(env, v, "each of 'list'", 65535, &k)) return env.Undefined();
      if (k >= paths.size()) return ThrowRange(env, "'list' must hold indexes into 'paths'"), env.Undefined();
      list[k] = true;
    }
  }
  std::vector<Probe> probes;
  Napi::Value pv = Arg(info, 2);
  if (!pv.IsUndefined()) {
    Napi::Array pa;
    if (!CheckArray(env, pv, "argument 'probes'", &pa)) return env.Undefined();
    for (uint32_t i = 0; i < pa.Length(); i++) {
      Napi::Array one;
      Napi::Value v = pa.Get(i);
      if (env.IsExceptionPending() || !CheckArray(env, v, "each probe ([index, relPath])", &one)) return env.Undefined();
      Probe pr;
      uint64_t k = 0;
      if (!ValueToUint(env, one.Get(0u), "a probe's index", 65535, &k) ||
          !ValueToPath(env, one.Get(1u), "a probe's path", &pr.rel))
        return env.Undefined();
      if (k >= paths.size()) return ThrowRange(env, "a probe's index must be an index into 'paths'"), env.Undefined();
      pr.base = static_cast<size_t>(k);
      probes.push_back(std::move(pr));
    }
  }
  std::string table;
  Napi::Value tv = Arg(info, 3);
  if (!tv.IsUndefined() && !tv.IsNull() && !ValueToPath(env, tv, "argument 'table'", &table)) return env.Undefined();
  return Dispatch(env, std::make_unique<OpenPathsCall>(std::move(paths), std::move(list), std::move(probes), std::move(table)),
                  sync);
}

// --- mount(2), for kernels without the new API -------------------------------------------------------------

class LegacyMountCall : public Call {
 public:
  LegacyMountCall(std::string source, int target_fd, std::string fstype, unsigned long flags, std::string data,
                  bool has_data)
      : source_(std::move(source)), target_fd_(target_fd), fstype_(std::move(fstype)), flags_(flags),
        data_(std::move(data)), has_data_(has_data) {}

  bool Run() override {
    KernelLog log;
    // The target by its fd: the directory that was checked, whatever its path names now.
    std::string target = FdPath(target_fd_);
    if (::mount(source_.c_str(), target.c_str(), fstype_.c_str(), flags_, has_data_ ? data_.c_str() : nullptr) != 0) {
      Fail("mount", target);
      log.ReadOverlayLines(&error_.kernel_log);
      return false;
    }
    log.ReadOverlayLines(&warnings_);
    // The new mount is reached through the target's parent and name: a magic link does not cross into the
    // mount on top of the directory it holds, a name does. The target is a mount point now, so its name in
    // that parent cannot change under us (the kernel refuses to rename a mount point).
    Facts below, top;
    if (!StatFd(target_fd_, "", AT_EMPTY_PATH, &below)) return Fail("statx", target);
    std::string real;
    if (!FdRealpath(target_fd_, &real)) return Fail("readlink", target);
    Fd fd;
    if (real == "/") {
      fd.reset(open("/", O_PATH | O_DIRECTORY | O_CLOEXEC));
    } else {
      Fd parent(openat(target_fd_, "..", O_PATH | O_DIRECTORY | O_CLOEXEC));
      if (parent.get() < 0) return Fail("openat", target);
      fd.reset(openat(parent.get(), real.substr(real.rfind('/') + 1).c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    }
    if (fd.get() < 0) return Fail("openat", real);
    struct statfs sfs;
    if (!StatFd(fd.get(), "", AT_EMPTY_PATH, &top)) return Fail("statx", real);
    if (fstatfs(fd.get(), &sfs) != 0) return Fail("fstatfs", real);
    if (sfs.f_type != kOverlayMagic || !top.mount_root || top.mnt_id == below.mnt_id) {
      errno = ENOENT;  // something else covers the target by now: the new mount cannot be named
      return Fail("statx", real);
    }
    mnt_id_ = top.mnt_id;
    unique_ = top.unique;
    return true;
  }

  Napi::Value Resolve(Napi::Env env) override {
    Napi::Object o = Napi::Object::New(env);
    o.Set("mountId", Napi::Number::New(env, static_cast<double>(mnt_id_)));
    o.Set("unique", Napi::Boolean::New(env, unique_));
    o.Set("messages", Napi::Array::New(env));
    o.Set("warnings", StringsToArray(env, warnings_));
    return o;
  }

 private:
  std::string source_;
  int target_fd_;
  std::string fstype_;
  unsigned long flags_;
  std::string data_;
  bool has_data_;
  uint64_t mnt_id_ = 0;
  bool unique_ = false;
  std::vector<std::string> warnings_;
};

// mount(source, targetFd, fstype, flags, data|null) -> { mountId, unique, warnings }: mount(2) onto the
// directory `targetFd` holds (through its /proc/self/fd link), then the new mount's id.
Napi::Value LegacyMount(const Napi::CallbackInfo& info, bool sync) {
  Napi::Env env = info.Env();
  std::string source, fstype, data;
  int target_fd = -1;
  uint64_t flags = 0;
  bool has_data = false;
  if (!ReadString(info, 0, "source", &source) || !ReadFd(env, Arg(info, 1), "argument 'targetFd'", &target_fd) ||
      !ReadString(info, 2, "fstype", &fstype) || !ReadUint(info, 3, "flags", 4294967295.0, &flags))
    return env.Undefined();
  Napi::Value dv = Arg(info, 4);
  if (!dv.IsNull() && !dv.IsUndefined()) {
    if (!ValueToPath(env, dv, "argument 'data'", &data)) return env.Undefined();
    has_data = true;
  }
  return Dispatch(env,
                  std::make_unique<LegacyMountCall>(source, target_fd, fstype, static_cast<unsigned long>(flags), data,
                                                    has_data),
                  sync);
}

// --- umount2(2) --------------------------------------------------------------------------------------------

class UmountCall : public Call {
 public:
  UmountCall(std::string target, int flags) : target_(std::move(target)), flags_(flags) {}
  bool Run() override { return ::umount2(target_.c_str(), flags_) == 0 || Fail("umount2", target_); }

 private:
  std::string target_;
  int flags_;
};

// umount(target, flags): umount2(2) of a path.
Napi::Value Umount(const Napi::CallbackInfo& info, bool sync) {
  std::string target;
  uint64_t flags = 0;
  if (!ReadPath(info, 0, "target", &target) || !ReadUint(info, 1, "flags", 2147483647.0, &flags))
    return info.Env().Undefined();
  return Dispatch(info.Env(), std::make_unique<UmountCall>(target, static_cast<int>(flags)), sync);
}

// Unmounts exactly one mount, known by its id: the parent directory is opened once, the mount found on `name`
// in it is checked to be the one expected, and that same name below that same directory is unmounted
// (through the directory's /proc/self/fd link; the fd pins the parent mount, not the one unmounted).
class UmountAtCall : public Call {
 public:
  UmountAtCall(std::string parent, std::string name, uint64_t expected, int flags)
      : parent_(std::move(parent)), name_(std::move(name)), expected_(expected), flags_(flags) {}

  bool Run() override {
    Fd dir(open(parent_.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
    if (dir.get() < 0) return Fail("open", parent_);
    Facts f;
    if (!StatFd(dir.get(), name_.c_str(), AT_SYMLINK_NOFOLLOW, &f)) return Fail("statx", parent_ + "/" + name_);
    if (!f.mount_root || f.mnt_id != expected_ || !S_ISDIR(f.mode)) {
      errno = ESTALE;
      Fail("statx", parent_ + "/" + name_);
      error_.has_found_id = true;
      error_.found_id = f.mount_root ? f.mnt_id : 0;
      return false;
    }
    if (::umount2(FdPath(dir.get(), name_).c_str(), flags_ | UMOUNT_NOFOLLOW) != 0)
      return Fail("umount2", parent_ + "/" + name_);
    return true;
  }

 private:
  std::string parent_, name_;
  uint64_t expected_;
  int flags_;
};

// umountAt(parent, name, expectedUniqueMountId, flags)
Napi::Value UmountAt(const Napi::CallbackInfo& info, bool sync) {
  std::string parent, name;
  uint64_t id = 0, flags = 0;
  if (!ReadPath(info, 0, "parent", &parent) || !ReadPath(info, 1, "name", &name) ||
      !ReadUint(info, 2, "mountId", 9007199254740991.0, &id) || !ReadUint(info, 3, "flags", 2147483647.0, &flags))
    return info.Env().Undefined();
  if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..")
    return ThrowType(info.Env(), "argument 'name' must be one path component"), info.Env().Undefined();
  return Dispatch(info.Env(), std::make_unique<UmountAtCall>(parent, name, id, static_cast<int>(flags)), sync);
}

// --- the new mount API: fsopen, fsconfig..., fsmount, move_mount --------------------------------------------

struct ConfigStep {
  unsigned kind;  // FSCONFIG_SET_FLAG, _SET_STRING, or _SET_FD
  std::string key;
  std::string value;
  int fd = -1;
};

class FsMountCall : public Call {
 public:
  FsMountCall(std::string fstype, std::vector<ConfigStep> steps, unsigned attr_flags, int target_fd, bool create,
              size_t describe_hint)
      : fstype_(std::move(fstype)), steps_(std::move(steps)), attr_flags_(attr_flags), target_fd_(target_fd),
        create_(create), describe_hint_(describe_hint) {}

  bool Run() override {
    KernelLog log;
    Fd fsfd(static_cast<int>(syscall(SYS_fsopen, fstype_.c_str(), kFsopenCloexec)));
    if (fsfd.get() < 0) return Fail("fsopen");  // nothing of overlay's ran: no log to read
    for (size_t i = 0; i < steps_.size(); i++) {
      const ConfigStep& s = steps_[i];
      long rc;
      if (s.kind == kFsconfigSetFd) {
        rc = syscall(SYS_fsconfig, fsfd.get(), kFsconfigSetFd, s.key.c_str(), nullptr, s.fd);
      } else if (s.kind == kFsconfigSetString) {
        rc = syscall(SYS_fsconfig, fsfd.get(), kFsconfigSetString, s.key.c_str(), s.value.c_str(), 0);
      } else {
        rc = syscall(SYS_fsconfig, fsfd.get(), kFsconfigSetFlag, s.key.c_str(), nullptr, 0);
      }
      if (rc != 0) return FailStep("fsconfig", static_cast<int>(i), fsfd.get(), &log);
    }
    if (!create_) {
      DrainFsLog(fsfd.get(), &messages_);
      return true;
    }
    if (syscall(SYS_fsconfig, fsfd.get(), kFsconfigCmdCreate, nullptr, nullptr, 0) != 0)
      return FailStep("fsconfig", -1, fsfd.get(), &log);
    Fd mfd(static_cast<int>(syscall(SYS_fsmount, fsfd.get(), kFsmountCloexec, attr_flags_)));
    if (mfd.get() < 0) return FailStep("fsmount", -1, fsfd.get(), &log);
    DrainFsLog(fsfd.get(), &messages_);  // warnings of a mount that succeeded
    log.ReadOverlayLines(&warnings_);
    Facts f;
    if (!StatFd(mfd.get(), "", AT_EMPTY_PATH, &f)) return Fail("statx");
    mnt_id_ = f.mnt_id;
    unique_ = f.unique;
    if (syscall(SYS_move_mount, mfd.get(), "", target_fd_, "", kMoveMountFEmptyPath | kMoveMountTEmptyPath) != 0)
      return Fail("move_mount");
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
    o.Set("messages", StringsToArray(env, messages_));
    o.Set("warnings", StringsToArray(env, warnings_));
    return o;
  }

 private:
  bool FailStep(const char* syscall, int step, int fsfd, KernelLog* log) {
    Fail(syscall);
    error_.step = step;
    DrainFsLog(fsfd, &error_.messages);
    if (error_.messages.empty()) log->ReadOverlayLines(&error_.kernel_log);
    return false;
  }

  std::string fstype_;
  std::vector<ConfigStep> steps_;
  unsigned attr_flags_;
  int target_fd_;
  bool create_;
  size_t describe_hint_;
  uint64_t mnt_id_ = 0;
  bool unique_ = false;
  bool described_ = false;
  std::vector<char> statmount_;
  std::vector<std::string> messages_, warnings_;
};

// fsMount(fstype, steps: [kind, key, value?][], attrFlags, targetFd|null, describeSizeHint?)
// A step's value is a string, or for kind 5 (FSCONFIG_SET_FD) an fd. The new mount is attached onto the
// directory `targetFd` holds (move_mount MOVE_MOUNT_T_EMPTY_PATH). A describeSizeHint > 0 also returns its
// statmount fields. With targetFd null the context is configured and then dropped: a probe.
Napi::Value FsMount(const Napi::CallbackInfo& info, bool sync) {
  Napi::Env env = info.Env();
  std::string fstype;
  if (!ReadString(info, 0, "fstype", &fstype)) return env.Undefined();
  Napi::Array arr;
  if (!CheckArray(env, Arg(info, 1), "argument 'steps'", &arr)) return env.Undefined();
  std::vector<ConfigStep> steps;
  steps.reserve(arr.Length());
  for (uint32_t i = 0; i < arr.Length(); i++) {
    Napi::Value v = arr.Get(i);
    if (env.IsExceptionPending()) return env.Undefined();
    Napi::Array s;
    if (!CheckArray(env, v, "each step ([kind, key, value?])", &s)) return env.Undefined();
    Napi::Value kind = s.Get(0u), key = s.Get(1u), value = s.Get(2u);
    if (env.IsExceptionPending()) return env.Undefined();
    if (!kind.IsNumber() || !key.IsString())
      return ThrowType(env, "step kind must be a number and key a string"), env.Undefined();
    ConfigStep step;
    double k = kind.As<Napi::Number>().DoubleValue();
    if (k != kFsconfigSetFlag && k != kFsconfigSetString && k != kFsconfigSetFd)
      return ThrowRange(env, "step kind must be 0 (flag), 1 (string) or 5 (fd)"), env.Undefined();
    step.kind = static_cast<unsigned>(k);
    step.key = key.As<Napi::String>().Utf8Value();
    if (HasNul(step.key)) return ThrowType(env, "a step key contains a NUL byte"), env.Undefined();
    if (step.kind == kFsconfigSetFd) {
      if (!ReadFd(env, value, "an fd step's value", &step.fd)) return env.Undefined();
    } else if (step.kind == kFsconfigSetString) {
      if (!ValueToPath(env, value, "a string step's value", &step.value)) return env.Undefined();
    }
    steps.push_back(std::move(step));
  }
  uint64_t attr = 0, describe = 0;
  int target_fd = -1;
  if (!ReadUint(info, 2, "attrFlags", 4294967295.0, &attr)) return env.Undefined();
  Napi::Value tv = Arg(info, 3);
  bool create = !(tv.IsNull() || tv.IsUndefined());
  if (create && !ReadFd(env, tv, "argument 'targetFd'", &target_fd)) return env.Undefined();
  if (!Arg(info, 4).IsUndefined() && !ReadUint(info, 4, "describeSizeHint", 16777216.0, &describe))
    return env.Undefined();
  return Dispatch(env,
                  std::make_unique<FsMountCall>(fstype, std::move(steps), static_cast<unsigned>(attr), target_fd, create,
                                                static_cast<size_t>(describe)),
                  sync);
}

// --- statx: the mount id of a path -------------------------------------------------------------------------

class MountIdCall : public Call {
 public:
  MountIdCall(std::string path, bool want_unique) : path_(std::move(path)), want_unique_(want_unique) {}
  bool Run() override {
    struct statx stx;
    std::memset(&stx, 0, sizeof(stx));
    if (statx(AT_FDCWD, path_.c_str(), AT_NO_AUTOMOUNT, STATX_MNT_ID | (want_unique_ ? STATX_MNT_ID_UNIQUE : 0), &stx) != 0)
      return Fail("statx", path_);
    unique_ = (stx.stx_mask & STATX_MNT_ID_UNIQUE) != 0;
    id_ = stx.stx_mnt_id;
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
Napi::Value MountId(const Napi::CallbackInfo& info, bool sync) {
  std::string path;
  if (!ReadPath(info, 0, "path", &path)) return info.Env().Undefined();
  if (!Arg(info, 1).IsBoolean()) return ThrowType(info.Env(), "argument 'unique' must be a boolean"), info.Env().Undefined();
  return Dispatch(info.Env(), std::make_unique<MountIdCall>(path, info[1].As<Napi::Boolean>().Value()), sync);
}

}  // namespace

void RegisterMount(Napi::Env env, Napi::Object exports) {
  ExportBoth<OpenPaths>(env, exports, "openPaths");
  ExportBoth<FsMount>(env, exports, "fsMount");
  ExportBoth<LegacyMount>(env, exports, "mount");
  ExportBoth<Umount>(env, exports, "umount");
  ExportBoth<UmountAt>(env, exports, "umountAt");
  ExportBoth<MountId>(env, exports, "mountId");
}

}  // namespace ovl
