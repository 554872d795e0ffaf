"""pijax.io"""
