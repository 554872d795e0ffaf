"""Decode attention over the head-major KV cache: every read (`pijax.kernels.attention`) equals a float64
reference within the f32 floor, for grouped-query and multi-head shapes, and a jitted step that donates the cache
updates it in place with no cache-sized copy, whichever read it uses."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pijax.kernels import build
from pijax.kernels.attention import READS, decode_attention, decode_read

# (B, K kv heads, G queries per kv head, S positions, E head dim): GQA as TinyLlama and SmolLM2, MHA as LLaMA-2.
SHAPES = [(1, 4, 8, 48, 64), (2, 3, 3, 40, 64), (1, 8, 1, 33, 128)]


def _reads() -> list[str]:
    if build.load() is None:
        pytest.fail(f"the kernel library is needed for the 'kernel' read: {build.status()}")
    return list(READS)


def _reference(q: np.ndarray, k: np.ndarray, v: np.ndarray, pos: int, scale: float, dtype=np.float64) -> np.ndarray:
    q, k, v = (a.astype(dtype) for a in (q, k, v))
    s = np.einsum("bkge,bkse->bkgs", q, k[:, :, : pos + 1]) * scale
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bkgs,bkse->bkge", p, v[:, :, : pos + 1])


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("read", READS)
def test_every_read_matches_the_reference(shape: tuple[int, ...], read: str) -> None:
    assert read in _reads()
    b, kv, g, s, e = shape
    rng = np.random.default_rng(sum(shape))
    q = rng.standard_normal((b, kv, g, e)).astype(np.float32)
    k, v = (rng.standard_normal((b, kv, s, e)).astype(np.float32) for _ in range(2))
    # Positions past pos hold garbage that must not leak in (a cache reused from a longer sequence); at s - 1
    # it is in range and must count.
    k[:, :, s // 2 + 1 :] += 30.0
    scale = 1.0 / np.sqrt(e)
    for pos in (0, s // 2, s - 1):
        out = jax.jit(lambda q, k, v, p: decode_attention(q, k, v, p, scale, read))(q, k, v, jnp.int32(pos))
        ref = _reference(q, k, v, pos, scale)
        # The f32 floor: how far the same formula evaluated in f32 lands from the float64 one.
        floor = np.abs(_reference(q, k, v, pos, scale, np.float32) - ref).max()
        err = np.abs(np.asarray(out) - ref).max()
        assert err <= 4 * floor + 1e-6, f"{read} at pos {pos}: error {err:.2e}, f32 floor {floor:.2e}"


def test_the_kernel_reads_a_half_precision_cache() -> None:
    _reads()
    b, kv, g, s, e = SHAPES[0]
    rng = np.random.default_rng(1)
    q = rng.standard_normal((b, kv, g, e)).astype(np.float32)
    k, v = (rng.standard_normal((b, kv, s, e)).astype(np.float16) for _ in range(2))
    out = decode_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), 20, 0.125, "kernel")
    np.testing.assert_allclose(np.asarray(out), _reference(q, k, v, 20, 0.125), rtol=2e-5, atol=2e-6)


def test_unknown_read_is_refused() -> None:
    q = jnp.zeros((1, 1, 1, 4))
    with pytest.raises(ValueError, match="unknown decode attention read 'fast'"):
        decode_attention(q, jnp.zeros((1, 1, 4, 4)), jnp.zeros((1, 1, 4, 4)), 0, 1.0, "fast")


def test_the_cpu_rule_takes_the_kernel_when_it_is_available() -> None:
    assert jax.default_backend() == "cpu"
    expected = "kernel" if build.available() else "reduce"
    assert {decode_read(*s[1:]) for s in SHAPES} == {expected}


def _cache_sized(hlo: str, n: int) -> list[str]:
    entry = hlo[hlo.index("ENTRY") :].splitlines()[1:]
    out = []
    for line in entry:
        if "=" not in line or any(f" {op}(" in line for op in ("parameter", "bitcast", "tuple")):
            continue
        shape = line.split("=", 1)[1].strip().split(" ", 1)[0]
        dims = shape[4 : shape.index("]")] if shape.startswith("f32[") else ""
        if dims and int(np.prod([int(d) for d in dims.split(",")])) == n:
            out.append(line.strip())
    return out


@pytest.mark.parametrize("read", ["kernel", "reduce"])
def test_a_donated_cache_is_updated_in_place_and_never_copied(read: str) -> None:
    assert read in _reads()
    b, kv, g, s, e = SHAPES[0]
    n_layer = 3

    def step(caches, q, pos):
        out = []
        for c in caches:
            z = jnp.zeros((), jnp.int32)
            k = jax.lax.dynamic_update_slice(c["k"], q[:, :, :1], (z, z, pos, z))
            v = jax.lax.dynamic_update_slice(c["v"], q[:, :, 1:2], (z, z, pos, z))
            q = q + decode_attention(q, k, v, pos, 0.125, read)
            out.append({"k": k, "v": v})
        return q, out

    caches = [{"k": jnp.zeros((b, kv, s, e)), "v": jnp.zeros((b, kv, s, e))} for _ in range(n_layer)]
    hlo = jax.jit(step, donate_argnums=0).lower(caches, jnp.ones((b, kv, g, e)), jnp.int32(3)).compile().as_text()
    entry = hlo[hlo.index("ENTRY") :]
    assert [line for line in entry.splitlines() if " copy(" in line] == []
    # Only the in-place updates (two per layer) write a cache-sized buffer: nothing copies one inside a fusion.
    writes = _cache_sized(hlo, b * kv * s * e)
    assert len(writes) == 2 * n_layer and all("dynamic-update-slice" in w for w in writes), writes
