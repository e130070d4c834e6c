#!/usr/bin/python3
"""Ways to reach a directory for chroot(2) that do not name it by its path
in the caller's mount namespace: what an attacker tries against a guard
that matches paths. Used by test/escape.test.ts, run as root or as an
unprivileged user inside `unshare -Urm` (which gives CAP_SYS_ADMIN and
CAP_SYS_CHROOT over a user namespace of one's own).

    chroot_via.py VARIANT DIR

Prints one JSON line: {"pid": the process that called chroot, "results":
["ok" | errno name, ...]} (one result per chroot call the variant makes).

Variants:
  direct        chroot(DIR)
  detached      bind-mount DIR on itself, cd into it, umount -l, chroot(".")
  open_tree     open_tree(DIR, OPEN_TREE_CLONE), fchdir, chroot(".")
  fsmount       a fresh tmpfs from fsopen/fsmount (never attached), fchdir, chroot(".")
  proc_root     a child in a mount namespace of its own; chroot("/proc/CHILD/root" + DIR)
  fd_unshare    open DIR, unshare(CLONE_NEWNS), fchdir, chroot(".")
  fd_passed     a child in its own mount namespace opens DIR and passes the fd over SCM_RIGHTS; fchdir, chroot(".")
  root_detached chroot(".") twice in a detached copy of DIR: the second caller's root lies in a detached tree
"""
import ctypes
import errno
import json
import os
import socket
import sys

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

CLONE_NEWNS = 0x00020000
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
MNT_DETACH = 2
AT_FDCWD = -100
OPEN_TREE_CLONE, OPEN_TREE_CLOEXEC, AT_RECURSIVE = 1, 0o2000000, 0x8000
SYS_OPEN_TREE, SYS_FSOPEN, SYS_FSCONFIG, SYS_FSMOUNT = 428, 430, 431, 432
FSCONFIG_CMD_CREATE = 6


def check(ret, what):
    if ret < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")
    return ret


def own_mount_ns():
    """A mount namespace of our own whose mounts do not propagate back."""
    check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")


def try_chroot(path="."):
    try:
        os.chroot(path)
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))


def fchdir_chroot(fd):
    os.fchdir(fd)
    return try_chroot(".")


def detached_cwd(d):
    """cwd in a bind mount of `d` that is then detached (umount -l)."""
    own_mount_ns()
    check(libc.mount(d.encode(), d.encode(), None, MS_BIND, None), "mount --bind")
    os.chdir(d)
    check(libc.umount2(d.encode(), MNT_DETACH), "umount -l")


def child_in_own_ns(work):
    """Forks a child that makes its own mount namespace, runs work(sock) and
    then waits until the parent closes the socket. Returns the parent's end
    and the child's pid once the child is ready."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:
        parent.close()
        try:
            own_mount_ns()
            work(child)
            child.sendall(b"R")
            child.recv(1)
        finally:
            os._exit(0)
    child.close()
    return parent, pid


def main():
    variant, d = sys.argv[1], os.path.abspath(sys.argv[2])
    results = []
    if variant == "direct":
        results.append(try_chroot(d))
    elif variant == "detached":
        detached_cwd(d)
        results.append(try_chroot("."))
    elif variant == "open_tree":
        own_mount_ns()
        flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE
        fd = check(libc.syscall(SYS_OPEN_TREE, AT_FDCWD, d.encode(), flags), "open_tree")
        results.append(fchdir_chroot(fd))
    elif variant == "fsmount":
        own_mount_ns()
        fs = check(libc.syscall(SYS_FSOPEN, b"tmpfs", 0), "fsopen")
        check(libc.syscall(SYS_FSCONFIG, fs, FSCONFIG_CMD_CREATE, None, None, 0), "fsconfig")
        fd = check(libc.syscall(SYS_FSMOUNT, fs, 0, 0), "fsmount")
        results.append(fchdir_chroot(fd))
    elif variant == "proc_root":
        sock, pid = child_in_own_ns(lambda s: None)
        sock.recv(1)
        results.append(try_chroot(f"/proc/{pid}/root{d}"))
        sock.close()
        os.waitpid(pid, 0)
    elif variant == "fd_unshare":
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        own_mount_ns()
        results.append(fchdir_chroot(fd))
    elif variant == "fd_passed":
        def send_fd(s):
            check(libc.mount(d.encode(), d.encode(), None, MS_BIND, None), "mount --bind")
            fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
            socket.send_fds(s, [b"F"], [fd])
        sock, pid = child_in_own_ns(send_fd)
        _, fds, _, _ = socket.recv_fds(sock, 1, 1)
        sock.recv(1)
        results.append(fchdir_chroot(fds[0]))
        sock.close()
        os.waitpid(pid, 0)
    elif variant == "root_detached":
        detached_cwd(d)
        results.append(try_chroot("."))
        results.append(try_chroot("."))
    else:
        sys.exit(f"unknown variant {variant}")
    print(json.dumps({"pid": os.getpid(), "results": results}), flush=True)


if __name__ == "__main__":
    main()
