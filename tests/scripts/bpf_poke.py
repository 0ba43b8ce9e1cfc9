"""Puts a running agent's own eBPF programs and maps into the states their loss
counters guard against, which real traffic cannot produce on demand: a kernel read
that faults, a packet cut short before its transport header, a per-CPU scratch slot
already in use. Uses the bpf(2) syscall on the agent's objects, found through its
file descriptors, so the programs and counters are the ones the agent loaded.

usage:
  bpf_poke.py raw-tp PID PROGRAM ARG...     run a raw tracepoint program on the args
  bpf_poke.py skb PID PROGRAM HEX           run a socket buffer program on a frame
  bpf_poke.py busy PID MAP 0|1 [SLOT]       set the busy flag of every slot of a per-CPU scratch
                                            map, or of slot SLOT alone
  bpf_poke.py clear PID MAP                 delete every entry of a hash map
Prints "ok" on success; fails loudly otherwise.
"""
import ctypes
import os
import struct
import sys

SYS_BPF = 321  # x86_64
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_PROG_TEST_RUN = 10
BPF_PROG_GET_FD_BY_ID = 13
BPF_MAP_GET_FD_BY_ID = 14
BPF_OBJ_GET_INFO_BY_FD = 15
ATTR_SIZE = 128

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def bpf(cmd, attr):
    buf = ctypes.create_string_buffer(bytes(attr), ATTR_SIZE)
    ret = libc.syscall(SYS_BPF, cmd, buf, ATTR_SIZE)
    if ret < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"bpf({cmd}): {os.strerror(errno)}")
    return ret, buf.raw


def attr(*fields):
    """Packs (format, value) pairs at their natural offsets into a zeroed attr."""
    out = bytearray(ATTR_SIZE)
    for offset, fmt, value in fields:
        struct.pack_into(fmt, out, offset, value)
    return out


def addr(buffer):
    return ctypes.addressof(buffer)


def object_ids(pid, kind):
    """Ids of the programs or maps a process holds open (`prog_id` or `map_id`)."""
    ids = set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as info:
                for line in info:
                    if line.startswith(f"{kind}:"):
                        ids.add(int(line.split()[1]))
        except OSError:
            continue  # closed meanwhile
    return ids


def name_of(fd, name_offset):
    info = ctypes.create_string_buffer(256)
    bpf(BPF_OBJ_GET_INFO_BY_FD, attr((0, "I", fd), (4, "I", 256), (8, "Q", addr(info))))
    return info.raw[name_offset:name_offset + 16].split(b"\0")[0].decode(), info.raw


def open_by_name(pid, kind, name):
    """The agent's object named `name` (as the kernel keeps it: 15 bytes at most)."""
    get, name_offset = (BPF_PROG_GET_FD_BY_ID, 64) if kind == "prog_id" else (BPF_MAP_GET_FD_BY_ID, 24)
    for object_id in sorted(object_ids(pid, kind)):
        fd, _ = bpf(get, attr((0, "I", object_id)))
        found, info = name_of(fd, name_offset)
        if found == name[:15]:
            return fd, info
        os.close(fd)
    sys.exit(f"process {pid} holds no {kind[:-3]} named {name}")


def run_raw_tp(pid, program, args):
    fd, _ = open_by_name(pid, "prog_id", program)
    ctx = ctypes.create_string_buffer(struct.pack(f"{len(args)}Q", *args))
    bpf(BPF_PROG_TEST_RUN, attr((0, "I", fd), (40, "I", 8 * len(args)), (48, "Q", addr(ctx))))


def run_skb(pid, program, frame):
    fd, _ = open_by_name(pid, "prog_id", program)
    data = ctypes.create_string_buffer(frame, len(frame))
    bpf(BPF_PROG_TEST_RUN, attr((0, "I", fd), (8, "I", len(frame)), (16, "Q", addr(data))))


def possible_cpus():
    count = 0
    with open("/sys/devices/system/cpu/possible") as ranges:
        for part in ranges.read().strip().split(","):
            low, _, high = part.partition("-")
            count += int(high or low) - int(low) + 1
    return count


def set_busy(pid, map_name, busy, only=None):
    fd, info = open_by_name(pid, "map_id", map_name)
    value_size = struct.unpack_from("I", info, 12)[0]
    # The flag is the struct's last u32; with 8-byte alignment it may be followed by
    # four bytes of padding, so both last words carry it (the padding is never read).
    slot = bytearray(value_size)
    struct.pack_into("II", slot, value_size - 8, busy, busy)
    stride = (value_size + 7) // 8 * 8
    values = bytearray(stride * possible_cpus())
    for cpu in range(possible_cpus()):
        values[cpu * stride:cpu * stride + value_size] = slot
    value = ctypes.create_string_buffer(bytes(values), len(values))
    # Every slot of the map (the HTTP copy has two per CPU: both busy, nothing free).
    max_entries = struct.unpack_from("I", info, 16)[0]
    for index in range(max_entries) if only is None else [only]:
        key = ctypes.create_string_buffer(struct.pack("I", index), 4)
        bpf(BPF_MAP_UPDATE_ELEM, attr((0, "I", fd), (8, "Q", addr(key)), (16, "Q", addr(value))))


def clear(pid, map_name):
    """Deletes every key, as an LRU map would push entries out; prints how many."""
    fd, info = open_by_name(pid, "map_id", map_name)
    key_size = struct.unpack_from("I", info, 8)[0]
    key = ctypes.create_string_buffer(key_size)
    deleted = 0
    while True:
        try:
            # No key given: the first one; each is deleted before asking again.
            bpf(BPF_MAP_GET_NEXT_KEY, attr((0, "I", fd), (8, "Q", 0), (16, "Q", addr(key))))
        except OSError:
            break  # ENOENT: the map is empty
        bpf(BPF_MAP_DELETE_ELEM, attr((0, "I", fd), (8, "Q", addr(key))))
        deleted += 1
    print(f"deleted {deleted}", file=sys.stderr, flush=True)


def main():
    command, pid, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if command == "raw-tp":
        run_raw_tp(pid, name, [int(arg, 0) for arg in sys.argv[4:]])
    elif command == "skb":
        run_skb(pid, name, bytes.fromhex(sys.argv[4]))
    elif command == "busy":
        set_busy(pid, name, int(sys.argv[4]), int(sys.argv[5]) if len(sys.argv) > 5 else None)
    elif command == "clear":
        clear(pid, name)
    else:
        sys.exit(f"unknown command {command}")
    print("ok", flush=True)


if __name__ == "__main__":
    main()
