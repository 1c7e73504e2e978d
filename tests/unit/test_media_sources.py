"""Media sources: allowlisted local files, data: URIs, and http(s) with SSRF defences.

HTTP tests use a throwaway server on 127.0.0.1.  Addresses in 10.0.0.0/8 and 169.254/16
are only ever *refused*: a guard fails the test if a connection to anything but the
loopback test server is attempted."""

from __future__ import annotations

import base64
import ipaddress
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from qwen3vl_app.errors import MediaError
from qwen3vl_app.media import sniff as S
from qwen3vl_app.media.sources import SourcePolicy, blob_from_bytes, is_public_ip, load_media
from tests.support.media_samples import image_bytes

PNG = image_bytes("PNG", 40, 60)
JPEG = image_bytes("JPEG", 40, 60)


class Handler(BaseHTTPRequestHandler):
    seen_hosts: list[str] = []

    def log_message(self, *a):
        pass

    def _send(self, body: bytes, status=200, headers=None):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802
        Handler.seen_hosts.append(self.headers.get("Host"))
        url = urlsplit(self.path)
        q = parse_qs(url.query)
        if url.path == "/img.png":
            self._send(PNG, headers={"Content-Type": "text/html"})  # header lies; bytes decide
        elif url.path == "/redirect":
            self._send(b"", 302, {"Location": q["to"][0]})
        elif url.path == "/loop":
            self._send(b"", 302, {"Location": "/loop"})
        elif url.path == "/big":  # no Content-Length: cap must be enforced while streaming
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                self.wfile.write(PNG[:64])
                for _ in range(64):
                    self.wfile.write(b"\0" * 65536)
            except (BrokenPipeError, ConnectionResetError):
                pass
        elif url.path == "/big-declared":
            self.send_response(200)
            self.send_header("Content-Length", str(10**9))
            self.end_headers()
            try:
                self.wfile.write(PNG)
            except (BrokenPipeError, ConnectionResetError):
                pass
        elif url.path == "/slow":  # nothing for longer than the read timeout
            time.sleep(2.0)
            try:
                self._send(PNG)
            except (BrokenPipeError, ConnectionResetError):
                pass
        elif url.path == "/drip":  # a byte at a time, each within the read timeout
            self.send_response(200)
            self.send_header("Content-Length", str(len(PNG)))
            self.end_headers()
            try:
                for b in PNG:
                    self.wfile.write(bytes([b]))
                    self.wfile.flush()
                    time.sleep(0.1)
            except (BrokenPipeError, ConnectionResetError):
                pass
        elif url.path == "/text":
            self._send(b"TOPSECRET-CONTENT " * 10, headers={"Content-Type": "image/png"})
        else:
            self._send(b"nope", 404)


@pytest.fixture(scope="module")
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", srv.server_address[1]
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def connections(monkeypatch):
    """Record every outgoing TCP connection; anything but loopback fails the test at once."""
    import urllib3.util.connection as uc

    made = []
    real = uc.create_connection

    def guarded(address, *a, **kw):
        made.append(address[0])
        if not ipaddress.ip_address(address[0]).is_loopback:
            raise AssertionError(f"connection attempted to {address[0]}")
        return real(address, *a, **kw)

    monkeypatch.setattr(uc, "create_connection", guarded)
    # requests/urllib3 import the function by module attribute at call time
    return made


LOCAL = SourcePolicy(allow_private=True)
ONLY_LOOPBACK_127_0_0_1 = SourcePolicy(is_allowed_ip=lambda ip: str(ip) == "127.0.0.1")


# ---------------------------------------------------------------------------- address policy


@pytest.mark.parametrize(
    "addr,public",
    [
        ("127.0.0.1", False),
        ("10.0.0.1", False),
        ("172.16.5.4", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("240.0.0.1", False),
        ("255.255.255.255", False),
        ("::1", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        ("2002:7f00:1::1", False),
        ("::", False),
        ("ff02::1", False),
        ("8.8.8.8", True),
        ("1.1.1.1", True),
        ("2606:4700:4700::1111", True),
    ],
)
def test_public_ip_table(addr, public):
    assert is_public_ip(ipaddress.ip_address(addr)) is public


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:1/x.png",
        "http://10.0.0.1/x.png",
        "http://169.254.169.254/latest",
        "http://[::1]/x",
        "http://0.0.0.0/",
        "https://10.0.0.1/x",
        "http://localhost:1/x",
        "http://[::ffff:169.254.169.254]/",
        "http://2130706433/",
    ],
)
def test_private_destinations_refused_before_connecting(url, connections):
    with pytest.raises(MediaError) as e:
        load_media(url, SourcePolicy(), param="messages[0].content[0]")
    assert e.value.status == 400 and e.value.param == "messages[0].content[0]"
    assert connections == []


