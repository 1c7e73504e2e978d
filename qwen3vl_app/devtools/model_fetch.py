"""`make model MODEL=<name>`: fetch a published BM1684X build and lay out models/<name>/.

The folder it makes is what the server loads with `--engine auto`: one `*.bmodel` beside a
`config/` folder of tokenizer and processor files.  What to fetch comes from
`published_models.json` (or the file named by QWEN3VL_MODEL_MANIFEST).

- http(s) URLs are fetched with requests into `<file>.part`, resuming with a Range request
  after an interruption.
- dfss:// URLs (the vendor's SFTP share) run the vendor's own client, `python -m dfss`, in a
  scratch folder; set QWEN3VL_MODEL_MIRROR to an http(s) folder holding the same file names to
  fetch bmodels from your own mirror instead (resumable).
- Every file is checked before it is moved into place: size and sha256 where known, git's
  blob id for files taken from a git tree, the header magic for a bmodel.  What the vendor
  does not publish (a bmodel's size and checksum) is recorded on first download in
  `.fetched.json` and checked on every later run, so a re-run of a complete folder reads no
  network and, when size and mtime are unchanged, hashes nothing.
- Names from the manifest become paths, so each is checked first: a model name, a bmodel's
  file name (the last component of its URL's path) and a config file name must each be
  one plain file name (`safe_name`: no `/`, no `..`, not hidden), and a bmodel's must end
  in `.bmodel`.  A malformed manifest, an unsafe name or a failing disk is a one-line
  `model fetch: error: ...` and exit status 1, with nothing written.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import requests

MANIFEST_ENV = "QWEN3VL_MODEL_MANIFEST"
MIRROR_ENV = "QWEN3VL_MODEL_MIRROR"
DEFAULT_MANIFEST = Path(__file__).with_name("published_models.json")
RECORD = ".fetched.json"
BMODEL_MAGIC = bytes.fromhex("eeaa55ff")  # uint32 0xFF55AAEE, little-endian, first in every bmodel
CHUNK = 1 << 20


class FetchError(Exception):
    pass


@dataclass(frozen=True)
class FileSpec:
    dest: str  # path inside the model folder
    url: str
    size: int | None = None
    sha256: str | None = None
    git_blob_sha1: str | None = None

    @property
    def checksum_known(self) -> bool:
        return bool(self.sha256 or self.git_blob_sha1)


def load_manifest(path: str | Path | None = None) -> dict:
    path = Path(path or os.environ.get(MANIFEST_ENV) or DEFAULT_MANIFEST)
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise FetchError(f"cannot read the model manifest {path}: {e}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("models"), dict):
        raise FetchError(f"the model manifest {path} has no 'models' object")
    return manifest


def canonical_name(manifest: dict, name: str) -> str:
    """`2b`, `2B`, `qwen3vl_2b` all name qwen3vl_2b."""
    models = manifest.get("models", {})
    for candidate in (name, name.lower(), f"qwen3vl_{name.lower()}"):
        if candidate in models:
            return candidate
    raise FetchError(f"unknown model {name!r}; published: {', '.join(sorted(models))}")


def files_for(manifest: dict, name: str) -> list[FileSpec]:
    """The files of model `name` (a key of the manifest's models), every name checked to be
    a plain file name and every field its type; FetchError otherwise."""
    where = f"models.{name}"
    model = _entry(manifest.get("models"), name, "models")
    bm = _entry(model, "bmodel", where)
    url = _entry(bm, "url", f"{where}.bmodel", str)
    bmodel_name = safe_name(basename(url), "bmodel file name")
    if not bmodel_name.endswith(".bmodel"):
        raise FetchError(f"{where}.bmodel.url names {bmodel_name!r}, not a .bmodel file")
    mirror = os.environ.get(MIRROR_ENV)
    if mirror and url.startswith("dfss://"):
        url = mirror.rstrip("/") + "/" + bmodel_name
    specs = [_spec(bmodel_name, url, bm, f"{where}.bmodel")]
    config_name = _entry(model, "config", where, str)
    config = _entry(manifest.get("config_sets"), config_name, "config_sets")
    for i, f in enumerate(_entry(config, "files", f"config_sets.{config_name}", list)):
        at = f"config_sets.{config_name}.files[{i}]"
        file_name = safe_name(_entry(f, "name", at, str), "config file name")
        file_url = _entry(f, "url", at, str, required=False)
        if file_url is None:
            file_url = _entry(config, "base_url", f"config_sets.{config_name}", str) + file_name
        specs.append(_spec(f"config/{file_name}", file_url, f, at))
    return specs


def basename(url: str) -> str:
    """The last component of the URL's path (no query, no fragment)."""
    return urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]


