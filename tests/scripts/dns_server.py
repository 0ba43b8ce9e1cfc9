"""A DNS server for the tests, on dnslib (PyPI), for what dnsmasq cannot do on demand.

Answers by question name:
  slow.test  A 10.0.0.9 after DELAY_MS milliseconds (argument 2)
  fail.test  SERVFAIL
  drop.test  no answer at all
  anything else: A 10.0.0.9

Usage: dns_server.py ADDRESS DELAY_MS   (port 53, UDP; prints "ready" when bound)
"""
import socket
import sys
import threading
import time

from dnslib import QTYPE, RCODE, RR, A, DNSRecord


def answer(sock, data, peer, delay_ms):
    try:
        query = DNSRecord.parse(data)
    except Exception:  # garbage from the robustness test: ignore it, as a server would
        return
    name = str(query.q.qname).rstrip(".")
    if name == "drop.test":
        return
    reply = query.reply()
    if name == "fail.test":
        reply.header.rcode = RCODE.SERVFAIL
    else:
        if name == "slow.test":
            time.sleep(delay_ms / 1000)
        reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=A("10.0.0.9"), ttl=60))
    sock.sendto(reply.pack(), peer)


def main():
    address, delay_ms = sys.argv[1], int(sys.argv[2])
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, 53))
    print("ready", flush=True)
    while True:
        data, peer = sock.recvfrom(4096)
        threading.Thread(target=answer, args=(sock, data, peer, delay_ms), daemon=True).start()


if __name__ == "__main__":
    main()
