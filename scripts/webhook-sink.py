#!/usr/bin/env python3
"""A webhook receiver for the Postman run (scripts/postman.sh starts it).

POST any path: answers 204 and keeps the request (its webhook-* headers and body).
GET /received: every request kept, oldest first, as JSON.

    python3 scripts/webhook-sink.py 127.0.0.1 8099
"""
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RECEIVED = []
LOCK = threading.Lock()


class Sink(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(min(length, 1 << 20)).decode("utf-8", "replace")
        headers = {k.lower(): v for k, v in self.headers.items() if k.lower().startswith("webhook-")}
        with LOCK:
            RECEIVED.append({"path": self.path, "headers": headers, "body": body})
        self.send_response(204)
        self.end_headers()

    def do_GET(self):
        if self.path != "/received":
            self.send_response(404)
            self.end_headers()
            return
        with LOCK:
            data = json.dumps(RECEIVED).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    host, port = sys.argv[1], int(sys.argv[2])
    ThreadingHTTPServer((host, port), Sink).serve_forever()
