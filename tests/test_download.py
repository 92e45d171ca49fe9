"""Stage ``download``: competition files into input/, from a folder, a bundle or the API.

Every test builds tiny zips in tmp_path laid out like the Kaggle ones; the Kaggle API is
replaced by a fake module (no network). One real-data test imports ../shared/dsb2018.
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
import types
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from pipeline import cli
from pipeline.data.download import (
    BUNDLE_NAME,
    COMPETITION,
    MARKER_NAME,
    describe_input,
    download_from_kaggle,
    import_local,
    kaggle_credentials_available,
    unpack_archive,
    unpack_csv,
)
from pipeline.errors import PipelineError


def png_bytes(value: int, shape=(4, 5)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full(shape, value, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def image_members(ids: list[str], n_masks: int) -> dict[str, bytes | None]:
    """Members of an image archive in Kaggle layout; None marks a folder entry."""
    members: dict[str, bytes | None] = {}
    for number, image_id in enumerate(ids):
        members[f"{image_id}/"] = None
        members[f"{image_id}/images/"] = None
        members[f"{image_id}/images/{image_id}.png"] = png_bytes(10 + number)
        if n_masks:
            members[f"{image_id}/masks/"] = None
        for k in range(n_masks):
            members[f"{image_id}/masks/m{k}.png"] = png_bytes(255)
    return members


def write_zip(path: Path, members: dict[str, bytes | None]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            if data is None:
                archive.writestr(zipfile.ZipInfo(name), b"")
            else:
                archive.writestr(name, data)
    return path


TRAIN_IDS = ["img_a", "img_b"]
TEST_IDS = ["img_t"]
CSV_TEXTS = {
    "stage1_train_labels": "ImageId,EncodedPixels\nimg_a,1 2\nimg_a,6 1\nimg_b,3 3\n",
    "stage1_solution": "ImageId,EncodedPixels,Height,Width,Usage\nimg_t,1 1,4,5,Public\n",
    "stage1_sample_submission": "ImageId,EncodedPixels\nimg_t,1 1\n",
}


def competition_files(folder: Path) -> Path:
    """The five stage-1 files, as in ../shared/dsb2018, plus a README to be ignored."""
    write_zip(folder / "stage1_train.zip", image_members(TRAIN_IDS, n_masks=2))
    write_zip(folder / "stage1_test.zip", image_members(TEST_IDS, n_masks=0))
    for name, text in CSV_TEXTS.items():
        write_zip(folder / f"{name}.csv.zip", {f"{name}.csv": text.encode()})
    (folder / "README.md").write_text("not a competition file\n")
    return folder


def bundle_of(files_dir: Path, bundle: Path) -> Path:
    """data-science-bowl-2018.zip as the Kaggle API delivers it: a zip of the zips."""
    members = {path.name: path.read_bytes() for path in sorted(files_dir.glob("*.zip"))}
    return write_zip(bundle, members)


def tree(folder: Path) -> dict[str, bytes]:
    """Relative path -> content of every file under ``folder``."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def expected_input_tree() -> dict[str, bytes]:
    expected = {}
    for folder, ids, n_masks in (("stage1_train", TRAIN_IDS, 2), ("stage1_test", TEST_IDS, 0)):
        for name, data in image_members(ids, n_masks).items():
            if data is not None:
                expected[f"{folder}/{name}"] = data
    for name, text in CSV_TEXTS.items():
        expected[f"{name}.csv"] = text.encode()
    return expected


def without_markers(files: dict[str, bytes]) -> dict[str, bytes]:
    return {name: data for name, data in files.items() if not name.endswith(MARKER_NAME)}


@pytest.fixture()
def files_dir(tmp_path) -> Path:
    return competition_files(tmp_path / "dsb2018")


