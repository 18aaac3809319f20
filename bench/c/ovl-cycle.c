/*
 * The floors for ovl's mount()+umount() cycle: the same overlay mounted and unmounted N times with bare
 * system calls, each cycle and each phase timed with CLOCK_MONOTONIC. Built and run by the bench
 * (bench/run.mjs, through bench/lib/workspace.mjs).
 *
 *   ovl-cycle MODE N LOWER UPPER WORK TARGET, MODE one of:
 *   legacy           mount(2) with "lowerdir=L,upperdir=U,workdir=W", then umount2(2) by path: what mount(8)
 *                    and umount(8) do; the baseline ("the bare loop").
 *   legacy-describe  the same, plus statx (mount id) and statmount: mount(2) giving ovl's result.
 *   fd-bare          the new mount API with no checks: open(O_PATH) per layer, fsopen, fsconfig (source,
 *                    lowerdir+, upperdir, workdir as fds), CMD_CREATE, fsmount, statx (mount id), move_mount
 *                    by path, statmount; umount2 by path.
 *   safe             exactly ovl's own safe fd sequence (src/mount.ts, native/mount.cc), same syscalls in the
 *                    same order:
 *                    trip 1 (openPaths): for lower, upper, work, target: open(O_PATH|O_DIRECTORY|O_CLOEXEC),
 *                      statx(AT_EMPTY_PATH), readlink(/proc/self/fd/N); the work dir listed through its fd;
 *                      openat2(work fd, "work", RESOLVE_BENEATH|NO_SYMLINKS|NO_MAGICLINKS) + statx + listing,
 *                      openat2 of "work/incompat/volatile/dirty"; /proc/self/mountinfo read whole only with
 *                      OVL_CYCLE_REFUSE_IN_USE set (mount()'s refuseInUse, off by default);
 *                    trip 2 (fsMount): open /dev/kmsg + lseek(END), fsopen, fsconfig source + SET_FD per layer,
 *                      CMD_CREATE, fsmount, read of the fs-context log and of kmsg, statx of the mount fd,
 *                      move_mount(mfd, "", targetFd, "", F_EMPTY_PATH|T_EMPTY_PATH), statmount; the fds closed
 *                      (ovl closes the 4 path fds on the main thread after the trip);
 *                    unmount (umountAt): open(parent, O_PATH|O_DIRECTORY), statx(parentfd, name,
 *                      AT_SYMLINK_NOFOLLOW) checking the unique mount id and STATX_ATTR_MOUNT_ROOT, then
 *                      umount2("/proc/self/fd/P/name", UMOUNT_NOFOLLOW).
 *
 * Prints a header "# mount umount <phase names...>", then one line per cycle: the mount and unmount times and
 * each phase's time, in ns. The phases of a mode add up to its mount + umount times (bar the clock reads).
 * `safe` phases: paths (open+statx+readlink of the 4 paths, the work dir listed), probes (the two openat2),
 * mountinfo, kmsg-open, configure (fsopen + fsconfig source and fds), create, fsmount, logs (fs-context log
 * and kmsg read), attach (statx + move_mount), statmount, close; umount-lookup (open parent + statx), umount2.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef SYS_fsopen
#define SYS_fsopen 430
#define SYS_fsconfig 431
#define SYS_fsmount 432
#define SYS_move_mount 429
#endif
#ifndef SYS_openat2
#define SYS_openat2 437
#endif
#ifndef SYS_statmount
#define SYS_statmount 457
#endif
#ifndef STATX_MNT_ID
#define STATX_MNT_ID 0x1000U
#endif
#ifndef STATX_MNT_ID_UNIQUE
#define STATX_MNT_ID_UNIQUE 0x4000U
#endif
#ifndef STATX_ATTR_MOUNT_ROOT
#define STATX_ATTR_MOUNT_ROOT 0x2000
#endif
#ifndef UMOUNT_NOFOLLOW
#define UMOUNT_NOFOLLOW 8
#endif

enum { FSCONFIG_SET_STRING_ = 1, FSCONFIG_SET_FD_ = 5, FSCONFIG_CMD_CREATE_ = 6 };
enum { MOVE_MOUNT_F_EMPTY_PATH_ = 0x4, MOVE_MOUNT_T_EMPTY_PATH_ = 0x40 };
enum { RESOLVE_NO_MAGICLINKS_ = 0x2, RESOLVE_NO_SYMLINKS_ = 0x4, RESOLVE_BENEATH_ = 0x8 };

/* The statx mask ovl's native StatFd asks for. */
#define FACTS_MASK \
  (STATX_TYPE | STATX_MODE | STATX_UID | STATX_GID | STATX_NLINK | STATX_INO | STATX_MNT_ID | STATX_MNT_ID_UNIQUE)

