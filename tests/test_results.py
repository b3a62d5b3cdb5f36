"""results.json (rmu/evaluation/results.py): an older run's file still reads, a file that is
not a run's is refused by name."""

def test_results_of_an_older_run_and_a_broken_file(tmp_path):
    import json

    import pytest

    from rmu.errors import ConfigError
    from rmu.evaluation.results import RunResults

    older = {"model": "m", "output_dir": str(tmp_path), "steps": 2, "topics": ["chem"], "steering_coeff": [5.0],
             "alpha": [100.0], "layer_id": 2, "update_layers": [0, 1, 2], "updated_parameters": ["w"],
             "eval": {"chem": {"role": "forget", "base": {"acc": 0.8, "acc_norm": 0.7, "chance": 0.25, "n": 4},
                               "unlearned": {"acc": 0.25, "acc_norm": 0.5, "chance": 0.25, "n": 4}}},
             "seconds": {"train": 1.0}}  # written before multi-process runs: no processes / fsdp
    (tmp_path / "results.json").write_text(json.dumps(older))
    r = RunResults.read(tmp_path)
    assert (r.processes, r.fsdp, r.update_layers) == (1, False, [0, 1, 2])
    assert r.mean_unlearned_acc("forget") == 0.25 and r.mean_unlearned_acc("retain") is None
    assert r.table().splitlines()[1].split() == ["chem", "forget", "4", "0.250", "0.800", "0.250", "0.700", "0.500"]
    (tmp_path / "results.json").write_text('{"steps": 2}')
    with pytest.raises(ConfigError, match="not the results.json of an rmu.train run"):
        RunResults.read(tmp_path)
