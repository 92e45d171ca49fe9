"""The Kaggle API as the pipeline uses it: credentials, an authenticated client, submitting a
file and waiting for its scores, and one clear line for each way a call can fail.

``download`` (`pipeline.data.download`) and ``submit`` (`pipeline.stages.submit`) share it.
The ``kaggle`` package (2.2.4) is imported only once credentials are known to exist, because
importing it authenticates and, without credentials, prints help. Its own output goes to
stderr, so that a stage's stdout holds only the stage's results.

The calls made, all on ``kaggle.api.kaggle_api_extended.KaggleApi``:

- ``authenticate()``;
- ``competition_download_files(competition, path=..., force=..., quiet=False)`` (download);
- ``competition_submit(file_name=..., message=..., competition=..., quiet=False)`` (submit),
  which returns an ``ApiCreateSubmissionResponse`` (``ref``, ``message``);
- ``competition_submissions(competition)`` (submit: polled until the submission is scored),
  which returns a list of ``ApiSubmission`` (``ref``, ``description``, ``status``,
  ``public_score``, ``private_score``, ``error_description``).

Example
-------
>>> api = authenticated_api(require_credentials())        # doctest: +SKIP
>>> ref = submit_file(api, "submissions/x.csv", "first try")   # doctest: +SKIP
>>> wait_for_scores(api, ref, "first try")               # doctest: +SKIP
KaggleScores(ref=123, public='0.41', private='0.39')
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import paths
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

COMPETITION = "data-science-bowl-2018"
#: What ``competition_submit`` answers when the upload itself failed (kaggle 2.2.4's
#: ``KaggleApi.COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE``): it raises nothing then.
UPLOAD_FAILED_MESSAGE = "Could not submit to competition"
#: The largest file ``submit`` uploads, in MiB. Kaggle publishes no submission size limit
#: for this competition and kaggle 2.2.4's API exposes none (``ApiCompetition`` has
#: ``max_daily_submissions`` but no size; its maintainers say each competition sets its own,
#: Kaggle/kaggle-cli#504), so this is the pipeline's own bound, not Kaggle's: well above
#: a stage-2 submission (stage 1's 65 images make 0.8 MB, so 3,019 larger ones make tens
#: of MB), far below a file that is plainly not a submission. ``--max-mib`` changes it.
MAX_SUBMISSION_MIB = 200
#: Words of a Kaggle answer that says the competition takes no more submissions.
_CLOSED = re.compile(
    r"no longer accept|not accepting|(competition|submissions?) (has |have |is |are )?"
    r"(ended|closed|over|disabled)|deadline|late submission",
    re.IGNORECASE,
)


def rules_url(competition: str = COMPETITION) -> str:
    """The page where a competition's rules are accepted.

    >>> rules_url()
    'https://www.kaggle.com/competitions/data-science-bowl-2018/rules'
    """
    return f"https://www.kaggle.com/competitions/{competition}/rules"


RULES_URL = rules_url()


# --------------------------------------------------------------------------- credentials


def _kaggle_config_dir(environ: Mapping[str, str], home: Path) -> Path:
    """The folder where the kaggle package looks for ``kaggle.json`` (as kaggle 2.2.4 does)."""
    if environ.get("KAGGLE_CONFIG_DIR"):
        return Path(environ["KAGGLE_CONFIG_DIR"])
    legacy = home / ".kaggle"
    if legacy.exists() or not sys.platform.startswith("linux"):
        return legacy
    return Path(environ.get("XDG_CONFIG_HOME") or home / ".config") / "kaggle"


def find_credentials() -> tuple[list[str], list[str]]:
    """Where usable Kaggle credentials are, and what is wrong with unusable ones.

    Returns
    -------
    sources, problems : list of str
        Human-readable descriptions of each credential found, and of each credential file
        that exists but cannot be used.
    """
    environ = os.environ
    home = Path.home()
    sources: list[str] = []
    problems: list[str] = []

    config = _kaggle_config_dir(environ, home) / "kaggle.json"
    if config.is_file():
        try:
            values = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            problems.append(f"{config} is not readable JSON ({error})")
        else:
            if isinstance(values, dict) and values.get("username") and values.get("key"):
                sources.append(str(config))
            else:
                problems.append(f'{config} lacks "username" and "key"')
    if environ.get("KAGGLE_USERNAME") and environ.get("KAGGLE_KEY"):
        sources.append("KAGGLE_USERNAME/KAGGLE_KEY")
    if environ.get("KAGGLE_API_TOKEN"):
        sources.append("KAGGLE_API_TOKEN")
    # The token files and the OAuth cache that the kaggle package (kagglesdk) reads.
    for name in ("access_token", "access_token.txt", "credentials.json"):
        token_file = home / ".kaggle" / name
        if token_file.is_file() and token_file.stat().st_size > 0:
            sources.append(str(token_file))
    return sources, problems


def kaggle_credentials_available() -> bool:
    """Whether Kaggle API credentials are present, without importing ``kaggle``.

    Looks where the ``kaggle`` package (2.2.4) looks: ``kaggle.json`` with ``username`` and
    ``key`` in ``$KAGGLE_CONFIG_DIR`` or ``~/.kaggle`` (``~/.config/kaggle`` when there is no
    ``~/.kaggle``), the ``KAGGLE_USERNAME`` and ``KAGGLE_KEY`` environment variables,
    ``KAGGLE_API_TOKEN``, and the token files ``~/.kaggle/access_token`` (or
    ``access_token.txt``) and ``~/.kaggle/credentials.json`` (``kaggle auth login``).

    Returns
    -------
    bool
        True when at least one of them is there; whether Kaggle accepts it is only known
        when the API is called.
    """
    return bool(find_credentials()[0])


def no_credentials_message(problems: list[str], alternative: str | None = None) -> str:
    """The message for a missing credential: the three ways to give one.

    ``alternative`` ends the list (download: take the files from a local copy instead).
    """
    lines = [
        "no Kaggle API credentials found. Either:",
        '  - save your API key as ~/.kaggle/kaggle.json ({"username": "...", "key": "..."}, '
        "from https://www.kaggle.com/settings/api; chmod 600 it; $KAGGLE_CONFIG_DIR "
        "moves that folder), or",
        "  - set the environment variables KAGGLE_USERNAME and KAGGLE_KEY, or",
        "  - set KAGGLE_API_TOKEN to an API token (or save the token in ~/.kaggle/access_token)"
        + (";" if alternative else ""),
    ]
    if alternative:
        lines.append(alternative)
    lines += [f"(ignored: {problem})" for problem in problems]
    return "\n".join(lines)


def download_alternative() -> str:
    """The way around the Kaggle API for ``download``: a local copy of the files."""
    text = "or take the files from a local copy instead: ./run.sh download --from DIR"
    shared = paths.SHARED_DATA_DIR
    if shared.is_dir():
        text += f" (an offline copy is in {shared})"
    return text


def require_credentials(alternative: str | None = None) -> list[str]:
    """The credentials found (`find_credentials`); a ``PipelineError`` saying how to give
    them when there are none."""
    sources, problems = find_credentials()
    if not sources:
        raise PipelineError(no_credentials_message(problems, alternative))
    log.debug("Kaggle credentials found: %s", ", ".join(sources))
    return sources


# --------------------------------------------------------------------------- errors


def _status_of(error: BaseException) -> int | None:
    return getattr(getattr(error, "response", None), "status_code", None)


def describe_api_error(
    error: BaseException,
    *,
    action: str = "download",
    competition: str = COMPETITION,
    network_hint: str = "",
) -> str:
    """A user-facing explanation of an exception raised by the kaggle package.

    Parameters
    ----------
    error
        What the kaggle package (or requests, under it) raised.
    action
        What was being done, for the messages: ``"download"`` or ``"submission"``.
    competition
        The competition's slug, for the messages and the rules page.
    network_hint
        Appended to the message of a network failure (what to do without internet).

    Examples
    --------
    >>> describe_api_error(ConnectionError("no route"), action="submission")
    'could not reach Kaggle (ConnectionError: no route).'
    """
    status = _status_of(error)
    if action == "submission" and status in (400, 403, 404, 409, 410, 422):
        if _CLOSED.search(str(error)) or status in (404, 410):
            return (
                f"Kaggle takes no submissions to {competition}: it no longer accepts them, or "
                f"the name is wrong (HTTP {status}: {error}). See "
                f"https://www.kaggle.com/competitions/{competition}"
            )
    if status == 413:
        return f"Kaggle refused the file as too large (413 Payload Too Large: {error})"
    if status == 401:
        return (
            f"Kaggle refused the credentials (401 Unauthorized: {error}). Check the key, or "
            "create a new token at https://www.kaggle.com/settings/api"
        )
    if status == 403:
        return (
            f"Kaggle refused access to {competition} (403 Forbidden: {error}). Accept the "
            f"competition rules at {rules_url(competition)} with the account of these "
            "credentials, then run again"
        )
    if status == 404:
        return f"Kaggle does not know the competition {competition} (404 Not Found: {error})"
    if status is not None:
        return f"the Kaggle API answered HTTP {status}: {error}"
    if isinstance(error, OSError):  # requests' network errors are OSErrors too
        verb = "download from" if action == "download" else "reach"
        return f"could not {verb} Kaggle ({type(error).__name__}: {error}).{network_hint}"
    return f"the Kaggle {action} failed ({type(error).__name__}: {error})"


@contextlib.contextmanager
def kaggle_errors(
    action: str, competition: str = COMPETITION, network_hint: str = ""
) -> Iterator[None]:
    """Turn whatever a kaggle call raises into a ``PipelineError`` (`describe_api_error`);
    the kaggle package's prints go to stderr meanwhile."""
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    except PipelineError:
        raise
    except Exception as error:  # anything from requests or kagglesdk: explain, no traceback
        message = describe_api_error(
            error, action=action, competition=competition, network_hint=network_hint
        )
        raise PipelineError(message) from error


