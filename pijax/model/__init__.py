"""pijax.model"""