@pytest.fixture()
def restore_logging():
    """The CLI reconfigures the root logger; put it back for the next tests."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


# --------------------------------------------------------------------------- local import


def test_import_from_a_folder_of_competition_zips(files_dir, tmp_path):
    input_dir = tmp_path / "input"
    written = import_local(files_dir, input_dir)
    assert written == [
        input_dir / "stage1_sample_submission.csv",
        input_dir / "stage1_solution.csv",
        input_dir / "stage1_test",
        input_dir / "stage1_train",
        input_dir / "stage1_train_labels.csv",
    ]
    assert without_markers(tree(input_dir)) == expected_input_tree()
    train_zip = files_dir / "stage1_train.zip"
    marker = json.loads((input_dir / "stage1_train" / MARKER_NAME).read_text())
    assert marker == {
        "source": "stage1_train.zip",
        "size": train_zip.stat().st_size,
        "crc32": zlib.crc32(train_zip.read_bytes()),
        "members": 12,  # 6 folder entries and 6 files
        "files": 6,
        "images": 2,
    }
    assert describe_input(input_dir) == [
        "stage1_sample_submission.csv: 1 rows, 1 images",
        "stage1_solution.csv: 1 rows, 1 images",
        "stage1_test/: 1 images",
        "stage1_train/: 2 images with masks",
        "stage1_train_labels.csv: 3 rows, 2 images",
    ]


def test_import_from_the_single_bundle_zip(files_dir, tmp_path):
    bundle = bundle_of(files_dir, tmp_path / "download" / BUNDLE_NAME)
    from_file = tmp_path / "from_file"
    assert [path.name for path in import_local(bundle, from_file)] == [
        "stage1_sample_submission.csv",
        "stage1_solution.csv",
        "stage1_test",
        "stage1_train",
        "stage1_train_labels.csv",
    ]
    assert without_markers(tree(from_file)) == expected_input_tree()
    # The same from the folder that holds the bundle; no scratch folder is left behind.
    from_folder = tmp_path / "from_folder"
    import_local(bundle.parent, from_folder)
    assert tree(from_folder) == tree(from_file)
    assert sorted(os.listdir(from_folder)) == sorted(os.listdir(from_file))


def test_other_competition_files_are_unpacked_too(files_dir, tmp_path):
    write_zip(files_dir / "stage2_test_final.zip", image_members(["s2_a", "s2_b", "s2_c"], 0))
    write_zip(
        files_dir / "stage2_sample_submission_final.csv.zip",
        {"stage2_sample_submission_final.csv": b"ImageId,EncodedPixels\ns2_a,1 1\n"},
    )
    (files_dir / "extra.csv").write_text("ImageId,Kind\ns2_a,x\n")
    input_dir = tmp_path / "input"
    import_local(files_dir, input_dir)
    assert sorted(os.listdir(input_dir / "stage2_test_final")) == [
        MARKER_NAME,
        "s2_a",
        "s2_b",
        "s2_c",
    ]
    assert (input_dir / "stage2_sample_submission_final.csv").read_text().endswith("s2_a,1 1\n")
    assert (input_dir / "extra.csv").read_text() == "ImageId,Kind\ns2_a,x\n"


def test_a_top_folder_named_like_the_archive_is_dropped(tmp_path):
    members = {f"stage1_test/{name}": data for name, data in image_members(TEST_IDS, 0).items()}
    archive = write_zip(tmp_path / "stage1_test.zip", members)
    target = unpack_archive(archive, tmp_path / "input")
    assert (target / "img_t" / "images" / "img_t.png").read_bytes() == png_bytes(10)


def test_second_run_skips_what_is_unpacked(files_dir, tmp_path, caplog):
    input_dir = tmp_path / "input"
    import_local(files_dir, input_dir)
    inode = (input_dir / "stage1_train").stat().st_ino
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pipeline.data.download"):
        import_local(files_dir, input_dir)
    skipped = [record.getMessage() for record in caplog.records if "skipped" in record.getMessage()]
    assert len(skipped) == 5 and len(caplog.records) == 5
    assert (input_dir / "stage1_train").stat().st_ino == inode  # not unpacked again


def test_incomplete_or_changed_folders_are_unpacked_again(files_dir, tmp_path, caplog):
    input_dir = tmp_path / "input"
    import_local(files_dir, input_dir)
    lost = input_dir / "stage1_train" / "img_a" / "masks" / "m1.png"
    lost.unlink()
    with caplog.at_level(logging.INFO, logger="pipeline.data.download"):
        unpack_archive(files_dir / "stage1_train.zip", input_dir)
    assert lost.read_bytes() == png_bytes(255)
    assert "unpacked" in caplog.text and "skipped" not in caplog.text
    # A different zip under the same name replaces the folder.
    write_zip(files_dir / "stage1_train.zip", image_members(["img_new"], n_masks=1))
    unpack_archive(files_dir / "stage1_train.zip", input_dir)
    assert sorted(os.listdir(input_dir / "stage1_train")) == [MARKER_NAME, "img_new"]


def test_a_single_file_can_be_imported(files_dir, tmp_path):
    input_dir = tmp_path / "input"
    assert import_local(files_dir / "stage1_test.zip", input_dir) == [input_dir / "stage1_test"]
    assert unpack_csv(files_dir / "stage1_solution.csv.zip", input_dir) == (
        input_dir / "stage1_solution.csv"
    )
    assert sorted(os.listdir(input_dir)) == ["stage1_solution.csv", "stage1_test"]


# --------------------------------------------------------------------------- broken input


def test_truncated_zip_is_an_error_naming_it_and_leaves_nothing(files_dir, tmp_path):
    zip_path = files_dir / "stage1_train.zip"
    data = zip_path.read_bytes()
    zip_path.write_bytes(data[: len(data) * 2 // 3])
    input_dir = tmp_path / "input"
    with pytest.raises(PipelineError, match=r"stage1_train\.zip: not a valid zip file"):
        import_local(files_dir, input_dir)
    names = os.listdir(input_dir)
    assert "stage1_train" not in names
    assert not [name for name in names if name.startswith(".")]  # no temporary folder


def test_corrupt_member_is_an_error_and_keeps_the_previous_folder(files_dir, tmp_path):
    input_dir = tmp_path / "input"
    target = unpack_archive(files_dir / "stage1_train.zip", input_dir)
    before = tree(target)
    # Flip one byte inside a stored PNG: the zip opens, but that member fails its CRC.
    zip_path = files_dir / "stage1_train.zip"
    data = bytearray(zip_path.read_bytes())
    offset = bytes(data).find(png_bytes(11)) + 40
    data[offset] ^= 0xFF
    zip_path.write_bytes(bytes(data))
    with pytest.raises(PipelineError, match=r"stage1_train\.zip: member img_b/.* is damaged"):
        unpack_archive(zip_path, input_dir, force=True)
    assert tree(target) == before
    assert sorted(os.listdir(input_dir)) == ["stage1_train"]


def test_corrupt_zip_inside_a_bundle_is_named(files_dir, tmp_path):
    (files_dir / "stage1_test.zip").write_bytes(b"PK\x03\x04 this is not a zip")
    bundle = bundle_of(files_dir, tmp_path / BUNDLE_NAME)
    input_dir = tmp_path / "input"
    with pytest.raises(PipelineError, match=rf"{BUNDLE_NAME}:stage1_test\.zip: not a valid zip"):
        import_local(bundle, input_dir)
    assert "stage1_test" not in os.listdir(input_dir)
    assert not [name for name in os.listdir(input_dir) if name.startswith(".")]


@pytest.mark.parametrize("evil", ["../evil.png", "img/../../evil.png", "/abs/evil.png"])
def test_path_traversal_is_refused(tmp_path, evil):
    members = image_members(TEST_IDS, 0) | {evil: png_bytes(1)}
    archive = write_zip(tmp_path / "zips" / "stage1_test.zip", members)
    input_dir = tmp_path / "work" / "input"
    with pytest.raises(PipelineError, match=r"stage1_test\.zip: refusing to unpack"):
        unpack_archive(archive, input_dir)
    assert list(tmp_path.rglob("evil.png")) == []
    assert not input_dir.exists()  # refused before anything was written


def test_missing_source_and_folder_without_competition_files(tmp_path):
    with pytest.raises(PipelineError, match="no such file or folder"):
        import_local(tmp_path / "absent", tmp_path / "input")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(PipelineError, match="empty: no competition files found"):
        import_local(tmp_path / "empty", tmp_path / "input")


def test_csv_zip_must_hold_one_csv(tmp_path):
    archive = write_zip(tmp_path / "two.csv.zip", {"a.csv": b"x\n", "b.csv": b"y\n"})
    with pytest.raises(PipelineError, match=r"two\.csv\.zip: expected one CSV file inside"):
        unpack_csv(archive, tmp_path / "input")


# --------------------------------------------------------------------------- Kaggle API


@pytest.fixture()
def no_credentials(tmp_path, monkeypatch):
    """A HOME without Kaggle files, no Kaggle variables, and ``import kaggle`` forbidden."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    for name in ("kaggle", "kaggle.api", "kaggle.api.kaggle_api_extended"):
        monkeypatch.setitem(sys.modules, name, None)  # importing it now raises ImportError
    return home