def authenticated_api(
    sources: list[str],
    action: str,
    competition: str = COMPETITION,
    alternative: str = "",
    network_hint: str = "",
) -> Any:
    """A ``KaggleApi`` that has authenticated with the credentials found (``sources``).

    Raises ``PipelineError`` when the kaggle package cannot be imported, gives up
    authenticating (it exits then; ``alternative`` is added to that message) or fails
    otherwise (`describe_api_error` with ``action``, ``competition``, ``network_hint``).
    """
    try:
        with kaggle_errors(action, competition, network_hint):
            # Lazy: the kaggle package is heavy and optional; only download and submit use it
            from kaggle.api.kaggle_api_extended import KaggleApi

            api = KaggleApi()
            api.authenticate()
    except PipelineError as error:
        if isinstance(error.__cause__, ImportError):
            raise PipelineError(
                f"the kaggle package cannot be imported ({error.__cause__}); ./run.sh installs "
                "it in .venv"
            ) from error.__cause__
        raise
    except SystemExit as error:  # kaggle exits when it cannot authenticate
        raise PipelineError(
            f"the Kaggle API could not authenticate with {', '.join(sources)} (it exited with "
            f"status {error.code}); check those credentials{alternative}"
        ) from None
    return api


# --------------------------------------------------------------------------- submitting


