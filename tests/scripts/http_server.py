"""A small HTTP/1.1 server for the HTTP tests: keep-alive, known statuses, a slow
endpoint, and TLS when given a certificate (Python's ssl module uses the system
libssl, the one flowtel's uprobes watch).

usage: http_server.py ADDRESS PORT [CERT KEY]
  /ok 200, /missing 404, /fail 500, /moved 301, /slow 200 after 300 ms,
  /stall 200 after 10 s (prints "stalled" when it arrives: a request a test can count
  on being open), /drop: the connection is closed without a response.
Prints "ready" once listening.
"""
import http.server
import socket
import socketserver
import ssl
import sys
import time

ROUTES = {"/ok": 200, "/missing": 404, "/fail": 500, "/moved": 301, "/slow": 200, "/stall": 200}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Each response in one write (the server's own flush after each request), as most
    # servers send a small one. Written in two, a slow pipelining client can read one
    # response's body and the next one's head together, and flowtel, which looks at
    # the start of each read, misses that head (docs/telemetry.md, a named limit).
    wbufsize = -1

    def do_GET(self):
        path = self.path.split("?")[0]
        if path == "/drop":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if path == "/slow":
            time.sleep(0.3)
        if path == "/stall":
            print("stalled", flush=True)
            time.sleep(10)
        status = ROUTES.get(path, 404)
        body = b"hello\n"
        self.send_response(status)
        if status == 301:
            self.send_header("Location", "/ok")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        # A client that closes first (the pipelining test does) is not an error here.
        pass


def main():
    address, port = sys.argv[1], int(sys.argv[2])
    server = Server((address, port), Handler)
    if len(sys.argv) > 4:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(sys.argv[3], sys.argv[4])
        server.socket = context.wrap_socket(server.socket, server_side=True)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
