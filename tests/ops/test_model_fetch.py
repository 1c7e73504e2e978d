"""`make model`: the whole command against a LOCAL STAND-IN for the vendor's download share.

The real bmodels (GBs, behind the vendor's SFTP share) cannot be fetched here.  A loopback
HTTP server plays the share: it serves a small fake bmodel (the real header magic, then
random bytes) and, as the config/ files, the tiny demo model's real tokenizer/processor
files; QWEN3VL_MODEL_MANIFEST points the command at a manifest naming those URLs, sizes and
checksums.  Everything else -- Range resume, size/sha256/git-blob checks, the layout the
server loads, the record that makes a re-run a no-op -- is the real code path.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from qwen3vl_app.devtools.model_fetch import BMODEL_MAGIC
from qwen3vl_app.engine import detect_engine
from qwen3vl_app.tokenizer import ChatTokenizer
from tests.conftest import REPO

CONFIG_FILES = [
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.json",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    "generation_config.json",
    "config.json",
]
BMODEL = "qwen3-vl-fake_w4bf16_seq2048_bm1684x_1dev.bmodel"


class StandIn:
    """Loopback file server with Range support, a request log, and a switch that cuts the
    next transfer of a file after N bytes (a dropped connection)."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.requests, self.cut_after = files, [], {}
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                stand_in.requests.append((name, self.headers.get("Range")))
                body = stand_in.files.get(name)
                if body is None:
                    self.send_error(404)
                    return
                start, status = 0, 200
                rng = self.headers.get("Range")
                if rng:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.end_headers()
                        return
                    status = 206
                self.send_response(status)
                self.send_header("Content-Length", str(len(body) - start))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.end_headers()
                cut = stand_in.cut_after.pop(name, None)
                self.wfile.write(body[start:cut] if cut is not None else body[start:])
                if cut is not None:
                    self.wfile.flush()
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@pytest.fixture
def stand_in(tiny_model_dir):
    files = {f"config/{n}": (tiny_model_dir / n).read_bytes() for n in CONFIG_FILES}
    files[BMODEL] = BMODEL_MAGIC + os.urandom(3 * 1024 * 1024 + 17)
    server = StandIn(files)
    yield server
    server.close()


def write_manifest(path: Path, stand_in: StandIn, bmodel_sha256: str | None) -> Path:
    body = stand_in.files[BMODEL]
    manifest = {
        "config_sets": {
            "stand-in": {
                "base_url": stand_in.url + "config/",
                "files": [
                    # tokenizer.json as the real manifest has it: no size, only git's blob id
                    {
                        "name": n,
                        "size": None if n == "tokenizer.json" else len(stand_in.files[f"config/{n}"]),
                        "git_blob_sha1": git_blob_sha1(stand_in.files[f"config/{n}"]),
                    }
                    for n in CONFIG_FILES
                ],
            }
        },
        "models": {
            "qwen3vl_2b": {
                "description": "stand-in",
                "config": "stand-in",
                "bmodel": {
                    "url": stand_in.url + BMODEL,
                    "size": len(body) if bmodel_sha256 else None,
                    "sha256": bmodel_sha256,
                },
            }
        },
    }
    path.write_text(json.dumps(manifest))
    return path


