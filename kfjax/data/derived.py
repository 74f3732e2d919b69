"""Derived datasets: the public entry point to every set, and ``kfjax data info`` / ``preview`` of them.

A derived set is a deterministic array set computed from the real sources and cached with a manifest
(:mod:`kfjax.data.cache`, re-exported here: :class:`DerivedSet`, :data:`DERIVED`, :func:`register`,
:func:`get_derived`, :func:`build`, :func:`derived_dir`, :func:`cached_builds`). The sets are defined and
registered in their own modules, all imported here: ``ct-slices`` (:func:`ct_slices`) and
``chest-ct-structures`` (:func:`chest_ct_structures`) in :mod:`kfjax.data.ct`, ``mr-t1t2``
(:func:`mr_t1t2`, MR images simulated from a real template) in :mod:`kfjax.data.mr`, ``mar-ct`` and
``mar-phantom`` in :mod:`kfjax.data.mar`.

All arrays are in display orientation, found from the NIfTI affine (not assumed): axis 0 runs inferior ->
superior, rows (axis 1) anterior -> posterior, columns (axis 2) from the patient's right to the patient's
left (radiological convention: the patient's left is on the right of the image). ``affine`` maps the array
index ``(d, r, c)`` to RAS world mm. See :mod:`kfjax.io.orientation`.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from kfjax.data import domains as _domains  # noqa: F401  (registers u2net-ct)
from kfjax.data import landmarks as _landmarks  # noqa: F401  (registers drr-landmarks)
from kfjax.data import mar as _mar  # noqa: F401  (registers mar-ct and mar-phantom)
from kfjax.data import organs3d as _organs3d  # noqa: F401  (registers organs3d and chest-ct-liver)
from kfjax.data import xray_decomposition as _xray  # noqa: F401  (registers xray-decomposition)
from kfjax.data.cache import DERIVED, DerivedSet, build, cached_builds, derived_dir, get_derived, register
from kfjax.data.ct import chest_ct_structures, ct_slices
from kfjax.data.mr import CONTRASTS, mr_slices, mr_t1t2
from kfjax.io.orientation import ORIENTATION

__all__ = ["DerivedSet", "DERIVED", "register", "get_derived", "build", "derived_dir", "cached_builds",
           "ct_slices", "chest_ct_structures", "mr_t1t2", "mr_slices", "describe", "preview_panels"]


# ---------------------------------------------------------------- kfjax data info / preview

def describe(name: str) -> list[str]:
    """Lines for ``kfjax data info NAME`` of a derived set: what, sources, parameters, cached builds."""
    ds = get_derived(name)
    lines = [f"name         {ds.name} (derived)", f"what         {ds.description}",
             f"from         {', '.join(ds.sources)} (kfjax data fetch {' '.join(ds.sources)})",
             f"parameters   {json.dumps(ds.defaults)} (defaults; --param KEY=VALUE to change)",
             f"cache        {derived_dir() / ds.name}"]
    builds = cached_builds(name)
    if not builds:
        lines.append(f"cached       none yet: kfjax data fetch {ds.name} (or preview) builds it")
    for info in builds:
        meta = {k: v for k, v in info["meta"].items() if k not in ("structures", "orientation")}
        lines.append(f"cached       params {json.dumps(info['params'])} version {info['version']} sha256 {info['sha256'][:12]}...")
        lines.append(f"  meta       {json.dumps(meta)}")
    if ds.name == "mr-t1t2":
        lines.append("note         simulated from a real template: contrast from literature T1/T2/PD, not acquired MR")
    else:
        lines.append(f"orientation  {ORIENTATION}")
    return lines


def _window(**kw):
    return dict(cmap="gray", vmin=-1000, vmax=1000, **kw)


def preview_panels(name: str, params: dict[str, Any] | None = None) -> list[tuple]:
    """``(title, image (H, W), imshow keywords[, points (n, 2) as x, y])`` for the contact sheet of a derived set."""
    ds = get_derived(name)
    params = params or {}
    if ds.name == "ct-slices":
        d = ct_slices(**params)
        hu, panels = d["hu"][..., 0], []
        for split, idx in d["splits"].items():
            k = int(idx[len(idx) // 2])
            panels.append((f"{split} slice {k} (HU)", hu[k], _window()))
        k = int(np.argmax(d["invalid"].sum(axis=(1, 2, 3))))
        inv = np.ma.masked_equal(d["invalid"][k, ..., 0].astype(np.float32), 0)
        panels.append((f"slice {k}: invalid (red)", hu[k], _window(), None, (inv, dict(cmap="autumn", alpha=0.8))))
        panels.append((f"slice {k}: μ 70 keV (1/mm)", d["mu"][k, ..., 0], dict(cmap="gray", vmin=0, vmax=0.03)))
        panels.append((f"slice {k}: body", d["body"][k, ..., 0], dict(cmap="gray", vmin=0, vmax=1)))
        return panels
    if ds.name == "chest-ct-structures":
        d = chest_ct_structures()
        ct, groups = d["ct"], d["groups"]
        aspect = d["spacing_mm"][0] / d["spacing_mm"][1]
        lab = dict(cmap="tab20", vmin=0, vmax=20, alpha=0.6, interpolation="nearest")
        panels = []
        for k in (int(0.45 * len(ct)), int(0.75 * len(ct))):
            panels.append((f"axial {k}: groups", ct[k], _window(), None, (np.ma.masked_equal(groups[k], 0), lab)))
        r = ct.shape[1] // 2
        panels.append((f"coronal row {r}: groups", ct[:, r], _window(origin="lower", aspect=aspect), None,
                       (np.ma.masked_equal(groups[:, r], 0), dict(lab, origin="lower", aspect=aspect))))
        idx = (np.linalg.inv(d["affine"]) @ np.c_[d["landmarks_ras"], np.ones(len(d["landmarks_ras"]))].T)[:3].T
        c = int(np.median(idx[:, 2])) if len(idx) else ct.shape[2] // 2
        panels.append((f"sagittal col {c}: vertebra centroids", ct[:, :, c], _window(origin="lower", aspect=aspect),
                       idx[:, [1, 0]]))
        return panels
    d = mr_t1t2(**params)
    k = int(np.argmax((d["labels"] > 0).sum(axis=(1, 2))))
    field = d["meta"]["field_t"]
    panels = [(f"{c.upper()} {field} T axial {k} (simulated)", d[c][k], dict(cmap="gray", vmin=0, vmax=float(np.percentile(d[c], 99.9))))
              for c in CONTRASTS]
    panels.append((f"tissue labels axial {k}", d["labels"][k], dict(cmap="viridis", vmin=0, vmax=3, interpolation="nearest")))
    r = d["t1w"].shape[1] // 2
    for c in ("t1w", "t2w"):
        panels.append((f"{c.upper()} coronal (simulated)", d[c][:, r], dict(cmap="gray", vmin=0, origin="lower",
                                                                             vmax=float(np.percentile(d[c], 99.9)))))
    return panels
