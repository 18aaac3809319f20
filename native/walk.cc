// Walking layers: overlay keeps whiteouts, opaque dirs, redirects and metacopy in xattrs, and Node has no
// xattr API. Two batched calls, each one trip to the thread pool for many paths, and both *beneath a layer's
// root fd*: every directory is opened with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV)
// from the root fd the caller opened once, so no symlink, `..` or rename swapped in during a walk can lead
// it outside the layer (nor into a mount inside it, which overlay does not see either).
//
//   lstatXattrs(items, prefix)  [rootFd, dir, name]: lstat facts of dir/name plus its xattrs named `prefix*`
//   scanDirs(dirs, prefix)      [rootFd, dir]: every entry of each directory, with the same facts
//
// Entries are read relative to their directory's fd (fstatat AT_SYMLINK_NOFOLLOW; listxattrat/getxattrat on
// 6.13+, else the l*xattr calls through the directory's /proc/self/fd link), never by a path string from the
// root. Per-path failures are data in the result ({ errno, syscall }), so one vanished file does not fail a
// whole batch.
#include "common.h"

#include <atomic>
#include <cerrno>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>

#ifndef SYS_getxattrat
#define SYS_getxattrat 464
#endif
#ifndef SYS_listxattrat
#define SYS_listxattrat 465
#endif

namespace ovl {
namespace {

// A directory below a layer's root fd ("" for the root itself), reached without symlinks, `..` or mounts.
int OpenDirBeneath(int root, const std::string& dir) {
  return OpenBeneath(root, dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW, kResolveNoXdev);
}

struct XattrArgs {
  uint64_t value;
  uint32_t size;
  uint32_t flags;
};

// Whether listxattrat/getxattrat (6.13+) exist: 1 yes, 0 no, -1 not known yet.
std::atomic<int> have_xattrat{-1};

// The xattr calls on `name` inside the directory `dfd`, never following it if it is a symlink.
ssize_t ListXattrAt(int dfd, const std::string& name, char* list, size_t size) {
  if (have_xattrat.load() != 0) {
    long n = syscall(SYS_listxattrat, dfd, name.c_str(), AT_SYMLINK_NOFOLLOW, list, size);
    if (n >= 0 || errno != ENOSYS) {
      have_xattrat.store(1);
      return n;
    }
    have_xattrat.store(0);
  }
  return llistxattr(FdPath(dfd, name).c_str(), list, size);
}

ssize_t GetXattrAt(int dfd, const std::string& name, const char* attr, char* value, size_t size) {
  if (have_xattrat.load() != 0) {
    XattrArgs args{reinterpret_cast<uint64_t>(value), static_cast<uint32_t>(size), 0};
    long n = syscall(SYS_getxattrat, dfd, name.c_str(), AT_SYMLINK_NOFOLLOW, attr, &args, sizeof(args));
    if (n >= 0 || errno != ENOSYS) {
      have_xattrat.store(1);
      return n;
    }
    have_xattrat.store(0);
  }
  return lgetxattr(FdPath(dfd, name).c_str(), attr, value, size);
}

struct EntryFacts {
  std::string name;                // scanDirs only
  int err = 0;                     // lstat failed: errno, and nothing else is set
  const char* syscall = "";
  uint32_t mode = 0;
  uint32_t rdev_major = 0, rdev_minor = 0;
  uint64_t size = 0;
  uint64_t ino = 0;
  uint32_t uid = 0, gid = 0, nlink = 0;
  int64_t mtime_sec = 0;
  uint32_t mtime_nsec = 0;
  bool has_link = false;           // a symlink whose text was read
  std::string link;
  int xattr_err = 0;               // listing or reading xattrs failed (other than "none here")
  const char* xattr_syscall = "";
  std::vector<std::pair<std::string, std::string>> xattrs;  // name, raw value
};

// Fills `f` with the xattrs of `name` in directory `dfd` whose names start with `prefix`. ENOTSUP (a
// filesystem without xattrs) and ENODATA (removed between list and get) mean "none"; other errors are recorded.
void ReadXattrs(int dfd, const std::string& name_in_dir, const std::string& prefix, EntryFacts* f) {
  std::vector<char> names(1024);
  ssize_t n;
  // ERANGE: the list grew past the buffer; ask its size and retry (a few times, as it may keep changing).
  for (int attempt = 0;; attempt++) {
    n = ListXattrAt(dfd, name_in_dir, names.data(), names.size());
    if (n >= 0) break;
    if (errno == ERANGE && attempt < 8) {
      ssize_t need = ListXattrAt(dfd, name_in_dir, nullptr, 0);
      if (need < 0) break;
      names.resize(static_cast<size_t>(need) + 256);
      continue;
    }
    break;
  }
  if (n < 0) {
    if (errno != ENOTSUP && errno != ENODATA) {
      f->xattr_err = errno;
      f->xattr_syscall = "llistxattr";
    }
    return;
  }
  std::vector<char> value(256);
  for (ssize_t off = 0; off < n;) {
    const char* name = names.data() + off;
    size_t len = strnlen(name, static_cast<size_t>(n - off));
    off += static_cast<ssize_t>(len) + 1;
    if (len < prefix.size() || std::memcmp(name, prefix.data(), prefix.size()) != 0) continue;
    ssize_t v;
    for (int attempt = 0;; attempt++) {
      v = GetXattrAt(dfd, name_in_dir, name, value.data(), value.size());
      if (v >= 0) break;
      if (errno == ERANGE && attempt < 8) {
        ssize_t need = GetXattrAt(dfd, name_in_dir, name, nullptr, 0);
        if (need < 0) break;
        value.resize(static_cast<size_t>(need) + 64);
        continue;
      }
      break;
    }
    if (v < 0) {
      if (errno == ENODATA || errno == ENOTSUP) continue;
      f->xattr_err = errno;
      f->xattr_syscall = "lgetxattr";
      continue;
    }
    f->xattrs.emplace_back(std::string(name, len), std::string(value.data(), static_cast<size_t>(v)));
  }
}

void FillStat(const struct stat& st, EntryFacts* f) {
  f->mode = st.st_mode;
  f->size = static_cast<uint64_t>(st.st_size);
  f->ino = static_cast<uint64_t>(st.st_ino);
  f->uid = st.st_uid;
  f->gid = st.st_gid;
  f->nlink = static_cast<uint32_t>(st.st_nlink);
  f->mtime_sec = st.st_mtim.tv_sec;
  f->mtime_nsec = static_cast<uint32_t>(st.st_mtim.tv_nsec);
  if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode)) {
    f->rdev_major = major(st.st_rdev);
    f->rdev_minor = minor(st.st_rdev);
  }
}

