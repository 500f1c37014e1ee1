"""Run configs (`--config configs/NAME.py`), importable as `configs.NAME` from the root."""