struct mnt_id_req_ {
  uint32_t size, spare;
  uint64_t mnt_id, param, mnt_ns_id;
};

struct open_how_ {
  uint64_t flags, mode, resolve;
};

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void die(const char* what, const char* path) {
  fprintf(stderr, "ovl-cycle: %s %s: %s\n", what, path ? path : "", strerror(errno));
  exit(1);
}

/* --- phase clock --------------------------------------------------------------------------------------- */

#define MAX_PHASES 16
static const char* phase_name[MAX_PHASES];
static uint64_t phase_ns[MAX_PHASES];
static int phase_count;
static uint64_t phase_t;

/* Ends the current phase (index k, named `name`) at now. */
static void lap(int k, const char* name) {
  uint64_t t = now_ns();
  phase_name[k] = name;
  phase_ns[k] = t - phase_t;
  phase_t = t;
  if (k + 1 > phase_count) phase_count = k + 1;
}

/* --- the pieces ------------------------------------------------------------------------------------------ */

static char statmount_buf[512 + 4096]; /* ovl: sizeof(struct statmount) + a 4 KiB hint for one layer */

static void describe(uint64_t mnt_id, const char* target) {
  struct mnt_id_req_ req = {.size = 24, .mnt_id = mnt_id, .param = 0x1 | 0x2 | 0x4 | 0x8 | 0x10 | 0x20 | 0x100 | 0x200 | 0x400};
  if (syscall(SYS_statmount, &req, statmount_buf, sizeof statmount_buf, 0) != 0) die("statmount", target);
}

static void statx_fd(int fd, const char* name, int flags, struct statx* stx, const char* what) {
  if (statx(fd, name, flags | AT_NO_AUTOMOUNT, FACTS_MASK, stx) != 0) die("statx", what);
}

/* ovl's ListFd: the directory read through its own fd (a fresh O_RDONLY fd on "."), the first names kept. */
static char listed_names[16][NAME_MAX + 1];
static unsigned long list_fd(int fd, const char* what) {
  int dfd = openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) die("openat .", what);
  DIR* d = fdopendir(dfd);
  if (!d) die("fdopendir", what);
  unsigned long count = 0;
  struct dirent* e;
  while ((e = readdir(d)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    if (count < 16) snprintf(listed_names[count], sizeof listed_names[count], "%s", e->d_name);
    count++;
  }
  closedir(d);
  return count;
}

static int open_beneath(int dirfd, const char* rel) {
  struct open_how_ how = {.flags = O_PATH | O_NOFOLLOW | O_CLOEXEC,
                          .resolve = RESOLVE_BENEATH_ | RESOLVE_NO_SYMLINKS_ | RESOLVE_NO_MAGICLINKS_};
  return (int)syscall(SYS_openat2, dirfd, rel, &how, sizeof how);
}

