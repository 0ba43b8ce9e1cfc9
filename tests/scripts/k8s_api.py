#!/usr/bin/env python3
"""A small stand-in for the Kubernetes API server, for flowtel's tests.

It speaks what a kube-rs watcher uses: cluster-wide list (`GET /api/v1/pods`, paged
with `limit` and `continue`) and
watch (`?watch=true&resourceVersion=N&allowWatchBookmarks=true`) of pods, services,
EndpointSlices and ReplicaSets, as real object JSON with resourceVersions, streamed
watch events, bookmarks, and the ERROR event with a 410 `Expired` Status that forces
a client to list again.

The test drives it over HTTP:
  POST /test/apply    an object (its `kind` says which collection): ADDED or MODIFIED
  POST /test/delete   {"kind": ..., "namespace": ..., "name": ...}: DELETED
  POST /test/expire   forgets the event history: every open watch ends, and resuming
                      from an older resourceVersion gets 410 Gone (a relist)
  POST /test/slow     {"seconds": S}: every list answers only after S seconds

Usage: k8s_api.py PORT STATE_FILE [FIRST_VERSION]
  PORT 0 picks a free port; "listening PORT" is printed once it serves.
  STATE_FILE holds a JSON list of objects present from the start.
"""
import json
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COLLECTIONS = {
    "Pod": ("/api/v1/pods", "v1", "PodList"),
    "Service": ("/api/v1/services", "v1", "ServiceList"),
    "EndpointSlice": ("/apis/discovery.k8s.io/v1/endpointslices", "discovery.k8s.io/v1", "EndpointSliceList"),
    "ReplicaSet": ("/apis/apps/v1/replicasets", "apps/v1", "ReplicaSetList"),
}
KIND_BY_PATH = {path: kind for kind, (path, _, _) in COLLECTIONS.items()}
BOOKMARK_EVERY_S = 1.0
WATCH_MAX_S = 30


class Store:
    def __init__(self, objects, first_version):
        self.cond = threading.Condition()
        self.version = first_version
        self.objects = {kind: {} for kind in COLLECTIONS}
        self.events = []  # (version, kind, type, object)
        self.oldest = first_version  # a watch from before this gets 410
        self.epoch = 0  # bumped by expire: open watches end
        self.list_delay_s = 0.0
        for obj in objects:
            self.apply(obj, record=False)

    def apply(self, obj, record=True):
        with self.cond:
            kind = obj["kind"]
            meta = obj.setdefault("metadata", {})
            key = (meta.get("namespace", ""), meta["name"])
            self.version += 1
            meta["resourceVersion"] = str(self.version)
            kind_objects = self.objects[kind]
            event = "MODIFIED" if key in kind_objects else "ADDED"
            kind_objects[key] = obj
            if record:
                self.events.append((self.version, kind, event, obj))
            self.cond.notify_all()

    def delete(self, kind, namespace, name):
        with self.cond:
            obj = self.objects[kind].pop((namespace, name), None)
            if obj is None:
                return False
            self.version += 1
            obj = json.loads(json.dumps(obj))
            obj["metadata"]["resourceVersion"] = str(self.version)
            self.events.append((self.version, kind, "DELETED", obj))
            self.cond.notify_all()
            return True

    def expire(self):
        with self.cond:
            self.version += 1
            self.oldest = self.version
            self.events.clear()
            self.epoch += 1
            self.cond.notify_all()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    store = None

    def log_message(self, *args):
        pass

    def send_json(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length) or b"{}")
        store = Handler.store
        if self.path == "/test/apply":
            store.apply(body)
            self.send_json(200, {"version": store.version})
        elif self.path == "/test/delete":
            found = store.delete(body["kind"], body.get("namespace", ""), body["name"])
            self.send_json(200 if found else 404, {"version": store.version})
        elif self.path == "/test/expire":
            store.expire()
            self.send_json(200, {"version": store.version})
        elif self.path == "/test/slow":
            store.list_delay_s = float(body["seconds"])
            self.send_json(200, {"version": store.version})
        else:
            self.send_json(404, {})

    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        kind = KIND_BY_PATH.get(url.path)
        if kind is None:
            self.send_json(404, status_object(404, "NotFound", f"{url.path} is not served here"))
            return
        query = urllib.parse.parse_qs(url.query)
        if query.get("watch", ["false"])[0] in ("true", "1"):
            self.watch(kind, query)
        else:
            self.list(kind, query)

    def list(self, kind, query):
        """Paged when the client asks (`limit`, then `continue`), as the API server does
        for lists read from etcd."""
        store = Handler.store
        time.sleep(store.list_delay_s)
        _, api_version, list_kind = COLLECTIONS[kind]
        limit = int(query.get("limit", ["0"])[0] or 0)
        offset = int(query.get("continue", ["0"])[0] or 0)
        with store.cond:
            items = [store.objects[kind][key] for key in sorted(store.objects[kind])]
            version = store.version
        metadata = {"resourceVersion": str(version)}
        if limit and offset + limit < len(items):
            metadata["continue"] = str(offset + limit)
        page = items[offset:offset + limit] if limit else items
        self.send_json(200, {"kind": list_kind, "apiVersion": api_version, "metadata": metadata, "items": page})

    def chunk(self, event):
        data = json.dumps(event).encode() + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def watch(self, kind, query):
        store = Handler.store
        since = int(query.get("resourceVersion", ["0"])[0] or 0)
        bookmarks = query.get("allowWatchBookmarks", ["false"])[0] == "true"
        timeout = min(int(query.get("timeoutSeconds", [WATCH_MAX_S])[0]), WATCH_MAX_S)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        _, api_version, _ = COLLECTIONS[kind]
        try:
            with store.cond:
                epoch = store.epoch
                expired = since < store.oldest
            if expired:
                self.chunk({"type": "ERROR", "object": status_object(410, "Expired", "too old resource version")})
            else:
                self.stream(kind, api_version, since, epoch, bookmarks, time.monotonic() + timeout)
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def stream(self, kind, api_version, since, epoch, bookmarks, deadline):
        store = Handler.store
        next_bookmark = time.monotonic() + BOOKMARK_EVERY_S
        while time.monotonic() < deadline:
            with store.cond:
                if store.epoch != epoch:
                    return
                pending = [(v, t, o) for (v, k, t, o) in store.events if k == kind and v > since]
                if not pending:
                    store.cond.wait(timeout=0.2)
                    pending = [(v, t, o) for (v, k, t, o) in store.events if k == kind and v > since]
                version = store.version
            for v, event_type, obj in pending:
                self.chunk({"type": event_type, "object": obj})
                since = v
            if bookmarks and time.monotonic() >= next_bookmark:
                meta = {"resourceVersion": str(max(since, version))}
                self.chunk({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": api_version, "metadata": meta}})
                since = max(since, version)
                next_bookmark = time.monotonic() + BOOKMARK_EVERY_S


def status_object(code, reason, message):
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


def main():
    port, state_file = int(sys.argv[1]), sys.argv[2]
    first_version = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
    with open(state_file) as f:
        Handler.store = Store(json.load(f), first_version)
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    print(f"listening {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
