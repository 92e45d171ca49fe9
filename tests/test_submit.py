"""Stage ``submit``: check, upload with the Kaggle API, wait for the scores, record them.

There is no network to Kaggle here. Two stand-ins, both checked call by call:

- a fake ``KaggleApi`` (the module ``kaggle.api.kaggle_api_extended`` replaced), for the
  stage's logic: which calls, with which arguments, in which order, and every error path;
- the real kaggle 2.2.4 package with its HTTP layer (``requests.Session.send``) replaced by a
  fake Kaggle server, for what those calls send over the wire and how Kaggle's HTTP errors
  come back to the user.

The real upload to Kaggle is never exercised.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import types
from types import SimpleNamespace

import numpy as np
import pytest
import requests
from kagglesdk.competitions.types.submission_status import SubmissionStatus
from PIL import Image

from pipeline import cli
from pipeline.data.dataset import image_path
from pipeline.data.kaggle_api import (
    COMPETITION,
    MAX_SUBMISSION_MIB,
    UPLOAD_FAILED_MESSAGE,
    rules_url,
)
from pipeline.data.rle import encode_mask
from pipeline.data.submission import write_submission_metadata
from pipeline.evaluation.leaderboard import read_leaderboard

RULES = rules_url(COMPETITION)
SHAPES = {"a1": (10, 12), "b2": (8, 8)}


def square(shape: tuple[int, int], top: int, left: int, side: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + side, left : left + side] = True
    return mask


MASKS = {"a1": square(SHAPES["a1"], 2, 3, 4), "b2": square(SHAPES["b2"], 1, 1, 3)}


@pytest.fixture()
def restore_logging():
    """The CLI reconfigures the root logger; put it back for the next tests."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture()