def check_size(path: str | os.PathLike[str], max_mib: float = MAX_SUBMISSION_MIB) -> int:
    """The file's size in bytes; a ``PipelineError`` when it is over ``max_mib`` MiB.

    >>> check_size(__file__) > 0
    True
    """
    size = Path(path).stat().st_size
    if size > max_mib * 2**20:
        raise PipelineError(
            f"{path}: {size / 2**20:.1f} MiB, over the {max_mib:g} MiB submit uploads "
            f"(MAX_SUBMISSION_MIB in {__name__}: the pipeline's bound, as Kaggle publishes "
            "none for this competition; --max-mib changes it)"
        )
    return size


def submit_file(
    api: Any, csv_path: str | os.PathLike[str], message: str, competition: str = COMPETITION
) -> int:
    """Upload a submission with ``competition_submit``; return Kaggle's reference for it.

    Raises ``PipelineError`` (one line) on every failure, including the upload failure that
    kaggle 2.2.4 reports as an answer, not as an exception.
    """
    with kaggle_errors("submission", competition, " Check the internet connection."):
        response = api.competition_submit(
            file_name=str(csv_path), message=message, competition=competition, quiet=False
        )
    answer = str(getattr(response, "message", "") or "")
    if answer == UPLOAD_FAILED_MESSAGE:
        raise PipelineError(
            f"the upload of {csv_path} to Kaggle failed (competition_submit answered "
            f"{answer!r}); check the internet connection and run again"
        )
    if answer:
        log.info("Kaggle: %s", answer)
    return int(getattr(response, "ref", 0) or 0)


