/*
 * The floor for ovl's mount()+umount() cycle: the same overlay mounted and unmounted N times with bare
 * system calls, each cycle timed with CLOCK_MONOTONIC. Built and run by the bench (bench/run.mjs).
 *
 *   ovl-cycle MODE N LOWER UPPER WORK TARGET, MODE one of:
 *   legacy           mount(2) with "lowerdir=L,upperdir=U,workdir=W", then umount2(2): what mount(8) does;
 *                    the baseline.
 *   legacy-describe  the same, plus statx (mount id) and statmount: mount(2) giving ovl's result.
 *   fd               the calls ovl's `fd` strategy makes today: realpath+statx of each path (validation), a
 *                    listing of the work directory, open(O_PATH) per layer, fsopen, fsconfig (source,
 *                    lowerdir+, upperdir, workdir as fds), CMD_CREATE, fsmount, statx (mount id), move_mount,
 *                    statmount (describe), then umount2.
 *   fd-onecall       `fd` without the realpath+statx checks (the kernel makes them itself): what one native
 *                    call doing check-work-dir + mount + describe would cost.
 *
 * Prints one line per cycle: "<mount ns> <umount ns> <validate> <configure> <create> <attach> <describe>".
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
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
#ifndef SYS_statmount
#define SYS_statmount 457
#endif
#ifndef STATX_MNT_ID
#define STATX_MNT_ID 0x1000U
#endif
#ifndef STATX_MNT_ID_UNIQUE
#define STATX_MNT_ID_UNIQUE 0x4000U
#endif

enum { FSCONFIG_SET_STRING_ = 1, FSCONFIG_SET_FD_ = 5, FSCONFIG_CMD_CREATE_ = 6 };

struct mnt_id_req_ {
  uint32_t size, spare;
  uint64_t mnt_id, param, mnt_ns_id;
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

/* realpath + statx, as ovl's inspectPaths does for each path before mounting. `optional`: a missing path is
 * an answer, not an error (ovl's look at $work/work). */
static void inspect(const char* path, int optional) {
  char* real = realpath(path, NULL);
  if (!real) {
    if (optional) return;
    die("realpath", path);
  }
  struct statx stx;
  if (statx(AT_FDCWD, real, AT_NO_AUTOMOUNT, STATX_TYPE | STATX_MODE | STATX_INO | STATX_MNT_ID | STATX_MNT_ID_UNIQUE,
            &stx) != 0)
    die("statx", real);
  free(real);
}

static void set_fd(int fsfd, const char* key, const char* path) {
  int fd = open(path, O_PATH | O_CLOEXEC);
  if (fd < 0) die("open", path);
  if (syscall(SYS_fsconfig, fsfd, FSCONFIG_SET_FD_, key, NULL, fd) != 0) die("fsconfig", key);
  close(fd);
}

static char statmount_buf[1 << 14];

/* Phase times of the last mount: validate, configure (fsopen + fsconfig sets), create (CMD_CREATE, or the whole
 * mount(2)), attach (fsmount + statx + move_mount, or statx of the target), describe (statmount). */
static uint64_t phase[5];

enum mode { LEGACY, LEGACY_DESCRIBE, FD, FD_ONECALL };

/* ovl's look at the work directory: its entries, to refuse one holding user files. */
static void list_work(const char* work) {
  DIR* d = opendir(work);
  if (!d) die("opendir", work);
  while (readdir(d) != NULL) {
  }
  closedir(d);
}

static void describe(uint64_t mnt_id, const char* target) {
  struct mnt_id_req_ req = {.size = 24, .mnt_id = mnt_id, .param = 0x1 | 0x2 | 0x4 | 0x8 | 0x10 | 0x20 | 0x100 | 0x200 | 0x400};
  if (syscall(SYS_statmount, &req, statmount_buf, sizeof statmount_buf, 0) != 0) die("statmount", target);
}

