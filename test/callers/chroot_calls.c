/*
 * chroot(2) calls the watch probes once missed, for test/watch.test.ts.
 * Prints one line: "<pid of the calling process> <0 or -errno>".
 *
 *   chroot_calls first-touch   a forked child chroots into a string literal
 *                              (FIRST_TOUCH_DIR) straight away: the page that
 *                              holds it is not mapped in the child until the
 *                              kernel copies the argument in, so an entry hook
 *                              that reads it first finds nothing to read.
 *   chroot_calls seccomp DIR   chroot(DIR) under a seccomp filter that fails
 *                              chroot with EACCES before the syscall body
 *                              runs; then a plain getpid. Prints the result
 *                              of the chroot.
 *   chroot_calls x32 DIR       chroot(DIR) through the x32 ABI (syscall
 *                              0x40000000 | 161); -ENOSYS where the kernel
 *                              has x32 off.
 *   chroot_calls ia32 DIR      chroot(DIR) through the 32-bit compat entry
 *                              (int $0x80, syscall 61), with DIR in a page
 *                              below 4 GiB (MAP_32BIT), from this 64-bit
 *                              process: the syscall tracepoints do not fire
 *                              for it.
 *   chroot_calls plain DIR     chroot(DIR), nothing else.
 *   chroot_calls renamed DIR   names itself "cg-parent" (PR_SET_NAME), forks
 *                              a child that names itself "debootstrap" and
 *                              chroots into DIR: comm is a label the caller
 *                              picks, exe and the parent's exe are not.
 *   chroot_calls deleted DIR   unlinks its own executable, then chroots.
 *   chroot_calls again OTHER   chroot("/"), unlinks its own executable,
 *                              chroot("/") again, then runs OTHER with
 *                              "plain /": three calls of one thread, its
 *                              executable deleted after the first, replaced
 *                              before the third (what a per-thread cache of
 *                              the executable must notice).
 *   chroot_calls parent-exec   forks a child that calls chroot("/"); the
 *                              parent then runs /bin/sh, and the child calls
 *                              it again once sh runs (the parent's
 *                              executable changed under the same parent).
 *                              Prints "<child pid> <r1> <r2>".
 *   chroot_calls memfd DIR     copies its executable into a memfd named
 *                              "cg-memfd" and runs that (fexecve) with
 *                              "plain DIR": an executable with no path.
 *   chroot_calls threads N K A B
 *                              N threads at once, each with a root of its
 *                              own (unshare(CLONE_FS)), each calling
 *                              chroot(".") K times in A then in B, in
 *                              turn (fchdir to a directory fd, so the new
 *                              root does not change what the next call
 *                              names). Prints "<pid> 0", then a line per
 *                              thread: "<tid> <A ok> <A EPERM> <B ok>
 *                              <other failures>".
 *   chroot_calls starve N K A B
 *                              "threads" with every thread on CPU 0 and,
 *                              beside them, N threads at SCHED_IDLE
 *                              calling chroot in B, each call from a new
 *                              thread, until the others are done, and a
 *                              50 µs sleep after each call of
 *                              the others: each wakeup preempts an idle
 *                              thread wherever it is, and on a
 *                              preemptible kernel an idle thread
 *                              preempted inside the LSM program (or a
 *                              helper it calls) is the last to run
 *                              again, holding what it holds meanwhile.
 *                              The idle threads are a child process's.
 *                              Prints what "threads" prints, for the N
 *                              threads at normal priority, with the
 *                              child's pid after the first line's 0.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <pthread.h>
#include <sched.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define FIRST_TOUCH_DIR "/tmp/cg-first-touch/a-literal-directory-path"

/* chroot(dir) and the line every mode prints. */
static int plain(const char *dir) {
  int r = chroot(dir);
  printf("%d %d\n", getpid(), r == 0 ? 0 : -errno);
  return 0;
}

struct turns {
  const char *a, *b;
  int k;
  /* Sleep 50 µs after each call: each wakeup preempts a SCHED_IDLE
   * thread of this CPU at once, wherever it is. */
  int nap;
  pid_t tid;
  int a_ok, a_eperm, b_ok, other;
};

