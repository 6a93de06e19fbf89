"""The first code a sandboxed run executes: it builds the cage, then execs the interpreter on the program.

Run as a script (`python -I -S sandbox_launcher.py CONFIG_JSON`) by `distill.verify.sandbox`, never
imported. It runs in a fresh process in its own session, with the caller's privileges, so that the
parent never has to call `fork` with a `preexec_fn` from a threaded process. Steps:

1. die with the parent (PR_SET_PDEATHSIG; the parent thread waits on the run, so it outlives it);
2. `unshare` the namespaces the parent asked for (network, PID, mount; a user namespace mapping
   our own ids when not root) — the parent probed which work here, so a failure is an error,
   never a silent run without isolation;
3. fork an init process, PID 1 of the new PID namespace: when it exits or is killed the kernel
   kills every process the program started, wherever they moved (setsid, double fork). The
   program itself is not PID 1, because the kernel drops default-action signals (SIGXCPU) to it;
4. in init: private mounts, every mount read-only, fresh tmpfs on /tmp, /var/tmp and /dev/shm,
   the working directory bind-mounted writable at /tmp/work, a /proc showing only the sandbox;
   then fork the program's process and reap until it ends;
5. in the program's process: rlimits; drop to the sandbox uid; no_new_privs (setuid binaries
   give nothing); exec `python -I program.py` with a scrubbed environment;
6. init reports the program's wait status to the launcher, which exits the same way.

Without a PID namespace the launcher itself plays init. Exit code 125 with "sandbox setup failed: ..."
on stderr means the cage could not be built.
"""

import ctypes
import json
import os
import resource
import signal
import struct
import sys

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x10000000, 0x20000000, 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x8, 0x1000, 0x4000, 0x40000
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
SYS_MOUNT_SETATTR, AT_FDCWD, AT_RECURSIVE, MOUNT_ATTR_RDONLY = 442, -100, 0x8000, 0x1
SETUP_FAILED = 125
SCRATCH_DIRS = ("/tmp", "/var/tmp", "/dev/shm")
WORKDIR = "/tmp/work"  # where the run's working directory appears inside a mount namespace

libc = ctypes.CDLL(None, use_errno=True)


def fail(message: str) -> None:
    os.write(2, f"sandbox setup failed: {message}\n".encode())
    os._exit(SETUP_FAILED)


def check(result: int, what: str) -> None:
    if result != 0:
        fail(f"{what}: {os.strerror(ctypes.get_errno())}")


def mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> int:
    return libc.mount(
        source.encode(), target.encode(), fstype.encode() if fstype else None, flags, data.encode() if data else None
    )


class MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64), ("propagation", ctypes.c_uint64)]
    _fields_ += [("userns_fd", ctypes.c_uint64)]


def set_read_only(path: str, read_only: bool, recursive: bool) -> int:
    """mount_setattr(2) (Linux 5.12+): the one call that makes a whole mount tree read-only."""
    attr = MountAttr(MOUNT_ATTR_RDONLY if read_only else 0, 0 if read_only else MOUNT_ATTR_RDONLY, 0, 0)
    flags = AT_RECURSIVE if recursive else 0
    return libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, path.encode(), flags, ctypes.byref(attr), ctypes.sizeof(attr))


def enter_scratch_mounts(read_only_root: bool) -> None:
    """Private mounts, optionally all read-only; fresh tmpfs scratch dirs; the working directory at /tmp/work."""
    check(mount("none", "/", None, MS_REC | MS_PRIVATE), "making mounts private")
    workdir = os.open(".", os.O_RDONLY | os.O_DIRECTORY)  # the working directory may itself be under /tmp
    if read_only_root:
        check(set_read_only("/", True, recursive=True), "making the file system read-only")
    for path in SCRATCH_DIRS:
        if os.path.isdir(path):
            check(mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, "size=64m,mode=1777"), f"tmpfs on {path}")
    os.mkdir(WORKDIR)
    check(mount(f"/proc/self/fd/{workdir}", WORKDIR, None, MS_BIND), "bind-mounting the working directory")
    if read_only_root:  # the bind mount copied the read-only flag of the mount it came from
        check(set_read_only(WORKDIR, False, recursive=False), "making the working directory writable")
    os.chdir(WORKDIR)
    os.close(workdir)


