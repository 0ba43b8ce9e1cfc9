#!/usr/bin/env python3
"""Exact, known traffic for flowtel's end-to-end tests.

tcp-server PORT CONNS RECV SEND  accept CONNS connections (dual-stack socket); from each
                                 read exactly RECV bytes, answer SEND bytes, close.
tcp-sendfile-server PORT CONNS RECV SEND
                                 the same, answering with sendfile(2) from a file of SEND
                                 bytes (zero-copy: before Linux 6.5 it bypasses tcp_sendmsg).
tcp-rtt-server PORT RECV SEND    accept one connection, read RECV bytes, send SEND bytes in
                                 64 KiB pieces, after each printing "rtt SRTT RTTVAR" (µs)
                                 from the socket's TCP_INFO, the kernel's own view.
tcp-client HOST PORT CONNS SEND RECV
                                 open CONNS connections in turn; on each send SEND bytes,
                                 read until the server closes (expects RECV bytes).
tcp-shared-client HOST PORT1 PORT2 ROUNDS
                                 per round: connect to PORT1, send 100 bytes, fork; the child
                                 sends 200 more on that socket, reads to the end and closes it
                                 last (the parent closed its copy at once); then the parent
                                 sends 300 bytes on a new connection to PORT2, which the kernel
                                 often puts at the freed socket's address.
tcp-fanout HOST PORT N           fork N processes, each opening one connection, sending 10
                                 bytes and reading 10; all stay open until every one has
                                 (then "done"), then close ("closed"). More sockets and flows
                                 at once than small tables hold.
udp-server PORT COUNT SIZE       receive COUNT datagrams (recvfrom), echo each back (sendto).
udp-client HOST PORT COUNT SIZE  connected UDP socket: send COUNT datagrams of SIZE bytes,
                                 read each echo.
udp-failed-send PORT             unconnected UDP socket: a sendto that fails (a broadcast
                                 without SO_BROADCAST, after the sendmsg hook), then one recv without an address;
                                 prints "done N" with the bytes received.
udp-send HOST PORT SIZE          one datagram of SIZE bytes.
hold-clients HOST PORT N CGROUP...
                                 fork N processes, child i first moving into CGROUP[i % len];
                                 each opens one connection, sends 1 byte, reads the reply,
                                 and stays alive until stdin closes (many live workloads).
http-fresh-client HOST PORT N EVERY [PAUSE_MS]
                                 N HTTP/1.1 GETs, each on a new connection: every EVERY-th
                                 for /drop (http_server.py closes it unanswered; EVERY 0:
                                 none), the rest for /ok, each read to its end; PAUSE_MS
                                 before each.
sink-server PORT                 accept connections until stdin closes; answer each one's
                                 first bytes with one byte, then read it to its end.
Each prints "ready" (servers) or "done" once finished, so tests can sequence on it.
"""
import socket
import sys
import time


def recv_exact(sock, n):
    got = 0
    while got < n:
        chunk = sock.recv(min(65536, n - got))
        if not chunk:
            raise SystemExit(f"peer closed after {got} of {n} bytes")
        got += len(chunk)


def listen(port):
    """A dual-stack listener: IPv6 clients, and IPv4 clients as v4-mapped addresses."""
    srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    srv.bind(("::", port))
    srv.listen(64)
    print("ready", flush=True)
    return srv


def tcp_server(port, conns, recv, send):
    srv = listen(port)
    for _ in range(conns):
        conn, _ = srv.accept()
        recv_exact(conn, recv)
        conn.sendall(b"s" * send)
        conn.close()
    print("done", flush=True)


def tcp_sendfile_server(port, conns, recv, send):
    import os
    import tempfile

    with tempfile.TemporaryFile() as payload:
        payload.write(b"f" * send)
        payload.flush()
        srv = listen(port)
        for _ in range(conns):
            conn, _ = srv.accept()
            recv_exact(conn, recv)
            offset = 0
            while offset < send:
                offset += os.sendfile(conn.fileno(), payload.fileno(), offset, send - offset)
            conn.close()
    print("done", flush=True)


def tcp_rtt_server(port, recv, send):
    import struct

    srv = listen(port)
    conn, _ = srv.accept()
    recv_exact(conn, recv)
    left = send
    while left:
        piece = min(left, 65536)
        conn.sendall(b"s" * piece)
        left -= piece
        # struct tcp_info: tcpi_rtt and tcpi_rttvar (µs) at bytes 68 and 72.
        info = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
        rtt, rttvar = struct.unpack_from("II", info, 68)
        print(f"rtt {rtt} {rttvar}", flush=True)
    conn.close()
    print("done", flush=True)


def tcp_client(host, port, conns, send, recv):
    for _ in range(conns):
        conn = socket.create_connection((host, port))
        conn.sendall(b"c" * send)
        got = 0
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            got += len(chunk)
        if got != recv:
            raise SystemExit(f"expected {recv} bytes, got {got}")
        conn.close()
    print("done", flush=True)


def read_to_end(sock):
    while sock.recv(65536):
        pass