def run_fetch(manifest: Path, models_dir: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m qwen3vl_app.devtools.model_fetch` with `manifest`, no mirror unless `env` names one."""
    full_env = {**os.environ, "QWEN3VL_MODEL_MANIFEST": str(manifest)}
    full_env.pop("QWEN3VL_MODEL_MIRROR", None)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "qwen3vl_app.devtools.model_fetch", *args, "--models-dir", str(models_dir)],
        env=full_env,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )


def test_make_model_lays_out_a_folder_the_server_loads_and_rerun_does_nothing(stand_in, tmp_path):
    body = stand_in.files[BMODEL]
    manifest = write_manifest(tmp_path / "manifest.json", stand_in, hashlib.sha256(body).hexdigest())
    env = {**os.environ, "QWEN3VL_MODEL_MANIFEST": str(manifest)}
    make = subprocess.run(
        ["make", "-s", "model", "MODEL=2b", f"MODELS_DIR={tmp_path / 'models'}"],
        env=env,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
        check=False,
    )
    assert make.returncode == 0, make.stdout + make.stderr
    folder = tmp_path / "models" / "qwen3vl_2b"
    assert make.stdout.strip().splitlines()[-1] == str(folder)
    assert (folder / BMODEL).read_bytes() == body
    assert sorted(p.name for p in (folder / "config").iterdir()) == sorted(CONFIG_FILES)
    assert not list(folder.rglob("*.part"))
    assert detect_engine(folder) == "bm1684x"
    assert ChatTokenizer(folder).encode("hello")  # the config/ folder is what the tokenizer reads

    stand_in.requests.clear()
    again = run_fetch(manifest, tmp_path / "models", "qwen3vl_2b")
    assert again.returncode == 0, again.stderr
    assert stand_in.requests == []  # nothing fetched
    assert "fetching" not in again.stdout


def test_interrupted_download_resumes_with_range(stand_in, tmp_path):
    body = stand_in.files[BMODEL]
    manifest = write_manifest(tmp_path / "m.json", stand_in, hashlib.sha256(body).hexdigest())
    stand_in.cut_after[BMODEL] = 1_000_000  # the connection drops after 1 MB
    first = run_fetch(manifest, tmp_path, "qwen3vl_2b")
    assert first.returncode == 1 and "run the command again" in first.stderr
    part = tmp_path / "qwen3vl_2b" / (BMODEL + ".part")
    kept = part.stat().st_size
    assert 900_000 < kept <= 1_000_000  # what arrived before the drop (less the last unfinished read)
    assert not (tmp_path / "qwen3vl_2b" / BMODEL).exists()

    stand_in.requests.clear()
    second = run_fetch(manifest, tmp_path, "qwen3vl_2b")
    assert second.returncode == 0, second.stderr
    assert (BMODEL, f"bytes={kept}-") in stand_in.requests
    assert "resuming" in second.stdout
    assert (tmp_path / "qwen3vl_2b" / BMODEL).read_bytes() == body


def test_wrong_checksum_is_refused_and_not_kept(stand_in, tmp_path):
    manifest = write_manifest(tmp_path / "m.json", stand_in, "0" * 64)
    out = run_fetch(manifest, tmp_path, "qwen3vl_2b")
    assert out.returncode == 1
    assert "sha256" in out.stderr and "expected 0000" in out.stderr
    folder = tmp_path / "qwen3vl_2b"
    assert not (folder / BMODEL).exists() and not list(folder.glob("*.part"))


def test_unpublished_checksum_is_pinned_at_first_download(stand_in, tmp_path):
    """The vendor publishes no bmodel checksum: the first download's sha256 is recorded and a
    later change of the file on disk is caught and fetched again."""
    manifest = write_manifest(tmp_path / "m.json", stand_in, None)
    out = run_fetch(manifest, tmp_path, "qwen3vl_2b")
    assert out.returncode == 0, out.stderr
    assert "no checksum is published" in out.stdout
    folder = tmp_path / "qwen3vl_2b"
    record = json.loads((folder / ".fetched.json").read_text())
    assert record[BMODEL]["sha256"] == hashlib.sha256(stand_in.files[BMODEL]).hexdigest()
    assert record[BMODEL]["checksum_published"] is False

    with open(folder / BMODEL, "r+b") as f:  # same size, one byte flipped
        f.seek(100)
        f.write(b"\x00" if f.read(1) != b"\x00" else b"\x01")
    stand_in.requests.clear()
    out = run_fetch(manifest, tmp_path, "qwen3vl_2b")
    assert out.returncode == 0, out.stderr
    assert "differs from" in out.stdout and [r[0] for r in stand_in.requests] == [BMODEL]
    assert (folder / BMODEL).read_bytes() == stand_in.files[BMODEL]


def test_a_file_that_is_not_a_bmodel_is_refused(stand_in, tmp_path):
    stand_in.files[BMODEL] = b"<html>not found</html>"
    manifest = write_manifest(tmp_path / "m.json", stand_in, None)
    out = run_fetch(manifest, tmp_path, "qwen3vl_2b")
    assert out.returncode == 1 and "not a bmodel" in out.stderr


def test_published_manifest_names_2b_and_4b():
    from qwen3vl_app.devtools.model_fetch import canonical_name, files_for, load_manifest

    manifest = load_manifest(REPO / "qwen3vl_app" / "devtools" / "published_models.json")
    for name in ("2b", "4b"):
        specs = files_for(manifest, canonical_name(manifest, name))
        assert specs[0].dest.endswith("_bm1684x_1dev.bmodel") or "_bm1684x_1dev_" in specs[0].dest
        assert specs[0].url.startswith("dfss://open@sophgo.com:/ext_model_information/LLM/LLM-TPU/")
        assert {s.dest for s in specs[1:]} == {f"config/{n}" for n in CONFIG_FILES}
        assert all(s.git_blob_sha1 for s in specs[1:])


DFSS_STAND_IN = '''
"""STAND-IN for the vendor's `dfss` client (SFTP): copies the named file from
$FAKE_DFSS_SOURCE into the current folder, as `python -m dfss --url=user@host:/path` does."""
import os, shutil, sys
url = next(a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--url="))
with open(os.environ["FAKE_DFSS_LOG"], "a") as log:
    log.write(f"{url} {os.getcwd()}\\n")
shutil.copy(os.path.join(os.environ["FAKE_DFSS_SOURCE"], url.rsplit("/", 1)[1]), ".")
'''


def dfss_manifest(path: Path, stand_in: StandIn) -> Path:
    write_manifest(path, stand_in, hashlib.sha256(stand_in.files[BMODEL]).hexdigest())
    manifest = json.loads(path.read_text())
    manifest["models"]["qwen3vl_2b"]["bmodel"]["url"] = f"dfss://open@sophgo.com:/ext_model_information/LLM/{BMODEL}"
    path.write_text(json.dumps(manifest))
    return path


def test_dfss_urls_run_the_vendor_client(stand_in, tmp_path):
    """The published manifest's bmodels are dfss:// URLs: the fetcher runs `python -m dfss` in a
    scratch folder and checks what it left.  The client here is a stand-in (no SFTP share)."""
    fake = tmp_path / "fake-dfss" / "dfss"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "__main__.py").write_text(DFSS_STAND_IN)
    source = tmp_path / "share"
    source.mkdir()
    (source / BMODEL).write_bytes(stand_in.files[BMODEL])
    manifest = dfss_manifest(tmp_path / "m.json", stand_in)
    fake_env = {
        "PYTHONPATH": str(fake.parent),
        "FAKE_DFSS_SOURCE": str(source),
        "FAKE_DFSS_LOG": str(tmp_path / "dfss.log"),
    }
    out = run_fetch(manifest, tmp_path, "2b", env=fake_env)
    assert out.returncode == 0, out.stderr
    url, cwd = (tmp_path / "dfss.log").read_text().split()
    folder = tmp_path / "qwen3vl_2b"
    assert url == f"open@sophgo.com:/ext_model_information/LLM/{BMODEL}" and Path(cwd) == folder / ".dfss"
    assert (folder / BMODEL).read_bytes() == stand_in.files[BMODEL]
    assert not (folder / ".dfss").exists()


def test_without_dfss_a_mirror_serves_the_bmodel(stand_in, tmp_path):
    manifest = dfss_manifest(tmp_path / "m.json", stand_in)
    out = run_fetch(manifest, tmp_path, "2b")
    assert out.returncode == 1 and "pip install dfss" in out.stderr and "QWEN3VL_MODEL_MIRROR" in out.stderr

    stand_in.requests.clear()
    out = run_fetch(manifest, tmp_path, "2b", env={"QWEN3VL_MODEL_MIRROR": stand_in.url})
    assert out.returncode == 0, out.stderr
    assert (BMODEL, None) in stand_in.requests
    assert (tmp_path / "qwen3vl_2b" / BMODEL).read_bytes() == stand_in.files[BMODEL]


def _edit_manifest(path: Path, edit) -> Path:
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    return path


def _rename_model(manifest: dict, name: str) -> None:
    manifest["models"][name] = manifest["models"].pop("qwen3vl_2b")


def _set_bmodel_url(manifest: dict, url: str) -> None:
    manifest["models"]["qwen3vl_2b"]["bmodel"]["url"] = url


def _set_config_name(manifest: dict, name: str) -> None:
    manifest["config_sets"]["stand-in"]["files"][0]["name"] = name


@pytest.mark.parametrize(
    "edit, asked, message",
    [
        (lambda m, root: _rename_model(m, "../outside"), "../outside", "model name '../outside'"),
        (lambda m, root: _rename_model(m, f"{root}/abs"), "{root}/abs", "model name '{root}/abs'"),
        (lambda m, root: _set_bmodel_url(m, m["models"]["qwen3vl_2b"]["bmodel"]["url"] + "/.."), "2b", "name '..'"),
        (lambda m, root: _set_bmodel_url(m, "http://127.0.0.1:9/."), "2b", "name '.'"),
        (lambda m, root: _set_bmodel_url(m, "http://127.0.0.1:9/model.bin"), "2b", "not a .bmodel"),
        (lambda m, root: _set_config_name(m, "../../../escaped.json"), "2b", "name '../../../escaped.json'"),
        (lambda m, root: _set_config_name(m, "sub/dir.json"), "2b", "name 'sub/dir.json'"),
        (lambda m, root: m.pop("config_sets"), "2b", "manifest"),
        (lambda m, root: m["models"]["qwen3vl_2b"].update(config="nowhere"), "2b", "manifest"),
        (lambda m, root: m["models"]["qwen3vl_2b"]["bmodel"].update(sha256=5), "2b", "manifest"),
    ],
    ids=[
        "model-dotdot",
        "model-absolute",
        "url-dotdot",
        "url-dot",
        "url-not-bmodel",
        "config-dotdot",
        "config-subdir",
        "no-config-sets",
        "unknown-config-set",
        "checksum-not-a-string",
    ],
)
def test_unsafe_or_malformed_manifest_is_a_clean_error(stand_in, tmp_path, edit, asked, message):
    """Names from the manifest become paths: each must be one plain path component (no
    `..`, no `/`), and a malformed manifest is a message, never a traceback or a file
    written outside models/<name>/."""
    body = stand_in.files[BMODEL]
    manifest = write_manifest(tmp_path / "m.json", stand_in, hashlib.sha256(body).hexdigest())
    _edit_manifest(manifest, lambda m: edit(m, tmp_path))
    out = run_fetch(manifest, tmp_path / "deep" / "models", asked.format(root=tmp_path))
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stderr and out.stderr.startswith("model fetch: error: "), out.stderr
    assert message.format(root=tmp_path) in out.stderr
    written = {p for p in tmp_path.rglob("*") if p.is_file()} - {manifest}
    assert not written, written  # nothing fetched, nothing written anywhere


def test_an_unwritable_models_dir_is_a_clean_error(stand_in, tmp_path):
    manifest = write_manifest(tmp_path / "m.json", stand_in, hashlib.sha256(stand_in.files[BMODEL]).hexdigest())
    (tmp_path / "models").write_text("a file, not a folder")
    out = run_fetch(manifest, tmp_path / "models", "2b")
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.startswith("model fetch: error: ") and "models" in out.stderr
