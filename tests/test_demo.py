"""`kfjax demo`, the README's main job, runs end to end and leaves its table, panel and checkpoints."""

import pytest

from kfjax.cli import main

TINY = [
    "data.source=phantom",
    "data.geometry=adn_quarter",
    "data.n_phantoms=10",
    "data.masks_per_slice=1",
    "train.steps=4",
    "train.checkpoint_every=2",
    "model.se_channels=[8,16,32]",
    "model.ie_channels=[8,16,32]",
]


@pytest.mark.slow
def test_demo(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KFJAX_DATA", str(tmp_path / "data"))
    assert main(["demo", "--workdir", str(tmp_path / "run"), "--no-progress", "--set", *TINY]) == 0
    out = capsys.readouterr().out
    for row in (
        "| uncorrected |",
        "| linear interpolation (LI) |",
        "| image-only U-Net (4 steps) |",
        "| DuDoNet (4 steps) |",
        "| PSNR g0 | PSNR g1 | PSNR g2 | PSNR g3 | PSNR g4 |",
    ):
        assert row in out, out
    assert (tmp_path / "run" / "demo.png").stat().st_size > 10_000
    for mode in ("dual", "image"):
        assert any(p.name.isdigit() for p in (tmp_path / "run" / mode / "checkpoints").iterdir())
    li = float(out.split("| linear interpolation (LI) | ")[1].split(" |")[0])
    dudonet = float(out.split("| DuDoNet (4 steps) | ")[1].split(" |")[0])
    assert abs(dudonet - li) < 3.0  # starts from LI (zero-initialised residual branches) and moves little
