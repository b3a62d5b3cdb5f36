"""Configuration: the keys and types of every command (schema.py), the checks of their
values (checks.py), the plan that reads every file a run needs before any weights load
(plan.py), and one-sentence answers to command-line mistakes Hydra would trace back
(overrides.py)."""
