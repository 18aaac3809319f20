// Extended attributes (issue 5): overlay keeps whiteouts, opaque dirs, redirects and metacopy in xattrs, and
// Node has no xattr API. Two batched calls, each one trip to the thread pool for many paths:
//
//   lstatXattrs(paths, prefix)  lstat(2) of each path plus its xattrs whose names start with `prefix`
//   scanDirs(dirs, prefix)      every entry of each directory, with the same facts
//
// Nothing follows a symlink (fstatat AT_SYMLINK_NOFOLLOW, llistxattr, lgetxattr). Per-path failures are
// data in the result ({ errno, syscall }), so one vanished file does not fail a whole batch.
#include "common.h"

#include <cerrno>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>

namespace ovl {
namespace {

struct EntryFacts {
  std::string name;                // scanDirs only
  int err = 0;                     // lstat failed: errno, and nothing else is set
  const char* syscall = "";
  uint32_t mode = 0;
  uint32_t rdev_major = 0, rdev_minor = 0;
  uint64_t size = 0;
  uint64_t ino = 0;
  int xattr_err = 0;               // listing or reading xattrs failed (other than "none here")
  const char* xattr_syscall = "";
  std::vector<std::pair<std::string, std::string>> xattrs;  // name, raw value
};

// Fills `f` with the xattrs of `path` whose names start with `prefix`. ENOTSUP (a filesystem without
// xattrs) and ENODATA (removed between list and get) mean "none"; other errors are recorded.
void ReadXattrs(const std::string& path, const std::string& prefix, EntryFacts* f) {
  std::vector<char> names(1024);
  ssize_t n;
  // ERANGE: the list grew past the buffer; ask its size and retry (a few times, as it may keep changing).
  for (int attempt = 0;; attempt++) {
    n = llistxattr(path.c_str(), names.data(), names.size());
    if (n >= 0) break;
    if (errno == ERANGE && attempt < 8) {
      ssize_t need = llistxattr(path.c_str(), nullptr, 0);
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
      v = lgetxattr(path.c_str(), name, value.data(), value.size());
      if (v >= 0) break;
      if (errno == ERANGE && attempt < 8) {
        ssize_t need = lgetxattr(path.c_str(), name, nullptr, 0);
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
  if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode)) {
    f->rdev_major = major(st.st_rdev);
    f->rdev_minor = minor(st.st_rdev);
  }
}

Napi::Object EntryToObject(Napi::Env env, const EntryFacts& f, bool with_name) {
  Napi::Object o = Napi::Object::New(env);
  if (with_name) o.Set("name", Napi::String::New(env, f.name));
  if (f.err != 0) {
    o.Set("errno", Napi::Number::New(env, f.err));
    o.Set("syscall", Napi::String::New(env, f.syscall));
    return o;
  }
  o.Set("mode", Napi::Number::New(env, f.mode));
  o.Set("size", Napi::Number::New(env, static_cast<double>(f.size)));
  o.Set("ino", Napi::Number::New(env, static_cast<double>(f.ino)));
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

// Reads a string array argument (each without NUL), at most kMaxArrayLength entries.
bool ReadStringArray(const Napi::CallbackInfo& info, size_t i, const char* name, std::vector<std::string>* out) {
  Napi::Env env = info.Env();
  Napi::Array arr;
  std::string what = std::string("argument '") + name + "'";
  if (!CheckArray(env, info.Length() <= i ? env.Undefined() : info[i], what.c_str(), &arr)) return false;
  out->reserve(arr.Length());
  for (uint32_t k = 0; k < arr.Length(); k++) {
    Napi::Value v = arr.Get(k);
    if (env.IsExceptionPending()) return false;
    if (!v.IsString()) {
      Napi::TypeError::New(env, "ovl native: " + what + " must be an array of strings").ThrowAsJavaScriptException();
      return false;
    }
    std::string s = v.As<Napi::String>().Utf8Value();
    if (HasNul(s)) {
      Napi::TypeError::New(env, "ovl native: a path in " + what + " contains a NUL byte").ThrowAsJavaScriptException();
      return false;
    }
    out->push_back(std::move(s));
  }
  return true;
}

// --- lstatXattrs -----------------------------------------------------------------------------------

class LstatXattrsWorker : public PromiseWorker {
 public:
  LstatXattrsWorker(Napi::Env env, std::vector<std::string> paths, std::string prefix)
      : PromiseWorker(env), paths_(std::move(paths)), prefix_(std::move(prefix)) {}

 protected:
  bool Run() override {
    facts_.resize(paths_.size());
    for (size_t i = 0; i < paths_.size(); i++) {
      EntryFacts& f = facts_[i];
      struct stat st;
      if (lstat(paths_[i].c_str(), &st) != 0) {
        f.err = errno;
        f.syscall = "lstat";
        continue;
      }
      FillStat(st, &f);
      ReadXattrs(paths_[i], prefix_, &f);
    }
    return true;
  }
  Napi::Value Resolve(Napi::Env env) override {
    Napi::Array out = Napi::Array::New(env, facts_.size());
    for (size_t i = 0; i < facts_.size(); i++) out.Set(i, EntryToObject(env, facts_[i], false));
    return out;
  }

 private:
  std::vector<std::string> paths_;
  std::string prefix_;
  std::vector<EntryFacts> facts_;
};

// lstatXattrs(paths: string[], prefix: string)
//   -> Array<{ errno, syscall } | { mode, size, ino, rdevMajor?, rdevMinor?, xattrs, xattrErrno?, xattrSyscall? }>
Napi::Value LstatXattrs(const Napi::CallbackInfo& info) {
  std::vector<std::string> paths;
  std::string prefix;
  if (!ReadStringArray(info, 0, "paths", &paths) || !ReadString(info, 1, "prefix", &prefix))
    return info.Env().Undefined();
  auto* w = new LstatXattrsWorker(info.Env(), std::move(paths), std::move(prefix));
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

// --- scanDirs --------------------------------------------------------------------------------------

struct DirFacts {
  int err = 0;
  const char* syscall = "";
  std::vector<EntryFacts> entries;
};

class ScanDirsWorker : public PromiseWorker {
 public:
  ScanDirsWorker(Napi::Env env, std::vector<std::string> dirs, std::string prefix)
      : PromiseWorker(env), dirs_(std::move(dirs)), prefix_(std::move(prefix)) {}

 protected:
  bool Run() override {
    dirs_out_.resize(dirs_.size());
    for (size_t i = 0; i < dirs_.size(); i++) Scan(dirs_[i], &dirs_out_[i]);
    return true;
  }

  Napi::Value Resolve(Napi::Env env) override {
    Napi::Array out = Napi::Array::New(env, dirs_out_.size());
    for (size_t i = 0; i < dirs_out_.size(); i++) {
      const DirFacts& d = dirs_out_[i];
      Napi::Object o = Napi::Object::New(env);
      if (d.err != 0) {
        o.Set("errno", Napi::Number::New(env, d.err));
        o.Set("syscall", Napi::String::New(env, d.syscall));
      } else {
        Napi::Array entries = Napi::Array::New(env, d.entries.size());
        for (size_t k = 0; k < d.entries.size(); k++) entries.Set(k, EntryToObject(env, d.entries[k], true));
        o.Set("entries", entries);
      }
      out.Set(i, o);
    }
    return out;
  }

 private:
  void Scan(const std::string& dir, DirFacts* out) {
    // O_NOFOLLOW: a layer directory that is a symlink is not a directory overlay would merge.
    int fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
      out->err = errno;
      out->syscall = "open";
      return;
    }
    DIR* d = fdopendir(fd);
    if (d == nullptr) {
      out->err = errno;
      out->syscall = "fdopendir";
      close(fd);
      return;
    }
    std::string base = dir;
    if (base.empty() || base.back() != '/') base.push_back('/');
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
        ReadXattrs(base + e->d_name, prefix_, &f);
      }
      out->entries.push_back(std::move(f));
    }
    closedir(d);  // closes fd
  }

  std::vector<std::string> dirs_;
  std::string prefix_;
  std::vector<DirFacts> dirs_out_;
};

// scanDirs(dirs: string[], prefix: string)
//   -> Array<{ errno, syscall } | { entries: Array<{ name, ...what lstatXattrs gives }> }>
Napi::Value ScanDirs(const Napi::CallbackInfo& info) {
  std::vector<std::string> dirs;
  std::string prefix;
  if (!ReadStringArray(info, 0, "dirs", &dirs) || !ReadString(info, 1, "prefix", &prefix))
    return info.Env().Undefined();
  auto* w = new ScanDirsWorker(info.Env(), std::move(dirs), std::move(prefix));
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

}  // namespace

void RegisterXattr(Napi::Env env, Napi::Object exports) {
  exports.Set("lstatXattrs", Napi::Function::New(env, LstatXattrs, "lstatXattrs"));
  exports.Set("scanDirs", Napi::Function::New(env, ScanDirs, "scanDirs"));
}

}  // namespace ovl
