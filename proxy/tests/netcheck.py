"""Runs inside the network namespace of tests/init_netns.rs: listens where
the redirect sends connections (127.0.0.1:4140 outbound, :4143 inbound),
on the admin port (:4191) and the app's port (:8080), and records for each
accepted connection which listener got it and its original destination
(SO_ORIGINAL_DST). Commands on stdin, one JSON line of answer each:

  connect IP PORT UID   open a connection as UID (1 s at most)
  arrived               what the listeners accepted since the last answer
"""

import json
import os
import socket
import struct
import sys
import threading
import time

SO_ORIGINAL_DST = 80
# Loaded now: after setuid the child may not read the interpreter's
# library (under /root), and connecting by name needs the idna codec.
"warm".encode("idna")
arrived = []
lock = threading.Lock()


def original(conn):
    try:
        raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    except OSError:
        return None
    port = struct.unpack("!H", raw[2:4])[0]
    return f"{socket.inet_ntoa(raw[4:8])}:{port}"


def serve(host, port, name):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    s.listen(64)
    while True:
        conn, _ = s.accept()
        with lock:
            arrived.append({"listener": name, "original": original(conn)})
        conn.close()


def connect(ip, port, uid):
    pid = os.fork()
    if pid == 0:
        try:
            if uid:
                os.setgid(uid)
                os.setuid(uid)
            c = socket.create_connection((ip, port), timeout=1)
            c.close()
            os._exit(0)
        except OSError:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def drain():
    time.sleep(0.2)
    with lock:
        out = list(arrived)
        arrived.clear()
    return out


for host, port, name in [("127.0.0.1", 4140, "outbound"), ("0.0.0.0", 4143, "inbound"),
                         ("0.0.0.0", 4191, "admin"), ("0.0.0.0", 8080, "app")]:
    threading.Thread(target=serve, args=(host, port, name), daemon=True).start()
time.sleep(0.2)
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    words = line.split()
    if not words:
        continue
    if words[0] == "connect":
        ok = connect(words[1], int(words[2]), int(words[3]))
        print(json.dumps({"connected": ok, "arrived": drain()}), flush=True)
    elif words[0] == "arrived":
        print(json.dumps({"arrived": drain()}), flush=True)
