"""Property tests of the command line's bad-input contract: whatever the user types or feeds it, bad input
ends in exit code 2, exactly one line on stderr ("kfjax: error: ..."), nothing on stdout, and no file
written.

- `kfjax train di2in --set ...` with unknown keys, or with values of the wrong type for real keys;
- `kfjax info FILE` and `kfjax drr FILE --out X` on random bytes named .nii.gz, .nii, .dcm or .png (raw,
  gzip-compressed, or behind a DICOM preamble).

Each example runs in its own temporary folder (tempfile, not tmp_path: hypothesis reuses function-scoped
fixtures across examples) which is also the working directory, so "nothing written" covers the default
run folder too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import tempfile
import types
import typing
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kfjax.cli import main
from kfjax.methods.di2in import DI2INConfig

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# strings that some config type accepts: bool words, float specials, None for optional fields
ACCEPTED_WORDS = {"true", "false", "yes", "no", "inf", "infinity", "nan", "none", "null"}


def _leaf_types(config, prefix: str = "") -> dict[str, typing.Any]:
    """{dotted key: annotated type} of every leaf of a config dataclass tree."""
    hints = typing.get_type_hints(type(config))
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            out.update(_leaf_types(value, f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = hints[f.name]
    return out


def _accepts_any_text(tp) -> bool:
    """True when a string value can never be the wrong type for `tp` (str, or a tuple/union holding str)."""
    if tp is str or tp is typing.Any:
        return True
    return any(_accepts_any_text(a) for a in typing.get_args(tp) if a is not type(None) and a is not Ellipsis)


def _is_type(tp, wanted: type) -> bool:
    return tp is wanted or (typing.get_origin(tp) in (typing.Union, types.UnionType) and wanted in typing.get_args(tp))


LEAVES = _leaf_types(DI2INConfig())
SECTIONS = sorted({k.split(".")[0] for k in LEAVES if "." in k})
TYPED_KEYS = sorted(k for k, tp in LEAVES.items() if not _accepts_any_text(tp))
INT_KEYS = sorted(k for k in TYPED_KEYS if _is_type(LEAVES[k], int))

names = st.from_regex(r"[a-z][a-z0-9_]{0,11}", fullmatch=True)
# a word of letters that no int, float, bool, tuple-of-numbers or optional field accepts
bad_word = st.from_regex(r"[A-Za-z]{1,12}", fullmatch=True).filter(lambda w: w.lower() not in ACCEPTED_WORDS)
any_value = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)


@st.composite
def unknown_key_item(draw):
    """`key=value` with a key that is no config key: a random name, maybe under a real section."""
    section = draw(st.sampled_from(["", *SECTIONS]))
    key = draw(st.lists(names, min_size=1, max_size=2).map(".".join))
    key = f"{section}.{key}" if section else key
    if key in LEAVES or any(k.startswith(key + ".") for k in LEAVES):
        key += "_x"  # a real key or section by chance: make it unknown (leaves never end in _x)
    assert key not in LEAVES
    return f"{key}={draw(any_value)}"


@st.composite
def wrong_type_item(draw):
    """`key=value` with a real key whose type rejects the value (a word, or a fraction for an int)."""
    key = draw(st.sampled_from(TYPED_KEYS))
    value = draw(bad_word)
    if key in INT_KEYS and draw(st.booleans()):
        value = f"{draw(st.integers(-1000, 1000))}.{draw(st.integers(1, 9))}"  # 2.5: no integer
    return f"{key}={value}"


def _one_line_error(capsys) -> str:
    out, err = capsys.readouterr()
    assert out == "", f"stdout: {out!r}"
    assert err.startswith("kfjax: error: ") and err.endswith("\n") and err.count("\n") == 1, f"stderr: {err!r}"
    return err


@contextlib.contextmanager
def _empty_folder():
    """A fresh temporary folder, also the working directory while in use."""
    with tempfile.TemporaryDirectory(prefix="kfjax-cli-") as folder, contextlib.chdir(folder):
        yield Path(folder)


def test_strategies_cover_the_config():
    assert {"data", "model", "optim", "train"} <= set(SECTIONS)
    assert "optim.lr" in TYPED_KEYS and "train.steps" in INT_KEYS and "optim.name" not in TYPED_KEYS


@SETTINGS
@given(items=st.lists(st.one_of(unknown_key_item(), wrong_type_item()), min_size=1, max_size=3))
def test_bad_overrides_exit_2_with_one_line_and_write_nothing(items, capsys):
    with _empty_folder() as folder:
        code = main(["train", "di2in", "--workdir", str(folder / "run"), "--no-progress", "--set", *items])
        assert code == 2
        err = _one_line_error(capsys)
        assert "config key" in err
        assert list(folder.iterdir()) == [], "the failed command wrote files"


def _payloads():
    raw = st.binary(max_size=2048)
    return st.one_of(
        raw,
        raw.map(gzip.compress),  # a valid gzip stream of garbage: the NIfTI reader gets past gunzip
        raw.map(lambda b: b"\0" * 128 + b"DICM" + b),  # the DICOM marker, then garbage
    )


@SETTINGS
@given(payload=_payloads(), suffix=st.sampled_from([".nii.gz", ".nii", ".dcm", ".png"]),
       command=st.sampled_from(["info", "drr"]))
def test_random_bytes_as_a_volume_exit_2_with_one_line_and_write_nothing(payload, suffix, command, capsys):
    with _empty_folder() as folder:
        path = folder / f"volume{suffix}"
        path.write_bytes(payload)
        argv = ["info", str(path)] if command == "info" else ["drr", str(path), "--out", str(folder / "x.png")]
        assert main(argv) == 2
        _one_line_error(capsys)
        assert [p.name for p in folder.iterdir()] == [path.name], "the failed command wrote files"
