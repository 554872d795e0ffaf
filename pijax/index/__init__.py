"""pijax.index"""