static void mount_overlay(enum mode mode, const char* data, const char* lower, const char* upper, const char* work,
                          const char* target) {
  uint64_t t0 = now_ns(), t1 = t0, t2 = t0, t3, t4, t5;
  struct statx stx;
  if (mode == LEGACY || mode == LEGACY_DESCRIBE) {
    if (mount("overlay", target, "overlay", 0, data) != 0) die("mount", target);
    t3 = now_ns();
    t4 = t5 = t3;
    if (mode == LEGACY_DESCRIBE) {
      if (statx(AT_FDCWD, target, AT_NO_AUTOMOUNT, STATX_MNT_ID_UNIQUE, &stx) != 0) die("statx", target);
      t4 = now_ns();
      describe(stx.stx_mnt_id, target);
      t5 = now_ns();
    }
  } else {
    if (mode == FD) {
      char workwork[PATH_MAX];
      inspect(lower, 0);
      inspect(upper, 0);
      inspect(work, 0);
      inspect(target, 0);
      snprintf(workwork, sizeof workwork, "%s/work", work);
      inspect(workwork, 1);
    }
    list_work(work);
    t1 = now_ns();
    int fsfd = (int)syscall(SYS_fsopen, "overlay", 1 /* FSOPEN_CLOEXEC */);
    if (fsfd < 0) die("fsopen", NULL);
    if (syscall(SYS_fsconfig, fsfd, FSCONFIG_SET_STRING_, "source", "overlay", 0) != 0) die("fsconfig", "source");
    set_fd(fsfd, "lowerdir+", lower);
    set_fd(fsfd, "upperdir", upper);
    set_fd(fsfd, "workdir", work);
    t2 = now_ns();
    if (syscall(SYS_fsconfig, fsfd, FSCONFIG_CMD_CREATE_, NULL, NULL, 0) != 0) die("fsconfig create", target);
    t3 = now_ns();
    int mfd = (int)syscall(SYS_fsmount, fsfd, 1 /* FSMOUNT_CLOEXEC */, 0);
    if (mfd < 0) die("fsmount", target);
    if (statx(mfd, "", AT_EMPTY_PATH, STATX_MNT_ID | STATX_MNT_ID_UNIQUE, &stx) != 0) die("statx", target);
    if (syscall(SYS_move_mount, mfd, "", AT_FDCWD, target, 4 /* MOVE_MOUNT_F_EMPTY_PATH */) != 0)
      die("move_mount", target);
    close(mfd);
    close(fsfd);
    t4 = now_ns();
    describe(stx.stx_mnt_id, target);
    t5 = now_ns();
  }
  phase[0] = t1 - t0;
  phase[1] = t2 - t1;
  phase[2] = t3 - t2;
  phase[3] = t4 - t3;
  phase[4] = t5 - t4;
}

int main(int argc, char** argv) {
  static const char* names[] = {"legacy", "legacy-describe", "fd", "fd-onecall"};
  int mode = -1;
  for (int k = 0; argc == 7 && k < 4; k++)
    if (strcmp(argv[1], names[k]) == 0) mode = k;
  if (mode < 0) {
    fprintf(stderr, "usage: ovl-cycle legacy|legacy-describe|fd|fd-onecall N LOWER UPPER WORK TARGET\n");
    return 2;
  }
  long n = strtol(argv[2], NULL, 10);
  const char *lower = argv[3], *upper = argv[4], *work = argv[5], *target = argv[6];
  char data[4096];
  if (snprintf(data, sizeof data, "lowerdir=%s,upperdir=%s,workdir=%s", lower, upper, work) >= (int)sizeof data) {
    fprintf(stderr, "ovl-cycle: option string too long\n");
    return 2;
  }
  for (long i = 0; i < n; i++) {
    uint64_t t0 = now_ns();
    mount_overlay((enum mode)mode, data, lower, upper, work, target);
    uint64_t t1 = now_ns();
    if (umount2(target, 0) != 0) die("umount2", target);
    uint64_t t2 = now_ns();
    printf("%llu %llu", (unsigned long long)(t1 - t0), (unsigned long long)(t2 - t1));
    for (int k = 0; k < 5; k++) printf(" %llu", (unsigned long long)phase[k]);
    printf("\n");
  }
  return 0;
}