def tcp_shared_client(host, port1, port2, rounds):
    import os
    import time
    for _ in range(rounds):
        shared = socket.create_connection((host, port1))
        shared.sendall(b"p" * 100)
        child = os.fork()
        if child == 0:
            shared.sendall(b"c" * 200)
            read_to_end(shared)
            shared.close()
            os._exit(0)
        shared.close()
        os.waitpid(child, 0)
        # The shared socket is freed once the server has acknowledged its last FIN.
        time.sleep(0.005)
        fresh = socket.create_connection((host, port2))
        fresh.sendall(b"f" * 300)
        read_to_end(fresh)
        fresh.close()
    print("done", flush=True)


def tcp_fanout(host, port, n):
    import os
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    children = []
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            os.close(go_w)
            conn = socket.create_connection((host, port))
            conn.sendall(b"c" * 10)
            recv_exact(conn, 10)
            os.write(ready_w, b"r")
            os.read(go_r, 1)  # returns at EOF, when the parent closes its end
            conn.close()
            os._exit(0)
        children.append(pid)
    os.close(go_r)
    for _ in range(n):
        os.read(ready_r, 1)
    print("done", flush=True)
    os.close(go_w)
    for pid in children:
        os.waitpid(pid, 0)
    print("closed", flush=True)


def udp_server(port, count, size):
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("0.0.0.0", port))
    print("ready", flush=True)
    for _ in range(count):
        data, peer = srv.recvfrom(65536)
        srv.sendto(data, peer)
    print("done", flush=True)


def udp_client(host, port, count, size):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((host, port))
    sock.settimeout(5)
    for _ in range(count):
        sock.send(b"u" * size)
        sock.recv(65536)
    print("done", flush=True)


def udp_failed_send(port):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    try:
        sock.sendto(b"x", ("255.255.255.255", 9))
        raise SystemExit("the broadcast was sent")
    except OSError:  # EACCES, or ENETUNREACH where no route covers it: after the hook
        pass
    print("ready", flush=True)
    print("done", len(sock.recv(65536)), flush=True)


def udp_send(host, port, size):
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"y" * size, (host, port))
    print("done", flush=True)


def hold_clients(host, port, n, cgroups):
    import os
    children = []
    for i in range(n):
        pid = os.fork()
        if pid == 0:
            if cgroups:
                with open(os.path.join(cgroups[i % len(cgroups)], "cgroup.procs"), "w") as f:
                    f.write(str(os.getpid()))
            conn = socket.create_connection((host, port))
            conn.sendall(b"c")
            conn.recv(1)
            sys.stdin.read()  # until the parent's stdin (shared) closes
            os._exit(0)
        children.append(pid)
    print("done", flush=True)
    sys.stdin.read()
    for pid in children:
        os.kill(pid, 9)
        os.waitpid(pid, 0)


def sink_server(port):
    import threading

    srv = listen(port)
    srv.settimeout(0.2)

    def drain(conn):
        with conn:
            first = True
            while data := conn.recv(65536):
                if first:
                    conn.sendall(b"s")
                    first = False

    def accept():
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            threading.Thread(target=drain, args=(conn,), daemon=True).start()

    stop = threading.Event()
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    sys.stdin.read()
    stop.set()
    thread.join()


def http_fresh_client(host, port, n, every, pause_ms=0):
    for i in range(n):
        time.sleep(pause_ms / 1000)
        path = "/drop" if every and i % every == 0 else "/ok"
        with socket.create_connection((host, port)) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            got = b""
            # /ok: a 6-byte body after the head; /drop: the server's end of stream.
            while not (got.endswith(b"hello\n") or (got and path == "/drop")):
                data = s.recv(4096)
                if not data:
                    break
                got += data
    print("done", flush=True)


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "tcp-server":
        tcp_server(*map(int, args))
    elif cmd == "tcp-sendfile-server":
        tcp_sendfile_server(*map(int, args))
    elif cmd == "tcp-rtt-server":
        tcp_rtt_server(*map(int, args))
    elif cmd == "tcp-client":
        tcp_client(args[0], *map(int, args[1:]))
    elif cmd == "tcp-shared-client":
        tcp_shared_client(args[0], *map(int, args[1:]))
    elif cmd == "tcp-fanout":
        tcp_fanout(args[0], *map(int, args[1:]))
    elif cmd == "hold-clients":
        hold_clients(args[0], int(args[1]), int(args[2]), args[3:])
    elif cmd == "sink-server":
        sink_server(int(args[0]))
    elif cmd == "http-fresh-client":
        http_fresh_client(args[0], *map(int, args[1:]))
    elif cmd == "udp-server":
        udp_server(*map(int, args))
    elif cmd == "udp-client":
        udp_client(args[0], *map(int, args[1:]))
    elif cmd == "udp-failed-send":
        udp_failed_send(int(args[0]))
    elif cmd == "udp-send":
        udp_send(args[0], *map(int, args[1:]))
    else:
        raise SystemExit(f"unknown command {cmd}")