# A plain file name: no separator, no `.`/`..`, not hidden, nothing a shell or a
# filesystem treats specially.
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,254}")


def safe_name(name: str, what: str) -> str:
    """`name` if it is one plain file name, else FetchError (it becomes a path under models/)."""
    if not _SAFE_NAME.fullmatch(name):
        raise FetchError(
            f"{what} {name!r} is not a plain file name (letters, digits and _ . + -, not starting with a dot)"
        )
    return name


def _entry(obj, key: str, where: str, kind: type = dict, required: bool = True):
    """obj[key], which must be a `kind`; FetchError naming the manifest path otherwise."""
    if not isinstance(obj, dict):
        raise FetchError(f"the model manifest is malformed: {where} is not an object")
    value = obj.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        found = "missing" if value is None else f"a {type(value).__name__}"
        raise FetchError(f"the model manifest is malformed: {where}.{key} should be a {kind.__name__}, is {found}")
    return value


def _spec(dest: str, url: str, entry: dict, where: str) -> FileSpec:
    size = _entry(entry, "size", where, int, required=False)
    sha256 = _entry(entry, "sha256", where, str, required=False)
    blob = _entry(entry, "git_blob_sha1", where, str, required=False)
    return FileSpec(dest, url, size, sha256, blob)


# ---- checks ----


def file_digests(path: Path) -> tuple[str, str]:
    """sha256 of the content and git's blob id (sha1 over 'blob <size>\\0' + content), one read."""
    sha256 = hashlib.sha256()
    blob = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            sha256.update(chunk)
            blob.update(chunk)
    return sha256.hexdigest(), blob.hexdigest()


def verify(path: Path, spec: FileSpec) -> str:
    """Raise FetchError unless `path` is the file `spec` describes; returns its sha256."""
    size = path.stat().st_size
    if spec.size is not None and size != spec.size:
        raise FetchError(f"{spec.dest}: {size} bytes, expected {spec.size}")
    if spec.dest.endswith(".bmodel"):
        with open(path, "rb") as f:
            if f.read(4) != BMODEL_MAGIC:
                raise FetchError(f"{spec.dest}: not a bmodel (header magic missing); is the URL right?")
    sha256, blob = file_digests(path)
    if spec.sha256 and sha256 != spec.sha256.lower():
        raise FetchError(f"{spec.dest}: sha256 {sha256}, expected {spec.sha256}")
    if spec.git_blob_sha1 and blob != spec.git_blob_sha1.lower():
        raise FetchError(f"{spec.dest}: git blob id {blob}, expected {spec.git_blob_sha1}")
    return sha256


class Record:
    """What was fetched and verified: size, mtime and sha256 per file (models/<name>/.fetched.json)."""

    def __init__(self, folder: Path):
        self.path = folder / RECORD
        try:
            self.data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.data = {}

    def unchanged(self, dest: Path, spec: FileSpec) -> bool:
        entry = self.data.get(spec.dest)
        if not entry or not dest.exists() or entry.get("url") != spec.url:
            return False
        st = dest.stat()
        return entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns

    def pinned_sha256(self, spec: FileSpec) -> str | None:
        """The sha256 seen at first download, for a file whose checksum nobody published."""
        entry = self.data.get(spec.dest)
        return entry.get("sha256") if entry and entry.get("url") == spec.url else None

    def put(self, dest: Path, spec: FileSpec, sha256: str) -> None:
        st = dest.stat()
        self.data[spec.dest] = {
            "url": spec.url,
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "sha256": sha256,
            "checksum_published": spec.checksum_known,
        }
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, self.path)


# ---- transports ----


def http_download(url: str, part: Path, expected_size: int | None, log) -> None:
    """Append to `part` from where it stops (Range); start over if the server ignores Range."""
    have = part.stat().st_size if part.exists() else 0
    if expected_size is not None and have == expected_size:
        return
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        with requests.get(url, headers=headers, stream=True, timeout=(15, 60)) as r:
            if r.status_code == 416 and have:  # nothing left to send: the part is whole
                return
            if r.status_code not in (200, 206):
                raise FetchError(f"{url}: HTTP {r.status_code}")
            resumed = r.status_code == 206
            if have and not resumed:
                log(f"  server ignored the Range request; starting {part.name} over")
            elif have:
                log(f"  resuming {part.name} at {have} bytes")
            with open(part, "ab" if resumed else "wb") as f:
                f.writelines(r.iter_content(64 * 1024))  # small reads: a dropped connection loses < 64 KiB
    except requests.RequestException as e:
        raise FetchError(f"{url}: {e} (run the command again to resume)") from None


