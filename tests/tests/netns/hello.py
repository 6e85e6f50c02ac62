"""The "app" of a server pod in tests/netns_mesh.rs: an unmodified HTTP/1.1
server, not part of Outrigger, that answers every GET with
"hello from <name>". Usage: hello.py <listen-ip> <port> <name>."""

import http.server
import sys

host, port, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
body = f"hello from {name}\n".encode()


class Hello(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer((host, port), Hello).serve_forever()