def test_hostname_resolving_to_private_refused(connections):
    policy = SourcePolicy(resolver=lambda host, port: ["93.184.216.34", "10.0.0.1"])
    with pytest.raises(MediaError, match="non-public"):
        load_media("http://mixed.example/x.png", policy)
    assert connections == []


# ------------------------------------------------------------------------------- fetching


def test_fetch_ok_and_type_from_bytes(server, connections):
    base, _ = server
    blob = load_media(base + "/img.png", LOCAL)
    assert blob.data == PNG and blob.media == S.PNG and blob.name == "img.png"


def test_connects_to_checked_address_keeping_host(server, connections):
    """The name is resolved once, by us; the connection goes to that address, the Host
    header keeps the name (so no second DNS answer can redirect the connection)."""
    base, port = server
    calls = []

    def resolver(host, p):
        calls.append(host)
        return ["127.0.0.1"]

    Handler.seen_hosts.clear()
    blob = load_media(f"http://media.invalid:{port}/img.png", SourcePolicy(allow_private=True, resolver=resolver))
    assert blob.data == PNG
    assert calls == ["media.invalid"]
    assert Handler.seen_hosts[-1] == f"media.invalid:{port}"
    assert connections == ["127.0.0.1"]


def test_redirect_to_private_refused(server, connections):
    base, _ = server
    for target in ("http://10.0.0.1/x.png", "http://169.254.169.254/latest/meta-data", "http://127.0.0.2:1/"):
        with pytest.raises(MediaError, match="non-public"):
            load_media(f"{base}/redirect?to={target}", ONLY_LOOPBACK_127_0_0_1)
    assert set(connections) == {"127.0.0.1"}


def test_redirect_followed_and_rechecked(server, connections):
    base, _ = server
    blob = load_media(f"{base}/redirect?to=/img.png", ONLY_LOOPBACK_127_0_0_1)
    assert blob.data == PNG
    with pytest.raises(MediaError, match="redirected more than"):
        load_media(base + "/loop", LOCAL)
    with pytest.raises(MediaError, match="scheme"):
        load_media(f"{base}/redirect?to=file:///etc/passwd", LOCAL)


def test_body_over_cap(server, connections):
    base, _ = server
    small = SourcePolicy(allow_private=True, max_bytes=1024 * 1024)
    for path in ("/big", "/big-declared"):
        with pytest.raises(MediaError) as e:
            load_media(base + path, small)
        assert e.value.status == 413 and "limit" in e.value.message


def test_slow_server_times_out(server, connections):
    base, _ = server
    t0 = time.monotonic()
    with pytest.raises(MediaError, match="timed out"):
        load_media(base + "/slow", SourcePolicy(allow_private=True, read_timeout=0.5))
    assert time.monotonic() - t0 < 1.9
    t0 = time.monotonic()
    with pytest.raises(MediaError, match="timed out"):
        load_media(base + "/drip", SourcePolicy(allow_private=True, read_timeout=1.0, total_timeout=0.8))
    assert time.monotonic() - t0 < 2.5


def test_http_errors_and_non_media(server, connections):
    base, _ = server
    with pytest.raises(MediaError, match="HTTP status 404"):
        load_media(base + "/missing", LOCAL)
    with pytest.raises(MediaError) as e:
        load_media(base + "/text", LOCAL)
    assert "unsupported" in e.value.message and "TOPSECRET" not in e.value.message


def test_connection_refused_is_clean(connections):
    with pytest.raises(MediaError, match="could not connect"):
        load_media("http://127.0.0.1:1/x.png", LOCAL)


def test_proxy_variables_ignored(server, connections, monkeypatch):
    base, _ = server
    monkeypatch.setenv("HTTP_PROXY", "http://10.0.0.1:3128")
    monkeypatch.setenv("http_proxy", "http://10.0.0.1:3128")
    assert load_media(base + "/img.png", LOCAL).data == PNG


# ---------------------------------------------------------------------------- data: URIs


def test_data_uri():
    uri = "data:image/png;base64," + base64.b64encode(JPEG).decode()
    blob = load_media(uri, SourcePolicy())
    assert blob.data == JPEG and blob.media == S.JPEG  # the declared type is ignored
    wrapped = "data:image/jpeg;base64," + "\n".join(base64.encodebytes(JPEG).decode().split())
    assert load_media(wrapped, SourcePolicy()).data == JPEG


def test_data_uri_size_checked_before_decoding(monkeypatch):
    import qwen3vl_app.media.sources as src

    def boom(*a, **k):
        raise AssertionError("decoded before the size check")

    monkeypatch.setattr(src.base64, "b64decode", boom)
    uri = "data:image/png;base64," + "A" * (4 * 1024 * 1024)
    with pytest.raises(MediaError) as e:
        load_media(uri, SourcePolicy(max_bytes=1024 * 1024))
    assert e.value.status == 413