def dfss_download(url: str, part: Path, log) -> None:
    """The vendor's share is SFTP behind its own client; run it in a scratch folder."""
    import importlib.util

    if importlib.util.find_spec("dfss") is None:
        raise FetchError(
            f"the vendor's download client is not installed: `{sys.executable} -m pip install dfss` "
            f"(or set {MIRROR_ENV} to an http(s) folder holding {basename(url)})"
        )
    scratch = part.parent / ".dfss"
    scratch.mkdir(exist_ok=True)
    target = url[len("dfss://") :]
    log(f"  python -m dfss --url={target}")
    done = subprocess.run([sys.executable, "-m", "dfss", f"--url={target}"], cwd=scratch, check=False)
    got = scratch / basename(url)
    if done.returncode != 0 or not got.exists():
        raise FetchError(f"dfss could not fetch {target} (exit {done.returncode}); run the command again")
    os.replace(got, part)
    shutil.rmtree(scratch, ignore_errors=True)


# ---- the command ----


def fetch_model(name: str, models_dir: Path, manifest: dict | None = None, log=print) -> Path:
    manifest = manifest if manifest is not None else load_manifest()
    name = safe_name(canonical_name(manifest, name), "model name")
    specs = files_for(manifest, name)  # every name checked before anything is written
    folder = Path(models_dir) / name
    (folder / "config").mkdir(parents=True, exist_ok=True)
    with open(folder / ".fetch.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FetchError(f"another `make model` is fetching into {folder}; wait for it") from None
        return _fetch_into(folder, specs, log)


def _fetch_into(folder: Path, specs: list[FileSpec], log) -> Path:
    stale = [p for p in folder.glob("*.bmodel") if p.name != specs[0].dest]
    if stale:
        raise FetchError(
            f"{folder} already holds another bmodel ({stale[0].name}); the server loads exactly one: move it away first"
        )
    record = Record(folder)
    for spec in specs:
        dest = folder / spec.dest
        if record.unchanged(dest, spec):
            continue
        if dest.exists():  # present but not recorded (or touched): check it instead of fetching again
            try:
                _accept(dest, spec, record)
                log(f"{spec.dest}: present, verified")
                continue
            except FetchError as e:
                log(f"{spec.dest}: {e}; fetching again")
                dest.unlink()
        log(f"{spec.dest}: fetching {spec.url}")
        part = dest.with_name(dest.name + ".part")
        if spec.url.startswith("dfss://"):
            dfss_download(spec.url, part, log)
        elif spec.url.startswith(("http://", "https://")):
            http_download(spec.url, part, spec.size, log)
        else:
            raise FetchError(f"{spec.dest}: unsupported URL {spec.url}")
        try:
            _accept(part, spec, record, final=dest)
        except FetchError:
            part.unlink(missing_ok=True)  # a wrong file is not worth resuming
            raise
        log(f"{spec.dest}: {dest.stat().st_size} bytes, verified")
    return folder


def _accept(path: Path, spec: FileSpec, record: Record, final: Path | None = None) -> None:
    sha256 = verify(path, spec)
    pinned = record.pinned_sha256(spec)
    if not spec.checksum_known and pinned and pinned != sha256:
        raise FetchError(f"{spec.dest}: sha256 {sha256} differs from the {pinned} recorded at first download")
    if final is not None:
        os.replace(path, final)
        path = final
    record.put(path, spec, sha256)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m qwen3vl_app.devtools.model_fetch", description=__doc__.split("\n")[0])
    p.add_argument("model", nargs="?", help="model name, e.g. qwen3vl_2b (or 2b), qwen3vl_4b")
    p.add_argument("--models-dir", default="models", help="where model folders go (default: ./models)")
    p.add_argument("--list", action="store_true", help="list the published models and exit")
    ns = p.parse_args(argv)
    try:
        manifest = load_manifest()
        if ns.list or not ns.model:
            for key, model in manifest["models"].items():
                print(f"{key:16} {model.get('description', '') if isinstance(model, dict) else ''}")
            if not any("thinking" in key.lower() for key in manifest["models"]):
                # the vendor's download lists (sophgo/LLM-TPU models/Qwen3_VL) name Instruct builds only
                print("(no Qwen3-VL Thinking build is published for the BM1684X: docs/thinking.md)", file=sys.stderr)
            return 0 if ns.list else 2
        folder = fetch_model(ns.model, Path(ns.models_dir), manifest)
    except (FetchError, OSError) as e:  # a full disk or an unwritable folder too: a message, not a traceback
        print(f"model fetch: error: {e}", file=sys.stderr)
        return 1
    unpublished = [s.dest for s in files_for(manifest, folder.name) if not s.checksum_known]
    if unpublished:
        print(
            f"note: no checksum is published for {', '.join(unpublished)}; checked the header and pinned the "
            f"sha256 of this download in {folder / RECORD}"
        )
    print(f'ready: make run ARGS="-m {folder}"')
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