def test_without_credentials_the_message_says_how_to_get_them(no_credentials, tmp_path):
    assert not kaggle_credentials_available()
    with pytest.raises(PipelineError) as error:
        download_from_kaggle(tmp_path / "input")
    message = str(error.value)
    for needed in ("~/.kaggle/kaggle.json", "KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        assert needed in message
    assert "--from" in message
    assert not (tmp_path / "input").exists()


def test_cli_without_credentials_prints_the_message_not_a_traceback(
    no_credentials, tmp_path, capsys, restore_logging
):
    status = cli.main(["download", "--input", str(tmp_path / "input")])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("error: no Kaggle API credentials found")
    assert "Traceback" not in err and "--from" in err


@pytest.mark.parametrize(
    ("files", "env", "available"),
    [
        ({".kaggle/kaggle.json": '{"username": "u", "key": "k"}'}, {}, True),
        ({".kaggle/kaggle.json": '{"username": "u"}'}, {}, False),
        ({".kaggle/kaggle.json": "not json"}, {}, False),
        ({"cfg/kaggle.json": '{"username": "u", "key": "k"}'}, {"KAGGLE_CONFIG_DIR": "cfg"}, True),
        ({".config/kaggle/kaggle.json": '{"username": "u", "key": "k"}'}, {}, True),
        ({}, {"KAGGLE_USERNAME": "u", "KAGGLE_KEY": "k"}, True),
        ({}, {"KAGGLE_USERNAME": "u"}, False),
        ({}, {"KAGGLE_API_TOKEN": "KGAT_0123"}, True),
        ({".kaggle/access_token": "KGAT_0123\n"}, {}, True),
        ({".kaggle/access_token": ""}, {}, False),
    ],
)
def test_credentials_are_found_where_the_kaggle_package_looks(
    no_credentials, monkeypatch, files, env, available
):
    home = no_credentials
    for name, text in files.items():
        (home / name).parent.mkdir(parents=True, exist_ok=True)
        (home / name).write_text(text)
    for name, value in env.items():
        monkeypatch.setenv(name, str(home / value) if name == "KAGGLE_CONFIG_DIR" else value)
    assert kaggle_credentials_available() is available


def test_unusable_kaggle_json_is_named_in_the_message(no_credentials, tmp_path):
    (no_credentials / ".kaggle").mkdir()
    (no_credentials / ".kaggle" / "kaggle.json").write_text('{"username": "u"}')
    with pytest.raises(PipelineError, match=r'kaggle\.json lacks "username" and "key"'):
        download_from_kaggle(tmp_path / "input")


class FakeKaggleApi:
    """Stands in for kaggle's KaggleApi: 'downloads' a bundle built by the test."""

    bundle: Path
    calls: list[tuple]
    fail_with: BaseException | None = None

    def authenticate(self) -> None:
        if isinstance(self.fail_with, SystemExit):
            raise self.fail_with
        self.calls.append(("authenticate",))

    def competition_download_files(self, competition, path=None, force=False, quiet=True):
        self.calls.append(("download", competition, path, force))
        if self.fail_with is not None:
            raise self.fail_with
        Path(path, f"{competition}.zip").write_bytes(self.bundle.read_bytes())


@pytest.fixture()
def fake_kaggle(no_credentials, monkeypatch, files_dir, tmp_path):
    """Credentials in the environment and a fake ``kaggle`` package."""
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "0123456789abcdef")
    api_class = type("KaggleApi", (FakeKaggleApi,), {"calls": []})
    api_class.bundle = bundle_of(files_dir, tmp_path / "remote" / BUNDLE_NAME)
    extended = types.ModuleType("kaggle.api.kaggle_api_extended")
    extended.KaggleApi = api_class
    monkeypatch.setitem(sys.modules, "kaggle", types.ModuleType("kaggle"))
    monkeypatch.setitem(sys.modules, "kaggle.api", types.ModuleType("kaggle.api"))
    monkeypatch.setitem(sys.modules, "kaggle.api.kaggle_api_extended", extended)
    return api_class