@pytest.mark.parametrize(
    "uri",
    [
        "data:image/png;base64,@@@notbase64@@@",
        "data:image/png;base64",
        "data:text/plain;base64," + base64.b64encode(b"hello world").decode(),
        "data:image/png;base64,",
    ],
)
def test_bad_data_uris(uri):
    with pytest.raises(MediaError) as e:
        load_media(uri, SourcePolicy())
    assert e.value.status == 400


# ------------------------------------------------------------------------------ local files


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "allowed"
    (root / "sub").mkdir(parents=True)
    (root / "a.png").write_bytes(PNG)
    (root / "sub" / "b.jpg").write_bytes(JPEG)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(PNG)
    (root / "secret.txt").write_text("TOPSECRET " * 20)
    os.symlink(outside / "secret.png", root / "escape.png")
    os.symlink(outside, root / "escape_dir")
    os.symlink(root / "a.png", root / "inner_link.png")
    os.mkfifo(root / "fifo.png")
    return root, outside


def test_local_disabled_without_roots(tree):
    root, _ = tree
    with pytest.raises(MediaError, match="disabled"):
        load_media(str(root / "a.png"), SourcePolicy())
    with pytest.raises(MediaError):
        load_media("file:///etc/passwd", SourcePolicy())


def test_local_inside_root(tree, monkeypatch):
    root, _ = tree
    pol = SourcePolicy(allowed_local_roots=(str(root),))
    assert load_media(str(root / "a.png"), pol).data == PNG
    assert load_media(f"file://{root}/sub/b.jpg", pol).media == S.JPEG
    assert load_media(f"file://localhost{root}/a.png", pol).data == PNG
    assert load_media(str(root / "inner_link.png"), pol).data == PNG  # symlink staying inside
    monkeypatch.chdir(root)
    assert load_media("./sub/b.jpg", pol).data == JPEG
    assert load_media("sub/../a.png", pol).data == PNG
    monkeypatch.chdir(root / "sub")
    assert load_media("../a.png", pol).data == PNG


@pytest.mark.parametrize(
    "rel",
    [
        "../outside/secret.png",
        "sub/../../outside/secret.png",
        "escape.png",
        "escape_dir/secret.png",
        "/etc/passwd",
        "/proc/self/environ",
    ],
)
def test_local_escapes_refused(tree, rel):
    root, _ = tree
    pol = SourcePolicy(allowed_local_roots=(str(root),))
    path = rel if rel.startswith("/") else f"{root}/{rel}"
    for url in (path, "file://" + path):
        with pytest.raises(MediaError) as e:
            load_media(url, pol)
        assert e.value.code == "media_path_not_allowed"
        assert "outside" in e.value.message and str(tree[1]) not in e.value.message


def test_local_special_files(tree):
    root, _ = tree
    pol = SourcePolicy(allowed_local_roots=(str(root),))
    with pytest.raises(MediaError, match="regular file"):
        load_media(str(root / "fifo.png"), pol)  # must not block
    with pytest.raises(MediaError, match="regular file"):
        load_media(str(root / "sub"), pol)
    with pytest.raises(MediaError, match="not found"):
        load_media(str(root / "nope.png"), pol)
    with pytest.raises(MediaError) as e:
        load_media(str(root / "secret.txt"), pol)
    assert "TOPSECRET" not in e.value.message
    with pytest.raises(MediaError):
        load_media("file://otherhost/etc/passwd", pol)
    with pytest.raises(MediaError) as e:
        load_media(str(root / "a.png"), SourcePolicy(allowed_local_roots=(str(root),), max_bytes=100))
    assert e.value.status == 413


def test_other_schemes_and_uploads():
    for url in ("ftp://example.com/a.png", "gopher://x/", "javascript:alert(1)", "", "   "):
        with pytest.raises(MediaError):
            load_media(url, SourcePolicy())
    assert blob_from_bytes(PNG, "../../x.png", SourcePolicy()).name == "x.png"
    with pytest.raises(MediaError) as e:
        blob_from_bytes(b"", "empty.png", SourcePolicy())
    assert e.value.code == "empty_media"
    with pytest.raises(MediaError):
        blob_from_bytes(b"%PDF-1.4", "a.png", SourcePolicy())


def test_allowed_networks_open_only_those(server, connections):
    base, _ = server
    pol = SourcePolicy(allowed_networks=("127.0.0.1/32",))
    assert load_media(base + "/img.png", pol).data == PNG
    for target in ("http://10.0.0.1/x.png", "http://169.254.169.254/latest", "http://127.0.0.2:1/"):
        with pytest.raises(MediaError, match="non-public"):
            load_media(f"{base}/redirect?to={target}", pol)
    with pytest.raises(MediaError, match="non-public"):
        load_media("http://[::ffff:10.0.0.1]/x", pol)
    assert load_media(f"http://[::ffff:127.0.0.1]:{server[1]}/img.png", pol).data == PNG
    assert set(connections) == {"127.0.0.1"}
    with pytest.raises(ValueError, match="not an IP network"):
        load_media(base + "/img.png", SourcePolicy(allowed_networks=("nonsense",)))
