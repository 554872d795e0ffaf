"""pijax.layout: where each weight lives for hybrid hot/cold execution, and how much accelerator memory that takes.

config (HardwareConfig, jax-free) -> devices (Placement: the accelerator mesh and the host; jax.distributed)
-> pack (hot rows in bucket order, cold rows, padding for the mesh) -> capacity (static rows per gather, from the
predictor on real text) -> memory (resident bytes per device from array shardings, checked against the budget).
The modules that run the model, and the pipeline that builds them (`pijax.engine.pipeline.prepare_hybrid`), are in
pijax.engine. Importing this package imports nothing heavy; import the submodules.
"""