@dataclass(frozen=True)
class KaggleScores:
    """A scored submission: Kaggle's reference and its public and private scores (text, as
    Kaggle gives them; empty when Kaggle shows none)."""

    ref: int
    public: str
    private: str


def _status_name(status: Any) -> str:
    """``SubmissionStatus.COMPLETE`` (or ``"COMPLETE"``) -> ``"COMPLETE"``."""
    return str(getattr(status, "name", status) or "PENDING").rsplit(".", 1)[-1].upper()


def find_submission(submissions: list[Any] | None, ref: int, message: str) -> Any | None:
    """Ours in a submission list: by reference, else the newest with our description."""
    submissions = [item for item in submissions or [] if item is not None]
    if ref:
        return next((item for item in submissions if getattr(item, "ref", None) == ref), None)
    return next((item for item in submissions if getattr(item, "description", "") == message), None)


def wait_for_scores(
    api: Any,
    ref: int,
    message: str,
    competition: str = COMPETITION,
    *,
    timeout_s: float = 900.0,
    poll_s: float = 15.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> KaggleScores:
    """Poll ``competition_submissions`` until Kaggle has scored the submission.

    A progress line is logged at each poll. Returns when its status is complete; raises
    ``PipelineError`` when Kaggle reports an error scoring it, or after ``timeout_s``.
    """
    started = clock()
    while True:
        with kaggle_errors("submission list", competition, " Check the internet connection."):
            submissions = api.competition_submissions(competition)
        found = find_submission(submissions, ref, message)
        status = _status_name(getattr(found, "status", None)) if found else "NOT LISTED YET"
        if status == "COMPLETE":
            return KaggleScores(
                int(getattr(found, "ref", ref) or ref),
                str(getattr(found, "public_score", "") or ""),
                str(getattr(found, "private_score", "") or ""),
            )
        if status == "ERROR":
            reason = getattr(found, "error_description", "") or "no reason given"
            raise PipelineError(f"Kaggle could not score submission {ref}: {reason}")
        waited = clock() - started
        if waited >= timeout_s:
            raise PipelineError(
                f"Kaggle had not scored submission {ref} after {waited:.0f} s (status "
                f"{status.lower()}); it is submitted: see its scores at "
                f"https://www.kaggle.com/competitions/{competition}/submissions"
            )
        log.info(
            "waiting for Kaggle to score submission %s: %s (%.0f s of at most %.0f s)",
            ref,
            status.lower(),
            waited,
            timeout_s,
        )
        sleep(min(poll_s, max(0.0, timeout_s - waited)))