// A symlink's text, read relative to its directory (never followed).
void ReadLinkAt(int dfd, const std::string& name, EntryFacts* f) {
  if (!S_ISLNK(f->mode)) return;
  std::vector<char> buf(f->size + 2 > 256 ? f->size + 2 : 256);
  ssize_t n = readlinkat(dfd, name.c_str(), buf.data(), buf.size());
  if (n < 0 || static_cast<size_t>(n) >= buf.size()) return;  // changed meanwhile: no text rather than a wrong one
  f->link.assign(buf.data(), static_cast<size_t>(n));
  f->has_link = true;
}

Napi::Object EntryToObject(Napi::Env env, const EntryFacts& f, bool with_name) {
  Napi::Object o = Napi::Object::New(env);
  if (with_name) o.Set("name", Latin1(env, f.name));  // the exact bytes, one character each
  if (f.err != 0) {
    o.Set("errno", Napi::Number::New(env, f.err));
    o.Set("syscall", Napi::String::New(env, f.syscall));
    return o;
  }
  o.Set("mode", Napi::Number::New(env, f.mode));
  o.Set("size", Napi::Number::New(env, static_cast<double>(f.size)));
  o.Set("ino", Napi::BigInt::New(env, f.ino));
  o.Set("uid", Napi::Number::New(env, f.uid));
  o.Set("gid", Napi::Number::New(env, f.gid));
  o.Set("nlink", Napi::Number::New(env, f.nlink));
  o.Set("mtimeSec", Napi::Number::New(env, static_cast<double>(f.mtime_sec)));
  o.Set("mtimeNsec", Napi::Number::New(env, f.mtime_nsec));
  if (f.has_link) o.Set("linkTarget", Latin1(env, f.link));
  if (S_ISCHR(f.mode) || S_ISBLK(f.mode)) {
    o.Set("rdevMajor", Napi::Number::New(env, f.rdev_major));
    o.Set("rdevMinor", Napi::Number::New(env, f.rdev_minor));
  }
  Napi::Object x = Napi::Object::New(env);
  for (const auto& kv : f.xattrs) x.Set(kv.first, Napi::Buffer<char>::Copy(env, kv.second.data(), kv.second.size()));
  o.Set("xattrs", x);
  if (f.xattr_err != 0) {
    o.Set("xattrErrno", Napi::Number::New(env, f.xattr_err));
    o.Set("xattrSyscall", Napi::String::New(env, f.xattr_syscall));
  }
  return o;
}

