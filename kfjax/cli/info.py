"""`kfjax info FILE`: shape, spacing, range and affine of a NIfTI file or DICOM series."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="shape, spacing, range and affine of a NIfTI file or DICOM series")
    p.add_argument("path")
    p.set_defaults(func=run)


def run(args) -> int:
    import numpy as np

    from kfjax.io import load_volume

    volume = load_volume(args.path)
    a = volume.array
    finite = np.isfinite(a)
    print(f"file     {args.path}")
    print(f"shape    {a.shape}  dtype {a.dtype}")
    print(f"spacing  {tuple(round(float(s), 4) for s in volume.spacing)} mm")
    print(f"range    [{a[finite].min() if finite.any() else 'n/a'}, {a[finite].max() if finite.any() else 'n/a'}]")
    if not finite.all():
        print(f"warning  {int((~finite).sum())} NaN/Inf values")
    print("affine   " + np.array2string(volume.affine, precision=4, suppress_small=True).replace("\n", "\n         "))
    return 0
