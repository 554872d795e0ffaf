"""pijax.sparsity"""