// A place in a layer: the layer's root fd, a directory below it ("" for the root, "a/b" without a leading
// slash), and for lstatXattrs a name in that directory.
struct Place {
  int root = -1;
  std::string dir;
  std::string name;
};

bool ReadPlaces(const Napi::CallbackInfo& info, size_t i, const char* what, bool with_name, std::vector<Place>* out) {
  Napi::Env env = info.Env();
  Napi::Array arr;
  std::string arg = std::string("argument '") + what + "'";
  if (!CheckArray(env, Arg(info, i), arg, &arr)) return false;
  out->reserve(arr.Length());
  for (uint32_t k = 0; k < arr.Length(); k++) {
    Napi::Value v = arr.Get(k);
    Napi::Array one;
    if (env.IsExceptionPending() || !CheckArray(env, v, with_name ? "each item ([rootFd, dir, name])" : "each item ([rootFd, dir])", &one))
      return false;
    Place p;
    if (!ReadFd(env, one.Get(0u), "an item's rootFd", &p.root) || !ValueToPath(env, one.Get(1u), "an item's dir", &p.dir))
      return false;
    if (with_name) {
      if (!ValueToPath(env, one.Get(2u), "an item's name", &p.name)) return false;
      if (p.name.empty() || p.name.find('/') != std::string::npos || p.name == "." || p.name == "..")
        return ThrowType(env, "an item's name must be one path component");
    }
    out->push_back(std::move(p));
  }
  return true;
}

// --- lstatXattrs -----------------------------------------------------------------------------------

class LstatXattrsCall : public Call {
 public:
  LstatXattrsCall(std::vector<Place> items, std::string prefix) : items_(std::move(items)), prefix_(std::move(prefix)) {}

