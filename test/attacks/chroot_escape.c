/*
 * The chroot escapes, and the legitimate flows they must not be confused
 * with, for test/escapes.test.ts. Run as root, or as an unprivileged user
 * inside `unshare -Urm` (root of a user namespace of its own, which holds
 * CAP_SYS_CHROOT there).
 *
 *     chroot_escape MODE JAIL
 *
 * JAIL must hold a directory `sub`. Every mode first jails itself the way a
 * jailed service starts (chroot(JAIL), chdir("/")), except `subdir_host`.
 * Modes:
 *   classic    chroot("sub") without a chdir (the cwd, the jail's root, is
 *              now outside the root), chdir("..") 64 times (climbing past
 *              the jail), chroot(".")
 *   kept_fd    a directory fd of the real root opened before the jail;
 *              fchdir to it, chroot(".")
 *   socket_fd  a child forked before the jail opens the real root and sends
 *              the fd over a unix socket (SCM_RIGHTS) once the parent is
 *              jailed; the parent fchdirs to it, chroot(".")
 *   subdir     chdir("sub"), chroot("."): a chroot into a subdirectory of
 *              the current root, legitimate
 *
 * Prints one JSON line: {"pid": the process that called chroot, "results":
 * ["ok" | errno name, ...] (one per chroot call, in order), "root":
 * "DEV:INO" of stat("/") at the end (where the process's root is)}.
 * Exits 0 unless its own set-up fails (exit 2, reason on stderr).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

static char results[8][32];
static int calls;

static void die(const char *what) {
    fprintf(stderr, "chroot_escape: %s: %s\n", what, strerror(errno));
    _exit(2);
}

/* chroot(2), its result recorded by name. */
static int try_chroot(const char *path) {
    int r = chroot(path);
    const char *name = r == 0 ? "ok" : errno == EPERM ? "EPERM" : strerrorname_np(errno);
    snprintf(results[calls++ & 7], sizeof results[0], "%s", name ? name : "E?");
    return r;
}

/* The jail: chroot(JAIL), chdir("/"), as a jailed service starts. */
static void jail(const char *dir) {
    if (try_chroot(dir) != 0) die("chroot(JAIL)");
    if (chdir("/") != 0) die("chdir(/)");
}

static void send_fd(int sock, int fd) {
    char byte = 0;
    struct iovec iov = { .iov_base = &byte, .iov_len = 1 };
    union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } u;
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof u.buf };
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof fd);
    if (sendmsg(sock, &msg, 0) != 1) die("sendmsg");
}

static int recv_fd(int sock) {
    char byte;
    struct iovec iov = { .iov_base = &byte, .iov_len = 1 };
    union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } u;
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof u.buf };
    if (recvmsg(sock, &msg, 0) != 1) die("recvmsg");
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    if (!c || c->cmsg_type != SCM_RIGHTS) {
        errno = EPROTO;
        die("no fd received");
    }
    int fd;
    memcpy(&fd, CMSG_DATA(c), sizeof fd);
    return fd;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: chroot_escape classic|kept_fd|socket_fd|subdir JAIL\n");
        return 2;
    }
    const char *mode = argv[1], *dir = argv[2];
    if (strcmp(mode, "classic") == 0) {
        jail(dir);
        if (try_chroot("sub") == 0) {
            for (int i = 0; i < 64; i++)
                if (chdir("..") != 0) die("chdir(..)");
            try_chroot(".");
        }
    } else if (strcmp(mode, "kept_fd") == 0) {
        int fd = open("/", O_RDONLY | O_DIRECTORY);
        if (fd < 0) die("open(/)");
        jail(dir);
        if (fchdir(fd) != 0) die("fchdir");
        try_chroot(".");
    } else if (strcmp(mode, "socket_fd") == 0) {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) die("socketpair");
        pid_t child = fork();
        if (child < 0) die("fork");
        if (child == 0) {
            /* Outside the jail: waits until the parent is jailed, then sends the real root. */
            char go;
            close(sv[0]);
            if (read(sv[1], &go, 1) != 1) die("read");
            int fd = open("/", O_RDONLY | O_DIRECTORY);
            if (fd < 0) die("open(/)");
            send_fd(sv[1], fd);
            _exit(0);
        }
        close(sv[1]);
        jail(dir);
        if (write(sv[0], "g", 1) != 1) die("write");
        int fd = recv_fd(sv[0]);
        int status;
        waitpid(child, &status, 0);
        if (fchdir(fd) != 0) die("fchdir");
        try_chroot(".");
    } else if (strcmp(mode, "subdir") == 0) {
        jail(dir);
        if (chdir("sub") != 0) die("chdir(sub)");
        try_chroot(".");
    } else {
        fprintf(stderr, "chroot_escape: unknown mode %s\n", mode);
        return 2;
    }
    struct stat st;
    if (stat("/", &st) != 0) die("stat(/)");
    printf("{\"pid\": %d, \"results\": [", getpid());
    for (int i = 0; i < calls && i < 8; i++) printf("%s\"%s\"", i ? ", " : "", results[i]);
    printf("], \"root\": \"%llu:%llu\"}\n", (unsigned long long)st.st_dev, (unsigned long long)st.st_ino);
    return 0;
}