def test_download_from_kaggle_fetches_the_bundle_and_unpacks_it(fake_kaggle, tmp_path):
    input_dir = tmp_path / "input"
    written = download_from_kaggle(input_dir)
    assert fake_kaggle.calls == [
        ("authenticate",),
        ("download", COMPETITION, str(input_dir), False),
    ]
    assert [path.name for path in written] == [
        "stage1_sample_submission.csv",
        "stage1_solution.csv",
        "stage1_test",
        "stage1_train",
        "stage1_train_labels.csv",
    ]
    expected = expected_input_tree() | {BUNDLE_NAME: fake_kaggle.bundle.read_bytes()}
    assert without_markers(tree(input_dir)) == expected


def _http_error(status: int) -> requests.HTTPError:
    response = requests.Response()
    response.status_code = status
    return requests.HTTPError(f"{status} Client Error", response=response)


@pytest.mark.parametrize(
    ("failure", "message"),
    [
        (_http_error(403), r"403 Forbidden.*Accept the competition rules at https://"),
        (_http_error(401), r"refused the credentials \(401"),
        (requests.ConnectionError("Name or service not known"), r"could not download.*--from"),
        (SystemExit(1), r"could not authenticate with KAGGLE_USERNAME/KAGGLE_KEY"),
        (RuntimeError("odd"), r"the Kaggle download failed \(RuntimeError: odd\)"),
    ],
)
def test_kaggle_api_failures_become_clear_errors(fake_kaggle, tmp_path, failure, message):
    fake_kaggle.fail_with = failure
    with pytest.raises(PipelineError, match=message):
        download_from_kaggle(tmp_path / "input")