  bool Run() override {
    facts_.resize(items_.size());
    Fd dir;
    int dir_root = -1;
    const std::string* dir_path = nullptr;
    int dir_err = 0;
    for (size_t i = 0; i < items_.size(); i++) {
      const Place& p = items_[i];
      EntryFacts& f = facts_[i];
      if (dir_path == nullptr || dir_root != p.root || *dir_path != p.dir) {  // items of one directory share its fd
        dir.reset(OpenDirBeneath(p.root, p.dir));
        dir_err = dir.get() < 0 ? errno : 0;
        dir_root = p.root;
        dir_path = &p.dir;
      }
      if (dir_err != 0) {
        f.err = dir_err;
        f.syscall = "openat2";
        continue;
      }
      struct stat st;
      if (fstatat(dir.get(), p.name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
        f.err = errno;
        f.syscall = "lstat";
        continue;
      }
      FillStat(st, &f);
      ReadLinkAt(dir.get(), p.name, &f);
      ReadXattrs(dir.get(), p.name, prefix_, &f);
    }
    return true;
  }
  Napi::Value Resolve(Napi::Env env) override {
    Napi::Array out = Napi::Array::New(env, facts_.size());
    for (size_t i = 0; i < facts_.size(); i++) out.Set(i, EntryToObject(env, facts_[i], false));
    return out;
  }

 private:
  std::vector<Place> items_;
  std::string prefix_;
  std::vector<EntryFacts> facts_;
};

// lstatXattrs(items: [rootFd, dir, name][], prefix: string)
//   -> Array<{ errno, syscall } | { mode, size, ino, rdevMajor?, rdevMinor?, xattrs, xattrErrno?, xattrSyscall? }>
Napi::Value LstatXattrs(const Napi::CallbackInfo& info, bool sync) {
  std::vector<Place> items;
  std::string prefix;
  if (!ReadPlaces(info, 0, "items", true, &items) || !ReadString(info, 1, "prefix", &prefix))
    return info.Env().Undefined();
  return Dispatch(info.Env(), std::make_unique<LstatXattrsCall>(std::move(items), std::move(prefix)), sync);
}

// --- scanDirs --------------------------------------------------------------------------------------

struct DirFacts {
  int err = 0;
  const char* syscall = "";
  std::vector<EntryFacts> entries;
};

class ScanDirsCall : public Call {
 public:
  ScanDirsCall(std::vector<Place> dirs, std::string prefix, bool packed = false)
      : dirs_(std::move(dirs)), prefix_(std::move(prefix)), packed_(packed) {}

  bool Run() override {
    out_.resize(dirs_.size());
    for (size_t i = 0; i < dirs_.size(); i++) Scan(dirs_[i], &out_[i]);
    return true;
  }

  Napi::Value Resolve(Napi::Env env) override {
    if (packed_) return Packed(env);
    Napi::Array out = Napi::Array::New(env, out_.size());
    for (size_t i = 0; i < out_.size(); i++) {
      const DirFacts& d = out_[i];
      Napi::Object o = DirObject(env, d);
      if (d.err == 0) {
        Napi::Array entries = Napi::Array::New(env, d.entries.size());
        for (size_t k = 0; k < d.entries.size(); k++) entries.Set(k, EntryToObject(env, d.entries[k], true));
        o.Set("entries", entries);
      }
      out.Set(i, o);
    }
    return out;
  }

 private:
  // A directory's result object: { errno, syscall } when it could not be read, else empty (to be filled).
  static Napi::Object DirObject(Napi::Env env, const DirFacts& d) {
    Napi::Object o = Napi::Object::New(env);
    if (d.err != 0) {
      o.Set("errno", Napi::Number::New(env, d.err));
      o.Set("syscall", Napi::String::New(env, d.syscall));
    }
    return o;
  }

  // scanDirsPacked's form: per directory { names, facts, extra } or { errno, syscall }. `names` is every
  // entry's name joined by "/" (no name holds one), `facts` a Float64Array of kPackedFields numbers an entry,
  // `extra` a sparse array with { xattrs, linkTarget, errno, ... } only for entries that have any. Objects
  // made with N-API cost about a microsecond a property: this makes two a directory instead of ~15 an entry.
  static constexpr size_t kPackedFields = 11;
  Napi::Value Packed(Napi::Env env) {
    Napi::Array out = Napi::Array::New(env, out_.size());
    for (size_t i = 0; i < out_.size(); i++) {
      const DirFacts& d = out_[i];
      Napi::Object o = DirObject(env, d);
      if (d.err != 0) {
        out.Set(i, o);
        continue;
      }
      std::string names;
      for (size_t k = 0; k < d.entries.size(); k++) {
        if (k > 0) names += '/';
        names += d.entries[k].name;
      }
      Napi::Float64Array facts = Napi::Float64Array::New(env, d.entries.size() * kPackedFields);
      Napi::Array extra = Napi::Array::New(env);
      for (size_t k = 0; k < d.entries.size(); k++) {
        const EntryFacts& f = d.entries[k];
        double* v = facts.Data() + k * kPackedFields;
        v[0] = f.mode;
        v[1] = static_cast<double>(f.size);
        v[2] = f.uid;
        v[3] = f.gid;
        v[4] = f.nlink;
        v[5] = static_cast<double>(f.mtime_sec);
        v[6] = f.mtime_nsec;
        v[7] = f.rdev_major;
        v[8] = f.rdev_minor;
        v[9] = static_cast<double>(f.ino >> 32);
        v[10] = static_cast<double>(f.ino & 0xffffffffu);
        if (f.err != 0 || f.has_link || !f.xattrs.empty() || f.xattr_err != 0) {
          Napi::Object e = EntryToObject(env, f, false);
          if (f.err == 0) {  // the numbers are in `facts`: keep only what is not
            for (const char* k2 : {"mode", "size", "ino", "uid", "gid", "nlink", "mtimeSec", "mtimeNsec", "rdevMajor", "rdevMinor"}) e.Delete(k2);
          }
          extra.Set(static_cast<uint32_t>(k), e);
        }
      }
      o.Set("names", Latin1(env, names));
      o.Set("facts", facts);
      o.Set("extra", extra);
      out.Set(i, o);
    }
    return out;
  }

