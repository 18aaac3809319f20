/*
 * exchange A B: swaps the names A and B with renameat2(RENAME_EXCHANGE) in a loop until killed, so that
 * a path flips between a real directory and a symlink as fast as the kernel allows. Used by
 * test/race.test.ts as the "attacker". Any failed exchange ends it with a message (the test then sees
 * the swapper gone and that nothing raced), rather than spinning silently.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <unistd.h>
#include <sys/syscall.h>

#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE (1 << 1)
#endif

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s A B\n", argv[0]);
    return 2;
  }
  /* Tell the parent the loop is about to start (it waits for this line). */
  printf("ready\n");
  fflush(stdout);
  for (unsigned long n = 0;; n++) {
    /* The raw syscall (316 on x86_64): not every libc has a renameat2() wrapper. */
    if (syscall(SYS_renameat2, AT_FDCWD, argv[1], AT_FDCWD, argv[2], RENAME_EXCHANGE) != 0) {
      fprintf(stderr, "exchange: renameat2(%s, %s) failed after %lu swaps: %s\n", argv[1], argv[2], n, strerror(errno));
      return 1;
    }
  }
}
