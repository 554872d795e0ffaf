"""pijax.layout"""
