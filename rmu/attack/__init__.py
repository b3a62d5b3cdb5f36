"""The second half of the product: try to undo the unlearning (`python -m rmu.attack`).

cli.py runs the attacks and writes the summary; probe.py (linear probes on hidden
states), relearn.py (fine-tuning attacks) and ablate.py (directional ablation) hold them.
"""
