// The mount table: one mount's fields by id (statmount), a /proc file read whole in one trip (readText), and
// watching the table for changes (MountWatcher: EPOLLPRI on an open mountinfo file, in libuv's own loop).
#include <napi.h>
#include <uv.h>

#include "common.h"

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_statmount
#define SYS_statmount 457
#endif

namespace ovl {
namespace {

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
}  // namespace

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
    return Latin1(env, strs + off, strnlen(strs + off, str_room - off));
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
      opts.Set(i, Latin1(env, strs + off, len));
      off += len + 1;
    }
    o.Set("options", opts);
  }
  return o;
}

namespace {

class StatMountCall : public Call {
 public:
  StatMountCall(uint64_t id, size_t size_hint) : id_(id), size_hint_(size_hint) {}
  bool Run() override { return StatMountInto(id_, size_hint_, &buf_) || Fail("statmount"); }
  Napi::Value Resolve(Napi::Env env) override { return StatMountToObject(env, buf_); }

 private:
  uint64_t id_;
  size_t size_hint_;
  std::vector<char> buf_;
};

// statMount(uniqueMountId, sizeHint?)
Napi::Value StatMount(const Napi::CallbackInfo& info, bool sync) {
  uint64_t id = 0, hint = 0;
  if (!ReadUint(info, 0, "mountId", 9007199254740991.0, &id)) return info.Env().Undefined();
  if (!Arg(info, 1).IsUndefined() && !ReadUint(info, 1, "sizeHint", 16777216.0, &hint)) return info.Env().Undefined();
  return Dispatch(info.Env(), std::make_unique<StatMountCall>(id, static_cast<size_t>(hint)), sync);
}

// --- reading a whole /proc file in one trip -----------------------------------------------------------

// Reads `fd` from its start to the end (proc files are generated as they are read, a page or so per read()).
bool ReadWhole(int fd, const std::string& path, std::string* out, SysError* error) {
  auto fail = [&](const char* syscall) {
    error->err = errno;
    error->syscall = syscall;
    error->path = path;
    return false;
  };
  if (lseek(fd, 0, SEEK_SET) < 0) return fail("lseek");
  char buf[65536];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail("read");
    }
    if (n == 0) return true;
    out->append(buf, static_cast<size_t>(n));
  }
}

class ReadTextCall : public Call {
 public:
  ReadTextCall(std::string path, bool bytes) : path_(std::move(path)), bytes_(bytes) {}
  bool Run() override {
    Fd fd(open(path_.c_str(), O_RDONLY | O_CLOEXEC));
    if (fd.get() < 0) return Fail("open", path_);
    return ReadWhole(fd.get(), path_, &text_, &error_);
  }
  Napi::Value Resolve(Napi::Env env) override {
    return bytes_ ? Latin1(env, text_) : Napi::String::New(env, text_);
  }

 private:
  std::string path_;
  bool bytes_;
  std::string text_;
};

// readText(path, bytes?): the whole file, opened, read and closed in one trip to the thread pool: as UTF-8
// text, or with `bytes` as a latin1 byte string (one character per byte, every byte kept).
Napi::Value ReadText(const Napi::CallbackInfo& info, bool sync) {
  std::string path;
  if (!ReadPath(info, 0, "path", &path)) return info.Env().Undefined();
  bool bytes = Arg(info, 1).IsBoolean() && info[1].As<Napi::Boolean>().Value();
  return Dispatch(info.Env(), std::make_unique<ReadTextCall>(path, bytes), sync);
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
  bool env_alive = true;  // false once the environment's cleanup hook ran: no JavaScript may be touched
  bool reading = false;   // a WatchReadWorker is using fd
  bool closed = false;
  bool changed = false;   // a change arrived while no next() was waiting
  uv_poll_t* poll = nullptr;
  uv_timer_t* timer = nullptr;
  uv_check_t* check = nullptr;  // one shot: fires after the poll phase that registered `poll`
  std::unique_ptr<Napi::Promise::Deferred> waiting;  // a next() waiting for a change or its timeout
  std::unique_ptr<Napi::AsyncContext> context;       // for settling promises from libuv callbacks

  // The environment can end (process exit, a worker thread's end) with the watcher still open: its cleanup
  // hook closes everything while the environment still exists, and nothing touches it after.
  explicit WatchState(Napi::Env e) : env(e) { napi_add_env_cleanup_hook(env, OnEnvCleanup, this); }
  ~WatchState() {
    if (env_alive) napi_remove_env_cleanup_hook(env, OnEnvCleanup, this);
  }

  static void OnEnvCleanup(void* arg) {
    auto* self = static_cast<WatchState*>(arg);
    self->Close();
    self->waiting.reset();
    self->context.reset();  // napi_async_destroy while the environment is still there
    self->env_alive = false;
  }

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
    if (!waiting || !env_alive || !context) return;
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
    if (waiting && env_alive) {
      Napi::HandleScope scope(env);
      waiting->Resolve(env.Null());
    }
    waiting.reset();
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
    // A failed first read leaves no fd behind that nothing polls: the next call opens again.
    if (opened_here_ && st.fd >= 0) {
      close(st.fd);
      st.fd = -1;
    }
    deferred_.Reject(SysErrorToObject(env, error_));
    return;
  }
  if (opened_here_) st.StartPolling();
  deferred_.Resolve(Latin1(env, text_));  // a byte string: every byte of the table kept
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
    ReadPath(info, 0, "path", &state_->path);
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


}  // namespace

void RegisterTable(Napi::Env env, Napi::Object exports) {
  ExportBoth<StatMount>(env, exports, "statMount");
  ExportBoth<ReadText>(env, exports, "readText");
  exports.Set("MountWatcher", MountWatcher::Define(env));
}

}  // namespace ovl