/* The mount table read whole, 64 KiB per read() (as ovl's openPaths does). */
static char* table_buf;
static size_t table_cap;
static size_t read_table(void) {
  int fd = open("/proc/self/mountinfo", O_RDONLY | O_CLOEXEC);
  if (fd < 0) die("open", "/proc/self/mountinfo");
  size_t len = 0;
  for (;;) {
    if (table_cap - len < 65536) {
      table_cap = table_cap ? table_cap * 2 : 1 << 17;
      table_buf = realloc(table_buf, table_cap);
      if (!table_buf) die("realloc", NULL);
    }
    ssize_t n = read(fd, table_buf + len, 65536);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) die("read", "/proc/self/mountinfo");
    if (n == 0) break;
    len += (size_t)n;
  }
  close(fd);
  return len;
}

/* ovl's KernelLog::ReadOverlayLines: one record per read() until EAGAIN. */
static char kmsg_buf[65536];
static void read_kmsg(int fd) {
  if (fd < 0) return;
  for (int i = 0; i < 4096; i++) {
    ssize_t n = read(fd, kmsg_buf, sizeof kmsg_buf);
    if (n < 0 && (errno == EPIPE || errno == EINTR)) continue;
    if (n <= 0) break;
  }
}

/* ovl's DrainFsLog: the fs-context log, one message per read() until ENODATA. */
static void drain_fs_log(int fsfd) {
  char buf[4096];
  for (int i = 0; i < 64; i++)
    if (read(fsfd, buf, sizeof buf) <= 0) break;
}

/* --- the modes -------------------------------------------------------------------------------------------- */

enum mode { LEGACY, LEGACY_DESCRIBE, FD_BARE, SAFE };

struct paths {
  const char *lower, *upper, *work, *target;
  char parent[PATH_MAX], name[NAME_MAX + 1]; /* the target's dirname and basename, as ovl's unmount splits it */
  const char* data;
};

static uint64_t mnt_id; /* the mount just made (its unique id in `safe`) */

static void set_fd_by_path(int fsfd, const char* key, const char* path) {
  int fd = open(path, O_PATH | O_CLOEXEC);
  if (fd < 0) die("open", path);
  if (syscall(SYS_fsconfig, fsfd, FSCONFIG_SET_FD_, key, NULL, fd) != 0) die("fsconfig", key);
  close(fd);
}

static void mount_legacy(const struct paths* p, int describe_too) {
  if (mount("overlay", p->target, "overlay", 0, p->data) != 0) die("mount", p->target);
  lap(0, "mount(2)");
  if (describe_too) {
    struct statx stx;
    if (statx(AT_FDCWD, p->target, AT_NO_AUTOMOUNT, STATX_MNT_ID_UNIQUE, &stx) != 0) die("statx", p->target);
    lap(1, "statx");
    describe(stx.stx_mnt_id, p->target);
    lap(2, "statmount");
  }
}

static void mount_fd_bare(const struct paths* p) {
  struct statx stx;
  int fsfd = (int)syscall(SYS_fsopen, "overlay", 1 /* FSOPEN_CLOEXEC */);
  if (fsfd < 0) die("fsopen", NULL);
  if (syscall(SYS_fsconfig, fsfd, FSCONFIG_SET_STRING_, "source", "overlay", 0) != 0) die("fsconfig", "source");
  set_fd_by_path(fsfd, "lowerdir+", p->lower);
  set_fd_by_path(fsfd, "upperdir", p->upper);
  set_fd_by_path(fsfd, "workdir", p->work);
  lap(0, "configure");
  if (syscall(SYS_fsconfig, fsfd, FSCONFIG_CMD_CREATE_, NULL, NULL, 0) != 0) die("fsconfig create", p->target);
  lap(1, "create");
  int mfd = (int)syscall(SYS_fsmount, fsfd, 1 /* FSMOUNT_CLOEXEC */, 0);
  if (mfd < 0) die("fsmount", p->target);
  lap(2, "fsmount");
  if (statx(mfd, "", AT_EMPTY_PATH, STATX_MNT_ID | STATX_MNT_ID_UNIQUE, &stx) != 0) die("statx", p->target);
  if (syscall(SYS_move_mount, mfd, "", AT_FDCWD, p->target, MOVE_MOUNT_F_EMPTY_PATH_) != 0) die("move_mount", p->target);
  close(mfd);
  close(fsfd);
  lap(3, "attach");
  describe(stx.stx_mnt_id, p->target);
  lap(4, "statmount");
}

