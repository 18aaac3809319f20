/*
 * Fills a mount table for the bench: N small mounts under DIR, made in a loop (spawning mount(8) 10,000
 * times would take minutes). Run only inside the bench's private mount namespace.
 *
 *   mount-table tmpfs DIR N   N tmpfs mounts (size=64k) on DIR/0 ... DIR/N-1
 *   mount-table bind DIR N    N bind mounts of DIR/src on DIR/0 ... DIR/N-1
 *
 * The directories are made first, then the mounts; prints "<mkdir ns> <mount ns>".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <time.h>

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int main(int argc, char** argv) {
  if (argc != 4 || (strcmp(argv[1], "tmpfs") != 0 && strcmp(argv[1], "bind") != 0)) {
    fprintf(stderr, "usage: mount-table tmpfs|bind DIR N\n");
    return 2;
  }
  int bind = strcmp(argv[1], "bind") == 0;
  const char* dir = argv[2];
  long n = strtol(argv[3], NULL, 10);
  char path[4096], src[4096];
  snprintf(src, sizeof src, "%s/src", dir);
  uint64_t t0 = now_ns();
  if (bind && mkdir(src, 0755) != 0 && errno != EEXIST) {
    fprintf(stderr, "mount-table: mkdir %s: %s\n", src, strerror(errno));
    return 1;
  }
  for (long i = 0; i < n; i++) {
    snprintf(path, sizeof path, "%s/%ld", dir, i);
    if (mkdir(path, 0755) != 0 && errno != EEXIST) {
      fprintf(stderr, "mount-table: mkdir %s: %s\n", path, strerror(errno));
      return 1;
    }
  }
  uint64_t t1 = now_ns();
  for (long i = 0; i < n; i++) {
    snprintf(path, sizeof path, "%s/%ld", dir, i);
    int rc = bind ? mount(src, path, NULL, MS_BIND, NULL) : mount("tmpfs", path, "tmpfs", 0, "size=64k,mode=755");
    if (rc != 0) {
      fprintf(stderr, "mount-table: mount %s: %s (after %ld mounts)\n", path, strerror(errno), i);
      return 1;
    }
  }
  uint64_t t2 = now_ns();
  printf("%llu %llu\n", (unsigned long long)(t1 - t0), (unsigned long long)(t2 - t1));
  return 0;
}
