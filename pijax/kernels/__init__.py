"""pijax's CPU kernels (C++ via jax.ffi, built on first use) and the weight formats they read: the "model ops"
layer, below pijax.model.

`pijax.kernels.build` compiles and registers them (or says why not), `pijax.kernels.formats` holds the storage
formats (f32, f16, bf16, int8 rows with scales), `pijax.kernels.reference` the FFN math every path shares (the XLA
reference: activation, row selection, down projection), `pijax.kernels.ops` the operations with their pure-JAX
references, `pijax.kernels.fast_ffn` the FFN module that uses them, and `pijax.kernels.convert` turns a loaded
model's weights into a format.
"""