def home(tmp_path, monkeypatch, restore_logging):
    """A HOME without Kaggle files and no Kaggle variables."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.delenv("KAGGLE_COMPETITION_SUBMISSION_MODEL_VERSION_ID", raising=False)
    return home


@pytest.fixture()
def credentials(home, monkeypatch):
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "0123456789abcdef")
    return home


@pytest.fixture()
def work(tmp_path) -> SimpleNamespace:
    """Two images in Kaggle layout, a valid submission for them with its sidecar naming
    them, their labels (the local score is 1), and where the leaderboard goes."""
    images = tmp_path / "images"
    for image_id, shape in SHAPES.items():
        path = image_path(images, image_id)
        path.parent.mkdir(parents=True)
        Image.fromarray(np.zeros((*shape, 3), dtype=np.uint8)).save(path)
    csv_path = tmp_path / "sub.csv"
    rows = [f"{image_id},{encode_mask(mask)}" for image_id, mask in MASKS.items()]
    csv_path.write_text("ImageId,EncodedPixels\n" + "\n".join(rows) + "\n")
    metadata = {"images": str(images), "model": "models/m", "config": "demo", "commit": "abc1234"}
    write_submission_metadata(csv_path, metadata)
    solution = tmp_path / "solution.csv"
    lines = [f"{i},{encode_mask(m)},{m.shape[0]},{m.shape[1]},Public" for i, m in MASKS.items()]
    solution.write_text("ImageId,EncodedPixels,Height,Width,Usage\n" + "\n".join(lines) + "\n")
    board = tmp_path / "leaderboard.csv"
    return SimpleNamespace(images=images, csv=csv_path, solution=solution, board=board)


def argv(work: SimpleNamespace, *extra: str) -> list[str]:
    return [
        "submit",
        str(work.csv),
        "-m",
        "first try",
        "--solution",
        str(work.solution),
        "--leaderboard",
        str(work.board),
        "--poll-every",
        "0",
        *extra,
    ]


# ------------------------------------------------------------------ a fake KaggleApi


class FakeKaggleApi:
    """Stands in for kaggle's ``KaggleApi``: records each call with its arguments.

    ``statuses`` are the states the submission list shows at successive polls (the last
    one repeats); ``failures`` maps a method name to what it raises.
    """

    calls: list[tuple]
    statuses: list[str]
    failures: dict[str, BaseException]
    answer = SimpleNamespace(ref=7, message="Successfully submitted")
    error_description = ""

    def _fail(self, name: str) -> None:
        if name in self.failures:
            raise self.failures[name]

    def authenticate(self) -> None:
        self.calls.append(("authenticate",))
        self._fail("authenticate")

    def competition_submit(self, *args, **kwargs):
        self.calls.append(("competition_submit", args, kwargs))
        self._fail("competition_submit")
        return self.answer

    def competition_submissions(self, *args, **kwargs):
        self.calls.append(("competition_submissions", args, kwargs))
        self._fail("competition_submissions")
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        complete = status == "COMPLETE"
        ours = SimpleNamespace(
            ref=7,
            description="first try",
            status=SubmissionStatus[status],
            public_score="0.41234" if complete else "",
            private_score="0.39876" if complete else "",
            error_description=self.error_description,
        )
        older = SimpleNamespace(
            ref=3, description="older", status=SubmissionStatus.COMPLETE, public_score="0.1"
        )
        return [ours, older]


@pytest.fixture()
def fake_api(credentials, monkeypatch):
    """Credentials in the environment and a fake ``kaggle`` package."""
    api_class = type(
        "KaggleApi",
        (FakeKaggleApi,),
        {"calls": [], "statuses": ["PENDING", "PENDING", "COMPLETE"], "failures": {}},
    )
    extended = types.ModuleType("kaggle.api.kaggle_api_extended")
    extended.KaggleApi = api_class
    monkeypatch.setitem(sys.modules, "kaggle", types.ModuleType("kaggle"))
    monkeypatch.setitem(sys.modules, "kaggle.api", types.ModuleType("kaggle.api"))
    monkeypatch.setitem(sys.modules, "kaggle.api.kaggle_api_extended", extended)
    return api_class


SUBMIT_CALL = ("competition_submit", (), {})  # completed with the file in the tests
LIST_CALL = ("competition_submissions", (COMPETITION,), {})


def submit_call(work: SimpleNamespace) -> tuple:
    arguments = {
        "file_name": str(work.csv),
        "message": "first try",
        "competition": COMPETITION,
        "quiet": False,
    }
    return ("competition_submit", (), arguments)


def test_submit_checks_uploads_waits_prints_and_records(fake_api, work, capsys, caplog):
    assert cli.main(argv(work)) == 0
    assert fake_api.calls == [
        ("authenticate",),
        submit_call(work),
        LIST_CALL,
        LIST_CALL,
        LIST_CALL,
    ]
    out = capsys.readouterr()
    assert out.out.splitlines() == [
        f"local score 1.000000 ({work.solution})",
        "Kaggle scored submission 7: public 0.41234, private 0.39876",
    ]
    waits = re.findall(r"waiting for Kaggle to score submission 7: pending", out.err)
    assert len(waits) == 2  # a progress line at each poll that found it unscored
    table = read_leaderboard(work.board)
    assert len(table) == 1
    row = table.iloc[0]
    assert (row["score"], row["kaggle_public"], row["kaggle_private"]) == (1.0, 0.41234, 0.39876)
    assert (row["model"], row["config"], row["commit"]) == ("models/m", "demo", "abc1234")
    assert not row["trained_on_labels"]


def test_dry_run_does_everything_but_the_upload(fake_api, work, capsys):
    assert cli.main(argv(work, "--dry-run")) == 0
    assert fake_api.calls == [("authenticate",), LIST_CALL]  # read-only: no competition_submit
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"local score 1.000000 ({work.solution})"
    assert out[1].startswith(f"dry run: {work.csv} is ready for {COMPETITION}")
    assert out[1].endswith(
        "(Kaggle accepted the credentials; 2 submission(s) listed); nothing uploaded"
    )
    assert not work.board.exists()


def test_without_labels_for_its_images_there_is_no_local_score(fake_api, work, capsys):
    work.solution.write_text("ImageId,EncodedPixels,Height,Width\nzz,,4,4\n")
    assert cli.main(argv(work)) == 0
    assert capsys.readouterr().out.splitlines() == [
        "Kaggle scored submission 7: public 0.41234, private 0.39876"
    ]
    row = read_leaderboard(work.board).iloc[0]
    assert np.isnan(row["score"]) and row["kaggle_private"] == 0.39876


def one_error_line(capsys) -> str:
    """The stage's stderr: exactly one line, ``error: ...``; returns its message."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1
    return lines[0]


def test_an_invalid_submission_is_refused_before_any_kaggle_call(fake_api, work, capsys):
    work.csv.write_text("ImageId,EncodedPixels\na1,5 3 1 2\n")  # unsorted runs; b2 missing
    assert cli.main(argv(work)) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"error: {work.csv} is not a valid submission for {work.images}: ")
    assert "(and 1 more problem(s)); nothing was submitted (./run.sh check-submission" in line
    assert fake_api.calls == []
    assert not work.board.exists()


def test_the_images_come_from_the_sidecar_or_from_images(fake_api, work, capsys, tmp_path):
    work.csv.with_suffix(".json").unlink()
    assert cli.main(argv(work)) == 2
    line = one_error_line(capsys)
    assert line == (
        f"error: {work.csv}: no {work.csv.with_suffix('.json')} beside it, so the images it is "
        "for are unknown; pass --images DIR"
    )
    write_submission_metadata(work.csv, {"images": str(tmp_path / "gone")})
    assert cli.main(argv(work)) == 2
    assert "the image folder its sub.json names, " in one_error_line(capsys)
    assert fake_api.calls == []
    assert cli.main(argv(work, "--images", str(work.images))) == 0
    assert fake_api.calls[:2] == [("authenticate",), submit_call(work)]


