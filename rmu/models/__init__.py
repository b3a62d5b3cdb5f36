"""Models: finding and loading them (loading.py, weights.py), what RMU updates in each
architecture (architectures.py), LoRA adapters (adapters.py) and the decoder layers (hooks.py)."""
