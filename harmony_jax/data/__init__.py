"""Grain data sources: the sounding-shapes world, clip folders, latent records."""
