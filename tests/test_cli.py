"""The command line: every kind of bad input gives one line, exit code 2 and no output file."""

import gzip
import json

import nibabel as nib
import numpy as np
import pytest

from kfjax.cli import main

TINY = ["data.size=16", "data.n_train=16", "data.n_val=8", "data.batch_size=4", "model.channels=4,8",
        "train.steps=4", "train.checkpoint_every=2", "train.log_every=2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    assert main(["train", "di2in", "--workdir", str(workdir), "--no-progress", "--set", *TINY]) == 0
    return workdir


def _nifti(path, array, affine=None):
    nib.save(nib.Nifti1Image(np.asarray(array, np.float32), np.eye(4) if affine is None else affine), str(path))
    return path


def _error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("kfjax: error: "), err
    return err[0]


def test_list(capsys):
    assert main(["list"]) == 0
    assert "di2in" in capsys.readouterr().out


def test_train_writes_run_and_eval_reads_it(trained, capsys):
    assert (trained / "config.json").is_file()
    records = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == [2, 4]
    assert any(r["split"] == "val" and "dice" in r for r in records)
    assert list((trained / "tb").glob("events.out.tfevents.*")), "TensorBoard events with tensorboardX installed"
    assert main(["eval", "di2in", "--workdir", str(trained)]) == 0
    out = capsys.readouterr().out
    assert "| dice |" in out and "| asd |" in out
    saved = json.loads((trained / "eval_val.json").read_text())
    assert set(saved["metrics"]) == {"dice", "asd"}
    assert main(["plot", str(trained)]) == 0
    assert (trained / "curves.png").stat().st_size > 1000


def test_unknown_method_and_key(capsys, tmp_path):
    assert "did you mean di2in" in _error(capsys, ["train", "di2inn", "--workdir", str(tmp_path / "a")])
    msg = _error(capsys, ["train", "di2in", "--workdir", str(tmp_path / "b"), "--set", "optim.lrate=1"])
    assert "unknown config key 'optim.lrate'" in msg and "valid keys" in msg
    assert not (tmp_path / "b").exists()
    assert "does not exist" in _error(capsys, ["train", "di2in", "--config", str(tmp_path / "none.json")])


def test_resume_with_other_settings_is_refused(trained, capsys):
    msg = _error(capsys, ["train", "di2in", "--workdir", str(trained), "--no-progress",
                          "--set", *TINY, "optim.lr=0.5"])
    assert "other settings (optim.lr)" in msg


def test_bad_batch_size_for_devices(capsys, tmp_path):
    msg = _error(capsys, ["train", "di2in", "--workdir", str(tmp_path), "--set", *TINY, "data.batch_size=6"])
    assert "multiple of 4" in msg


def test_info_and_bad_files(capsys, tmp_path):
    good = _nifti(tmp_path / "v.nii.gz", np.zeros((4, 5, 6)))
    assert main(["info", str(good)]) == 0
    assert "(4, 5, 6)" in capsys.readouterr().out
    assert "missing.nii.gz" in _error(capsys, ["info", str(tmp_path / "missing.nii.gz")])
    corrupt = tmp_path / "c.nii.gz"
    corrupt.write_bytes(b"\x1f\x8b" + bytes(range(200)))
    assert "c.nii.gz" in _error(capsys, ["info", str(corrupt)])
    truncated = tmp_path / "t.nii.gz"
    truncated.write_bytes(gzip.compress((tmp_path / "v.nii.gz").read_bytes())[:40])
    assert "t.nii.gz" in _error(capsys, ["info", str(truncated)])
    assert "plot" not in _error(capsys, ["plot", str(tmp_path / "nowhere")])


def test_infer(trained, capsys, tmp_path):
    volume = _nifti(tmp_path / "ct.nii.gz", np.random.default_rng(0).uniform(0, 1, (20, 18, 3)),
                    affine=np.diag([0.7, 0.7, 2.5, 1.0]))
    out = tmp_path / "mask.nii.gz"
    assert main(["infer", "di2in", "--workdir", str(trained), "--input", str(volume), "--out", str(out),
                 "--no-progress"]) == 0
    mask = nib.load(str(out))
    assert mask.shape == (20, 18, 3)
    np.testing.assert_allclose(mask.affine, np.diag([0.7, 0.7, 2.5, 1.0]))


@pytest.mark.parametrize("case", ["nan", "4d", "missing", "badout"])
def test_infer_bad_input_writes_nothing(trained, capsys, tmp_path, case):
    out = tmp_path / "mask.nii.gz"
    array = np.zeros((16, 16, 4))
    if case == "nan":
        array[3, 3, 1] = np.nan
    if case == "4d":
        array = np.zeros((16, 16, 4, 2))
    path = _nifti(tmp_path / "in.nii.gz", array)
    if case == "missing":
        path = tmp_path / "nope.nii.gz"
    if case == "badout":
        out = tmp_path / "no" / "such" / "dir" / "mask.nii.gz"
    msg = _error(capsys, ["infer", "di2in", "--workdir", str(trained), "--input", str(path), "--out", str(out),
                          "--no-progress"])
    expected = {"nan": "NaN", "4d": "3-D", "missing": "nope.nii.gz", "badout": "does not exist"}[case]
    assert expected in msg
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nii.gz"]


def test_eval_without_run(capsys, tmp_path):
    assert "config.json" in _error(capsys, ["eval", "di2in", "--workdir", str(tmp_path)])


def test_eval_of_a_trained_run_keeps_what_the_checkpoint_fixed(trained, capsys):
    msg = _error(capsys, ["eval", "di2in", "--workdir", str(trained), "--set", "model.channels=8,16"])
    assert "fixed by the trained run" in msg
    assert main(["eval", "di2in", "--workdir", str(trained), "--set", "train.eval_batch_size=8",
                 "--split", "test"]) == 0
    assert "| dice |" in capsys.readouterr().out
