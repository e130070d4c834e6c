#!/usr/bin/python3
"""Makes chroot(2) calls as described, for test/differential.test.ts.

Reads one JSON object per line on stdin and answers each with one JSON line
on stdout: {"id": ..., "pid": the process that called chroot, "result":
"ok" | errno name | "setup: <what failed>"}. Each call runs in a fresh
child that sets up the caller's identity first:

  uid, euid, gid, egid   real and effective ids (capabilities are kept:
                         SECBIT_NO_SETUID_FIXUP, so CAP_SYS_CHROOT still holds
                         and the call reaches the LSM hook)
  cgroup                 a cgroup v2 directory to move into, or null
  ns                     "initial", "mnt" (a mount namespace of its own) or
                         "user" (a user and a mount namespace of its own)
  detached               reach the target through a bind mount of it that is
                         then detached (umount -l): not reachable
  chrooted               chroot into `root` first, then name the target
                         relative to it; a target outside `root` is reached
                         through a directory fd opened before (the kept-fd
                         escape: fchdir, chroot("."))
  cwd                    where the caller stands when it calls: "slash"
                         (chdir("/"): its root), "target" (chdir to the
                         target first) or "deep" (chdir to `deep`); a
                         detached or kept-fd target is the cwd already
  comm                   the comm to set (hex bytes, prctl(PR_SET_NAME))
  root, target, deep     hex bytes of absolute paths; target lies in root or
                         is its parent; deep lies in root, more than 64
                         steps down
"""
import ctypes
import errno
import json
import os
import sys

libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNS, CLONE_NEWUSER = 0x00020000, 0x10000000
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_NAME, PR_SET_SECUREBITS = 15, 28
SECBIT_NO_SETUID_FIXUP = 1 << 2


def check(ret, what):
    if ret < 0:
        raise OSError(ctypes.get_errno(), what)


def call(c):
    """Runs in the child: sets up, calls chroot, returns the result."""
    root, target = bytes.fromhex(c["root"]), bytes.fromhex(c["target"])
    step = "cgroup"
    try:
        if c["cgroup"]:
            with open(os.path.join(c["cgroup"], "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
        step = "ids"
        check(libc.prctl(PR_SET_SECUREBITS, SECBIT_NO_SETUID_FIXUP, 0, 0, 0), "securebits")
        os.setresgid(c["gid"], c["egid"], c["egid"])
        os.setresuid(c["uid"], c["euid"], c["euid"])
        step = "ns"
        if c["ns"] != "initial":
            flags = CLONE_NEWNS | (CLONE_NEWUSER if c["ns"] == "user" else 0)
            check(libc.unshare(flags), "unshare")
            check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "make-rprivate")
        step = "detach"
        if c["detached"]:
            # Recursive: in a user namespace the kernel refuses (EINVAL) a
            # plain bind of a tree with mounts below it, which it locks
            # (a target such as /tmp, with the suite's own mounts under it).
            check(libc.mount(target, target, None, MS_BIND | MS_REC, None), "bind")
            os.chdir(target)
            check(libc.umount2(target, MNT_DETACH), "umount -l")
            target = b"."
        step = "chrooted"
        deep = bytes.fromhex(c["deep"])
        kept = None
        if c["chrooted"]:
            if target != root and not target.startswith(root + b"/"):
                kept = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
            os.chroot(root)
            os.chdir(b"/")
            target = b"/" + target[len(root):].lstrip(b"/")
            deep = b"/" + deep[len(root):].lstrip(b"/")
        step = "cwd"
        if kept is not None:
            os.fchdir(kept)
            target = b"."
        elif not c["detached"]:
            os.chdir({"slash": b"/", "target": target, "deep": deep}[c["cwd"]])
        step = "comm"
        name = bytes.fromhex(c["comm"])
        check(libc.prctl(PR_SET_NAME, ctypes.c_char_p(name), 0, 0, 0), "comm")
    except OSError as e:
        return f"setup: {step}: {errno.errorcode.get(e.errno, e.errno)}"
    try:
        os.chroot(target)
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))


def main():
    for line in sys.stdin:
        c = json.loads(line)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            os.write(w, call(c).encode())
            os._exit(0)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            result = f.read().decode()
        os.waitpid(pid, 0)
        print(json.dumps({"id": c["id"], "pid": pid, "result": result}), flush=True)


if __name__ == "__main__":
    main()
