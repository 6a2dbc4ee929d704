"""Locating, downloading and verifying the UCI Adult files, against a real loopback HTTP server."""
from __future__ import annotations

import functools
import hashlib
import http.server
import io
import socket
import threading
import time
import zipfile
from pathlib import Path

import pytest

from explainers.workloads import adult_files as datasets
from explainers.workloads.adult_files import (
    ADULT_FILES,
    DatasetChecksumError,
    DatasetDownloadError,
    DatasetError,
    ensure_adult_files,
    resolve_data_dir,
    sha256_file,
)

PRIMARY_PATH = "ml/machine-learning-databases/adult/"
ZIP_PATH = "static/public/2/adult.zip"


# --------------------------------------------------------------------------- helpers


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - signature of the base class
        pass


class LoopbackServer:
    """A real ``http.server`` on 127.0.0.1 serving ``root``; records the paths requested."""

    def __init__(self, root: Path):
        self.root = root
        self.requests: list[str] = []
        requests = self.requests

        class Handler(_QuietHandler):
            def do_GET(self):  # noqa: N802 - http.server naming
                requests.append(self.path)
                super().do_GET()

        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(root))
        )
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{PRIMARY_PATH}"

    @property
    def zip_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{ZIP_PATH}"

    def put(self, relative: str, content: bytes) -> None:
        target = self.root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _corrupt(content: bytes) -> bytes:
    """Same length, one byte changed in the middle."""
    i = len(content) // 2
    return content[:i] + bytes([content[i] ^ 0x01]) + content[i + 1 :]


def _make_zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, content in members.items():
            zf.writestr(name, content)
    return buf.getvalue()


def _listing(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()} if directory.exists() else set()


