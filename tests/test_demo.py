"""`kfjax demo`, the README's main job, runs end to end and leaves its table, panel and checkpoint."""

import pytest

from kfjax.cli import main


@pytest.mark.slow
def test_demo(tmp_path, capsys):
    assert main(["demo", "--workdir", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "| DI2IN (150 steps) |" in out and "intensity threshold" in out
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    assert any(p.name.isdigit() for p in (tmp_path / "checkpoints").iterdir())
    dice = float(out.split("| DI2IN (150 steps) | ")[1].split(" |")[0])
    assert dice > 0.8, out
