"""A DNS server for the tests, on dnslib (PyPI), for what dnsmasq cannot do on demand.

Answers by question name:
  slow.test  A 10.0.0.9 after DELAY_MS milliseconds (argument 2)
  fail.test  SERVFAIL
  drop.test  no answer at all
  split.test A 10.0.0.9; over TCP in two sends 50 ms apart (the length prefix and
             the header's first six bytes, then the rest)
  anything else: A 10.0.0.9

Usage: dns_server.py ADDRESS DELAY_MS   (port 53, UDP and TCP; prints "ready" when bound)
"""
import socket
import struct
import sys
import threading
import time

from dnslib import QTYPE, RCODE, RR, A, DNSRecord


def reply_to(data, delay_ms):
    """The packed answer to query `data`, or None for no answer."""
    try:
        query = DNSRecord.parse(data)
    except Exception:  # garbage from the robustness test: ignore it, as a server would
        return None, None
    name = str(query.q.qname).rstrip(".")
    if name == "drop.test":
        return None, name
    reply = query.reply()
    if name == "fail.test":
        reply.header.rcode = RCODE.SERVFAIL
    else:
        if name == "slow.test":
            time.sleep(delay_ms / 1000)
        reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=A("10.0.0.9"), ttl=60))
    return reply.pack(), name


def answer(sock, data, peer, delay_ms):
    packed, _ = reply_to(data, delay_ms)
    if packed is not None:
        sock.sendto(packed, peer)


def serve_tcp(conn, delay_ms):
    """RFC 7766 framing: each message behind its two-byte length, several a connection."""
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with conn:
        while True:
            prefix = conn.recv(2, socket.MSG_WAITALL)
            if len(prefix) < 2:
                return
            data = conn.recv(struct.unpack(">H", prefix)[0], socket.MSG_WAITALL)
            packed, name = reply_to(data, delay_ms)
            if packed is None:
                continue
            framed = struct.pack(">H", len(packed)) + packed
            if name == "split.test":
                conn.sendall(framed[:8])
                time.sleep(0.05)
                framed = framed[8:]
            conn.sendall(framed)


def accept_tcp(listener, delay_ms):
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve_tcp, args=(conn, delay_ms), daemon=True).start()


def main():
    address, delay_ms = sys.argv[1], int(sys.argv[2])
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, 53))
    listener = socket.create_server((address, 53))
    threading.Thread(target=accept_tcp, args=(listener, delay_ms), daemon=True).start()
    print("ready", flush=True)
    while True:
        data, peer = sock.recvfrom(4096)
        threading.Thread(target=answer, args=(sock, data, peer, delay_ms), daemon=True).start()


if __name__ == "__main__":
    main()
