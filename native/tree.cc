// Building and removing trees beneath a root fd: what applying an image layer does, as batches of plain
// *at() system calls. Every parent directory is opened with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
// RESOLVE_NO_XDEV) from the root fd the caller opened once, and each entry is made with the *at() call on
// that directory fd with O_NOFOLLOW / AT_SYMLINK_NOFOLLOW: no symlink (one the archive made, or one a racing
// process swaps in), `..` or mount can lead a write outside the root. Which entries to make, and every rule
// about names, whiteouts and replacing, is decided in TypeScript (src/layers/apply.ts); this file only runs
// the calls it is given.
//
//   applyOps(rootFd, ops, data)  one trip for many entries: `ops` is a Buffer of records (layout below),
//                                `data` the file bodies they refer to by index
//   openBeneath(rootFd, path, flags)  an fd for a file below the root (to stream a large body, or to read one)
//   readFiles(rootFd, items, maxEach) many small files below the root read whole in one trip (exporting layers)
#include "common.h"

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <time.h>

#ifndef SYS_setxattrat
#define SYS_setxattrat 463
#endif
#ifndef SYS_fchmodat2
#define SYS_fchmodat2 452
#endif

namespace ovl {
namespace {

// Record kinds (src/native.ts TreeOp mirrors these numbers).
enum Kind : uint8_t {
  kDir = 1,       // mkdirat(parent, name, 0700); owner and xattrs now, mode and times by a later kMeta
  kFile = 2,      // openat(O_CREAT|O_EXCL|O_NOFOLLOW), the body data[dataIndex], owner, mode, xattrs, times
  kSymlink = 3,   // symlinkat(target, parent, name), owner, xattrs, times
  kHardlink = 4,  // linkat(target's parent, target's name, parent, name, 0)
  kNode = 5,      // mknodat(parent, name, mode, rdev): fifo, char or block device (a whiteout is char 0/0)
  kRemove = 6,    // unlinkat(parent, name); with kRecursive a directory and everything below it
  kMeta = 7,      // an existing entry: owner, mode, xattrs, times, each as its flag asks
  kOpenFile = 8,  // like kFile without a body: the fd (O_WRONLY) is returned for the caller to write, then kFdMeta
  kFdMeta = 9,    // owner, mode, xattrs, times on the fd in `fd`, then close it
};
enum Flag : uint8_t {
  kChown = 1,
  kChmod = 2,
  kTimes = 4,
  kRecursive = 8,
};

// One record, little-endian: the fixed head, then parent, name, target, target2 bytes, then the xattrs
// as [u32 nameLen][u32 valueLen][name][value]. `target2` is a hard link's target name (its parent in
// `target`); a symlink's text is `target`.
#pragma pack(push, 1)
struct Head {
  uint8_t kind;
  uint8_t flags;
  uint16_t xattr_count;
  uint32_t parent_len, name_len, target_len, target2_len;
  uint32_t mode, uid, gid;
  int64_t mtime_sec;
  uint32_t mtime_nsec;
  uint32_t rdev_major, rdev_minor;
  uint32_t data_index;  // kFile: index into `data`; kFdMeta: the fd
};
#pragma pack(pop)
static_assert(sizeof(Head) == 56, "record head layout is shared with src/native.ts");

struct Xattr {
  std::string name;
  const char* value;
  uint32_t size;
};

struct Op {
  Head h;
  std::string parent, name, target, target2;
  std::vector<Xattr> xattrs;
};

struct XattrArgs {
  uint64_t value;
  uint32_t size;
  uint32_t flags;
};

int have_setxattrat = -1;  // 1 yes, 0 no (ENOSYS), -1 not known yet; a benign race: every answer is the same

// setxattr on `name` in `dfd`, never following a symlink: setxattrat (6.13+), else lsetxattr via the
// directory's /proc/self/fd link.
int SetXattrAt(int dfd, const std::string& name, const Xattr& x) {
  if (have_setxattrat != 0) {
    XattrArgs args{reinterpret_cast<uint64_t>(x.value), x.size, 0};
    long r = syscall(SYS_setxattrat, dfd, name.c_str(), AT_SYMLINK_NOFOLLOW, x.name.c_str(), &args, sizeof(args));
    if (r == 0 || errno != ENOSYS) {
      have_setxattrat = 1;
      return static_cast<int>(r);
    }
    have_setxattrat = 0;
  }
  return lsetxattr(FdPath(dfd, name).c_str(), x.name.c_str(), x.value, x.size, 0);
}

bool WriteAll(int fd, const char* p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

// Removes `name` in `dfd` and, if it is a directory, everything below it, each level opened from the one
// above with O_NOFOLLOW (a symlink inside is removed, never followed).
bool RemoveTree(int dfd, const std::string& name, int depth, const char** failed) {
  if (unlinkat(dfd, name.c_str(), 0) == 0) return true;
  if (errno != EISDIR && errno != EPERM) {  // unlink of a directory: EISDIR (EPERM on some filesystems)
    *failed = "unlinkat";
    return false;
  }
  if (depth > 4096) {
    errno = ELOOP;
    *failed = "openat";
    return false;
  }
  int fd = openat(dfd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    *failed = "openat";
    return false;
  }
  DIR* d = fdopendir(fd);
  if (d == nullptr) {
    close(fd);
    *failed = "fdopendir";
    return false;
  }
  std::vector<std::string> names;
  for (;;) {
    errno = 0;
    struct dirent* e = readdir(d);
    if (e == nullptr) break;
    if (std::strcmp(e->d_name, ".") == 0 || std::strcmp(e->d_name, "..") == 0) continue;
    names.emplace_back(e->d_name);
  }
  if (errno != 0) {
    closedir(d);
    *failed = "readdir";
    return false;
  }
  for (const std::string& n : names) {
    if (!RemoveTree(dirfd(d), n, depth + 1, failed)) {
      int saved = errno;
      closedir(d);
      errno = saved;
      return false;
    }
  }
  closedir(d);
  if (unlinkat(dfd, name.c_str(), AT_REMOVEDIR) != 0) {
    *failed = "rmdir";
    return false;
  }
  return true;
}

class ApplyOpsCall : public Call {
 public:
  ApplyOpsCall(int root, const char* ops, size_t ops_len, std::vector<std::pair<const char*, size_t>> data, Napi::Object keep)
      : root_(root), ops_bytes_(ops), ops_len_(ops_len), data_(std::move(data)), keep_(Napi::Persistent(keep)) {}

  bool Run() override {
    // The records are decoded here, on the pool thread: a batch of thousands costs the main thread nothing.
    if (!Decode()) {
      errno = EINVAL;
      return Fail("applyOps");
    }
    for (size_t i = 0; i < ops_.size(); i++) {
      if (!RunOp(ops_[i])) {
        error_.step = static_cast<int>(i);
        const Op& op = ops_[i];
        if (error_.path.empty()) error_.path = op.parent.empty() ? op.name : op.parent + "/" + op.name;
        // fds opened by earlier records of this batch are the caller's to close, as on success
        return false;
      }
      done_ = i + 1;
    }
    return true;
  }

  Napi::Value Resolve(Napi::Env env) override {
    Napi::Object o = Napi::Object::New(env);
    Napi::Array fds = Napi::Array::New(env, fds_.size());
    for (size_t i = 0; i < fds_.size(); i++) fds.Set(i, Napi::Number::New(env, fds_[i]));
    o.Set("fds", fds);
    return o;
  }

 private:
  // The parent's fd: consecutive records mostly share a parent, so the last one is kept open.
  int Parent(const std::string& parent) {
    if (parent_fd_.get() >= 0 && parent == parent_path_) return parent_fd_.get();
    parent_fd_.reset(OpenBeneath(root_, parent, O_PATH | O_DIRECTORY | O_NOFOLLOW, kResolveNoXdev));
    if (parent_fd_.get() < 0) {
      parent_path_.clear();
      return -1;
    }
    parent_path_ = parent;
    return parent_fd_.get();
  }

  bool Meta(int dfd, const Op& op, int fd) {
    const Head& h = op.h;
    // Owner before mode: chown clears setuid/setgid.
    if (h.flags & kChown) {
      int r = fd >= 0 ? fchown(fd, h.uid, h.gid) : fchownat(dfd, op.name.c_str(), h.uid, h.gid, AT_SYMLINK_NOFOLLOW);
      if (r != 0) return Fail("chown");
    }
    if (h.flags & kChmod) {
      int r = fd >= 0 ? fchmod(fd, h.mode & 07777)
                      : static_cast<int>(syscall(SYS_fchmodat2, dfd, op.name.c_str(), h.mode & 07777, AT_SYMLINK_NOFOLLOW));
      if (r != 0) return Fail("chmod");
    }
    for (const Xattr& x : op.xattrs) {
      int r = fd >= 0 ? fsetxattr(fd, x.name.c_str(), x.value, x.size, 0) : SetXattrAt(dfd, op.name, x);
      if (r != 0) {
        Fail("setxattr");
        error_.path = (op.parent.empty() ? op.name : op.parent + "/" + op.name) + " (" + x.name + ")";
        return false;
      }
    }
    if (h.flags & kTimes) {
      struct timespec ts[2];
      ts[0].tv_sec = ts[1].tv_sec = static_cast<time_t>(h.mtime_sec);
      ts[0].tv_nsec = ts[1].tv_nsec = static_cast<long>(h.mtime_nsec);
      int r = fd >= 0 ? futimens(fd, ts) : utimensat(dfd, op.name.c_str(), ts, AT_SYMLINK_NOFOLLOW);
      if (r != 0) return Fail("utimensat");
    }
    return true;
  }

  bool RunOp(const Op& op) {
    const Head& h = op.h;
    if (h.kind == kFdMeta) {
      int fd = static_cast<int>(h.data_index);
      bool ok = Meta(-1, op, fd);
      if (close(fd) != 0 && ok) return Fail("close");
      return ok;
    }
    int dfd = Parent(op.parent);
    if (dfd < 0) return Fail("openat2", op.parent);
    switch (h.kind) {
      case kDir:
        if (mkdirat(dfd, op.name.c_str(), 0700) != 0) return Fail("mkdirat");
        return Meta(dfd, op, -1);
      case kFile:
      case kOpenFile: {
        Fd fd(openat(dfd, op.name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
        if (fd.get() < 0) return Fail("openat");
        if (h.kind == kOpenFile) {
          fds_.push_back(fd.release());
          return true;
        }
        if (h.data_index != 0xffffffffu) {
          if (h.data_index >= data_.size()) {
            errno = EINVAL;
            return Fail("write");
          }
          const auto& d = data_[h.data_index];
          if (!WriteAll(fd.get(), d.first, d.second)) return Fail("write");
        }
        if (!Meta(dfd, op, fd.get())) return false;
        if (close(fd.release()) != 0) return Fail("close");
        return true;
      }
      case kSymlink:
        if (symlinkat(op.target.c_str(), dfd, op.name.c_str()) != 0) return Fail("symlinkat");
        return Meta(dfd, op, -1);
      case kHardlink: {
        Fd from(OpenBeneath(root_, op.target, O_PATH | O_DIRECTORY | O_NOFOLLOW, kResolveNoXdev));
        if (from.get() < 0) return Fail("openat2", op.target);
        if (linkat(from.get(), op.target2.c_str(), dfd, op.name.c_str(), 0) != 0) return Fail("linkat");
        return true;
      }
      case kNode: {
        mode_t type = h.mode & S_IFMT;
        if (type != S_IFCHR && type != S_IFBLK && type != S_IFIFO) {
          errno = EINVAL;
          return Fail("mknodat");
        }
        if (mknodat(dfd, op.name.c_str(), type | 0600, makedev(h.rdev_major, h.rdev_minor)) != 0) return Fail("mknodat");
        return Meta(dfd, op, -1);
      }
      case kRemove: {
        if (!(h.flags & kRecursive)) {
          if (unlinkat(dfd, op.name.c_str(), 0) != 0) return Fail("unlinkat");
          return true;
        }
        const char* failed = "unlinkat";
        if (!RemoveTree(dfd, op.name, 0, &failed)) return Fail(failed);
        return true;
      }
      case kMeta:
        return Meta(dfd, op, -1);
      default:
        errno = EINVAL;
        return Fail("applyOps");
    }
  }

  bool Decode();

  int root_;
  const char* ops_bytes_;
  size_t ops_len_;
  std::vector<Op> ops_;
  std::vector<std::pair<const char*, size_t>> data_;
  Napi::ObjectReference keep_;  // the Buffers stay alive until the call is done (released on the main thread)
  Fd parent_fd_;
  std::string parent_path_;
  std::vector<int> fds_;
  size_t done_ = 0;
};

bool TakeBytes(const char*& p, const char* end, uint32_t n, std::string* out) {
  if (static_cast<size_t>(end - p) < n) return false;
  out->assign(p, n);
  p += n;
  return !HasNul(*out);
}

// applyOps(rootFd, ops: Buffer, data: Buffer[]) -> { fds: number[] } (the fds of kOpenFile records, in order)
// A failure carries `step`, the index of the record that failed; the records before it were done.
// The bodies are written from the Buffers themselves (no copy): the caller must not change them until the
// promise settles; the call holds a reference, so they cannot be collected meanwhile.
Napi::Value ApplyOps(const Napi::CallbackInfo& info, bool sync) {
  Napi::Env env = info.Env();
  int root = -1;
  if (!ReadFd(env, Arg(info, 0), "argument 'rootFd'", &root)) return env.Undefined();
  Napi::Value opsValue = Arg(info, 1);
  if (!opsValue.IsBuffer()) return ThrowType(env, "argument 'ops' must be a Buffer"), env.Undefined();
  auto buf = opsValue.As<Napi::Buffer<char>>();
  Napi::Array dataArray;
  if (!CheckArray(env, Arg(info, 2), "argument 'data'", &dataArray)) return env.Undefined();
  std::vector<std::pair<const char*, size_t>> data;
  data.reserve(dataArray.Length());
  for (uint32_t i = 0; i < dataArray.Length(); i++) {
    Napi::Value v = dataArray.Get(i);
    if (!v.IsBuffer()) return ThrowType(env, "argument 'data' must hold Buffers"), env.Undefined();
    auto b = v.As<Napi::Buffer<char>>();
    data.emplace_back(b.Data(), b.Length());
  }
  // Both Buffers are held by one object the call keeps a reference to.
  Napi::Object keep = Napi::Object::New(env);
  keep.Set("ops", opsValue);
  keep.Set("data", dataArray);
  return Dispatch(env, std::make_unique<ApplyOpsCall>(root, buf.Data(), buf.Length(), std::move(data), keep), sync);
}

bool ApplyOpsCall::Decode() {
  const char* p = ops_bytes_;
  const char* end = p + ops_len_;
  while (p < end) {
    Op op;
    if (static_cast<size_t>(end - p) < sizeof(Head)) return false;
    std::memcpy(&op.h, p, sizeof(Head));
    p += sizeof(Head);
    if (!TakeBytes(p, end, op.h.parent_len, &op.parent) || !TakeBytes(p, end, op.h.name_len, &op.name) ||
        !TakeBytes(p, end, op.h.target_len, &op.target) || !TakeBytes(p, end, op.h.target2_len, &op.target2))
      return false;
    for (uint32_t k = 0; k < op.h.xattr_count; k++) {
      uint32_t lens[2];
      if (static_cast<size_t>(end - p) < sizeof(lens)) return false;
      std::memcpy(lens, p, sizeof(lens));
      p += sizeof(lens);
      Xattr x;
      if (!TakeBytes(p, end, lens[0], &x.name) || static_cast<size_t>(end - p) < lens[1]) return false;
      x.value = p;
      x.size = lens[1];
      p += lens[1];
      op.xattrs.push_back(std::move(x));
    }
    if (op.h.kind != kFdMeta && op.name.empty()) return false;
    ops_.push_back(std::move(op));
  }
  return true;
}

class OpenBeneathCall : public Call {
 public:
  OpenBeneathCall(int root, std::string path, int flags) : root_(root), path_(std::move(path)), flags_(flags) {}
  bool Run() override {
    fd_ = OpenBeneath(root_, path_, static_cast<uint64_t>(flags_) | O_NOFOLLOW, kResolveNoXdev);
    if (fd_ < 0) return Fail("openat2", path_);
    return true;
  }
  Napi::Value Resolve(Napi::Env env) override { return Napi::Number::New(env, fd_); }

 private:
  int root_;
  std::string path_;
  int flags_;
  int fd_ = -1;
};

// openBeneath(rootFd, path, flags) -> fd. O_NOFOLLOW and O_CLOEXEC are always added; O_CREAT is refused
// (entries are made by applyOps).
Napi::Value OpenBeneathExport(const Napi::CallbackInfo& info, bool sync) {
  Napi::Env env = info.Env();
  int root = -1;
  std::string path;
  uint64_t flags = 0;
  if (!ReadFd(env, Arg(info, 0), "argument 'rootFd'", &root) || !ReadPath(info, 1, "path", &path) ||
      !ReadUint(info, 2, "flags", 2147483647.0, &flags))
    return env.Undefined();
  if (flags & (O_CREAT | O_TMPFILE)) return ThrowRange(env, "argument 'flags' may not create"), env.Undefined();
  return Dispatch(env, std::make_unique<OpenBeneathCall>(root, std::move(path), static_cast<int>(flags)), sync);
}

// readFiles(rootFd, items: [dir, name][], maxEach) -> { data: Buffer, spans: Float64Array, extra }: whole
// small files below the root in one trip (each opened O_NOFOLLOW from its directory, reached beneath the
// root); a file over `maxEach` bytes comes back as { size } for the caller to stream.
struct FileRead {
  int err = 0;
  const char* syscall = "";
  size_t offset = 0;  // in the batch's buffer
  size_t len = 0;
  bool too_big = false;
  uint64_t size = 0;
};

class ReadFilesCall : public Call {
 public:
  ReadFilesCall(int root, std::vector<std::pair<std::string, std::string>> items, uint64_t max)
      : root_(root), items_(std::move(items)), max_(max) {}

  bool Run() override {
    out_.resize(items_.size());
    Fd dir;
    const std::string* dir_path = nullptr;
    int dir_err = 0;
    for (size_t i = 0; i < items_.size(); i++) {
      FileRead& r = out_[i];
      const auto& [d, name] = items_[i];
      if (dir_path == nullptr || *dir_path != d) {
        dir.reset(OpenBeneath(root_, d, O_PATH | O_DIRECTORY | O_NOFOLLOW, kResolveNoXdev));
        dir_err = dir.get() < 0 ? errno : 0;
        dir_path = &d;
      }
      if (dir_err != 0) {
        r.err = dir_err;
        r.syscall = "openat2";
        continue;
      }
      Fd fd(openat(dir.get(), name.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY | O_NONBLOCK));
      if (fd.get() < 0) {
        r.err = errno;
        r.syscall = "openat";
        continue;
      }
      struct stat st;
      if (fstat(fd.get(), &st) != 0) {
        r.err = errno;
        r.syscall = "fstat";
        continue;
      }
      if (!S_ISREG(st.st_mode)) {  // swapped for something else since the walk saw a file
        r.err = EINVAL;
        r.syscall = "read";
        continue;
      }
      r.size = static_cast<uint64_t>(st.st_size);
      if (r.size > max_) {
        r.too_big = true;
        continue;
      }
      // Read to the end, not to the size stat gave: a file that grew or shrank is read as it now is, up to max.
      // Straight into the batch's one buffer, on this pool thread.
      r.offset = blob_.size();
      size_t cap = static_cast<size_t>(r.size) + 1;
      blob_.resize(r.offset + cap);
      for (;;) {
        ssize_t n = read(fd.get(), &blob_[r.offset + r.len], cap - r.len);
        if (n < 0) {
          if (errno == EINTR) continue;
          r.err = errno;
          r.syscall = "read";
          break;
        }
        if (n == 0) break;
        r.len += static_cast<size_t>(n);
        if (r.len == cap) {
          if (cap > max_) {
            r.too_big = true;
            break;
          }
          cap *= 2;
          blob_.resize(r.offset + cap);
        }
      }
      blob_.resize(r.err != 0 || r.too_big ? r.offset : r.offset + r.len);
      if (r.err != 0 || r.too_big) r.len = 0;
    }
    return true;
  }

  // One Buffer for the whole batch (a Buffer per file costs more to make than most small files take to
  // read): { data, files: Array<[offset, length] | { errno, syscall } | { size }> }.
  Napi::Value Resolve(Napi::Env env) override {
    // The buffer itself is handed over (no copy): it is freed with the Buffer.
    Napi::Buffer<char> data = Napi::Buffer<char>::New(env, 0);
    if (!blob_.empty()) {
      auto* blob = new std::string(std::move(blob_));
      data = Napi::Buffer<char>::New(env, &(*blob)[0], blob->size(), [](Napi::Env, char*, std::string* b) { delete b; }, blob);
    }
    // Each file's [offset, length] in `spans` (length -1: see `extra`, a sparse array of { errno, syscall }
    // or { size }): two N-API objects a batch rather than three an entry.
    Napi::Float64Array spans = Napi::Float64Array::New(env, out_.size() * 2);
    Napi::Array extra = Napi::Array::New(env);
    for (size_t i = 0; i < out_.size(); i++) {
      FileRead& r = out_[i];
      spans.Data()[2 * i] = static_cast<double>(r.offset);
      spans.Data()[2 * i + 1] = r.err != 0 || r.too_big ? -1 : static_cast<double>(r.len);
      if (r.err != 0) {
        Napi::Object o = Napi::Object::New(env);
        o.Set("errno", Napi::Number::New(env, r.err));
        o.Set("syscall", Napi::String::New(env, r.syscall));
        extra.Set(static_cast<uint32_t>(i), o);
      } else if (r.too_big) {
        Napi::Object o = Napi::Object::New(env);
        o.Set("size", Napi::Number::New(env, static_cast<double>(r.size)));
        extra.Set(static_cast<uint32_t>(i), o);
      }
    }
    Napi::Object out = Napi::Object::New(env);
    out.Set("data", data);
    out.Set("spans", spans);
    out.Set("extra", extra);
    return out;
  }

 private:
  int root_;
  std::vector<std::pair<std::string, std::string>> items_;
  uint64_t max_;
  std::vector<FileRead> out_;
  std::string blob_;
};

Napi::Value ReadFiles(const Napi::CallbackInfo& info, bool sync) {
  Napi::Env env = info.Env();
  int root = -1;
  Napi::Array arr;
  uint64_t max = 0;
  if (!ReadFd(env, Arg(info, 0), "argument 'rootFd'", &root) || !CheckArray(env, Arg(info, 1), "argument 'items'", &arr) ||
      !ReadUint(info, 2, "maxEach", 1073741824.0, &max))
    return env.Undefined();
  std::vector<std::pair<std::string, std::string>> items;
  items.reserve(arr.Length());
  for (uint32_t i = 0; i < arr.Length(); i++) {
    Napi::Value v = arr.Get(i);
    if (!v.IsArray() || v.As<Napi::Array>().Length() != 2) return ThrowType(env, "argument 'items' must hold [dir, name] pairs"), env.Undefined();
    Napi::Array pair = v.As<Napi::Array>();
    std::string d, n;
    if (!ValueToPath(env, pair.Get(0u), "a dir of 'items'", &d) || !ValueToPath(env, pair.Get(1u), "a name of 'items'", &n))
      return env.Undefined();
    items.emplace_back(std::move(d), std::move(n));
  }
  return Dispatch(env, std::make_unique<ReadFilesCall>(root, std::move(items), max), sync);
}

}  // namespace

void RegisterTree(Napi::Env env, Napi::Object exports) {
  ExportBoth<ApplyOps>(env, exports, "applyOps");
  ExportBoth<OpenBeneathExport>(env, exports, "openBeneath");
  ExportBoth<ReadFiles>(env, exports, "readFiles");
}

}  // namespace ovl
