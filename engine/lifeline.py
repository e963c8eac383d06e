"""The local engine's tie to the process that started it (standard library only): the engine watches that
process and exits when it is gone, and on Linux the kernel also sends the engine SIGTERM when it dies."""
from __future__ import annotations

import ctypes
import os
import signal
import sys
from typing import Callable, Optional

PR_SET_PDEATHSIG = 1


def watch_parent(pid: int) -> Callable[[], bool]:
    """A check that says whether process `pid` still lives. Made while `pid` is this process's parent, it
    asks whether it still is (a parent's death reparents its children, even while it waits unreaped)."""
    if os.name == "posix" and os.getppid() == pid:
        return lambda: os.getppid() == pid
    return lambda: alive(pid)


def alive(pid: int) -> bool:
    """Whether process `pid` exists (a zombie counts as alive until reaped)."""
    if os.name == "nt":
        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
        kernel32.OpenProcess.restype = ctypes.c_void_p
        kernel32.WaitForSingleObject.argtypes = (ctypes.c_void_p, ctypes.c_uint32)
        kernel32.CloseHandle.argtypes = (ctypes.c_void_p,)
        handle = kernel32.OpenProcess(0x00100000, False, pid)  # SYNCHRONIZE
        if not handle:
            return ctypes.get_last_error() == 5  # access denied: it exists
        try:
            return kernel32.WaitForSingleObject(handle, 0) == 0x102  # WAIT_TIMEOUT: still running
        finally:
            kernel32.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def die_with_parent() -> Optional[Callable[[], None]]:
    """On Linux, a `preexec_fn` that has the kernel send the child SIGTERM when the thread that started it
    ends; None elsewhere. libc is looked up here, before the fork."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
