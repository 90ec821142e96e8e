"""Moving documents between stores: scan-and-copy with checkpoints, verify, validate, upgrade,
and JSON Lines export, import and backup."""
