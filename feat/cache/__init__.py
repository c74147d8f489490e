"""The feature cache (HDF5). Nothing outside this package touches HDF5."""

from feat.cache.store import FeatureCache, FeatureRows, FeatureSet, fingerprint_id

__all__ = ["FeatureCache", "FeatureRows", "FeatureSet", "fingerprint_id"]
