"""pijax's CPU kernels (C++ via jax.ffi, built on first use) and the weight formats they read: the "model ops"
layer, below pijax.model.

`pijax.kernels.build` compiles and registers them (or says why not), `pijax.kernels.formats` holds the storage
formats (f32, f16, bf16, int8 rows with scales; llama.cpp's Q8_0/Q4_0/Q4_1 blocks in `pijax.kernels.blocks`,
their operations in `pijax.kernels.qops`), `pijax.kernels.reference` the FFN math every path shares (the XLA
reference: activation, row selection, down projection), `pijax.kernels.ops` the operations with their pure-JAX
references, `pijax.kernels.cats` the CATS-thresholded FFN (gate read in full, up/down_t only for kept rows). The FFN module that uses them is `pijax.model.ffn.FFN` (backend "kernels"). Converting a
loaded model to them, or loading a GGUF straight onto them, is `pijax.model.convert` (it builds a pijax.model).
"""