@pytest.mark.parametrize("cut", ["inside an inner zip", "inside the outer directory"])
def test_damaged_download_suggests_downloading_again(fake_kaggle, tmp_path, cut):
    # Either way the bundle is refused, never taken for the inner zip it ends with.
    data = fake_kaggle.bundle.read_bytes()
    kept = len(data) // 3 if cut == "inside an inner zip" else len(data) - 100
    fake_kaggle.bundle.write_bytes(data[:kept])
    input_dir = tmp_path / "input"
    with pytest.raises(PipelineError, match=rf"{BUNDLE_NAME}: not a valid zip file(.|\n)*--force"):
        download_from_kaggle(input_dir)
    assert os.listdir(input_dir) == [BUNDLE_NAME]


# --------------------------------------------------------------------------- command line


def test_cli_download_from_a_folder(files_dir, tmp_path, capsys, restore_logging):
    input_dir = tmp_path / "input"
    status = cli.main(["download", "--from", str(files_dir), "--input", str(input_dir)])
    assert status == 0
    assert without_markers(tree(input_dir)) == expected_input_tree()
    err = capsys.readouterr().err
    assert "stage1_train/: 2 images with masks" in err
    assert "stage1_test/: 1 images" in err
    # Again: everything is skipped.
    assert cli.main(["download", "--from", str(files_dir), "--input", str(input_dir)]) == 0
    assert capsys.readouterr().err.count("skipped") == 5


def test_cli_reports_a_bad_source_without_a_traceback(tmp_path, capsys, restore_logging):
    status = cli.main(["download", "--from", str(tmp_path / "nowhere"), "--input", str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 2
    assert "nowhere: no such file or folder" in err and "Traceback" not in err


# --------------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_import_the_real_stage1_files(shared_data_dir, tmp_path, caplog):
    input_dir = tmp_path / "input"
    written = import_local(shared_data_dir, input_dir)
    assert describe_input(input_dir) == [
        "stage1_sample_submission.csv: 65 rows, 65 images",
        "stage1_solution.csv: 4152 rows, 65 images",
        "stage1_test/: 65 images",
        "stage1_train/: 596 images with masks",
        "stage1_train_labels.csv: 26302 rows, 596 images",
    ]
    marker = json.loads((input_dir / "stage1_train" / MARKER_NAME).read_text())
    assert (marker["source"], marker["images"], marker["files"]) == ("stage1_train.zip", 596, 26898)
    assert sum(1 for _ in (input_dir / "stage1_train").glob("*/masks/*.png")) == 26302
    # A second run finds everything in place.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pipeline.data.download"):
        assert import_local(shared_data_dir, input_dir) == written
    assert [record.getMessage().endswith("skipped") for record in caplog.records] == [True] * 5
