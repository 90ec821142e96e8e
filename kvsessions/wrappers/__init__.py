"""Stores that wrap another store and are themselves stores: the forwarding base
(``StoreWrapper``), schema validation (``ValidatingStore``) and caching (``CachedStore``)."""