def test_a_file_over_the_size_bound_is_refused_before_any_kaggle_call(fake_api, work, capsys):
    assert MAX_SUBMISSION_MIB == 200
    assert cli.main(argv(work, "--max-mib", "0.00001")) == 2
    line = one_error_line(capsys)
    assert re.fullmatch(
        rf"error: {re.escape(str(work.csv))}: 0\.0 MiB, over the 1e-05 MiB submit uploads "
        r"\(MAX_SUBMISSION_MIB in pipeline\.data\.kaggle_api: .*--max-mib changes it\)",
        line,
    )
    assert fake_api.calls == []


def test_without_credentials_the_message_names_the_three_ways(home, work, monkeypatch, capsys):
    for name in ("kaggle", "kaggle.api", "kaggle.api.kaggle_api_extended"):
        monkeypatch.setitem(sys.modules, name, None)  # importing it now raises ImportError
    assert cli.main(argv(work)) == 2
    err = capsys.readouterr().err
    assert "\nerror: no Kaggle API credentials found. Either:\n" in err
    for needed in ("~/.kaggle/kaggle.json", "KAGGLE_USERNAME and KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        assert needed in err
    assert "--from" not in err  # download's way around it is no way to submit
    assert not work.board.exists()


def http_error(status: int, message: str) -> requests.HTTPError:
    response = requests.Response()
    response.status_code = status
    return requests.HTTPError(message, response=response)


CLOSED = f"Kaggle takes no submissions to {COMPETITION}: it no longer accepts them"


@pytest.mark.parametrize(
    ("method", "failure", "message"),
    [
        ("authenticate", SystemExit(1), "could not authenticate with KAGGLE_USERNAME/KAGGLE_KEY"),
        (
            "competition_submit",
            http_error(401, "Unauthenticated"),
            "Kaggle refused the credentials (401 Unauthorized: Unauthenticated). Check the key",
        ),
        (
            "competition_submit",
            http_error(403, "You cannot submit until you accept the competition rules"),
            "(403 Forbidden: You cannot submit until you accept the competition rules). Accept "
            f"the competition rules at {RULES} with the account of these credentials",
        ),
        (
            "competition_submit",
            http_error(400, "The competition has ended and no longer accepts submissions"),
            CLOSED,
        ),
        ("competition_submit", http_error(404, "Not Found"), CLOSED),
        (
            "competition_submit",
            requests.ConnectionError("Name or service not known"),
            "could not reach Kaggle (ConnectionError: Name or service not known). Check the "
            "internet connection",
        ),
        (
            "competition_submissions",
            requests.ConnectTimeout("timed out"),
            "could not reach Kaggle (ConnectTimeout: timed out)",
        ),
    ],
)
def test_kaggle_failures_are_one_clear_line(fake_api, work, capsys, method, failure, message):
    fake_api.failures = {method: failure}
    assert cli.main(argv(work)) == 2
    line = one_error_line(capsys)
    assert message in line
    assert "Traceback" not in capsys.readouterr().err
    assert not work.board.exists()


def test_a_failed_upload_is_an_error_not_a_success(fake_api, work, capsys):
    # kaggle 2.2.4 reports a failed upload as an answer, not as an exception.
    fake_api.answer = SimpleNamespace(ref=0, message=UPLOAD_FAILED_MESSAGE)
    assert cli.main(argv(work)) == 2
    assert f"the upload of {work.csv} to Kaggle failed" in one_error_line(capsys)
    assert [call[0] for call in fake_api.calls] == ["authenticate", "competition_submit"]


def test_kaggle_scoring_errors_and_timeouts_are_reported(fake_api, work, capsys):
    fake_api.statuses = ["PENDING", "ERROR"]
    fake_api.error_description = "Evaluation Exception: ImageId zz not expected"
    assert cli.main(argv(work)) == 2
    assert one_error_line(capsys) == (
        "error: Kaggle could not score submission 7: Evaluation Exception: ImageId zz not expected"
    )
    fake_api.statuses = ["PENDING"]
    assert cli.main(argv(work, "--timeout", "0")) == 2
    line = one_error_line(capsys)
    assert line.startswith("error: Kaggle had not scored submission 7 after 0 s (status pending)")
    assert f"https://www.kaggle.com/competitions/{COMPETITION}/submissions" in line
    assert not work.board.exists()


def test_a_submission_without_a_reference_is_found_by_its_message(fake_api, work, capsys):
    fake_api.answer = SimpleNamespace(ref=0, message="")
    fake_api.statuses = ["COMPLETE"]
    assert cli.main(argv(work)) == 0
    assert "Kaggle scored submission 7: public 0.41234" in capsys.readouterr().out


# ------------------------------------------- the real kaggle package, its HTTP layer faked

API = "https://api.kaggle.com/v1/competitions.CompetitionApiService"
UPLOAD_URL = "https://storage.example/upload/xyz"


class FakeKaggleServer:
    """Answers the kaggle package's HTTP requests (``requests.Session.send``) and records
    them: ``(method, url, JSON body)``, or the bytes for the upload."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, object]] = []
        self.replies: dict[str, object] = {
            f"{API}/StartSubmissionUpload": {"token": "blob-token", "createUrl": UPLOAD_URL},
            UPLOAD_URL: {},
            f"{API}/CreateSubmission": {"ref": 41, "message": "Successfully submitted"},
            f"{API}/ListSubmissions": {
                "submissions": [
                    {
                        "ref": 41,
                        "description": "first try",
                        "status": "COMPLETE",
                        "publicScore": "0.46910",
                        "privateScore": "0.51234",
                    }
                ]
            },
        }

    def send(self, session, request, **kwargs):
        body = request.body
        if hasattr(body, "read"):
            body = body.read()
        if request.method == "POST":
            body = json.loads(body)
        self.requests.append((request.method, request.url, body))
        reply = self.replies[request.url]
        if isinstance(reply, BaseException):
            raise reply
        status, content = reply if isinstance(reply, tuple) else (200, reply)
        response = requests.Response()
        response.status_code = status
        response._content = json.dumps(content).encode()
        response.headers["Content-Type"] = "application/json"
        response.url, response.request = request.url, request
        return response


@pytest.fixture()
def kaggle_server(credentials, monkeypatch):
    server = FakeKaggleServer()

    def send(session, request, **kwargs):
        return server.send(session, request, **kwargs)

    monkeypatch.setattr(requests.Session, "send", send)
    monkeypatch.setattr(sys, "argv", ["./run.sh", "submit"])  # kaggle reads flags from argv
    pytest.importorskip("kaggle.api.kaggle_api_extended")
    return server


def test_the_kaggle_package_sends_what_kaggle_expects(kaggle_server, work, capsys):
    assert cli.main(argv(work)) == 0
    content = work.csv.read_bytes()
    assert kaggle_server.requests == [
        (
            "POST",
            f"{API}/StartSubmissionUpload",
            {
                "competitionName": COMPETITION,
                "contentLength": len(content),
                "fileName": "sub.csv",
                "lastModifiedEpochSeconds": int(work.csv.stat().st_mtime),
            },
        ),
        ("PUT", UPLOAD_URL, content),
        (
            "POST",
            f"{API}/CreateSubmission",
            {
                "competitionName": COMPETITION,
                "blobFileTokens": "blob-token",
                "submissionDescription": "first try",
            },
        ),
        (
            "POST",
            f"{API}/ListSubmissions",
            {"competitionName": COMPETITION, "page": 1, "pageToken": "", "pageSize": 20},
        ),
    ]
    assert capsys.readouterr().out.splitlines()[-1] == (
        "Kaggle scored submission 41: public 0.46910, private 0.51234"
    )
    row = read_leaderboard(work.board).iloc[0]
    assert (row["kaggle_public"], row["kaggle_private"]) == (0.4691, 0.51234)


@pytest.mark.parametrize(
    ("url", "reply", "message"),
    [
        (
            f"{API}/StartSubmissionUpload",
            (401, {"code": 401, "message": "Unauthenticated"}),
            "Kaggle refused the credentials (401 Unauthorized: Unauthenticated)",
        ),
        (
            f"{API}/StartSubmissionUpload",
            (403, {"code": 403, "message": "You cannot submit until you accept the rules"}),
            f"Accept the competition rules at {RULES}",
        ),
        (
            f"{API}/CreateSubmission",
            (400, {"code": 400, "message": "Competition has ended; late submission disabled"}),
            CLOSED,
        ),
        (
            f"{API}/StartSubmissionUpload",
            requests.ConnectionError("Failed to resolve 'api.kaggle.com'"),
            "could not reach Kaggle (ConnectionError: Failed to resolve 'api.kaggle.com')",
        ),
        (
            UPLOAD_URL,
            (413, {}),
            f"to Kaggle failed (competition_submit answered {UPLOAD_FAILED_MESSAGE!r})",
        ),
    ],
)
def test_kaggle_http_errors_come_back_as_one_line(kaggle_server, work, capsys, url, reply, message):
    kaggle_server.replies[url] = reply
    assert cli.main(argv(work)) == 2
    assert message in one_error_line(capsys)
    assert not work.board.exists()