def _assert_only_verified(directory: Path) -> None:
    """Every file left in ``directory`` is a verified Adult file; no temporary files."""
    for p in directory.iterdir() if directory.exists() else ():
        assert p.name in ADULT_FILES, f"unexpected file left behind: {p.name}"
        assert sha256_file(p) == ADULT_FILES[p.name]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    """Loopback requests must not go through a proxy configured in the environment."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture(scope="module")
def adult_bytes(adult_data_dir) -> dict[str, bytes]:
    """The real Adult files (from ``$ADULT_DATA_DIR`` / ``../shared``), verified."""
    if adult_data_dir is None or not all((adult_data_dir / n).is_file() for n in ADULT_FILES):
        pytest.skip("the UCI Adult files are not available locally (set ADULT_DATA_DIR)")
    content = {name: (adult_data_dir / name).read_bytes() for name in ADULT_FILES}
    for name, data in content.items():
        assert hashlib.sha256(data).hexdigest() == ADULT_FILES[name]
    return content


@pytest.fixture
def server(tmp_path):
    srv = LoopbackServer(tmp_path / "www")
    srv.root.mkdir()
    yield srv
    srv.close()


@pytest.fixture
def dest(tmp_path) -> Path:
    """A data directory that does not exist yet (nested, to check it gets created)."""
    return tmp_path / "cache" / "distributed-kernelshap" / "adult"


# --------------------------------------------------------------------------- resolution


def test_resolution_order(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(datasets.DATA_DIR_ENV, raising=False)
    assert resolve_data_dir() == tmp_path / "xdg" / "distributed-kernelshap" / "adult"
    monkeypatch.setenv(datasets.DATA_DIR_ENV, str(tmp_path / "env"))
    assert resolve_data_dir() == tmp_path / "env"
    assert resolve_data_dir(tmp_path / "explicit") == tmp_path / "explicit"


def test_existing_files_are_verified_and_used_without_network(adult_bytes, tmp_path):
    for name, content in adult_bytes.items():
        (tmp_path / name).write_bytes(content)
    dead = f"http://127.0.0.1:{_closed_port()}/"
    paths = ensure_adult_files(tmp_path, base_url=dead, zip_url=dead + "adult.zip", timeout=2)
    assert paths == {name: tmp_path / name for name in ADULT_FILES}


def test_existing_file_with_wrong_checksum_is_an_error(adult_bytes, tmp_path):
    (tmp_path / "adult.test").write_bytes(adult_bytes["adult.test"])
    bad = _corrupt(adult_bytes["adult.data"])
    (tmp_path / "adult.data").write_bytes(bad)
    with pytest.raises(DatasetChecksumError) as info:
        ensure_adult_files(tmp_path, base_url="http://127.0.0.1:9/", zip_url="")
    message = str(info.value)
    assert "adult.data" in message
    assert ADULT_FILES["adult.data"] in message
    assert hashlib.sha256(bad).hexdigest() in message
    assert (tmp_path / "adult.data").read_bytes() == bad  # the user's file is not touched


def test_missing_files_with_download_disabled(tmp_path):
    with pytest.raises(DatasetError, match="adult.data, adult.test not found"):
        ensure_adult_files(tmp_path, download=False)


# --------------------------------------------------------------------------- downloads


def test_download_good_files(adult_bytes, server, dest):
    for name, content in adult_bytes.items():
        server.put(PRIMARY_PATH + name, content)
    paths = ensure_adult_files(dest, base_url=server.base_url, zip_url=server.zip_url, timeout=10)
    assert _listing(dest) == set(ADULT_FILES)
    for name, path in paths.items():
        assert path == dest / name
        assert sha256_file(path) == ADULT_FILES[name]
    assert sorted(server.requests) == sorted(f"/{PRIMARY_PATH}{n}" for n in ADULT_FILES)
    # cached: a second call verifies the files and downloads nothing
    ensure_adult_files(dest, base_url=server.base_url, zip_url=server.zip_url, timeout=10)
    assert len(server.requests) == len(ADULT_FILES)


def test_download_into_env_dir_and_user_cache(adult_bytes, server, tmp_path, monkeypatch):
    for name, content in adult_bytes.items():
        server.put(PRIMARY_PATH + name, content)
    monkeypatch.setattr(datasets, "UCI_BASE_URL", server.base_url)  # module-level override
    monkeypatch.setattr(datasets, "UCI_ZIP_URL", server.zip_url)
    monkeypatch.setenv(datasets.DATA_DIR_ENV, str(tmp_path / "env"))
    assert ensure_adult_files()["adult.data"] == tmp_path / "env" / "adult.data"
    monkeypatch.delenv(datasets.DATA_DIR_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    user_dir = tmp_path / "xdg" / "distributed-kernelshap" / "adult"
    assert ensure_adult_files()["adult.test"] == user_dir / "adult.test"
    assert _listing(user_dir) == set(ADULT_FILES)


def test_corrupted_download_is_an_error_and_leaves_nothing(adult_bytes, server, dest):
    bad = _corrupt(adult_bytes["adult.data"])
    server.put(PRIMARY_PATH + "adult.data", bad)
    server.put(PRIMARY_PATH + "adult.test", adult_bytes["adult.test"])
    # no archive on the server: the fallback gets a 404
    with pytest.raises(DatasetDownloadError) as info:
        ensure_adult_files(dest, base_url=server.base_url, zip_url=server.zip_url, timeout=10)
    message = str(info.value)
    assert server.base_url + "adult.data" in message
    assert server.zip_url in message and "404" in message
    assert ADULT_FILES["adult.data"] in message
    assert hashlib.sha256(bad).hexdigest() in message
    assert "adult.data" not in _listing(dest)
    _assert_only_verified(dest)  # adult.test verified fine and may stay; no temp files


def test_corrupted_everywhere_leaves_nothing(adult_bytes, server, dest):
    bad = {name: _corrupt(content) for name, content in adult_bytes.items()}
    for name, content in bad.items():
        server.put(PRIMARY_PATH + name, content)
    server.put(ZIP_PATH, _make_zip(bad))
    with pytest.raises(DatasetDownloadError) as info:
        ensure_adult_files(dest, base_url=server.base_url, zip_url=server.zip_url, timeout=10)
    message = str(info.value)
    for name in ADULT_FILES:
        assert f"{server.zip_url} (member {name})" in message
        assert hashlib.sha256(bad[name]).hexdigest() in message
    assert _listing(dest) == set()


def test_server_down_is_an_error_and_leaves_nothing(dest):
    dead = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(DatasetDownloadError) as info:
        ensure_adult_files(dest, base_url=f"{dead}/{PRIMARY_PATH}", zip_url=f"{dead}/{ZIP_PATH}", timeout=5)
    message = str(info.value)
    assert f"{dead}/{PRIMARY_PATH}adult.data" in message
    assert f"{dead}/{ZIP_PATH}" in message
    assert "cannot connect" in message
    assert not dest.exists()  # the directory it created is removed again


def test_unresponsive_server_times_out(dest):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)  # accepts connections into the backlog, never answers
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
        start = time.monotonic()
        with pytest.raises(DatasetDownloadError, match="timed out"):
            ensure_adult_files(dest, base_url=url, zip_url=url + "adult.zip", timeout=0.5)
        assert time.monotonic() - start < 30
    assert _listing(dest) == set()


@pytest.mark.parametrize("folder", ["", "adult/"])
def test_primary_404_falls_back_to_the_archive(adult_bytes, server, dest, folder):
    members = {folder + "Index": b"index\n", folder + "adult.names": b"names\n"}
    members.update({folder + name: content for name, content in adult_bytes.items()})
    server.put(ZIP_PATH, _make_zip(members))
    paths = ensure_adult_files(dest, base_url=server.base_url, zip_url=server.zip_url, timeout=10)
    assert _listing(dest) == set(ADULT_FILES)  # only the two files; the archive is gone
    for name, path in paths.items():
        assert sha256_file(path) == ADULT_FILES[name]
    assert server.requests.count(f"/{ZIP_PATH}") == 1
    assert {f"/{PRIMARY_PATH}{n}" for n in ADULT_FILES} <= set(server.requests)


def test_only_failed_files_come_from_the_archive(adult_bytes, server, dest):
    server.put(PRIMARY_PATH + "adult.data", adult_bytes["adult.data"])
    server.put(ZIP_PATH, _make_zip({"adult.test": adult_bytes["adult.test"]}))
    ensure_adult_files(dest, base_url=server.base_url, zip_url=server.zip_url, timeout=10)
    assert _listing(dest) == set(ADULT_FILES)
    _assert_only_verified(dest)


def test_archive_that_is_not_a_zip(server, dest):
    server.put(ZIP_PATH, b"<html>not a zip</html>")
    with pytest.raises(DatasetDownloadError, match="not a valid zip archive"):
        ensure_adult_files(dest, base_url=server.base_url, zip_url=server.zip_url, timeout=10)
    assert _listing(dest) == set()


def test_archive_missing_a_member(adult_bytes, server, dest):
    server.put(ZIP_PATH, _make_zip({"adult.data": adult_bytes["adult.data"]}))
    with pytest.raises(DatasetDownloadError, match="member adult.test.*not in the archive"):
        ensure_adult_files(dest, base_url=server.base_url, zip_url=server.zip_url, timeout=10)
    _assert_only_verified(dest)
    assert _listing(dest) == {"adult.data"}


def test_local_write_error_is_a_download_error(adult_bytes, server, dest):
    for name, content in adult_bytes.items():
        server.put(PRIMARY_PATH + name, content)
    (dest / "adult.data").mkdir(parents=True)  # in the way: the rename cannot replace it
    with pytest.raises(DatasetDownloadError, match=r"cannot write .*adult\.data"):
        ensure_adult_files(dest, base_url=server.base_url, zip_url="", timeout=10)
    assert _listing(dest) == {"adult.data", "adult.test"}  # the directory and the verified file
    assert (dest / "adult.data").is_dir()
    _assert_only_verified(dest / "adult.data")  # nothing was written into it


def test_load_workload_downloads_then_reuses(adult_bytes, adult_workload, server, tmp_path, monkeypatch):
    """End to end: an empty data dir is filled from the (loopback) UCI URLs, then reused."""
    from explainers.workloads.adult import load_workload

    for name, content in adult_bytes.items():
        server.put(PRIMARY_PATH + name, content)
    monkeypatch.setattr(datasets, "UCI_BASE_URL", server.base_url)
    monkeypatch.setattr(datasets, "UCI_ZIP_URL", server.zip_url)
    data_dir = tmp_path / "data"
    w = load_workload(data_dir, cache_dir=tmp_path / "models")
    assert _listing(data_dir) == set(ADULT_FILES)
    assert w.data_sha256 == ADULT_FILES["adult.data"]
    assert (w.X_explain == adult_workload.X_explain).all()
    n = len(server.requests)
    load_workload(data_dir, cache_dir=tmp_path / "models")
    assert len(server.requests) == n
