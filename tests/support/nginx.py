"""A real nginx (Debian's package, installed by .ci/run) in a folder of the test's own,
for the tests where a proxy matters."""

from __future__ import annotations

import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import requests

from .polling import wait_for

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)


def main_conf(prefix: Path, site: Path) -> str:
    user = "user root;\n" if os.geteuid() == 0 else ""  # worker processes reach the temp folders
    return f"""{user}worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 256; }}
http {{
    default_type application/octet-stream;
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    include {site};
}}
"""


@contextmanager
def running_nginx(prefix: Path, site_text: str, probe_url: str, headers: dict | None = None):
    """nginx serving `site_text` (an http-context include) from `prefix`; yields once
    `probe_url` answers 200 through it, and stops it (SIGTERM: fast shutdown) afterwards."""
    assert NGINX is not None
    site = prefix / "site.conf"
    site.write_text(site_text)
    conf = prefix / "nginx.conf"
    conf.write_text(main_conf(prefix, site))
    base = [NGINX, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
    check = subprocess.run(base + ["-t"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen(base + ["-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def answers():
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        try:
            return requests.get(probe_url, headers=headers or {}, timeout=2).status_code == 200
        except requests.RequestException:
            return False

    try:
        wait_for(answers, timeout=20, every=0.1, what="nginx answering")
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
