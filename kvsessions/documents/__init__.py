"""Versioned JSON documents: the typed models, the codec between models and documents, ids,
the key layout, and the JSON Schema files each document kind and version is checked
against."""
