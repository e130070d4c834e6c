#!/usr/bin/python3
"""Makes chroot(2) calls as described, for test/differential.test.ts.

Reads one JSON object per line on stdin and answers each, as it ends, with
one JSON line on stdout: {"id": ..., "pid": the process that called chroot, "result":
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
import selectors

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
    """Starts each call as its line arrives, without waiting for the ones
    before it: the test sends a policy's calls at once, and under TCG each
    child's set-up costs tens of milliseconds."""
    sel = selectors.DefaultSelector()
    sel.register(0, selectors.EVENT_READ, None)
    buf = b""
    reading, running = True, 0
    while reading or running:
        for key, _ in sel.select():
            if key.data is None:
                data = os.read(0, 65536)
                if not data:
                    sel.unregister(0)
                    reading = False
                    continue
                *lines, buf = (buf + data).split(b"\n")
                for line in filter(bytes.strip, lines):
                    c = json.loads(line)
                    r, w = os.pipe()
                    pid = os.fork()
                    if pid == 0:
                        os.close(r)
                        os.write(w, call(c).encode())
                        os._exit(0)
                    os.close(w)
                    sel.register(r, selectors.EVENT_READ, (c["id"], pid, []))
                    running += 1
                continue
            cid, pid, chunks = key.data
            data = os.read(key.fd, 4096)
            if data:
                chunks.append(data)
                continue
            sel.unregister(key.fd)
            os.close(key.fd)
            os.waitpid(pid, 0)
            running -= 1
            print(json.dumps({"id": cid, "pid": pid, "result": b"".join(chunks).decode()}), flush=True)


if __name__ == "__main__":
    main()