/* One thread of "threads": its own fs_struct, then K turns of A and B. */
static void *take_turns(void *arg) {
  struct turns *t = arg;
  t->tid = gettid();
  int a = open(t->a, O_PATH | O_DIRECTORY | O_CLOEXEC);
  int b = open(t->b, O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (a < 0 || b < 0 || unshare(CLONE_FS) != 0) {
    t->other = -1;
    return 0;
  }
  for (int i = 0; i < t->k; i++) {
    if (fchdir(a) != 0) t->other++;
    else if (chroot(".") == 0) t->a_ok++;
    else if (errno == EPERM) t->a_eperm++;
    else t->other++;
    if (t->nap) usleep(50);
    if (fchdir(b) != 0) t->other++;
    else if (chroot(".") == 0) t->b_ok++;
    else t->other++;
    if (t->nap) usleep(50);
  }
  return 0;
}

/* One call of an idle thread's short-lived thread: chroot(".") in the
 * directory `arg` points to (its fd), with a root of its own. A failed
 * call is the guard's to report. */
static void *idle_call(void *arg) {
  if (unshare(CLONE_FS) == 0 && fchdir(*(int *)arg) == 0) chroot(".");
  return 0;
}

/* An idle thread of "starve": SCHED_IDLE, then a new thread per call
 * until killed (each inherits SCHED_IDLE). A thread's first decision
 * allocates its task storage, the longest time the helper holds its busy
 * mark. B through a directory fd: a path names nothing once it is the
 * caller's root. */
static void *idle_calls(void *arg) {
  int b = open(arg, O_PATH | O_DIRECTORY | O_CLOEXEC);
  struct sched_param p = {0};
  if (b < 0 || sched_setscheduler(0, SCHED_IDLE, &p) != 0) exit(2);
  for (;;) {
    pthread_t one;
    if (pthread_create(&one, 0, idle_call, &b) != 0) exit(2);
    pthread_join(one, 0);
  }
}

int main(int argc, char **argv) {
  int starve = argc == 6 && !strcmp(argv[1], "starve");
  if (argc == 6 && (starve || !strcmp(argv[1], "threads"))) {
    int n = atoi(argv[2]), k = atoi(argv[3]);
    if (n <= 0 || n > 1024 || k <= 0) return 2;
    struct turns *t = calloc(n, sizeof *t);
    pthread_t *th = calloc(n, sizeof *th);
    if (!t || !th) return 2;
    pid_t idle = 0;
    if (starve) {
      cpu_set_t one;
      CPU_ZERO(&one);
      CPU_SET(0, &one);
      if (sched_setaffinity(0, sizeof one, &one) != 0) return 2;
      /* The idle threads in a process of their own, so a test can tell
       * (and drop) their flood of decisions by pid. */
      idle = fork();
      if (idle < 0) return 2;
      if (idle == 0) {
        /* Gone with the parent, whatever way it ends. */
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() == 1) _exit(2);
        for (int i = 0; i < n; i++) {
          pthread_t p;
          if (pthread_create(&p, 0, idle_calls, argv[5]) != 0) _exit(2);
        }
        for (;;) pause();
      }
    }
    for (int i = 0; i < n; i++) {
      t[i] = (struct turns){.a = argv[4], .b = argv[5], .k = k, .nap = starve};
      if (pthread_create(&th[i], 0, take_turns, &t[i]) != 0) return 2;
    }
    for (int i = 0; i < n; i++) pthread_join(th[i], 0);
    if (idle) {
      int status = 0;
      /* Still running (not exited 2 on a failed setup), then killed. */
      if (waitpid(idle, &status, WNOHANG) != 0 || kill(idle, SIGKILL) != 0) return 2;
      waitpid(idle, &status, 0);
    }
    if (idle) printf("%d 0 %d\n", getpid(), idle);
    else printf("%d 0\n", getpid());
    for (int i = 0; i < n; i++) printf("%d %d %d %d %d\n", t[i].tid, t[i].a_ok, t[i].a_eperm, t[i].b_ok, t[i].other);
    return 0;
  }
  if (argc == 3 && !strcmp(argv[1], "plain")) return plain(argv[2]);
  if (argc == 3 && !strcmp(argv[1], "renamed")) {
    if (prctl(PR_SET_NAME, "cg-parent", 0, 0, 0) != 0) return 2;
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
      if (prctl(PR_SET_NAME, "debootstrap", 0, 0, 0) != 0) _exit(2);
      plain(argv[2]);
      fflush(stdout);
      _exit(0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 2;
  }
  if (argc == 3 && !strcmp(argv[1], "deleted")) {
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) return 2;
    self[n] = 0;
    if (unlink(self) != 0) return 2;
    return plain(argv[2]);
  }
  if (argc == 3 && !strcmp(argv[1], "again")) {
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0 || chroot("/") != 0) return 2;
    self[n] = 0;
    if (unlink(self) != 0 || chroot("/") != 0) return 2;
    execl(argv[2], argv[2], "plain", "/", (char *)0);
    return 2;
  }
  if (argc == 2 && !strcmp(argv[1], "parent-exec")) {
    /* first: child -> parent "called once"; go: sh -> child "sh runs";
       alive: held by the child only, so sh's read ends when it exits. */
    int first[2], go[2], alive[2];
    if (pipe(first) || pipe(go) || pipe(alive)) return 2;
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
      close(first[0]), close(go[1]), close(alive[0]);
      int r1 = chroot("/") == 0 ? 0 : -errno;
      char c;
      if (write(first[1], "1", 1) != 1 || read(go[0], &c, 1) != 1) _exit(2);
      int r2 = chroot("/") == 0 ? 0 : -errno;
      printf("%d %d %d\n", getpid(), r1, r2);
      fflush(stdout);
      _exit(0);
    }
    close(first[1]), close(go[0]), close(alive[1]);
    char c, cmd[64];
    if (read(first[0], &c, 1) != 1) return 2;
    snprintf(cmd, sizeof cmd, "echo >&%d; read x <&%d; exit 0", go[1], alive[0]);
    execl("/bin/sh", "sh", "-c", cmd, (char *)0);
    return 2;
  }
  if (argc == 3 && !strcmp(argv[1], "memfd")) {
    int in = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
    int fd = memfd_create("cg-memfd", MFD_CLOEXEC);
    struct stat st;
    if (in < 0 || fd < 0 || fstat(in, &st) != 0) return 2;
    for (off_t done = 0; done < st.st_size;) {
      ssize_t n = sendfile(fd, in, &done, st.st_size - done);
      if (n <= 0) return 2;
    }
    char *args[] = {argv[0], "plain", argv[2], 0};
    extern char **environ;
    fexecve(fd, args, environ);
    return 2;
  }
  if (argc == 2 && !strcmp(argv[1], "first-touch")) {
    int fds[2];
    if (pipe(fds) != 0) return 2;
    pid_t pid = fork();
    if (pid == 0) {
      int r = chroot(FIRST_TOUCH_DIR);
      char line[64];
      int n = snprintf(line, sizeof line, "%d %d\n", getpid(), r == 0 ? 0 : -errno);
      (void)!write(fds[1], line, n);
      _exit(0);
    }
    close(fds[1]);
    char buf[64];
    ssize_t n = read(fds[0], buf, sizeof buf);
    waitpid(pid, 0, 0);
    if (n <= 0) return 2;
    fwrite(buf, 1, n, stdout);
    return 0;
  }
  if (argc == 3 && !strcmp(argv[1], "seccomp")) {
    struct sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_chroot, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EACCES & SECCOMP_RET_DATA)),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {sizeof filter / sizeof filter[0], filter};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) return 2;
    int r = chroot(argv[2]);
    printf("%d %d\n", getpid(), r == 0 ? 0 : -errno);
    return 0;
  }
#if defined(__x86_64__)
  if (argc == 3 && !strcmp(argv[1], "x32")) {
    /* chroot through the x32 ABI (-ENOSYS unless the kernel has it on). */
    long r = syscall(0x40000000L | 161, argv[2]);
    printf("%d %ld\n", getpid(), r == 0 ? 0L : (long)-errno);
    return 0;
  }
  if (argc == 3 && !strcmp(argv[1], "ia32")) {
    char *p = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_32BIT, -1, 0);
    if (p == MAP_FAILED || strlen(argv[2]) >= 4096) return 2;
    strcpy(p, argv[2]);
    long ret;
    __asm__ volatile("int $0x80" : "=a"(ret) : "a"(61), "b"(p) : "memory");
    printf("%d %ld\n", getpid(), ret);
    return 0;
  }
#endif
  fprintf(stderr, "usage: chroot_calls first-touch | seccomp DIR | x32 DIR | ia32 DIR | plain DIR | renamed DIR | deleted DIR | memfd DIR | threads N K A B | starve N K A B\n");
  return 2;
}
