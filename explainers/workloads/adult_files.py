"""Locating, downloading and verifying the UCI Adult files.

The reference workload reads ``adult.data`` (and ships ``adult.test`` alongside it, as
UCI does). :func:`ensure_adult_files` finds the files, downloading them when missing:

1. the directory given as ``data_dir``, else
2. the directory in the environment variable ``ADULT_DATA_DIR``, else
3. ``platformdirs.user_cache_dir("distributed-kernelshap")/adult``.

Files already in that directory are verified against their SHA-256 and a mismatch is an
error (never silently used, never deleted: they are the user's files). Missing files are
downloaded from :data:`UCI_BASE_URL` (one URL per file); whatever fails there is taken
from the archive :data:`UCI_ZIP_URL`. A download streams into a temporary file in the
target directory, is verified, and only then renamed into place (``os.replace``), so a
failed or corrupted download never leaves a file (nor a temporary file) behind.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import socket
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import BinaryIO, Callable

__all__ = [
    "ADULT_FILES",
    "DATA_DIR_ENV",
    "UCI_BASE_URL",
    "UCI_ZIP_URL",
    "DatasetError",
    "DatasetDownloadError",
    "DatasetChecksumError",
    "default_data_dir",
    "resolve_data_dir",
    "sha256_file",
    "ensure_adult_files",
]

#: Directory of the individual files on UCI (one URL per file: base + name).
UCI_BASE_URL = "https://archive.ics.uci.edu/ml/machine-learning-databases/adult/"
#: Fallback: UCI's archive of the data set, holding the same files.
UCI_ZIP_URL = "https://archive.ics.uci.edu/static/public/2/adult.zip"
#: The files the project needs and their SHA-256 checksums.
ADULT_FILES: dict[str, str] = {
    "adult.data": "5b00264637dbfec36bdeaab5676b0b309ff9eb788d63554ca0a249491c86603d",
    "adult.test": "a2a9044bc167a35b2361efbabec64e89d69ce82d9790d2980119aac5fd7e9c05",
}
#: Environment variable naming the data directory.
DATA_DIR_ENV = "ADULT_DATA_DIR"
#: Application name for the user cache directory (platformdirs).
APP_NAME = "distributed-kernelshap"
#: Seconds to wait for a connection or for the next block of a response.
DEFAULT_TIMEOUT = 30.0
#: Refuse responses larger than this (the archive is about 0.6 MB, the files 4-6 MB).
MAX_DOWNLOAD_BYTES = 64 * 1024**2

_CHUNK = 1 << 16
_TMP_PREFIX = ".tmp-"
_USER_AGENT = "distributed-kernelshap (python urllib)"


class DatasetError(RuntimeError):
    """The Adult files could not be found, downloaded or verified."""


class DatasetDownloadError(DatasetError):
    """A download failed or produced a file with the wrong checksum (nothing was kept)."""


class DatasetChecksumError(DatasetError):
    """A file already in the data directory does not have the expected SHA-256."""


def default_data_dir() -> Path:
    """The user cache directory for the data: ``user_cache_dir("distributed-kernelshap")/adult``."""
    import platformdirs

    return Path(platformdirs.user_cache_dir(APP_NAME)) / "adult"


def resolve_dir(explicit: str | os.PathLike[str] | None, env_var: str, default: Callable[[], Path]) -> Path:
    """``explicit``, else the directory in ``$env_var`` (when set and not blank), else ``default()``."""
    if explicit is not None:
        return Path(explicit).expanduser()
    env = os.environ.get(env_var, "").strip()
    if env:
        return Path(env).expanduser()
    return default()


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the data directory: ``data_dir``, else ``$ADULT_DATA_DIR``, else the user cache."""
    return resolve_dir(data_dir, DATA_DIR_ENV, default_data_dir)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def ensure_adult_files(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    base_url: str | None = None,
    zip_url: str | None = None,
    timeout: float | None = None,
    download: bool = True,
) -> dict[str, Path]:
    """Make sure ``adult.data`` and ``adult.test`` are in the data directory, verified.

    Parameters
    ----------
    data_dir:
        Directory holding (or to receive) the files; see :func:`resolve_data_dir`.
    base_url, zip_url:
        Download locations; default to the module constants :data:`UCI_BASE_URL` and
        :data:`UCI_ZIP_URL` (read at call time, so tests may point them elsewhere).
        ``zip_url=""`` disables the archive fallback.
    timeout:
        Seconds for each connection / read (default :data:`DEFAULT_TIMEOUT`).
    download:
        When False, missing files are an error instead of being downloaded.

    Returns
    -------
    ``{file name: path}`` for the names in :data:`ADULT_FILES`, each verified.

    Raises
    ------
    DatasetChecksumError
        A file already present has the wrong SHA-256 (the file is left untouched).
    DatasetDownloadError
        A missing file could not be obtained from any URL with the right checksum; the
        message lists every URL tried and why it failed. Nothing unverified is kept.
    """
    directory = resolve_data_dir(data_dir)
    base_url = UCI_BASE_URL if base_url is None else base_url
    zip_url = UCI_ZIP_URL if zip_url is None else zip_url
    timeout = DEFAULT_TIMEOUT if timeout is None else float(timeout)

    paths = {name: directory / name for name in ADULT_FILES}
    missing = []
    for name, path in paths.items():
        if path.is_file():
            _verify_existing(path, ADULT_FILES[name])
        else:
            missing.append(name)
    if not missing:
        return paths
    if not download:
        raise DatasetError(
            f"{', '.join(missing)} not found in {directory} and downloading is disabled; "
            f"put the UCI Adult files there or set {DATA_DIR_ENV} to a directory holding them"
        )
    created = not directory.exists()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetDownloadError(f"cannot create the data directory {directory}: {exc}") from exc

    failures: dict[str, list[str]] = {name: [] for name in missing}
    still_missing = []
    for name in missing:
        url = _join_url(base_url, name)
        try:
            with _open_url(url, timeout) as response:
                _write_verified(response, paths[name], ADULT_FILES[name])
        except _AttemptFailed as exc:
            failures[name].append(f"{url}: {exc}")
            still_missing.append(name)
    if still_missing and zip_url:
        _fetch_from_zip(zip_url, still_missing, paths, failures, timeout)
    not_obtained = [name for name in missing if not paths[name].is_file()]
    if not_obtained:
        if created:
            with contextlib.suppress(OSError):
                directory.rmdir()  # only if still empty: no trace of a failed first download
        lines = [f"could not obtain the UCI Adult file(s) {', '.join(not_obtained)} into {directory}:"]
        for name in not_obtained:
            lines += [f"  {name} (expected SHA-256 {ADULT_FILES[name]}):"]
            lines += [f"    - {reason}" for reason in failures[name]]
        if not zip_url:
            lines.append("  (archive fallback disabled)")
        lines.append(
            f"No file was kept for them. Without network, put the files in a directory and set "
            f"{DATA_DIR_ENV} to it (or pass data_dir)."
        )
        raise DatasetDownloadError("\n".join(lines))
    return paths