  void Scan(const Place& place, DirFacts* out) {
    // O_NOFOLLOW and RESOLVE_NO_SYMLINKS: a layer directory that is (or went through) a symlink is not a
    // directory overlay would merge, and is never followed out of the layer.
    int fd = OpenDirBeneath(place.root, place.dir);
    if (fd < 0) {
      out->err = errno;
      out->syscall = "openat2";
      return;
    }
    DIR* d = fdopendir(fd);
    if (d == nullptr) {
      out->err = errno;
      out->syscall = "fdopendir";
      close(fd);
      return;
    }
    for (;;) {
      errno = 0;
      struct dirent* e = readdir(d);
      if (e == nullptr) {
        if (errno != 0) {
          out->err = errno;
          out->syscall = "readdir";
          out->entries.clear();
        }
        break;
      }
      if (std::strcmp(e->d_name, ".") == 0 || std::strcmp(e->d_name, "..") == 0) continue;
      EntryFacts f;
      f.name = e->d_name;
      struct stat st;
      if (fstatat(fd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
        if (errno == ENOENT) continue;  // removed since readdir: it is not there
        f.err = errno;
        f.syscall = "lstat";
      } else {
        FillStat(st, &f);
        ReadLinkAt(fd, f.name, &f);
        ReadXattrs(fd, f.name, prefix_, &f);
      }
      out->entries.push_back(std::move(f));
    }
    closedir(d);  // closes fd
  }

  std::vector<Place> dirs_;
  std::string prefix_;
  bool packed_;
  std::vector<DirFacts> out_;
};

// scanDirs(dirs: [rootFd, dir][], prefix: string)
//   -> Array<{ errno, syscall } | { entries: Array<{ name, ...what lstatXattrs gives }> }>
Napi::Value ScanDirs(const Napi::CallbackInfo& info, bool sync) {
  std::vector<Place> dirs;
  std::string prefix;
  if (!ReadPlaces(info, 0, "dirs", false, &dirs) || !ReadString(info, 1, "prefix", &prefix))
    return info.Env().Undefined();
  return Dispatch(info.Env(), std::make_unique<ScanDirsCall>(std::move(dirs), std::move(prefix)), sync);
}

// scanDirsPacked(dirs, prefix): what scanDirs reads, in the packed form above (for walks of many entries).
Napi::Value ScanDirsPacked(const Napi::CallbackInfo& info, bool sync) {
  std::vector<Place> dirs;
  std::string prefix;
  if (!ReadPlaces(info, 0, "dirs", false, &dirs) || !ReadString(info, 1, "prefix", &prefix))
    return info.Env().Undefined();
  return Dispatch(info.Env(), std::make_unique<ScanDirsCall>(std::move(dirs), std::move(prefix), true), sync);
}

}  // namespace

void RegisterWalk(Napi::Env env, Napi::Object exports) {
  ExportBoth<LstatXattrs>(env, exports, "lstatXattrs");
  ExportBoth<ScanDirs>(env, exports, "scanDirs");
  ExportBoth<ScanDirsPacked>(env, exports, "scanDirsPacked");
}

}  // namespace ovl
