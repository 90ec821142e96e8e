"""The typed session API: ``SessionStorage`` over any store, ``SessionManager`` on top of it,
and the session exports (JSON, text, Markdown)."""
