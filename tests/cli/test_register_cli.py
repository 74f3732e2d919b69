"""`kfjax register`: recovers a known patient motion of a small synthetic CT from two rendered X-rays (PNG and
NIfTI intensity images), writes pose.json and overlays, gives the same pose for the extrinsic, DiffDRR and
ASTRA geometry forms, and answers bad input with one line, exit code 2 and nothing written."""

import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from kfjax import metrics
from kfjax.cli import main
from kfjax.cli.register import read_xray
from kfjax.errors import InputError
from kfjax.physics import carm, drr
from kfjax.register import geometry_file as gf
from kfjax.register import pose as rp

N = 32
CAM = carm.CArm(sdd=1200.0, height=32, width=32, dx=3.2, dy=3.2)
TRUTH = np.array([0.05, -0.04, 0.06, 5.0, -4.0, 6.0])  # rotation vector rad (about the CT centre), translation mm
LEVELS = ["--levels", "1:60:1.5"]


def _ct_hu():
    """32^3 HU at 2.5 mm: a water-like body ellipsoid in air with six bony blobs."""
    rng = np.random.default_rng(0)
    g = np.stack(np.meshgrid(*[np.arange(N, dtype=np.float64)] * 3, indexing="ij"), -1)
    c = (N - 1) / 2
    hu = np.where(np.sum(((g - c) / np.array([13.0, 10.0, 14.0])) ** 2, -1) < 1, 0.0, -1000.0)
    for _ in range(6):
        cc, r = rng.uniform(9, N - 9, 3), rng.uniform(1.5, 4.0, 3)
        hu = np.where(np.sum(((g - cc) / r) ** 2, -1) < 1, 1200.0, hu)
    aff = np.diag([2.5, 2.5, 2.5, 1.0])
    aff[:3, 3] = [-40.0, -35.0, -42.0]
    return hu.astype(np.float32), aff


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """Files of the case: CT, AP X-ray (16-bit PNG), lateral X-ray (NIfTI), both intensities at TRUTH, the
    same as line integrals (NIfTI), and the geometry in the three forms."""
    d = tmp_path_factory.mktemp("register-case")
    hu, aff = _ct_hu()
    nib.save(nib.Nifti1Image(hu, aff), d / "ct.nii.gz")
    centre = rp.volume_centre(aff, hu.shape)
    ext = np.stack([np.asarray(carm.look_at(centre + v, centre), np.float64) for v in ([0, -1000, 0], [1000, 0, 0])])
    moved = ext @ np.asarray(rp.transform_from_params(TRUTH, centre), np.float64)
    p = np.asarray(drr.make_renderer(CAM)(drr.hu_to_mu(hu), aff, moved), np.float64)  # (2, 32, 32)
    intensity = np.exp(-p)
    Image.fromarray(np.round(intensity[0] * 65535).astype(np.uint16)).save(d / "ap.png")
    nib.save(nib.Nifti1Image(intensity[1].T.astype(np.float32), np.eye(4)), d / "lat.nii.gz")  # (W, H): array.T
    for k, name in enumerate(("ap_p", "lat_p")):
        nib.save(nib.Nifti1Image(p[k].T[..., None].astype(np.float32), np.eye(4)), d / f"{name}.nii.gz")
    shared = {"sdd": CAM.sdd, "pixel_spacing": CAM.dx, "detector": [CAM.height, CAM.width]}
    rot, xyz = carm.to_diffdrr(ext, "ZXY", "AP", isocenter=carm.diffdrr_isocenter(aff, hu.shape))
    astra = np.asarray(carm.to_astra_cone_vec(CAM, ext, aff, hu.shape), np.float64)
    forms = {
        "extrinsic": [{"extrinsic": e.tolist()} for e in ext],
        "diffdrr": [{"diffdrr": {"rotation_deg": np.rad2deg(np.asarray(r, np.float64)).tolist(),
                                 "translation_mm": np.asarray(t, np.float64).tolist(), "convention": "ZXY",
                                 "orientation": "AP"}} for r, t in zip(rot, xyz)],
        "astra": [{"astra_cone_vec": v.tolist()} for v in astra],
    }
    for name, views in forms.items():
        (d / f"{name}.json").write_text(json.dumps({**shared, "views": views}))
    (d / "mixed.json").write_text(json.dumps({**shared, "views": [forms["diffdrr"][0], forms["astra"][1]]}))
    points = centre + np.random.default_rng(1).uniform(-25, 25, (200, 3))
    return {"dir": d, "aff": aff, "shape": hu.shape, "centre": centre, "ext": ext, "points": points,
            "shared": shared, "views": forms["extrinsic"]}


