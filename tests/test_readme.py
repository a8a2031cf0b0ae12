"""The README's set-up commands are the ones CI runs and the ones the project supports."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands():
    return re.findall(r"```bash\n(python3 -m venv[^\n]*)\n```", (ROOT / "README.md").read_text())


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_second():
    commands = readme_commands()
    assert len(commands) == 2
    main_job, tests = commands
    assert "pip install -q torch==2.13.0" in main_job.split("pip install -q -e")[0]
    assert "scripts/make_synthetic.py --out data_synthetic" in main_job and "configs/synthetic_cpu.yaml" in main_job
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests in ci_lines


def test_main_job_recipe_points_at_the_folders_make_synthetic_writes():
    import yaml

    recipe = yaml.safe_load((ROOT / "configs" / "synthetic_cpu.yaml").read_text())
    assert [recipe[k] for k in ("source_dataset", "target_dataset", "target_eval_dataset")] == [
        "data_synthetic/source",
        "data_synthetic/target",
        "data_synthetic/target_val",
    ]
