"""Issue 20, item 6: the model cache is checked (HMAC manifest) before anything is unpickled.

A file planted under the predictable cache name (data hash + scikit-learn version) must
never be unpickled; a tampered entry is removed with a warning naming it and rebuilt; a
good entry is used as is; the per-user signing key is private (0600, owned by the user).

Every test uses a temporary cache directory and a temporary key file
(``$EXPLAINERS_CACHE_KEY_FILE``), never the user's.
"""
from __future__ import annotations

import json
import os
import pathlib
import pickle
import stat
import sys
import warnings

import numpy as np
import pytest

from explainers.workloads import adult
from explainers.workloads.adult import load_workload
from explainers.workloads.adult_files import ADULT_FILES

KEY_ENV = "EXPLAINERS_CACHE_KEY_FILE"


def _entry_name() -> str:
    """The exact name ``load_workload`` gives the cache entry of the verified ``adult.data``."""
    return adult.cache_file_name(ADULT_FILES["adult.data"])


def _manifest(entry: pathlib.Path) -> pathlib.Path:
    return entry.parent / (entry.name + ".manifest")


class _Plant:
    """Unpickling this touches ``marker``: proof that the planted file was executed."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def key_file(tmp_path_factory):
    """One temporary signing key for the module (set for every test of it)."""
    path = tmp_path_factory.mktemp("key") / "config" / "model-cache.key"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(KEY_ENV, str(path))
        yield path


@pytest.fixture(scope="module")
def signed_entry(key_file, adult_data_dir, tmp_path_factory):
    """Name, pickle bytes and manifest bytes of a good entry, written by a real load."""
    w = load_workload(adult_data_dir, cache_dir=tmp_path_factory.mktemp("models"))
    assert not w.from_cache and w.cache_path.name == _entry_name()
    man = _manifest(w.cache_path)
    return w.cache_path.name, w.cache_path.read_bytes(), man.read_bytes() if man.is_file() else None


def _install(cache_dir: pathlib.Path, signed_entry) -> pathlib.Path:
    name, blob, manifest = signed_entry
    entry = cache_dir / name
    entry.write_bytes(blob)
    if manifest is not None:  # (the code before issue 20 wrote none)
        _manifest(entry).write_bytes(manifest)
    return entry


def _load_recording(adult_data_dir, cache_dir):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        w = load_workload(adult_data_dir, cache_dir=cache_dir)
    return w, caught


def _assert_valid_model(w, reference) -> None:
    np.testing.assert_array_equal(w.model.coef_, reference.model.coef_)
    np.testing.assert_array_equal(w.model.intercept_, reference.model.intercept_)
    np.testing.assert_array_equal(w.X_explain, reference.X_explain)
    assert 0.85 <= w.accuracy() <= 0.86


def _assert_rejection_warned(caught, entry: pathlib.Path) -> None:
    msgs = [(type(r.message).__name__, str(r.message)) for r in caught]
    hits = [m for cat, m in msgs if cat == "ModelCacheWarning" and str(entry) in m]
    assert hits, f"no ModelCacheWarning naming {entry}: {msgs}"


# --------------------------------------------------------------------------- planted files


@pytest.mark.parametrize("manifest", ["none", "forged"])
def test_planted_pickle_is_never_unpickled(key_file, adult_workload, adult_data_dir, tmp_path, manifest):
    marker = tmp_path / "executed"
    cache = tmp_path / "shared-cache"
    cache.mkdir()
    entry = cache / _entry_name()
    entry.write_bytes(pickle.dumps(_Plant(marker)))
    if manifest == "forged":  # the attacker does not know the key: any MAC is wrong
        _manifest(entry).write_text('{"format": 1, "hmac_sha256": "' + "ab" * 32 + '"}')

    w, caught = _load_recording(adult_data_dir, cache)

    assert not marker.exists(), "the planted pickle was executed"
    _assert_rejection_warned(caught, entry)
    assert not w.from_cache
    _assert_valid_model(w, adult_workload)
    # rebuilt and re-cached with a fresh manifest: the next load uses it
    assert entry.is_file() and _manifest(entry).is_file()
    assert entry.read_bytes() != pickle.dumps(_Plant(marker))
    again, caught = _load_recording(adult_data_dir, cache)
    assert again.from_cache and not caught and not marker.exists()


# --------------------------------------------------------------------------- tampered entries


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "manifest changed", "manifest removed",
                                    "manifest garbage", "manifest unreadable"])
def test_tampered_entry_is_removed_warned_and_rebuilt(
        signed_entry, adult_workload, adult_data_dir, tmp_path, damage):
    entry = _install(tmp_path, signed_entry)
    blob = entry.read_bytes()
    man = _manifest(entry)
    if damage.startswith("manifest"):
        assert man.is_file(), "a good entry has a manifest beside it"
    if damage == "flipped byte":
        i = len(blob) // 2
        entry.write_bytes(blob[:i] + bytes([blob[i] ^ 0x01]) + blob[i + 1:])
    elif damage == "truncated":
        entry.write_bytes(blob[:-1])
    elif damage == "manifest changed":
        fields = json.loads(man.read_text())
        mac = fields["hmac_sha256"]
        fields["hmac_sha256"] = ("0" if mac[0] != "0" else "1") + mac[1:]
        man.write_text(json.dumps(fields))
    elif damage == "manifest removed":
        man.unlink()
    elif damage == "manifest garbage":
        man.write_bytes(b"\x00\xff not json")
    else:  # reading the manifest fails (a symlink loop: ELOOP)
        man.unlink()
        man.symlink_to(man.name)

    w, caught = _load_recording(adult_data_dir, tmp_path)

    _assert_rejection_warned(caught, entry)
    assert not w.from_cache
    _assert_valid_model(w, adult_workload)
    again, caught = _load_recording(adult_data_dir, tmp_path)
    assert again.from_cache and not caught  # re-cached with a fresh manifest


def test_good_entry_is_loaded_without_refit(signed_entry, adult_workload, adult_data_dir, tmp_path, monkeypatch):
    entry = _install(tmp_path, signed_entry)

    def no_refit(*args, **kwargs):
        raise AssertionError("the model was refitted although the cache entry is good")

    monkeypatch.setattr(adult, "_fit", no_refit)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        w = load_workload(adult_data_dir, cache_dir=tmp_path)
    assert w.from_cache and w.cache_path == entry
    _assert_valid_model(w, adult_workload)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([entry.name, _manifest(entry).name])


# --------------------------------------------------------------------------- the key


def test_key_is_private_and_not_in_the_cache_dir(key_file, signed_entry, adult_data_dir, tmp_path):
    assert key_file.is_file()
    if os.name == "posix":
        st = key_file.stat()
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
    _install(tmp_path, signed_entry)
    load_workload(adult_data_dir, cache_dir=tmp_path)
    assert not any("key" in p.name for p in tmp_path.iterdir())


def test_default_key_lives_in_the_user_config_dir(monkeypatch, tmp_path):
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    if sys.platform.startswith("linux"):
        assert adult.resolve_key_file() == tmp_path / "xdg" / "distributed-kernelshap" / "model-cache.key"
    assert adult.resolve_key_file().parent != adult.resolve_cache_dir()


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize("fault", ["group-readable", "world-writable", "other owner"])
def test_unsafe_key_file_is_refused(signed_entry, adult_data_dir, tmp_path, monkeypatch, fault):
    key = tmp_path / "cfg" / "model-cache.key"
    monkeypatch.setenv(KEY_ENV, str(key))
    w = load_workload(adult_data_dir, cache_dir=tmp_path / "models")  # creates the key
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    if fault == "group-readable":
        key.chmod(0o640)
    elif fault == "world-writable":
        key.chmod(0o606)
    elif os.geteuid() == 0:
        os.chown(key, 65534, 65534)
    else:
        monkeypatch.setattr(adult.os, "geteuid", lambda: key.stat().st_uid + 1)
    with pytest.raises(adult.ModelCacheKeyError, match=str(key)):
        load_workload(adult_data_dir, cache_dir=tmp_path / "models")
    # without the cache the workload still loads
    fresh = load_workload(adult_data_dir, use_cache=False)
    np.testing.assert_array_equal(fresh.model.coef_, w.model.coef_)


def test_key_that_cannot_be_created_only_warns(adult_workload, adult_data_dir, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv(KEY_ENV, str(blocker / "model-cache.key"))
    with pytest.warns(RuntimeWarning, match="model cache not used: could not read or create its signing key"):
        w = load_workload(adult_data_dir, cache_dir=tmp_path / "models")
    assert w.cache_path is None and not w.from_cache
    assert not (tmp_path / "models").exists()  # nothing unsigned was written
    _assert_valid_model(w, adult_workload)


def test_without_the_cache_the_key_is_not_touched(adult_data_dir, tmp_path, monkeypatch):
    key = tmp_path / "cfg" / "model-cache.key"
    monkeypatch.setenv(KEY_ENV, str(key))
    load_workload(adult_data_dir, use_cache=False)
    assert not key.exists() and not key.parent.exists()
