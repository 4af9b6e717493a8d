"""The command-line boundary of ``main.py`` and ``python -m nm_hebb_jax.evaluate``.

Every failure a user can act on is one line on stderr and an exit status; a bug keeps its
traceback:

- :func:`run` is ``absl.app.run`` with a flags parser that reports a bad flag, an unknown config
  field (with ml_collections' "did you mean"), a config file that does not exist or whose
  ``get_config`` refuses its argument as one line, exit status 2;
- :func:`reported` wraps a CLI's work: the project's :class:`~nm_hebb_jax.errors.ReportedError` s
  print as ``<prefix>: <message>`` and exit with their code (:mod:`nm_hebb_jax.errors`), Ctrl-C
  outside the training loop (which saves first, :mod:`~nm_hebb_jax.train.preemption`) prints
  ``stopped: ...`` and exits 130, and :class:`~nm_hebb_jax.errors.RunWarning` s print as
  ``warning: <message>``.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import warnings

from absl import app, flags

from nm_hebb_jax.errors import EXIT_INTERRUPTED, EXIT_USAGE, ReportedError, RunWarning

FLAGS = flags.FLAGS

_DID_YOU_MEAN = re.compile(r'Did you mean "([^"]+)" instead of "([^"]+)"')


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(EXIT_USAGE)


def _project_error(error: BaseException) -> ReportedError | None:
    """The project's own error in ``error``'s chain of causes, the innermost if several
    (ml_collections re-raises a config file's error as the same type, with a traceback inside)."""
    found, seen = None, set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, ReportedError):
            found = error
        error = error.__cause__ or error.__context__
    return found


def _config_flags() -> list[str]:
    """The names of the ml_collections config-file flags (``--config``)."""
    return [name for name in FLAGS if FLAGS[name].flag_type() == "config object"]


def _config_file(name: str, argv: list[str]) -> str:
    """The file given to ``--<name>`` (without its ``:arg``)."""
    for arg in argv[1:]:
        for prefix in (f"--{name}=", f"-{name}="):
            if arg.startswith(prefix):
                return arg[len(prefix) :].split(":", 1)[0]
    return ""


def _unknown_field(error: BaseException, argv: list[str]) -> str | None:
    """ "--config.x.y: no such config field; did you mean ..." for an unknown override."""
    match = _DID_YOU_MEAN.search(str(error).replace("\\", ""))
    if not match:
        return None
    suggestion, wrong = match.groups()
    for arg in argv[1:]:
        flag = arg.lstrip("-").split("=", 1)[0]
        head, _, rest = flag.partition(".")
        if rest and head in _config_flags() and rest.split(".")[-1] == wrong:
            parent = rest.rsplit(".", 1)[0] + "." if "." in rest else ""
            return f"--{flag}: no such config field; did you mean --{head}.{parent}{suggestion}?"
    return f"no config field {wrong!r}; did you mean {suggestion!r}?"


def _missing_config(name: str, error: BaseException, argv: list[str]) -> str:
    path = _config_file(name, argv)
    if path and not os.path.exists(path):
        here = os.path.dirname(path) or "."
        files = []
        if os.path.isdir(here):
            files = sorted(f for f in os.listdir(here) if f.endswith(".py"))
        listing = f" ({here}/ has {', '.join(files)})" if files else ""
        return f"config file {path} does not exist: pass --{name}=<file>.py[:arg]{listing}"
    while error.__cause__ is not None:  # ml_collections wraps the loader's error
        error = error.__cause__
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return f"cannot load config file {path or '?'} ({reason}): pass --{name}=<file>.py[:arg]"


def parse_flags(argv: list[str]) -> list[str]:
    """``FLAGS(argv)``, with the user's mistakes as one line and exit status 2.

    The config files are loaded here (ml_collections defers a missing file's error to the
    config's first use), so a bad ``--config`` never reaches ``main``.
    """
    try:
        rest = FLAGS(argv)
    except flags.Error as e:
        project = _project_error(e)
        if project is not None:
            _fail(str(project))
        message = str(e).strip()
        if "Traceback" in message:  # get_config raised something else: a bug in that file
            raise
        _fail(f"{message.splitlines()[0]} (--helpfull lists the flags)")
    except (AttributeError, KeyError) as e:
        message = _unknown_field(e, argv)
        if message is None:
            raise
        _fail(message)
    except OSError as e:  # an override of a config file that did not load
        names = _config_flags()
        _fail(_missing_config(names[0], e, argv) if names else str(e))
    for name in _config_flags():
        if FLAGS[name].value is None:
            continue
        try:
            FLAGS[name].value.get("__loaded__")  # a file that failed to load raises here
        except OSError as e:
            _fail(_missing_config(name, e, argv))
    return rest


def run(main) -> None:
    """``absl.app.run(main)`` with :func:`parse_flags`."""
    app.run(main, flags_parser=parse_flags)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    if issubclass(category, RunWarning):
        print(f"warning: {message}", file=file or sys.stderr)
    else:
        _show_warning.default(message, category, filename, lineno, file, line)


@contextlib.contextmanager
def reported(interrupted: str = "interrupted (Ctrl-C)"):
    """Runs a CLI's work: the project's errors become one line and their exit status.

    Args:
      interrupted: what ``stopped: ...`` says when Ctrl-C interrupts the work.

    Inside, each distinct :class:`~nm_hebb_jax.errors.RunWarning` prints once as
    ``warning: <message>``.
    """
    previous = warnings.showwarning
    _show_warning.default = previous
    warnings.showwarning = _show_warning
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default", RunWarning)
            yield
    except ReportedError as e:
        print(f"{e.prefix}: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print(f"stopped: {interrupted}", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    finally:
        warnings.showwarning = previous
