"""The method: RMU and its siblings, over shared parts.

step.py holds `rmu_step` (the RMU update, math in its docstring); robust.py `robust_step`
and the robust variants' stages; span.py the layers a step runs and the frozen values;
losses.py the losses and control vectors; optim.py the AdamW update; recipe.py the recipe
that wires them (setup, the training loop, the output folder); reference_loop.py the public
reference code's loop, written independently, the oracle the tests and the bench compare
against.
"""
