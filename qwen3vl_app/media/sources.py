"""Turn the URL string of an image/video part (or an upload) into checked bytes.

Accepted sources, each with its own safety rule:

* local paths (``/abs``, ``./rel``, ``../rel``, ``rel/name``) and ``file://`` URLs -- only
  when the path, with every symlink followed, lies inside one of the allowlisted roots
  (``--allowed-local-media-path``); with no roots configured, local files are refused;
* ``data:<mime>;base64,...`` URIs -- size checked on the encoded text before decoding;
* ``http(s)://`` URLs -- fetched with ``requests``: connect/read timeouts and an overall
  deadline, a byte cap enforced while the body streams, redirects followed by hand with
  every hop checked again, and the host resolved here, refused when any of its addresses
  is loopback/private/link-local/multicast/reserved/unspecified (unless private
  addresses are allowed), then connected to *that* address (Host header, TLS SNI and
  certificate check keep the name), so a second DNS answer cannot change the target.

Whatever the source, the media type comes from the bytes (`sniff`), and everything is
kept in memory: nothing is written to disk here.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import socket
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import unquote, unquote_to_bytes, urljoin, urlsplit

from ..errors import MediaError
from .sniff import MediaType, sniff, supported_list

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_MAX_BYTES = 128 * 1024 * 1024
_REDIRECT_CODES = (301, 302, 303, 307, 308)
_USER_AGENT = "qwen3vl-server-media-fetch/1"


@dataclass(frozen=True)
class SourcePolicy:
    """Server-side rules for reaching media.  Built once from the command-line flags."""

    allowed_local_roots: tuple[str, ...] = ()
    allow_private: bool = False
    # Non-public networks media URLs may still reach (CIDR strings), e.g. a camera subnet,
    # without opening every private address as `allow_private` does.
    allowed_networks: tuple[str, ...] = ()
    max_bytes: int = DEFAULT_MAX_BYTES
    connect_timeout: float = 5.0
    read_timeout: float = 15.0
    total_timeout: float = 60.0  # whole download, so a slow drip cannot hold a worker forever
    max_redirects: int = 5
    # Hooks (tests, or a deployment with its own rules).  `is_allowed_ip` replaces the
    # built-in public-address check; `resolver(host, port)` replaces DNS.
    is_allowed_ip: Callable[[IPAddress], bool] | None = field(default=None, compare=False)
    resolver: Callable[[str, int], list[str]] | None = field(default=None, compare=False)

    def with_roots(self, *roots: str) -> SourcePolicy:
        from dataclasses import replace

        return replace(self, allowed_local_roots=tuple(self.allowed_local_roots) + roots)


@dataclass
class MediaBlob:
    data: bytes
    media: MediaType
    name: str  # a display name: upload filename, URL basename, or "data-uri"


# --------------------------------------------------------------------------- entry points


def load_media(url: str, policy: SourcePolicy, param: str | None = None) -> MediaBlob:
    """Resolve one URL string to checked bytes.  Raises `MediaError` on any refusal."""
    try:
        if not isinstance(url, str) or not url.strip():
            raise MediaError("media URL is empty", param)
        url = url.strip()
        scheme = _scheme(url)
        if scheme == "data":
            return _from_data_uri(url, policy)
        if scheme in ("http", "https"):
            return _from_http(url, policy)
        if scheme == "file":
            return _from_local(_file_url_path(url), policy)
        if scheme is None:
            return _from_local(url, policy)
        raise MediaError(
            f"unsupported media URL scheme {scheme!r}; use http(s)://, data:, file:// or a local path",
            code="unsupported_media_source",
        )
    except MediaError as e:
        e.with_param(param)
        raise


def blob_from_bytes(data: bytes, name: str, policy: SourcePolicy, param: str | None = None) -> MediaBlob:
    """An upload (multipart) already in memory: size and type checks only."""
    if len(data) > policy.max_bytes:
        raise MediaError(
            f"media is larger than the {_mib(policy.max_bytes)} limit", param, status=413, code="media_too_large"
        )
    return MediaBlob(data, _require_type(data, param), _safe_name(name))


# --------------------------------------------------------------------------- helpers


def _scheme(url: str) -> str | None:
    head, sep, _ = url.partition(":")
    if not sep or len(head) < 2:  # no scheme, or a Windows drive letter
        return None
    if head.replace("+", "").replace("-", "").replace(".", "").isalnum() and head[0].isalpha():
        return head.lower()
    return None


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):g} MiB"


def _safe_name(name: str | None) -> str:
    base = os.path.basename(name or "") or "upload"
    return "".join(c for c in base if c.isprintable())[:200] or "upload"


def _require_type(data: bytes, param: str | None = None) -> MediaType:
    if not data:
        raise MediaError("media is empty (0 bytes)", param, code="empty_media")
    media = sniff(data[:64])
    if media is None:
        raise MediaError(
            f"unsupported or unrecognised media type; supported: {supported_list()}",
            param,
            code="unsupported_media_type",
        )
    return media


# ----------------------------------------------------------------------------- data: URIs


def _from_data_uri(url: str, policy: SourcePolicy) -> MediaBlob:
    header, sep, payload = url[5:].partition(",")
    if not sep:
        raise MediaError("malformed data: URI (no comma)", code="invalid_data_uri")
    is_b64 = header.lower().endswith(";base64")
    if is_b64:
        # Size check on the encoded text first: 4 characters carry 3 bytes.
        if (len(payload) // 4) * 3 > policy.max_bytes + 3:
            raise MediaError(
                f"data: URI is larger than the {_mib(policy.max_bytes)} limit", status=413, code="media_too_large"
            )
        compact = "".join(payload.split())
        if "%" in compact:
            compact = unquote(compact)
        compact += "=" * (-len(compact) % 4)
        try:
            data = base64.b64decode(compact, validate=True)
        except (binascii.Error, ValueError):
            raise MediaError("data: URI is not valid base64", code="invalid_data_uri") from None
    else:
        if len(payload) > 3 * policy.max_bytes:
            raise MediaError(
                f"data: URI is larger than the {_mib(policy.max_bytes)} limit", status=413, code="media_too_large"
            )
        data = unquote_to_bytes(payload)
    if len(data) > policy.max_bytes:
        raise MediaError(
            f"data: URI is larger than the {_mib(policy.max_bytes)} limit", status=413, code="media_too_large"
        )
    return MediaBlob(data, _require_type(data), "data-uri")


# ----------------------------------------------------------------------------- local files


def _file_url_path(url: str) -> str:
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise MediaError("file:// URLs must name a file on this machine (file:///path)", code="media_path_not_allowed")
    path = unquote(parts.path)
    if not path.startswith("/"):
        raise MediaError("file:// URL must carry an absolute path", code="media_path_not_allowed")
    return path


def _inside(path: str, root: str) -> bool:
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:
        return False


_OUTSIDE = "local media path is outside the directories this server allows (--allowed-local-media-path)"


def resolve_local_path(path: str, roots: tuple[str, ...]) -> str:
    """The real path of `path` if it lies inside an allowed root, else MediaError.

    Two checks, and what is outside the roots is never looked at: first the path is
    normalised as text (made absolute, `..` collapsed -- so `link/../x` means `x`, whether
    `link` exists or not) and must lie inside a root; only then is it resolved on disk
    (symlinks followed) and must still lie inside one.  Every refusal of a path outside
    the roots, and every error the file system raises on the way (a /proc entry that
    cannot be resolved, a race), is the same answer, so nothing about the rest of the
    machine can be learnt from it."""
    if "\x00" in path:
        raise MediaError("local media path is invalid", code="media_path_not_allowed")
    if not roots:
        raise MediaError(
            "local media paths are disabled on this server; start it with --allowed-local-media-path DIR "
            "to allow files under DIR, or send the media as a data: URI, http(s) URL or upload",
            code="media_path_not_allowed",
        )
    try:
        lexical = os.path.normpath(os.path.abspath(os.path.expanduser(path)))
        real_roots = [os.path.realpath(r) for r in roots]
        if not any(
            _inside(lexical, r) or _inside(lexical, os.path.normpath(os.path.abspath(r)))
            for r in set(real_roots) | set(roots)
        ):
            raise MediaError(_OUTSIDE, code="media_path_not_allowed")
        real = os.path.realpath(lexical)
    except (OSError, ValueError):
        raise MediaError(_OUTSIDE, code="media_path_not_allowed") from None
    if any(_inside(real, r) for r in real_roots):
        return real
    raise MediaError(_OUTSIDE, code="media_path_not_allowed")


def _from_local(path: str, policy: SourcePolicy) -> MediaBlob:
    real = resolve_local_path(path, policy.allowed_local_roots)
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(real, flags)
    except FileNotFoundError:
        raise MediaError("local media file not found", code="media_not_found") from None
    except OSError:  # swapped for a symlink since the check (ELOOP), unreadable, ...
        raise MediaError("local media file cannot be read", code="media_not_found") from None
    try:
        try:
            st = os.fstat(fd)
            opened = os.path.realpath(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else real
        except OSError:
            raise MediaError("local media file cannot be read", code="media_not_found") from None
        # The opened file must still be the checked one: a directory above it swapped for a
        # symlink after the check is caught here (the last component by O_NOFOLLOW).
        if not any(_inside(opened, os.path.realpath(r)) for r in policy.allowed_local_roots):
            raise MediaError(_OUTSIDE, code="media_path_not_allowed")
        if not stat.S_ISREG(st.st_mode):
            raise MediaError("local media path is not a regular file", code="media_path_not_allowed")
        if st.st_size > policy.max_bytes:
            raise MediaError(
                f"local media file is larger than the {_mib(policy.max_bytes)} limit",
                status=413,
                code="media_too_large",
            )
        chunks, total = [], 0
        while True:
            try:
                chunk = os.read(fd, 1 << 20)
            except OSError:
                raise MediaError("local media file cannot be read", code="media_not_found") from None
            if not chunk:
                break
            total += len(chunk)
            if total > policy.max_bytes:
                raise MediaError(
                    f"local media file is larger than the {_mib(policy.max_bytes)} limit",
                    status=413,
                    code="media_too_large",
                )
            chunks.append(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    return MediaBlob(data, _require_type(data), _safe_name(real))


# ------------------------------------------------------------------------------- http(s)


# Address blocks that are not ordinary public unicast, from the IANA IPv4/IPv6
# Special-Purpose Address Registries (checked 2024: including 100:0:0:1::/64, 3fff::/20 and
# 5f00::/16, newer than some Python versions' tables), plus multicast and the deprecated
# IPv6 site-local block fec0::/10 (RFC 3879), which still routes inside some sites.  The
# registry marks a few blocks in here "globally reachable" (anycast services such as
# 192.0.0.9/32); no media lives there, so refusing them costs nothing.  NAT64 prefixes
# carry an IPv4 address, which is checked instead (64:ff9b::/96) or refused (64:ff9b:1::/48).
_NON_PUBLIC_V4 = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.31.196.0/24",
        "192.52.193.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "192.175.48.0/24",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "255.255.255.255/32",
    )
)
_NON_PUBLIC_V6 = tuple(
    ipaddress.ip_network(n)
    for n in (
        "::/128",
        "::1/128",
        "::ffff:0:0/96",
        "64:ff9b:1::/48",
        "100::/64",
        "100:0:0:1::/64",
        "2001::/23",
        "2001:db8::/32",
        "2002::/16",
        "2620:4f:8000::/48",
        "3fff::/20",
        "5f00::/16",
        "fc00::/7",
        "fe80::/10",
        "fec0::/10",
        "ff00::/8",
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def is_public_ip(ip: IPAddress) -> bool:
    """True for addresses on the public internet: not loopback, private, link-local,
    site-local, multicast, reserved, unspecified, CGNAT, benchmarking or documentation
    (the table above), with IPv4 addresses embedded in IPv6 checked as IPv4."""
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or ip.sixtofour
        if mapped is not None:
            return is_public_ip(mapped)
        if ip.teredo is not None:
            return False
        if ip in _NAT64:
            return is_public_ip(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if any(ip in n for n in _NON_PUBLIC_V6):
            return False
    elif any(ip in n for n in _NON_PUBLIC_V4):
        return False
    if ip.is_multicast or ip.is_unspecified or ip.is_loopback or ip.is_link_local or ip.is_reserved:
        return False
    if ip.is_private:
        return False
    return ip.is_global


def _resolve(host: str, port: int, policy: SourcePolicy) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    try:
        if policy.resolver is not None:
            addrs = policy.resolver(host, port)
        else:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            addrs = [str(info[4][0]) for info in infos]
        out = []
        for a in addrs:
            ip = ipaddress.ip_address(a.split("%", 1)[0])
            if ip not in out:
                out.append(ip)
    except (OSError, UnicodeError, ValueError):
        raise MediaError("media URL host name could not be resolved", code="media_fetch_failed") from None
    if not out:
        raise MediaError("media URL host name could not be resolved", code="media_fetch_failed")
    return out


def parse_networks(cidrs) -> list:
    """CIDR strings -> networks; a bad entry is a ValueError naming it (checked at start-up)."""
    out = []
    for c in cidrs or ():
        try:
            out.append(ipaddress.ip_network(str(c).strip(), strict=False))
        except ValueError:
            raise ValueError(f"--allowed-media-network: {c!r} is not an IP network (e.g. 192.168.7.0/24)") from None
    return out


def check_destination(host: str, port: int, policy: SourcePolicy) -> IPAddress:
    """Resolve `host` and return the address to connect to, or refuse (no traffic sent)."""
    addrs = _resolve(host, port, policy)
    if not policy.allow_private:
        if policy.is_allowed_ip is not None:
            allowed = policy.is_allowed_ip
        else:
            nets = parse_networks(policy.allowed_networks)

            def allowed(ip):
                if is_public_ip(ip):
                    return True
                if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                    ip = ip.ipv4_mapped
                return any(ip.version == n.version and ip in n for n in nets)

        # Every address must pass: a name that also resolves to an internal address is refused.
        if not all(allowed(ip) for ip in addrs):
            raise MediaError(
                "media URL points to a loopback, private, link-local or otherwise non-public address, "
                "which this server does not fetch (see --allow-private-media-urls, --allowed-media-network)",
                code="media_url_not_allowed",
            )
    first = addrs[0]
    if isinstance(first, ipaddress.IPv6Address) and first.ipv4_mapped is not None:
        first = first.ipv4_mapped  # connect over IPv4 to the address that was checked
    return first


def _split_url(url: str) -> tuple[str, str, int, str]:
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        host = parts.hostname
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise MediaError("media URL is malformed", code="invalid_media_url") from None
    if scheme not in ("http", "https"):
        raise MediaError("media URL redirected to a scheme other than http(s)", code="media_url_not_allowed")
    if not host:
        raise MediaError("media URL has no host", code="invalid_media_url")
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise MediaError("media URL host name is not valid", code="invalid_media_url") from None
    return scheme, host, port, parts.path


def _pinned_session(server_hostname: str | None):
    """A requests Session that never consults proxy variables and, for https, verifies
    the certificate and sends SNI for `server_hostname` while connecting to an IP."""
    import requests
    from requests.adapters import HTTPAdapter

    class PinnedAdapter(HTTPAdapter):
        def build_connection_pool_key_attributes(self, request, verify, cert=None):
            host_params, pool_kwargs = super().build_connection_pool_key_attributes(request, verify, cert)
            if host_params.get("scheme") == "https" and server_hostname:
                pool_kwargs["server_hostname"] = server_hostname
                pool_kwargs["assert_hostname"] = server_hostname
            return host_params, pool_kwargs

    s = requests.Session()
    s.trust_env = False  # no HTTP(S)_PROXY: the connection must go to the checked address
    adapter = PinnedAdapter(max_retries=0, pool_connections=1, pool_maxsize=1)
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    return s


class _FetchDeadline(Exception):
    pass


def _from_http(url: str, policy: SourcePolicy) -> MediaBlob:
    """The whole fetch -- connect, response headers, body, every redirect hop -- within
    `policy.total_timeout`.  requests' own timeouts are per socket operation, so a server
    dripping its header lines never trips them; in a gevent worker (where the server runs)
    a timer interrupts the fetch wherever it waits."""
    timer = None
    try:
        from gevent import Timeout, monkey

        if monkey.is_module_patched("socket"):
            timer = Timeout(policy.total_timeout, _FetchDeadline)
    except ImportError:
        pass
    if timer is None:
        return _fetch(url, policy)
    try:
        with timer:
            return _fetch(url, policy)
    except _FetchDeadline:
        raise MediaError("timed out fetching the media URL", code="media_fetch_timeout") from None


def _fetch(url: str, policy: SourcePolicy) -> MediaBlob:
    import requests

    deadline = time.monotonic() + policy.total_timeout
    first_url = url
    for _hop in range(policy.max_redirects + 1):
        scheme, host, port, path = _split_url(url)
        ip = check_destination(host, port, policy)
        parts = urlsplit(url)
        ip_text = f"[{ip}]" if ip.version == 6 else str(ip)
        target = parts._replace(netloc=f"{ip_text}:{port}", fragment="").geturl()
        default_port = 443 if scheme == "https" else 80
        host_header = host if port == default_port else f"{host}:{port}"
        if ":" in host and not host.startswith("["):
            host_header = f"[{host}]" if port == default_port else f"[{host}]:{port}"
        headers = {
            "Host": host_header,
            "User-Agent": _USER_AGENT,
            "Accept": "image/*, video/*, */*;q=0.5",
            "Accept-Encoding": "identity",
        }
        session = _pinned_session(host)
        try:
            remaining = max(0.1, deadline - time.monotonic())
            try:
                resp = session.get(
                    target,
                    headers=headers,
                    stream=True,
                    allow_redirects=False,
                    timeout=(min(policy.connect_timeout, remaining), min(policy.read_timeout, remaining)),
                )
            except requests.exceptions.Timeout:
                raise MediaError("timed out fetching the media URL", code="media_fetch_timeout") from None
            except requests.exceptions.SSLError:
                raise MediaError(
                    "TLS error fetching the media URL (certificate not valid for the host?)", code="media_fetch_failed"
                ) from None
            except requests.exceptions.RequestException:
                raise MediaError("could not connect to the media URL", code="media_fetch_failed") from None
            try:
                if resp.status_code in _REDIRECT_CODES:
                    location = resp.headers.get("Location")
                    if not location:
                        raise MediaError("media URL redirected without a Location", code="media_fetch_failed")
                    url = urljoin(url, location)
                    continue
                if resp.status_code != 200:
                    raise MediaError(
                        f"fetching the media URL failed with HTTP status {resp.status_code}", code="media_fetch_failed"
                    )
                data = _read_capped(resp, policy, deadline)
            finally:
                resp.close()
        finally:
            session.close()
        name = os.path.basename(urlsplit(first_url).path) or host
        return MediaBlob(data, _require_type(data), _safe_name(unquote(name)))
    raise MediaError(f"media URL redirected more than {policy.max_redirects} times", code="media_fetch_failed")


def _read_capped(resp, policy: SourcePolicy, deadline: float) -> bytes:
    import requests
    import urllib3

    too_big = MediaError(
        f"media at the URL is larger than the {_mib(policy.max_bytes)} limit", status=413, code="media_too_large"
    )
    length = resp.headers.get("Content-Length")
    if length is not None and length.strip().isdigit() and int(length) > policy.max_bytes:
        raise too_big
    chunks, total = [], 0
    raw = resp.raw
    try:
        while True:
            if time.monotonic() > deadline:
                raise MediaError("timed out fetching the media URL", code="media_fetch_timeout")
            chunk = raw.read1(256 * 1024, decode_content=False)
            if not chunk:
                break
            total += len(chunk)
            if total > policy.max_bytes:
                raise too_big
            chunks.append(chunk)
    except MediaError:
        raise
    except (urllib3.exceptions.ReadTimeoutError, TimeoutError, requests.exceptions.Timeout):
        raise MediaError("timed out fetching the media URL", code="media_fetch_timeout") from None
    except (urllib3.exceptions.HTTPError, OSError, requests.exceptions.RequestException):
        raise MediaError("connection failed while fetching the media URL", code="media_fetch_failed") from None
    return b"".join(chunks)
