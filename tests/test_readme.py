"""The README's first lines are exactly the two fresh-machine commands, and CI runs the second."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_starts_with_the_two_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    run_cmd, test_cmd = lines[0].strip(), lines[1].strip()
    assert "srcompress run --config configs/tiny.yaml" in run_cmd and "pip install" in run_cmd
    assert "pytest" in test_cmd and "'.[test]'" in test_cmd
    assert not lines[2].strip()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "sed -n '2p' README.md" in ci


def test_ci_checks_the_main_job_promises_after_the_suite():
    """The main job's quality figures moved from the suite to bench/main_job.py: CI must still run it, after
    the test command, and the script must return its checks' status as its exit code (read from its source:
    running it is the 4-minute main job, which CI does)."""
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    # commands, not the comments or echoes that merely name them
    runs = [i for i, line in enumerate(ci) if not line.lstrip().startswith(("#", "echo"))]
    test_at = next(i for i in runs if "$test_cmd" in ci[i] and "bash -c" in ci[i])
    assert any(i > test_at and ci[i].split()[:2] == [".venv/bin/python", "bench/main_job.py"] for i in runs)
    src = (ROOT / "bench" / "main_job.py").read_text()
    assert "return 1 if failed else 0" in src and "sys.exit(main())" in src
