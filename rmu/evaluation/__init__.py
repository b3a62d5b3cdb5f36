"""Evaluation and records: multiple-choice scoring (mcq.py), lm-evaluation-harness runs
(harness.py) and results.json, the contract every later command reads (results.py)."""