static void mount_safe(const struct paths* p) {
  const char* names[4] = {p->lower, p->upper, p->work, p->target};
  int fds[4];
  struct statx stx;
  char link[64], real[PATH_MAX + 1];
  /* trip 1: openPaths */
  for (int i = 0; i < 4; i++) {
    fds[i] = open(names[i], O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (fds[i] < 0) die("open", names[i]);
    statx_fd(fds[i], "", AT_EMPTY_PATH, &stx, names[i]);
    snprintf(link, sizeof link, "/proc/self/fd/%d", fds[i]);
    if (readlink(link, real, sizeof real) < 0) die("readlink", link);
    if (i == 2) list_fd(fds[i], names[i]);
  }
  lap(0, "paths");
  int ww = open_beneath(fds[2], "work");
  if (ww >= 0) {
    statx_fd(ww, "", AT_EMPTY_PATH, &stx, "work/work");
    if (S_ISDIR(stx.stx_mode)) list_fd(ww, "work/work");
    close(ww);
  }
  int dirty = open_beneath(fds[2], "work/incompat/volatile/dirty");
  if (dirty >= 0) close(dirty);
  lap(1, "probes");
  /* mount()'s in-use check reads the table only with refuseInUse (off by default, as here). */
  if (getenv("OVL_CYCLE_REFUSE_IN_USE")) read_table();
  lap(2, "mountinfo");
  /* trip 2: fsMount */
  int kmsg = open("/dev/kmsg", O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (kmsg >= 0 && lseek(kmsg, 0, SEEK_END) < 0) {
    close(kmsg);
    kmsg = -1;
  }
  lap(3, "kmsg-open");
  int fsfd = (int)syscall(SYS_fsopen, "overlay", 1 /* FSOPEN_CLOEXEC */);
  if (fsfd < 0) die("fsopen", NULL);
  if (syscall(SYS_fsconfig, fsfd, FSCONFIG_SET_STRING_, "source", "overlay", 0) != 0) die("fsconfig", "source");
  if (syscall(SYS_fsconfig, fsfd, FSCONFIG_SET_FD_, "lowerdir+", NULL, fds[0]) != 0) die("fsconfig", "lowerdir+");
  if (syscall(SYS_fsconfig, fsfd, FSCONFIG_SET_FD_, "upperdir", NULL, fds[1]) != 0) die("fsconfig", "upperdir");
  if (syscall(SYS_fsconfig, fsfd, FSCONFIG_SET_FD_, "workdir", NULL, fds[2]) != 0) die("fsconfig", "workdir");
  lap(4, "configure");
  if (syscall(SYS_fsconfig, fsfd, FSCONFIG_CMD_CREATE_, NULL, NULL, 0) != 0) die("fsconfig create", p->target);
  lap(5, "create");
  int mfd = (int)syscall(SYS_fsmount, fsfd, 1 /* FSMOUNT_CLOEXEC */, 0);
  if (mfd < 0) die("fsmount", p->target);
  lap(6, "fsmount");
  drain_fs_log(fsfd);
  read_kmsg(kmsg);
  lap(7, "logs");
  statx_fd(mfd, "", AT_EMPTY_PATH, &stx, "mount fd");
  mnt_id = stx.stx_mnt_id;
  if (syscall(SYS_move_mount, mfd, "", fds[3], "", MOVE_MOUNT_F_EMPTY_PATH_ | MOVE_MOUNT_T_EMPTY_PATH_) != 0)
    die("move_mount", p->target);
  lap(8, "attach");
  describe(mnt_id, p->target);
  lap(9, "statmount");
  close(mfd);
  close(fsfd);
  if (kmsg >= 0) close(kmsg);
  for (int i = 0; i < 4; i++) close(fds[i]);
  lap(10, "close");
}

/* ovl's umountAt: exactly the mount made, found below its parent's fd. */
static void umount_safe(const struct paths* p, int first) {
  struct statx stx;
  char path[PATH_MAX + 64];
  int dir = open(p->parent, O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (dir < 0) die("open", p->parent);
  statx_fd(dir, p->name, AT_SYMLINK_NOFOLLOW, &stx, p->name);
  int root = (stx.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT) && (stx.stx_attributes & STATX_ATTR_MOUNT_ROOT);
  if (!root || stx.stx_mnt_id != mnt_id || !S_ISDIR(stx.stx_mode)) {
    errno = ESTALE;
    die("statx: not the mount made", p->target);
  }
  lap(first, "umount-lookup");
  snprintf(path, sizeof path, "/proc/self/fd/%d/%s", dir, p->name);
  if (umount2(path, UMOUNT_NOFOLLOW) != 0) die("umount2", path);
  close(dir);
  lap(first + 1, "umount2");
}

int main(int argc, char** argv) {
  static const char* modes[] = {"legacy", "legacy-describe", "fd-bare", "safe"};
  static const int mount_phases[] = {1, 3, 5, 11}; /* how many of each mode's phases are the mount's */
  int mode = -1;
  for (int k = 0; argc == 7 && k < 4; k++)
    if (strcmp(argv[1], modes[k]) == 0) mode = k;
  if (mode < 0) {
    fprintf(stderr, "usage: ovl-cycle legacy|legacy-describe|fd-bare|safe N LOWER UPPER WORK TARGET\n");
    return 2;
  }
  long n = strtol(argv[2], NULL, 10);
  struct paths p = {.lower = argv[3], .upper = argv[4], .work = argv[5], .target = argv[6]};
  char data[4096], tmp[PATH_MAX];
  if (snprintf(data, sizeof data, "lowerdir=%s,upperdir=%s,workdir=%s", p.lower, p.upper, p.work) >= (int)sizeof data ||
      strlen(p.target) >= sizeof tmp) {
    fprintf(stderr, "ovl-cycle: option string or target too long\n");
    return 2;
  }
  p.data = data;
  snprintf(tmp, sizeof tmp, "%s", p.target);
  snprintf(p.parent, sizeof p.parent, "%s", dirname(tmp));
  snprintf(tmp, sizeof tmp, "%s", p.target);
  snprintf(p.name, sizeof p.name, "%s", basename(tmp));

  for (long i = 0; i < n; i++) {
    uint64_t t0 = now_ns();
    phase_t = t0;
    switch (mode) {
      case LEGACY:
      case LEGACY_DESCRIBE:
        mount_legacy(&p, mode == LEGACY_DESCRIBE);
        break;
      case FD_BARE:
        mount_fd_bare(&p);
        break;
      default:
        mount_safe(&p);
    }
    uint64_t t1 = now_ns();
    phase_t = t1;
    if (mode == SAFE)
      umount_safe(&p, mount_phases[mode]);
    else {
      if (umount2(p.target, 0) != 0) die("umount2", p.target);
      lap(mount_phases[mode], "umount2");
    }
    uint64_t t2 = now_ns();
    if (i == 0) {
      printf("# mount umount");
      for (int j = 0; j < phase_count; j++) printf(" %s", phase_name[j]);
      printf("\n");
    }
    printf("%llu %llu", (unsigned long long)(t1 - t0), (unsigned long long)(t2 - t1));
    for (int j = 0; j < phase_count; j++) printf(" %llu", (unsigned long long)phase_ns[j]);
    printf("\n");
  }
  return 0;
}