# --------------------------------------------------------------------------- internals


class _AttemptFailed(Exception):
    """One URL (or archive member) failed; the message says why."""


def _verify_existing(path: Path, expected: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise DatasetChecksumError(
            f"{path} has the wrong SHA-256: expected {expected}, got {actual}. "
            f"It is not the UCI Adult file; remove it to have it downloaded again, "
            f"or point {DATA_DIR_ENV} / data_dir at a directory with the right files."
        )


def _join_url(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name


def _open_url(url: str, timeout: float):
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (http(s) URLs by design)
    except urllib.error.HTTPError as exc:
        exc.close()
        raise _AttemptFailed(f"HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise _AttemptFailed(f"cannot connect ({exc.reason})") from exc
    except (TimeoutError, socket.timeout) as exc:
        raise _AttemptFailed(f"timed out after {timeout:g} s") from exc
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise _AttemptFailed(f"{type(exc).__name__}: {exc}") from exc


def _copy_hashing(src: BinaryIO, dst: BinaryIO) -> str:
    """Copy ``src`` into ``dst`` in blocks; return the SHA-256 of what was copied."""
    h = hashlib.sha256()
    total = 0
    while True:
        try:
            block = src.read(_CHUNK)
        except (TimeoutError, socket.timeout) as exc:
            raise _AttemptFailed("timed out while reading the response") from exc
        except (OSError, EOFError, zipfile.BadZipFile, http.client.HTTPException) as exc:
            raise _AttemptFailed(f"read failed ({type(exc).__name__}: {exc})") from exc
        if not block:
            return h.hexdigest()
        total += len(block)
        if total > MAX_DOWNLOAD_BYTES:
            raise _AttemptFailed(f"response larger than {MAX_DOWNLOAD_BYTES} bytes")
        h.update(block)
        dst.write(block)


def _write_verified(src: BinaryIO, target: Path, expected: str) -> None:
    """Stream ``src`` into a temporary file next to ``target``; rename it there only if verified."""
    tmp: Path | None = None
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=_TMP_PREFIX + target.name + ".", dir=target.parent)
        tmp = Path(tmp_name)
        with os.fdopen(fd, "wb") as dst:
            actual = _copy_hashing(src, dst)
            dst.flush()
            os.fsync(dst.fileno())
        if actual != expected:
            raise _AttemptFailed(f"checksum mismatch: expected SHA-256 {expected}, got {actual}")
        os.replace(tmp, target)
        tmp = None
    except OSError as exc:  # reading errors are _AttemptFailed already: this is local I/O
        raise _AttemptFailed(f"cannot write {target} ({type(exc).__name__}: {exc})") from exc
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def _fetch_from_zip(
    zip_url: str,
    names: list[str],
    paths: dict[str, Path],
    failures: dict[str, list[str]],
    timeout: float,
) -> None:
    """Download the archive to a temporary file, extract and verify ``names`` from it."""
    directory = next(iter(paths.values())).parent
    tmp: Path | None = None
    try:
        try:
            fd, tmp_name = tempfile.mkstemp(prefix=_TMP_PREFIX + "adult.zip.", dir=directory)
            tmp = Path(tmp_name)
            with os.fdopen(fd, "wb") as dst, _open_url(zip_url, timeout) as response:
                _copy_hashing(response, dst)
            archive = zipfile.ZipFile(tmp)
        except _AttemptFailed as exc:
            reason = str(exc)
        except zipfile.BadZipFile as exc:
            reason = f"not a valid zip archive ({exc})"
        except OSError as exc:
            reason = f"cannot store the archive in {directory} ({type(exc).__name__}: {exc})"
        else:
            reason = ""
        if reason:
            for name in names:
                failures[name].append(f"{zip_url}: {reason}")
            return
        with archive:
            members = {Path(info.filename).name: info for info in archive.infolist() if not info.is_dir()}
            for name in names:
                where = f"{zip_url} (member {name})"
                if name not in members:
                    failures[name].append(f"{where}: not in the archive")
                    continue
                try:
                    with archive.open(members[name]) as src:
                        _write_verified(src, paths[name], ADULT_FILES[name])
                except _AttemptFailed as exc:
                    failures[name].append(f"{where}: {exc}")
                except (zipfile.BadZipFile, OSError, RuntimeError) as exc:
                    failures[name].append(f"{where}: {type(exc).__name__}: {exc}")
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
