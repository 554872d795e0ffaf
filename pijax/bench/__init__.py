"""pijax.bench"""
