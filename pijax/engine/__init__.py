"""pijax.engine: the sparse and hybrid engines on top of the model, the index and the layout.

setup (which FFN backend runs: the CPU kernels or XLA; the host allocator) -> hybrid_ffn (hot rows on the
accelerator mesh, cold rows on the host) -> hybrid (placing a model for hybrid execution) -> hybrid_engine (its
decode engine) -> pipeline (`prepare_hybrid`: budget plan, statistics, gpuidx, capacities, engine, budget
check) -> api (`sparse_model`, `hybrid_model`: what `pijax.Model.sparse` / `.hybrid` return). convert: a model
on the CPU kernels (`use_kernels`, `load_llama`); profile: where a hybrid decode step's time goes. Importing this
package imports nothing heavy; import the submodules.
"""
