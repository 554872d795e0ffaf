"""Property-based fuzzing of the files pijax reads: GGUF models and gpuidx indexes (issue 15).

On copies of the shipped stories260K model and of a gpuidx built for the ReLU-fied stories260K: random truncations,
byte flips (biased towards the header and metadata) and random values written into the header's numeric fields.
The property: reading either works or raises a PijaxError whose message is one printable line; no other exception
escapes; the file read is never modified, and neither is any shipped model or statistics file (hashes checked).

Seeded (derandomize=True, no example database) and bounded: a few hundred cases per target, a few seconds each.
`pytest --hypothesis-show-statistics tests/test_fuzz_files.py` prints the number of cases per target.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pijax.errors import PijaxError
from pijax.index import load_gpuidx, write_gpuidx
from pijax.index.gpuidx import Provenance
from pijax.io.checkpoint import load_checkpoint
from pijax.io.tokenizer import Tokenizer
from pijax.paths import STORIES260K

REPO = Path(__file__).resolve().parents[1]
FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SHIPPED = sorted(p for d in ("pijax/assets", "tests/data") for p in (REPO / d).rglob("*") if p.is_file())
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def header_fields(data: bytes) -> tuple[dict[str, tuple[int, int]], int]:
    """{metadata key: (byte offset of its value, GGUF value type)} for the scalar keys, and where metadata ends."""
    pos = 8
    _, n_kv = struct.unpack_from("<QQ", data, pos)
    pos += 16

    def skip(vtype: int, pos: int) -> int:
        if vtype == 8:
            return pos + 8 + struct.unpack_from("<Q", data, pos)[0]
        if vtype == 9:
            etype, count = struct.unpack_from("<IQ", data, pos)
            pos += 12
            for _ in range(count):
                pos = skip(etype, pos)
            return pos
        return pos + struct.calcsize(_SCALAR[vtype])

    fields = {}
    for _ in range(n_kv):
        n = struct.unpack_from("<Q", data, pos)[0]
        key = data[pos + 8 : pos + 8 + n].decode()
        pos += 8 + n
        vtype = struct.unpack_from("<I", data, pos)[0]
        pos += 4
        if vtype in _SCALAR:
            fields[key] = (pos, vtype)
        pos = skip(vtype, pos)
    return fields, pos


def field_value(vtype: int) -> st.SearchStrategy:
    fmt = _SCALAR[vtype]
    if fmt in ("<f", "<d"):
        return st.floats(width=32 if fmt == "<f" else 64)
    if fmt == "<?":
        return st.booleans()
    bits = struct.calcsize(fmt) * 8
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if fmt.islower() else (0, 2**bits - 1)
    return st.one_of(
        st.integers(lo, hi), st.sampled_from([lo, hi, 0, 1, 2, 3, 7, 8, 64, 2**16]).filter(lambda v: lo <= v <= hi)
    )


def mutations(data: bytes, fields: dict[str, tuple[int, int]], header_end: int) -> st.SearchStrategy:
    """A list of edits: ("trunc", n), ("flip", offset, xor mask) or ("set", key, value)."""
    offset = st.one_of(st.integers(0, header_end + 512), st.integers(0, len(data) - 1))
    flip = st.tuples(st.just("flip"), offset, st.integers(1, 255))
    trunc = st.tuples(st.just("trunc"), st.one_of(st.integers(0, header_end + 64), st.integers(0, len(data) - 1)))
    set_field = st.sampled_from(sorted(fields)).flatmap(
        lambda k: st.tuples(st.just("set"), st.just(k), field_value(fields[k][1]))
    )
    return st.lists(st.one_of(flip, trunc, set_field), min_size=1, max_size=3)


def mutate(data: bytes, fields: dict[str, tuple[int, int]], edits: list[tuple]) -> bytes:
    out = bytearray(data)
    for edit in edits:
        if edit[0] == "trunc":
            del out[edit[1] :]
        elif edit[0] == "flip" and edit[1] < len(out):
            out[edit[1]] ^= edit[2]
        elif edit[0] == "set":
            offset, vtype = fields[edit[1]]
            fmt = _SCALAR[vtype]
            if offset + struct.calcsize(fmt) <= len(out):
                struct.pack_into(fmt, out, offset, edit[2])
    return bytes(out)


def assert_one_line(err: BaseException) -> None:
    msg = str(err)
    assert msg and "\n" not in msg and "\r" not in msg and msg.isprintable() and len(msg) < 1000, repr(msg)


@pytest.fixture(scope="module", autouse=True)
def shipped_files_unchanged():
    before = {p: sha256(p) for p in SHIPPED}
    yield
    assert {p: sha256(p) for p in SHIPPED} == before, "a shipped model or data file changed"


MODEL = STORIES260K.read_bytes()
MODEL_FIELDS, MODEL_HEADER_END = header_fields(MODEL)


@settings(FUZZ, max_examples=250)
@given(edits=mutations(MODEL, MODEL_FIELDS, MODEL_HEADER_END))
def test_fuzz_gguf_model(tmp_path_factory, edits):
    path = tmp_path_factory.mktemp("gguf") / "m.gguf"
    data = mutate(MODEL, MODEL_FIELDS, edits)
    path.write_bytes(data)
    try:
        ckpt = load_checkpoint(path)
        ckpt.config.check_shape(path)  # as load_model does
        tok = Tokenizer.from_metadata(ckpt.metadata, path)
        assert ckpt.config.n_layer == len(ckpt.weights.layers)
        tok.decode(tok.encode("Once upon a time", bos=True))
    except PijaxError as e:
        assert_one_line(e)
    assert path.read_bytes() == data, "reading the model modified it"


N_FF, N_LAYER = 172, 5


@pytest.fixture(scope="module")
def gpuidx_bytes(tmp_path_factory) -> bytes:
    rng = np.random.default_rng(0)
    buckets = [np.sort(rng.choice(N_FF, size=k, replace=False)).astype(np.int32) for k in (0, 3, 50, 171, 172)]
    prov = Provenance("model:abc", "stats:def", "powerinfer", '{"group_size":1}', 123456, 396, "hw")
    path = tmp_path_factory.mktemp("idx") / "m.gguf.generated.gpuidx"
    write_gpuidx(path, buckets, N_FF, vram_capacity=99999, provenance=prov)
    assert load_gpuidx(path).hot_counts == [0, 3, 50, 171, 172]
    return path.read_bytes()


def _gpuidx_case(data: bytes, tmp_dir: Path) -> None:
    path = tmp_dir / "x.generated.gpuidx"
    path.write_bytes(data)
    try:
        index = load_gpuidx(path)
        assert index.masks.shape[0] == len(index.buckets)
        assert all(index.masks[i, b].all() for i, b in enumerate(index.buckets))
    except PijaxError as e:
        assert_one_line(e)
        assert e.problem.startswith(("truncated", "corrupt", "missing")), e.problem
    assert path.read_bytes() == data, "reading the index modified it"


@settings(FUZZ, max_examples=250)
@given(data=st.data())
def test_fuzz_gpuidx(tmp_path_factory, gpuidx_bytes, data):
    fields, header_end = header_fields(gpuidx_bytes)
    edits = data.draw(mutations(gpuidx_bytes, fields, header_end))
    _gpuidx_case(mutate(gpuidx_bytes, fields, edits), tmp_path_factory.mktemp("idx"))
