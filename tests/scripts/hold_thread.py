"""Holds one thread of another process still while the rest of it runs: ptrace
seizes and interrupts the thread (a signal would stop every thread), then lets it go.

usage: hold_thread.py TID SECONDS
Prints "held" once the thread is stopped and "released" once it runs again.
"""
import ctypes
import os
import sys
import time

PTRACE_DETACH = 17
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
WALL = 0x40000000

libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]


def ptrace(request, tid):
    if libc.ptrace(request, tid, None, None) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"ptrace({request:#x}, {tid}): {os.strerror(errno)}")


def main():
    tid, seconds = int(sys.argv[1]), float(sys.argv[2])
    ptrace(PTRACE_SEIZE, tid)
    ptrace(PTRACE_INTERRUPT, tid)
    os.waitpid(tid, WALL)
    print("held", flush=True)
    time.sleep(seconds)
    # The tracer that seized it must let it go; detaching resumes the thread.
    ptrace(PTRACE_DETACH, tid)
    print("released", flush=True)


if __name__ == "__main__":
    main()
