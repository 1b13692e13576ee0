"""Training generates its phantom cohorts with the phantom library, as ``overread phantom cxr``."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import pytest

HAS_PHANTOM = importlib.util.find_spec("overread.phantom") is not None


def _tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.skipif(not HAS_PHANTOM, reason="phantom generator not installed")
def test_ensure_phantom_writes_what_phantom_cxr_writes(run_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from overread.training.config import PhantomSource
    from overread.training.run import ensure_phantom

    said: list[str] = []
    source = PhantomSource(n=4, seed=5, size=64, workers=1)
    folder = ensure_phantom(source, tmp_path / "train", said.append)
    assert folder == tmp_path / "train"
    assert said[0] == f"generating 4 phantom studies (seed 5) in {folder}"
    assert said[1].startswith(f"wrote 4 studies of 2 patients to {folder} in ")
    assert said[2].startswith("sites: {")

    status, _, err = run_cli(
        "phantom", "cxr", "--n", "4", "--out", tmp_path / "cli", "--seed", "5",
        "--size", "64", "--workers", "1", "--quiet",
    )  # fmt: skip
    assert status == 0, err
    made, expected = _tree(folder), _tree(tmp_path / "cli")
    assert "labels.csv" in made and len(made) > 4
    assert made == expected

    # A second call reuses the cohort instead of writing it again.
    said.clear()
    assert ensure_phantom(source, folder, said.append) == folder
    assert said == [f"reusing phantom cohort {folder}"]


@pytest.mark.skipif(not HAS_PHANTOM, reason="phantom generator not installed")
def test_an_enriched_training_cohort_is_generated_and_reused_only_as_asked(tmp_path: Path) -> None:
    import json

    from overread.errors import ConfigError
    from overread.training.config import PhantomSource
    from overread.training.run import ensure_phantom

    enriched = PhantomSource(n=4, seed=5, size=64, workers=1, prevalence={"Fracture": 0.5})
    folder = ensure_phantom(enriched, tmp_path / "train", lambda _: None)
    recorded = json.loads((folder / "cohort.json").read_text())["parameters"]["prevalence"]
    assert recorded == {"Fracture": 0.5}
    said: list[str] = []
    assert ensure_phantom(enriched, folder, said.append) == folder
    assert said == [f"reusing phantom cohort {folder}"]
    # The same n and seed at the default prevalence is another cohort: never reused.
    with pytest.raises(ConfigError, match="other parameters"):
        ensure_phantom(PhantomSource(n=4, seed=5, size=64, workers=1), folder, said.append)
    default = ensure_phantom(
        PhantomSource(n=4, seed=5, size=64, workers=1), tmp_path / "d", said.append
    )
    with pytest.raises(ConfigError, match="other parameters"):
        ensure_phantom(enriched, default, said.append)


def test_an_enrichment_names_known_labels_and_fractions() -> None:
    from pydantic import ValidationError

    from overread.training.config import PhantomSource

    with pytest.raises(ValidationError, match="unknown label 'Fractur'"):
        PhantomSource(prevalence={"Fractur": 0.1})
    with pytest.raises(ValidationError, match=r"Fracture = 1.2 is outside 0..0.95"):
        PhantomSource(prevalence={"Fracture": 1.2})


def test_an_explicit_default_prevalence_is_the_default_cohort(tmp_path: Path) -> None:
    from overread.phantom.sampling import DEFAULT_PREVALENCE
    from overread.training.config import PhantomSource
    from overread.training.run import _matches

    recorded = {"parameters": {"n": 4, "seed": 5, "rows": 64, "prevalence": {}}}
    explicit = {"Fracture": DEFAULT_PREVALENCE["Fracture"]}
    assert _matches(recorded, PhantomSource(n=4, seed=5, size=64, prevalence=explicit))
    assert not _matches(recorded, PhantomSource(n=4, seed=5, size=64, prevalence={"Fracture": 0.2}))
    older = {"parameters": {"n": 4, "seed": 5, "rows": 64}}  # written before the option existed
    assert _matches(older, PhantomSource(n=4, seed=5, size=64))
