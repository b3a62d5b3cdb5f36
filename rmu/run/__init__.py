"""What makes a run survive, whatever the method: the run's folder (folder.py: lock,
leftovers, auto-resume, resume state), locking, resume states and signals, atomic
publishing and leftover cleanup (checkpoint.py, leftovers.py), disk and memory estimates,
several processes and FSDP, sweeps, tracking, progress, and the wrapper every command runs
in (cli.py)."""
