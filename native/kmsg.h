// The kernel log by position: overlay reports most refusals (and some warnings of mounts that succeed) only
// to the kernel log. /dev/kmsg is opened and moved to its end before the mount calls; afterwards only the
// records written since are read. No clock is compared (a time namespace or a slow clock cannot bring in
// old lines) and the ring is never read from its start.
#pragma once

#include <cerrno>
#include <string>
#include <vector>

#include <fcntl.h>
#include <unistd.h>

namespace ovl {

class KernelLog {
 public:
  // Opens /dev/kmsg at its end. Needs CAP_SYSLOG (or dmesg_restrict=0); without it the log stays unread.
  KernelLog() {
    int saved = errno;
    fd_ = open("/dev/kmsg", O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd_ >= 0 && lseek(fd_, 0, SEEK_END) < 0) {
      close(fd_);
      fd_ = -1;
    }
    errno = saved;
  }
  KernelLog(const KernelLog&) = delete;
  KernelLog& operator=(const KernelLog&) = delete;
  ~KernelLog() {
    if (fd_ >= 0) close(fd_);
  }

  // Appends overlay's lines written since the log was opened (or last read). Keeps errno as it was.
  void ReadOverlayLines(std::vector<std::string>* out) {
    if (fd_ < 0) return;
    int saved = errno;
    // One record per read(); a record longer than the buffer would fail with EINVAL, so the buffer is larger
    // than any record the kernel writes (PRINTK_MESSAGE_MAX is 2 KiB; continuation lines add a little).
    std::vector<char> buf(kRecordMax);
    for (int i = 0; i < kMaxRecords; i++) {
      ssize_t n = read(fd_, buf.data(), buf.size());
      if (n < 0) {
        if (errno == EPIPE || errno == EINTR) continue;  // EPIPE: records overwritten while reading
        break;                                            // EAGAIN: nothing more
      }
      if (n == 0) break;
      std::string rec(buf.data(), static_cast<size_t>(n));
      size_t semi = rec.find(';');
      if (semi == std::string::npos) continue;
      std::string msg = rec.substr(semi + 1);
      size_t nl = msg.find('\n');  // continuation lines (" KEY=value") follow the message
      if (nl != std::string::npos) msg.resize(nl);
      if (msg.rfind("overlayfs: ", 0) == 0 || msg.rfind("overlay: ", 0) == 0) out->push_back(msg);
    }
    errno = saved;
  }

 private:
  static constexpr size_t kRecordMax = 65536;
  // Records written during one mount call are few; a flood from elsewhere is cut rather than read forever.
  static constexpr int kMaxRecords = 4096;
  int fd_ = -1;
};

}  // namespace ovl
