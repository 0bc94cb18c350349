"""`helm test` smoke test: what a user does first, end to end.

Connects a WebSocket client to the ws-gateway Service, subscribes to a fresh
channel, publishes to it through the http-ingress Service and checks that the
client receives exactly that message; then broadcasts with the seed form
(GET /?content=...) and checks that arrives too.

Python standard library only, so it runs in any stock python image: the
WebSocket client below is the minimum of RFC 6455 a client needs (masked
text frames out, text/ping/close frames in).

Configured by environment variables (set by the chart's test pod):
  PUSHMESH_GATEWAY_URL   ws://host:port/ws
  PUSHMESH_INGRESS_URL   http://host:port
  PUSHMESH_API_KEYS      optional; the first key (KEY[:scope],...) is sent as a Bearer token
  PUSHMESH_JWT_SECRET    optional; an HS256 token is minted for the client
  PUSHMESH_TIMEOUT_SECONDS  overall deadline (default 30)
"""

import base64
import hashlib
import hmac
import json
import os
import socket
import struct
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Fail(Exception):
    pass


class WebSocket:
    def __init__(self, url, deadline):
        u = urllib.parse.urlsplit(url)
        if u.scheme != "ws":
            raise Fail(f"gateway URL must be ws://host:port/path, got {url!r}")
        self.deadline = deadline
        self.sock = socket.create_connection((u.hostname, u.port or 80), timeout=self.remaining())
        key = base64.b64encode(os.urandom(16)).decode()
        path = u.path or "/"
        if u.query:
            path += "?" + u.query
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: {u.netloc}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.recv_some()
        head, self.buf = head.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        if " 101 " not in lines[0] + " ":
            raise Fail(f"WebSocket upgrade refused: {lines[0]!r}")
        want = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
        headers = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:] if ":" in l)}
        if headers.get("sec-websocket-accept") != want:
            raise Fail("WebSocket upgrade: wrong Sec-WebSocket-Accept")

    def remaining(self):
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise Fail("timed out")
        return left

    def recv_some(self):
        self.sock.settimeout(self.remaining())
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise Fail("timed out waiting for the gateway") from None
        if not data:
            raise Fail("the gateway closed the TCP connection")
        return data

    def read_exact(self, n):
        while len(self.buf) < n:
            self.buf += self.recv_some()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def send_frame(self, opcode, payload):
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 1 << 16:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + masked)

    def send_json(self, value):
        self.send_frame(0x1, json.dumps(value).encode())

    def recv_json(self):
        """The next text message, parsed; answers pings, fails on close."""
        message = b""
        while True:
            b0, b1 = self.read_exact(2)
            opcode, n = b0 & 0x0F, b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", self.read_exact(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", self.read_exact(8))
            payload = self.read_exact(n)
            if opcode == 0x9:
                self.send_frame(0xA, payload)
            elif opcode == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                raise Fail(f"the gateway closed the WebSocket: code {code}, reason {payload[2:].decode(errors='replace')!r}")
            elif opcode in (0x0, 0x1):
                message += payload
                if b0 & 0x80:
                    return json.loads(message)


def b64url(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def hs256_token(secret, subject):
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = b64url(json.dumps({"sub": subject, "channels": ["*"], "exp": int(time.time()) + 300}).encode())
    sig = hmac.new(secret.encode(), f"{header}.{claims}".encode(), hashlib.sha256).digest()
    return f"{header}.{claims}.{b64url(sig)}"


def http(method, url, api_key, body=None, deadline=None):
    req = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode())
    req.add_header("Content-Type", "application/json")
    if api_key:
        req.add_header("Authorization", f"Bearer {api_key}")
    # Service names resolve inside the cluster: never go through a proxy.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=max(1.0, deadline - time.monotonic())) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def wait_for(ws, want, what):
    seen = []
    while True:
        frame = ws.recv_json()
        if want(frame):
            return frame
        seen.append(frame)
        if len(seen) > 100:
            raise Fail(f"no {what} among 100 frames; last: {seen[-3:]}")


def main():
    gateway = os.environ["PUSHMESH_GATEWAY_URL"]
    ingress = os.environ["PUSHMESH_INGRESS_URL"].rstrip("/")
    # The first key, without its ":admin"/":publish" scope suffix.
    api_key = (os.environ.get("PUSHMESH_API_KEYS") or "").split(",")[0].strip().split(":")[0]
    jwt_secret = os.environ.get("PUSHMESH_JWT_SECRET") or ""
    deadline = time.monotonic() + float(os.environ.get("PUSHMESH_TIMEOUT_SECONDS", "30"))
    nonce = b64url(os.urandom(9))
    channel = f"helm-test.{nonce}"

    url = gateway
    if jwt_secret:
        url += ("&" if "?" in url else "?") + "token=" + hs256_token(jwt_secret, f"helm-test-{nonce}")
    ws = WebSocket(url, deadline)
    welcome = ws.recv_json()
    if welcome.get("type") != "welcome":
        raise Fail(f"expected a welcome frame first, got {welcome}")
    print(f"connected to gateway {welcome.get('gateway')} as {welcome.get('connection')}", flush=True)

    ws.send_json({"id": 1, "op": "subscribe", "channel": channel})
    reply = wait_for(ws, lambda f: f.get("type") == "reply" and f.get("id") == 1, "subscribe reply")
    if reply.get("ok") is not True:
        raise Fail(f"subscribe to {channel} refused: {reply}")
    print(f"subscribed to {channel}", flush=True)

    status, body = http("POST", f"{ingress}/publish", api_key, {"channel": channel, "data": {"smoke": nonce}}, deadline)
    if status != 200:
        raise Fail(f"POST /publish answered {status}: {body}")
    msg = wait_for(ws, lambda f: f.get("type") == "message", "message")
    if msg.get("channel") != channel or msg.get("data") != {"smoke": nonce}:
        raise Fail(f"expected the published message on {channel}, got {msg}")
    print(f"published through the ingress and received it: {json.dumps(msg)}", flush=True)

    content = f"broadcast-{nonce}"
    status, body = http("GET", f"{ingress}/?content={content}", api_key, None, deadline)
    if status != 200 or body.strip() != "ok":
        raise Fail(f"GET /?content= answered {status}: {body}")
    wait_for(ws, lambda f: content in json.dumps(f), "broadcast")
    print("broadcast received", flush=True)
    print("smoke test passed", flush=True)


if __name__ == "__main__":
    try:
        main()
    except (Fail, OSError, KeyError, ValueError) as e:
        print(f"smoke test FAILED: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
