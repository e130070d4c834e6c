/*
 * chroot-guard bench workload: makes chroot(2) calls (or getpid(2), for the
 * tax on an unrelated syscall) as fast as it can or at a fixed rate, from one
 * or more processes, and reports what it did as one JSON line.
 *
 *   chroot_loop [--calls N] [--seconds S] [--rate PER_SEC] [--procs P]
 *               [--path DIR] [--syscall chroot|getpid] [--go-fd FD]
 *
 * --path is an allowed directory (default "/", whose chroot changes nothing).
 * --go-fd makes each process wait for one byte on FD before starting, so the
 * caller can attach first. Output: {"calls":N,"seconds":T,"ns_per_call":X,
 * "errors":E,"procs":P,"pids":[...]} with calls summed over processes.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

struct result { long calls, errors; double seconds; };

static struct result loop(long calls, double seconds, double rate, const char *path, int getpid_mode) {
  struct result r = {0, 0, 0};
  double start = now(), next = start, interval = rate > 0 ? 1.0 / rate : 0;
  for (;;) {
    if (calls > 0 && r.calls >= calls) break;
    if (seconds > 0 && (r.calls & 63) == 0 && now() - start >= seconds) break;
    if (interval > 0) {
      next += interval;
      double wait = next - now();
      if (wait > 0) {
        struct timespec ts = { (time_t)wait, (long)((wait - (time_t)wait) * 1e9) };
        nanosleep(&ts, NULL);
      }
    }
    long rc = getpid_mode ? syscall(SYS_getpid) : syscall(SYS_chroot, path);
    if (rc < 0) r.errors++;
    r.calls++;
  }
  r.seconds = now() - start;
  return r;
}

int main(int argc, char **argv) {
  long calls = 0; double seconds = 0, rate = 0; int procs = 1, go_fd = -1, getpid_mode = 0;
  const char *path = "/";
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--calls") && v) calls = atol(v), i++;
    else if (!strcmp(a, "--seconds") && v) seconds = atof(v), i++;
    else if (!strcmp(a, "--rate") && v) rate = atof(v), i++;
    else if (!strcmp(a, "--procs") && v) procs = atoi(v), i++;
    else if (!strcmp(a, "--path") && v) path = v, i++;
    else if (!strcmp(a, "--go-fd") && v) go_fd = atoi(v), i++;
    else if (!strcmp(a, "--syscall") && v) getpid_mode = !strcmp(v, "getpid"), i++;
    else { fprintf(stderr, "chroot_loop: unknown argument %s\n", a); return 2; }
  }
  if (calls <= 0 && seconds <= 0) calls = 100000;
  if (go_fd >= 0) { char c; if (read(go_fd, &c, 1) != 1) return 3; }
  int fds[64][2]; pid_t pids[64];
  if (procs < 1 || procs > 64) { fprintf(stderr, "chroot_loop: --procs 1..64\n"); return 2; }
  for (int p = 0; p < procs; p++) {
    if (pipe(fds[p])) return 4;
    pids[p] = fork();
    if (pids[p] == 0) {
      struct result r = loop(calls, seconds, rate / procs, path, getpid_mode);
      if (write(fds[p][1], &r, sizeof r) != sizeof r) _exit(5);
      _exit(0);
    }
    close(fds[p][1]);
  }
  struct result total = {0, 0, 0};
  for (int p = 0; p < procs; p++) {
    struct result r;
    if (read(fds[p][0], &r, sizeof r) != sizeof r) return 6;
    waitpid(pids[p], NULL, 0);
    total.calls += r.calls; total.errors += r.errors;
    if (r.seconds > total.seconds) total.seconds = r.seconds;
  }
  printf("{\"calls\":%ld,\"errors\":%ld,\"seconds\":%.6f,\"ns_per_call\":%.1f,\"procs\":%d,\"pids\":[",
         total.calls, total.errors, total.seconds, total.seconds * 1e9 * procs / (total.calls ? total.calls : 1), procs);
  for (int p = 0; p < procs; p++) printf("%s%d", p ? "," : "", pids[p]);
  printf("]}\n");
  return 0;
}
