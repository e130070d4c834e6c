/*
 * chroot(2) from an AArch32 task, for test/watch.test.ts on arm64: built
 * for 32-bit ARM (arm-linux-gnueabihf-gcc -static), so the call is ARM
 * EABI syscall 61, which arm64 runs through __arm64_sys_chroot and whose
 * syscall tracepoints it skips, as x86_64 skips int $0x80.
 * Prints one line: "<pid> <0 or -errno>".
 *
 *   chroot32 DIR   chroot(DIR)
 *   chroot32       prints the usage and exits 2 without a call (whether
 *                  this CPU runs AArch32 code at all: where it does not,
 *                  exec fails with ENOEXEC)
 */
#include <errno.h>
#include <stdio.h>
#include <unistd.h>

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: chroot32 DIR\n");
    return 2;
  }
  int r = chroot(argv[1]);
  printf("%d %d\n", getpid(), r == 0 ? 0 : -errno);
  return 0;
}
