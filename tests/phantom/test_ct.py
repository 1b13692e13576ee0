"""The CT phantom: DICOM geometry, masks and truth agree, through overread's own loader."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from overread.cli import main
from overread.imaging.series import load_series
from overread.phantom.ct import make_case, read_mask, write_case


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ct")
    argv = ["phantom", "ct", "--n", "3", "--seed", "5", "--size", "64", "--out", str(out), "-q"]
    assert main(argv) == 0
    return out


def test_layout_and_unique_uids(cohort: Path) -> None:
    rows = json.loads((cohort / "cases.json").read_text())
    assert [r["case"] for r in rows] == ["ct0000", "ct0001", "ct0002"]
    for key in ("patient_id", "study_instance_uid", "series_instance_uid"):
        assert len({r[key] for r in rows}) == 3
    for r in rows:
        folder = cohort / r["case"]
        for name in ("lung.nii.gz", "nodules.nii.gz", "airways.nii.gz", "nodules.json"):
            assert (folder / name).is_file()
        assert len(list((folder / "series").glob("*.dcm"))) == r["slices_written"]
        assert r["slices_written"] == r["shape"][0] - len(r["missing_slices"])


def test_geometry_round_trips_through_the_series_loader(cohort: Path) -> None:
    for r in json.loads((cohort / "cases.json").read_text()):
        if r["missing_slices"]:
            continue
        loaded = load_series([cohort / r["case"] / "series"], strict=True)
        assert loaded.errors == []
        (volume,) = loaded.volumes
        assert volume.series_instance_uid == r["series_instance_uid"]
        assert list(volume.pixels.shape) == r["shape"]
        np.testing.assert_allclose(volume.affine, np.array(r["affine_lps"]), atol=1e-3)
        lung, affine = read_mask(cohort / r["case"] / "lung.nii.gz")
        assert lung.shape == volume.pixels.shape
        np.testing.assert_allclose(affine, volume.affine, atol=1e-3)
        # The mask labels the voxels that look like lung: dark inside, not outside.
        inside = volume.pixels[lung > 0]
        assert np.median(inside) < -700
        body_not_lung = (volume.pixels > -300) & (lung == 0)
        assert body_not_lung.sum() > lung.sum() * 0.5


def test_nodule_truth_matches_mask_and_hu(cohort: Path) -> None:
    seen = 0
    for r in json.loads((cohort / "cases.json").read_text()):
        folder = cohort / r["case"]
        nodules = json.loads((folder / "nodules.json").read_text())
        labels, _ = read_mask(folder / "nodules.nii.gz")
        (volume,) = load_series([folder / "series"]).volumes
        for nod in nodules:
            voxels = np.argwhere(labels == nod["label"])
            assert voxels.size, nod
            col, row, sl = nod["centre_voxel"]
            centre = voxels.mean(axis=0)  # (slice, row, col)
            assert abs(centre[0] - sl) < 1.0 and abs(centre[1] - row) < 1.0
            assert abs(centre[2] - col) < 1.0
            lo, hi = nod["box_voxel"]["min"], nod["box_voxel"]["max"]
            assert voxels[:, 2].min() >= lo[0] - 0.5 and voxels[:, 2].max() <= hi[0] + 0.5
            assert voxels[:, 0].min() >= lo[2] - 0.5 and voxels[:, 0].max() <= hi[2] + 0.5
            if not r["missing_slices"] and nod["diameter_mm"] >= 8:
                hu = float(np.median(volume.pixels[labels == nod["label"]]))
                if nod["density"] == "solid":
                    assert hu > -200, nod
                elif nod["density"] == "ground-glass":
                    assert -750 < hu < -400, nod
            seen += 1
    assert seen > 0


def test_missing_slice_is_reported_and_positions_map_to_the_truth_grid(tmp_path: Path) -> None:
    case = make_case(9, 1, size=64, missing_rate=1.0)
    assert len(case.missing_slices) == 1
    info = write_case(case, tmp_path)
    loaded = load_series([tmp_path / case.name / "series"])
    (volume,) = loaded.volumes
    assert volume.pixels.shape[0] == case.geometry.n_slices - 1
    assert any("missing slice" in w for w in volume.warnings)
    with pytest.raises(Exception):  # noqa: B017 - strict refuses the gap
        from overread.imaging.reader import read
        from overread.imaging.series import assemble_volume

        assemble_volume(
            [read(p) for p in sorted((tmp_path / case.name / "series").glob("*.dcm"))],
            strict=True,
        )
    # Each loaded slice's position names its row of the truth grid.
    z0, step = case.geometry.origin[2], case.geometry.slice_thickness
    index = [round((p - z0) / step) for p in volume.positions]
    assert case.missing_slices[0] not in index
    assert info["missing_slice_z_mm"][0] not in volume.positions
    np.testing.assert_array_equal(volume.pixels, case.hu[index].astype(np.float32))


def test_slice_thickness_varies_and_same_seed_same_volume() -> None:
    thick = {make_case(3, i, size=64).geometry.slice_thickness for i in range(8)}
    assert len(thick) >= 2
    a, b = make_case(3, 2, size=64), make_case(3, 2, size=64)
    np.testing.assert_array_equal(a.hu, b.hu)
    c = make_case(4, 2, size=64)
    assert a.hu.shape != c.hu.shape or not np.array_equal(a.hu, c.hu)


def test_densities_and_sizes_are_all_represented() -> None:
    nodules = [n for i in range(30) for n in make_case(7, i, size=64).anatomy.nodules]
    assert {n.density for n in nodules} == {"solid", "part-solid", "ground-glass"}
    diameters = [n.diameter_mm for n in nodules]
    assert min(diameters) < 6 <= max(diameters) and max(diameters) > 15


@pytest.mark.parametrize("signed", [0, 1])
def test_dciodvfy_finds_no_errors(cohort: Path, signed: int) -> None:
    if shutil.which("dciodvfy") is None:
        pytest.skip("dicom3tools dciodvfy not installed")
    case = f"ct{signed:04d}"  # even cases store unsigned + intercept -1024, odd ones signed
    info = json.loads((cohort / case / "case.json").read_text())
    assert info["pixel_representation"] == signed
    file = sorted((cohort / case / "series").glob("*.dcm"))[0]
    done = subprocess.run(
        ["dciodvfy", str(file)], capture_output=True, text=True, errors="replace", timeout=60
    )
    errors = [line for line in (done.stdout + done.stderr).splitlines() if "Error" in line]
    assert errors == []


def test_bad_options_are_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["phantom", "ct", "--n", "1", "--size", "9", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