def _register(case, out, *extra, geometry="extrinsic.json", xrays=("ap.png", "lat.nii.gz")):
    d = case["dir"]
    argv = ["register", str(d / "ct.nii.gz")]
    if "--xray-kind" not in extra:  # the default X-rays are detector intensities
        argv += ["--xray-kind", "intensity"]
    for x in xrays:
        argv += ["--xray", str(d / x)]
    return main([*argv, "--geometry", str(d / geometry), *LEVELS, "--out", str(out), *map(str, extra)])


def _mtre(transform, case):
    true = rp.transform_from_params(TRUTH, case["centre"])
    return float(metrics.mtre(np.asarray(transform, np.float32)[None], np.asarray(true)[None], case["points"])[0])


@pytest.fixture(scope="module")
def registered(case):
    """Pose found from the identity with the extrinsic geometry form (and the captured output)."""
    out = case["dir"] / "out-extrinsic"
    rc = _register(case, out)
    return rc, out, json.loads((out / "pose.json").read_text())


def test_recovers_the_motion_and_writes_pose_and_overlays(case, registered):
    rc, out, pose = registered
    assert rc == 0
    start = _mtre(np.eye(4), case)
    found = _mtre(pose["transform"], case)
    assert start > 5.0 and found < 0.5, f"mTRE {start:.2f} -> {found:.3f} mm"
    assert set(pose) >= {"rotation_deg", "translation_mm", "transform", "centre_mm", "similarity", "method"}
    np.testing.assert_allclose(pose["centre_mm"], case["centre"])
    np.testing.assert_allclose(gf.params_to_transform(np.r_[np.deg2rad(pose["rotation_deg"]), pose["translation_mm"]],
                                                      case["centre"]), pose["transform"], atol=1e-9)
    assert pose["similarity"]["name"] == "gc" and pose["similarity"]["mean"] > 0.99
    assert len(pose["similarity"]["per_view"]) == 2
    for name in ("overlay1_ap.png", "overlay2_lat.png"):
        with Image.open(out / name) as im:
            assert im.size == (CAM.width, CAM.height) and im.mode == "RGB"
    assert sorted(p.name for p in out.iterdir()) == ["overlay1_ap.png", "overlay2_lat.png", "pose.json"]
    # the written pose reads back as --init (same parameters)
    np.testing.assert_allclose(gf.load_pose(out / "pose.json", case["centre"])[3:], pose["translation_mm"], atol=1e-9)


def test_prints_pose_similarity_and_one_progress_line_per_level(case, tmp_path, capsys):
    assert _register(case, tmp_path / "o", "--levels", "0.5:10:3,1:60:1.5") == 0
    captured = capsys.readouterr()
    assert "rotation vector" in captured.out and "translation" in captured.out and "similarity (gc)" in captured.out
    lines = [s for s in captured.err.splitlines() if s.startswith("level ")]
    assert [s.split(":")[0] for s in lines] == ["level 1/2", "level 2/2"] and "16x16 detector" in lines[0]


def test_geometry_forms_agree(case, registered):
    want = case["ext"]
    for name in ("extrinsic", "diffdrr", "astra", "mixed"):
        g = gf.load_geometry(case["dir"] / f"{name}.json", case["aff"], case["shape"])
        assert g.camera == CAM
        np.testing.assert_allclose(g.extrinsics, want, atol=2e-3, err_msg=name)
    out = case["dir"] / "out-mixed"
    assert _register(case, out, geometry="mixed.json") == 0
    pose = json.loads((out / "pose.json").read_text())
    diff = float(metrics.mtre(np.asarray(pose["transform"])[None], np.asarray(registered[2]["transform"])[None],
                              case["points"])[0])
    assert diff < 0.05, f"DiffDRR/ASTRA forms moved the result by {diff:.3f} mm"


def test_init_pose_and_line_integral_inputs(case, tmp_path):
    init = tmp_path / "init.json"
    init.write_text(json.dumps({"rotation_deg": [2.0, -2.0, 3.0], "translation_mm": [4.0, -3.0, 5.0]}))
    out = tmp_path / "o"
    assert _register(case, out, "--init", init, "--xray-kind", "line_integral", "--similarity", "ncc",
                     xrays=("ap_p.nii.gz", "lat_p.nii.gz")) == 0
    pose = json.loads((out / "pose.json").read_text())
    start = _mtre(gf.params_to_transform(gf.load_pose(init, case["centre"]), case["centre"]), case)
    assert _mtre(pose["transform"], case) < min(0.5, start)
    assert pose["similarity"]["name"] == "ncc"


