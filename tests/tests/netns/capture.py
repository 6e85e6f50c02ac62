"""Captures TCP payloads on one interface (AF_PACKET, as root) until stdin
closes, then prints one JSON line per payload: source, destination and the
payload's first 64 bytes in hex. Used by tests/netns_mesh.rs to look at the
bytes between two "pods"."""

import json
import select
import socket
import struct
import sys

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
iface = sys.argv[1]
# Every protocol: on a bridge port the bridge takes each frame before the
# taps of one protocol would see it.
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(ETH_P_ALL))
s.bind((iface, ETH_P_ALL))
print(json.dumps({"ready": True}), flush=True)
seen = []
while True:
    ready, _, _ = select.select([s, sys.stdin], [], [], 0.5)
    if sys.stdin in ready and not sys.stdin.readline():
        break
    if s not in ready:
        continue
    frame = s.recv(65535)
    if struct.unpack("!H", frame[12:14])[0] != ETH_P_IP:
        continue
    ip = frame[14:]
    if len(ip) < 20 or ip[9] != 6:  # TCP only
        continue
    ihl = (ip[0] & 0x0F) * 4
    total = struct.unpack("!H", ip[2:4])[0]
    tcp = ip[ihl:total]
    if len(tcp) < 20:
        continue
    offset = (tcp[12] >> 4) * 4
    payload = tcp[offset:]
    if not payload:
        continue
    sport, dport = struct.unpack("!HH", tcp[0:4])
    seen.append({
        "src": f"{socket.inet_ntoa(ip[12:16])}:{sport}",
        "dst": f"{socket.inet_ntoa(ip[16:20])}:{dport}",
        "head": payload[:64].hex(),
    })
for p in seen:
    print(json.dumps(p))
