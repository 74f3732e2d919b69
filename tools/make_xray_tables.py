"""Write kfjax/physics/data/xray_tables.npz: the 120 kVp spectrum and attenuation tables of the metal simulator.

Not a kfjax dependency: run it in a scratch environment that has the two field libraries, e.g.

    python -m venv xrtab-venv && xrtab-venv/bin/pip install spekpy xraydb   # a scratch venv anywhere
    xrtab-venv/bin/python tools/make_xray_tables.py            # writes the .npz and its provenance .json

What it computes, on energies 20..120 keV in 1 keV steps (the grid of methods.md §0.3):

* ``spectrum``: photons per 1-keV bin [E - 0.5, E + 0.5) of a tungsten-anode tube at 120 kVp, from spekpy
  (anode angle ``--anode-angle``, default 12 deg), with aluminium added until the first half-value layer is
  ``--hvl`` mm Al (default 7.0 mm, a typical value for clinical CT at 120 kVp). Normalised to sum 1.
* ``mu_<material>``: linear attenuation coefficient in 1/mm = (mu/rho)(E) * rho, where mu/rho is xraydb's
  Elam table "total" (photoelectric + coherent + incoherent, i.e. "total with coherent" as in XCOM).
  Materials: water (H2O, 1.0 g/cm3), cortical bone (ICRU-44 composition by mass, 1.92 g/cm3; xraydb has no
  bone material), and the metals Ti, Fe, Cu, Au at the densities below. The reference MATLAB table
  (CNN-MAR ``getMARpara.m``) lists Au with density "2": almost surely a typo for 19.3, so the physical
  density is used here; every density is a command-line option and is recorded in the provenance file.

The simulator only uses ratios mu(E)/mu(70 keV) for water and bone, and absolute mu(70 keV) for metals.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

import numpy as np

# ICRU Report 44 cortical bone, mass fractions (sum 1.000), density 1.92 g/cm3
ICRU44_CORTICAL_BONE = {
    "H": 0.034, "C": 0.155, "N": 0.042, "O": 0.435, "Na": 0.001,
    "Mg": 0.002, "P": 0.103, "S": 0.003, "Ca": 0.225,
}
DEFAULT_DENSITY = {"water": 1.0, "bone": 1.92, "Ti": 4.5, "Fe": 7.8, "Cu": 8.9, "Au": 19.3}


def spectrum(kvp: float, anode_angle: float, hvl_mm_al: float, energies: np.ndarray) -> tuple[np.ndarray, float]:
    """Photon spectrum per 1-keV bin centred on ``energies`` (keV), and the added Al (mm) that gives ``hvl_mm_al``."""
    import spekpy

    def make(al_mm: float):
        s = spekpy.Spek(kvp=kvp, th=anode_angle, dk=0.5)
        if al_mm > 0:
            s.filter("Al", al_mm)
        return s

    lo, hi = 0.0, 30.0  # bisection on the added aluminium thickness in mm
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if make(mid).get_hvl1() < hvl_mm_al:
            lo = mid
        else:
            hi = mid
    al = 0.5 * (lo + hi)
    k, fluence = make(al).get_spectrum(flu=True, diff=True)  # bin centres (keV), photons/keV
    k = np.asarray(k, dtype=np.float64)
    fluence = np.asarray(fluence, dtype=np.float64)
    # spekpy's 0.5-keV bins centred on E -/+ 0.25 together cover [E - 0.5, E + 0.5)
    s = np.array([fluence[np.abs(k - e) < 0.5].sum() * 0.5 for e in energies])
    return s / s.sum(), al


def mass_attenuation(material: str, energies_ev: np.ndarray) -> np.ndarray:
    """Total mass attenuation coefficient (cm2/g, Elam tables, coherent included) at ``energies_ev`` (eV)."""
    import xraydb

    if material == "water":
        return np.array([xraydb.material_mu("H2O", e, density=1.0, kind="total") for e in energies_ev])
    if material == "bone":
        return sum(w * np.asarray(xraydb.mu_elam(el, energies_ev, kind="total")) for el, w in ICRU44_CORTICAL_BONE.items())
    return np.asarray(xraydb.mu_elam(material, energies_ev, kind="total"), dtype=np.float64)


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parent.parent
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(here / "kfjax" / "physics" / "data" / "xray_tables.npz"))
    p.add_argument("--kvp", type=float, default=120.0)
    p.add_argument("--anode-angle", type=float, default=12.0, help="tungsten anode angle in degrees")
    p.add_argument("--hvl", type=float, default=7.0, help="target first half-value layer in mm Al")
    p.add_argument("--e-min", type=int, default=20)
    p.add_argument("--e-max", type=int, default=120)
    for name, rho in DEFAULT_DENSITY.items():
        p.add_argument(f"--rho-{name.lower()}", type=float, default=rho, help=f"density of {name} in g/cm3")
    args = p.parse_args(argv)

    energies = np.arange(args.e_min, args.e_max + 1, dtype=np.float64)
    spec, al = spectrum(args.kvp, args.anode_angle, args.hvl, energies)
    density = {name: getattr(args, f"rho_{name.lower()}") for name in DEFAULT_DENSITY}
    tables = {"energies_kev": energies, "spectrum": spec}
    for name, rho in density.items():
        # (cm2/g) * (g/cm3) = 1/cm; /10 -> 1/mm
        tables[f"mu_{name}"] = mass_attenuation(name, energies * 1000.0) * rho / 10.0
    tables["densities_g_cm3"] = np.array([density[n] for n in DEFAULT_DENSITY])
    tables["density_names"] = np.array(list(DEFAULT_DENSITY))

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}.npz")
    np.savez(tmp, **tables)
    os.replace(tmp, out)

    i70 = int(np.argmin(np.abs(energies - 70.0)))
    provenance = {
        "file": out.name,
        "command": " ".join(["python tools/make_xray_tables.py", *(argv if argv is not None else sys.argv[1:])]),
        "python": platform.python_version(),
        "packages": {n: metadata.version(n) for n in ("spekpy", "xraydb", "numpy")},
        "energies_kev": [args.e_min, args.e_max, 1],
        "spectrum": {
            "source": "spekpy.Spek(kvp, th=anode_angle, dk=0.5) + filter('Al', added_al_mm); photon fluence summed "
            "into 1-keV bins [E-0.5, E+0.5), normalised to sum 1",
            "kvp": args.kvp, "anode": "W", "anode_angle_deg": args.anode_angle,
            "target_hvl1_mm_al": args.hvl, "added_al_mm": round(al, 4),
            "mean_energy_kev": float((energies * spec).sum()),
        },
        "attenuation": {
            "source": "xraydb Elam tables, kind='total' (photo + coherent + incoherent); mu = mu/rho * rho, in 1/mm",
            "densities_g_cm3": density,
            "bone_composition": "ICRU-44 cortical bone, mass fractions " + json.dumps(ICRU44_CORTICAL_BONE),
            "note_au": "the reference getMARpara.m lists Au density as 2 g/cm3; 19.3 (physical) is used here",
            "mu_at_70kev_per_mm": {n: float(tables[f"mu_{n}"][i70]) for n in density},
        },
    }
    out.with_suffix(".json").write_text(json.dumps(provenance, indent=2) + "\n")
    print(json.dumps(provenance["spectrum"], indent=1))
    print(json.dumps(provenance["attenuation"]["mu_at_70kev_per_mm"], indent=1))
    print(f"wrote {out} and {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