def exec_program(cfg: dict, supervisor_pid: int) -> None:
    """In the program's process: rlimits, drop privileges, exec. Returns only by exec'ing."""
    limits = {
        resource.RLIMIT_CPU: (cfg["cpu_s"], cfg["cpu_s"] + 1),  # SIGXCPU first, SIGKILL a second later
        resource.RLIMIT_AS: (cfg["memory_bytes"],) * 2,
        resource.RLIMIT_NPROC: (cfg["processes"],) * 2,
        resource.RLIMIT_FSIZE: (cfg["file_bytes"],) * 2,
        resource.RLIMIT_NOFILE: (cfg["open_files"],) * 2,
        resource.RLIMIT_CORE: (0, 0),
    }
    for which, value in limits.items():
        resource.setrlimit(which, value)
    if cfg["uid"] is not None:
        os.setgroups([])
        os.setgid(cfg["uid"])
        os.setuid(cfg["uid"])
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "setting no_new_privs")
    # Set after the uid change, which clears it: the program never outlives its supervisor.
    check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "setting the parent-death signal")
    if os.getppid() != supervisor_pid:
        fail("the supervisor died during set-up")
    os.execve(cfg["python"], [cfg["python"], "-I", "program.py"], cfg["env"])


def supervise(cfg: dict) -> int:
    """Start the program and reap every process until it ends; its wait status.

    In a PID namespace this runs as PID 1: the kernel does not deliver default-action signals
    (SIGXCPU, SIGTERM) to PID 1, so the program must not be PID 1 itself; and orphans of the
    program are re-parented here and must be reaped.
    """
    if cfg["mount_namespace"]:
        enter_scratch_mounts(cfg["read_only_root"])
        if cfg["pid_namespace"]:
            check(mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC), "mounting /proc")
    supervisor_pid = os.getpid()
    program = os.fork()
    if program == 0:
        try:
            exec_program(cfg, supervisor_pid)
        except BaseException as e:  # anything before exec is a set-up failure, never the program's
            fail(f"{type(e).__name__}: {e}")
    os.close(0)  # only the program reads stdin
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except InterruptedError:
            continue
        if pid == program:
            return status


def exit_like(status: int) -> None:
    """End this process the way the program ended: same exit code, or same signal."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)


def main() -> None:
    try:
        launch(json.loads(sys.argv[1]))
    except BaseException as e:  # anything before the program runs is a set-up failure, never the program's
        fail(f"{type(e).__name__}: {e}")


def launch(cfg: dict) -> None:
    check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "setting the parent-death signal")
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    flags = (
        (CLONE_NEWUSER if cfg["user_namespace"] else 0)
        | (CLONE_NEWNET if cfg["network_namespace"] else 0)
        | (CLONE_NEWPID if cfg["pid_namespace"] else 0)
        | (CLONE_NEWNS if cfg["mount_namespace"] else 0)
    )
    uid, gid = os.getuid(), os.getgid()
    if flags:
        check(libc.unshare(flags), "unshare")
    if cfg["user_namespace"]:
        # Map our own ids into the new user namespace (unmapped ids cannot create files, e.g. on the tmpfs).
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    if not cfg["pid_namespace"]:
        exit_like(supervise(cfg))
    # The first child is PID 1 of the new namespace; it reports the program's wait status through a pipe.
    read_end, write_end = os.pipe()
    init = os.fork()
    if init == 0:
        os.close(read_end)
        check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "setting the parent-death signal")
        os.write(write_end, struct.pack("i", supervise(cfg)))
        os._exit(0)
    os.close(write_end)
    os.close(0)
    os.waitpid(init, 0)
    report = os.read(read_end, 4)
    if len(report) != 4:
        fail("the sandbox's init process died")
    exit_like(struct.unpack("i", report)[0])


if __name__ == "__main__":
    main()
