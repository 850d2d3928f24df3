"""The bundled synthetic sample (data/sample): CSIRO train.csv format, images, determinism."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from nano_banana_aug import sample_data as S

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"
COLUMNS = [
    "sample_id",
    "image_path",
    "Sampling_Date",
    "State",
    "Species",
    "Pre_GSHH_NDVI",
    "Height_Ave_cm",
    "target_name",
    "target",
]
TARGETS = ["Dry_Clover_g", "Dry_Dead_g", "Dry_Green_g", "Dry_Total_g", "GDM_g"]


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return pd.read_csv(SAMPLE / "train.csv")


@pytest.fixture(scope="module")
def wide(table) -> pd.DataFrame:
    t = table.assign(image_id=table["sample_id"].str.split("__").str[0])
    return t.pivot(index="image_id", columns="target_name", values="target")


def grey_small(path: Path, size=(500, 250)) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("L").resize(size, Image.BILINEAR), dtype=np.float64)


def ncc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_train_csv_has_the_csiro_long_format(table):
    assert list(table.columns) == COLUMNS
    assert len(table) == 40
    ids = table["sample_id"].str.split("__").str[0]
    assert ids.nunique() == 8 and all(re.fullmatch(r"ID\d{10}", i) for i in ids)
    assert list(ids.drop_duplicates()) == sorted(ids.unique())
    assert (table["sample_id"] == ids + "__" + table["target_name"]).all()
    assert (table["image_path"] == "train/" + ids + ".jpg").all()
    for _, rows in table.groupby(ids, sort=False):
        assert list(rows["target_name"]) == TARGETS  # the real file's order
        for col in ("image_path", "Sampling_Date", "State", "Species", "Pre_GSHH_NDVI", "Height_Ave_cm"):
            assert rows[col].nunique() == 1
    assert table["Sampling_Date"].str.fullmatch(r"2015/\d{1,2}/\d{1,2}").all()
    assert set(table["State"]) <= {"Tas", "Vic", "NSW", "WA"}
    assert table["Pre_GSHH_NDVI"].between(0.1, 0.95).all() and table["Height_Ave_cm"].between(1, 40).all()


def test_targets_are_plausible_and_consistent(wide):
    missing = wide[wide.isna().any(axis=1)]
    assert len(missing) == 1 and missing.isna().sum().to_dict() == {t: int(t == "Dry_Total_g") for t in TARGETS}
    assert (wide.fillna(0) >= 0).all().all()
    full = wide.dropna()
    assert np.allclose(full["Dry_Total_g"], full["Dry_Green_g"] + full["Dry_Dead_g"] + full["Dry_Clover_g"], atol=1e-3)
    assert np.allclose(wide["GDM_g"], wide["Dry_Green_g"] + wide["Dry_Clover_g"], atol=1e-3)
    assert full["Dry_Total_g"].between(1, 200).all() and full["Dry_Total_g"].std() > 10
    assert (wide["Dry_Clover_g"] == 0).sum() >= 1 and (wide["Dry_Clover_g"] > 0).sum() >= 3


def test_committed_csv_is_what_the_generator_writes():
    expected = S.sample_table(S.make_scenes(8, S.DEFAULT_SEED)).to_csv(index=False)
    assert (SAMPLE / "train.csv").read_text() == expected


def test_images_exist_are_2000x1000_jpegs_and_small_enough(table):
    paths = [SAMPLE / p for p in table["image_path"].unique()]
    total = sum(p.stat().st_size for p in SAMPLE.rglob("*") if p.is_file() and "nano_banana_pro" not in p.parts)
    assert total < 5_000_000
    for p in paths:
        assert p.read_bytes()[:3] == b"\xff\xd8\xff"
        with Image.open(p) as im:
            assert im.format == "JPEG" and im.size == (2000, 1000) and im.mode == "RGB"


def test_about_a_quarter_carry_an_orange_timestamp(table):
    stamped = 0
    for p in table["image_path"].unique():
        with Image.open(SAMPLE / p) as im:
            corner = np.asarray(im.crop((1300, 850, 2000, 1000)), dtype=int)
        r, g, b = corner[..., 0], corner[..., 1], corner[..., 2]
        stamped += ((r > 220) & (g > 100) & (g < 180) & (b < 90)).sum() > 500
    assert stamped == 2


def test_images_are_textured_asymmetric_and_distinct(table):
    greys = [grey_small(SAMPLE / p) for p in table["image_path"].unique()]
    for g in greys:
        assert g.std() > 15
        # a shift, a mirror and a flip of the image are told apart from the image itself
        assert ncc(g, g[:, ::-1]) < 0.3 and ncc(g, g[::-1, :]) < 0.3
        assert ncc(g[:, 10:], g[:, :-10]) < 0.6  # not periodic/smooth at a 40 px shift (full res)
        f = np.fft.fft2(g - g.mean())
        ac = np.fft.ifft2(f * np.conj(f)).real
        ac /= ac[0, 0]
        ac[:4, :4] = ac[-4:, -4:] = ac[:4, -4:] = ac[-4:, :4] = 0
        assert ac.max() < 0.5  # no repeating pattern
    for i in range(len(greys)):
        for j in range(i + 1, len(greys)):
            assert ncc(greys[i], greys[j]) < 0.3


def test_make_sample_is_deterministic(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    ta = S.make_sample(a, n_images=2, seed=7, size=(400, 200))
    S.make_sample(b, n_images=2, seed=7, size=(400, 200))
    files = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file())
    assert files == sorted(["train.csv"] + [f"train/{i}.jpg" for i in ta["sample_id"].str.split("__").str[0].unique()])
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes()
    assert list(pd.read_csv(a / "train.csv").columns) == COLUMNS
    assert [s.image_id for s in S.make_scenes(2, seed=8)] != [s.image_id for s in S.make_scenes(2, seed=7)]


def test_committed_image_matches_the_renderer():
    scene = S.make_scenes(8, S.DEFAULT_SEED)[0]
    buf = io.BytesIO()
    S.render_scene(scene).save(buf, format="JPEG", quality=S.JPEG_QUALITY, optimize=True)
    fresh = np.asarray(Image.open(buf), dtype=np.int16)
    with Image.open(SAMPLE / "train" / f"{scene.image_id}.jpg") as im:
        committed = np.asarray(im, dtype=np.int16)
    assert np.abs(fresh - committed).mean() < 0.5  # equal up to the JPEG library's rounding