def test_pose_file_forms(case, tmp_path):
    c = case["centre"]
    params = np.array([0.1, -0.2, 0.05, 3.0, 4.0, -5.0])
    m = gf.params_to_transform(params, c)
    f = tmp_path / "p.json"
    f.write_text(json.dumps({"transform": m.tolist()}))
    np.testing.assert_allclose(gf.load_pose(f, c), params, atol=1e-12)
    f.write_text(json.dumps(gf.pose_record(params, c, method="intensity")))
    np.testing.assert_allclose(gf.load_pose(f, c), params, atol=1e-12)
    for bad, message in [({"rotation_deg": [0, 0, 0], "translation_mm": [1, 0, 0], "transform": np.eye(4).tolist()},
                          "disagree"), ({"rotation": [0, 0, 0]}, "unknown key 'rotation'"),
                         ({"rotation_deg": [0, 0, 0]}, "missing key 'translation_mm'")]:
        f.write_text(json.dumps(bad))
        with pytest.raises(InputError, match=message):
            gf.load_pose(f, c)


def test_reads_a_monochrome1_dicom_radiograph_inverted(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    pixels = (np.arange(6 * 5, dtype=np.uint16).reshape(6, 5) * 100)  # (rows, columns)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PhotometricInterpretation = "DX", "MONOCHROME1"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 6, 5, 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.tobytes()
    path = tmp_path / "x.dcm"
    try:
        ds.save_as(path, enforce_file_format=True)
    except TypeError:  # pydicom 2
        ds.save_as(path, write_like_original=False)
    np.testing.assert_allclose(read_xray(str(path)), 4095.0 - pixels)


# ------------------------------------------------------------------------------------------------ bad input
def _geometry(case, tmp_path, change, raw=None) -> str:
    g = json.loads(json.dumps({**case["shared"], "views": case["views"]}))
    change(g)
    path = tmp_path / "g.json"
    path.write_text(raw if raw is not None else json.dumps(g))
    return path.name


def _scale_row(g):
    g["views"][0]["extrinsic"][0] = [1.01 * v for v in g["views"][0]["extrinsic"][0]]


def _shift(g):
    g["views"][1]["extrinsic"][0][3] += 600.0


def _source_in_ct(g):
    g["views"][0]["extrinsic"][2][3] -= 1000.0


BAD_GEOMETRY = [
    ("non-rigid extrinsic", _scale_row, "not rigid"),
    ("view off the detector", _shift, "view 2 does not see the CT"),
    ("source inside the CT", _source_in_ct, "behind or beside the X-ray source"),
    ("unknown top key", lambda g: g.update(sid=1000.0), "unknown key 'sid'"),
    ("unknown view key", lambda g: g["views"][0].update(name="AP"), "exactly one of"),
    ("missing key", lambda g: g.pop("sdd"), "missing key 'sdd'"),
    ("detector size", lambda g: g.update(detector=[32, 30]), "geometry's detector is 32x30"),
    ("one view only", lambda g: g["views"].pop(), "geometry has 1 view"),
    ("bad diffdrr key", lambda g: g["views"].__setitem__(0, {"diffdrr": {"rotation": [0, 0, 0]}}),
     "unknown key 'rotation'"),
]


@pytest.mark.parametrize("label, change, message", BAD_GEOMETRY, ids=[b[0] for b in BAD_GEOMETRY])
def test_bad_geometry_is_one_line_and_writes_nothing(case, tmp_path, capsys, label, change, message):
    _expect_bad(case, tmp_path, capsys, message, geometry=_geometry(case, tmp_path, change))


def test_nan_in_the_geometry(case, tmp_path, capsys):
    raw = json.dumps({**case["shared"], "views": case["views"]}).replace("1200.0", "NaN", 1)
    _expect_bad(case, tmp_path, capsys, "non-finite", geometry=_geometry(case, tmp_path, lambda g: None, raw))


@pytest.mark.parametrize(
    "label, xrays, extra, message",
    [
        ("missing X-ray", ("ap.png", "nope.png"), (), "no such file"),
        ("view count", ("ap.png",), (), "1 X-ray(s) given"),
        ("sizes differ", ("ap.png", "small.png"), (), "X-ray sizes differ"),
        ("bad levels", ("ap.png", "lat.nii.gz"), ("--levels", "1:x:1"), "--levels"),
        ("non-rigid init", ("ap.png", "lat.nii.gz"), ("--init", "bad_init.json"), "not rigid"),
        ("missing geometry", ("ap.png", "lat.nii.gz"), ("--geometry", "none.json"), "no such file"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(case, tmp_path, capsys, label, xrays, extra, message):
    d = tmp_path
    Image.fromarray(np.full((16, 16), 200, np.uint8)).save(d / "small.png")
    (d / "bad_init.json").write_text(json.dumps({"transform": np.diag([1.0, 1.0, 1.1, 1.0]).tolist()}))
    extra = [str(d / e) if e.endswith(".json") else e for e in extra]
    xrays = [str((d if x == "small.png" else case["dir"]) / x) for x in xrays]
    _expect_bad(case, tmp_path, capsys, message, xrays=xrays, extra=extra)


def test_missing_ct_and_out_that_is_a_file(case, tmp_path, capsys):
    d = case["dir"]
    base = ["register", "--xray", str(d / "ap.png"), "--xray", str(d / "lat.nii.gz"), "--geometry",
            str(d / "extrinsic.json")]
    assert main([*base[:1], str(tmp_path / "none.nii.gz"), *base[1:], "--out", str(tmp_path / "o")]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main([*base[:1], str(d / "ct.nii.gz"), *base[1:], "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err


def _expect_bad(case, tmp_path, capsys, message, geometry="extrinsic.json", xrays=None, extra=()):
    d = case["dir"]
    xrays = xrays or [str(d / "ap.png"), str(d / "lat.nii.gz")]
    geometry = str(tmp_path / geometry) if (tmp_path / geometry).exists() else str(d / geometry)
    argv = ["register", str(d / "ct.nii.gz"), *[a for x in xrays for a in ("--xray", x)], "--geometry", geometry,
            *LEVELS, "--out", str(tmp_path / "out"), *extra]
    before = set(tmp_path.iterdir())
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err, err
    assert set(tmp_path.iterdir()) == before  # nothing written, no temporary folder left


# ------------------------------------------------------------------------------------------------ --method point2
POINT2_TINY = ["data.subject=phantom", "data.size=32", "data.n_train=4", "data.n_val=4", "data.n_test=4",
               "data.batch_size=4", "model.channels=8,16", "model.features=8", "model.n_poi=12", "train.steps=2",
               "train.checkpoint_every=2", "train.log_every=1", "train.eval_every=0"]


@pytest.fixture(scope="module")
def point2_run(tmp_path_factory):
    """A `kfjax train point2` run folder (2 steps on the procedural chest: the pose is untrained, the plumbing is
    what is tested)."""
    workdir = tmp_path_factory.mktemp("point2-run")
    assert main(["train", "point2", "--workdir", str(workdir), "--no-progress", "--set", *POINT2_TINY]) == 0
    return workdir


def test_point2_gives_a_rigid_pose_and_refine_is_intensity_from_it(case, point2_run, tmp_path, capsys):
    learned = tmp_path / "point2"
    assert _register(case, learned, "--method", "point2", "--checkpoint", point2_run) == 0
    err = capsys.readouterr().err
    assert "points of interest tracked in 2 views" in err
    pose = json.loads((learned / "pose.json").read_text())
    assert pose["method"] == "point2" and pose["refined"] is False and pose["checkpoint"] == str(point2_run)
    t = np.asarray(pose["transform"])
    np.testing.assert_allclose(t[:3, :3] @ t[:3, :3].T, np.eye(3), atol=1e-5)
    assert sorted(p.name for p in learned.iterdir()) == ["overlay1_ap.png", "overlay2_lat.png", "pose.json"]
    refined = tmp_path / "refined"
    assert _register(case, refined, "--method", "point2", "--checkpoint", point2_run, "--refine") == 0
    assert [s.split(":")[0] for s in capsys.readouterr().err.splitlines() if s.startswith("level ")] == ["level 1/1"]
    from_learned = tmp_path / "from-learned"
    assert _register(case, from_learned, "--init", learned / "pose.json") == 0
    a, b = (json.loads((f / "pose.json").read_text()) for f in (refined, from_learned))
    assert a["refined"] is True and b["method"] == "intensity"
    np.testing.assert_allclose(a["transform"], b["transform"], atol=1e-4)


def test_point2_bad_options_are_one_line_and_write_nothing(case, tmp_path, capsys):
    other = tmp_path / "other-run"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"method": "dudonet", "config": {}}))
    empty = tmp_path / "empty"
    empty.mkdir()
    for extra, message in [(("--method", "point2"), "needs --checkpoint"),
                           (("--method", "point2", "--checkpoint", empty), "has no config.json"),
                           (("--method", "point2", "--checkpoint", other), "is for method 'dudonet'"),
                           (("--refine",), "belong to --method point2")]:
        _expect_bad(case, tmp_path, capsys, message, extra=[str(e) for e in extra])
