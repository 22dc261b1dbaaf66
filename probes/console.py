"""The consoles and error handling every `probes` command shares (cli.py, probes.vlm.cli).

    @app.command()
    @user_errors
    def cmd(...): ...

A user mistake (`UserError`) or a fault of the machine the user can fix (a read-only or full
disk, an `--out` that is a file: `OSError`) prints ONE line on stderr and exits with code 2;
anything else is a bug and keeps its traceback. Error text is printed as plain text: rich
markup is never interpreted, so `probes[vlm]` or a path holding `[x]` stays as written.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import warnings
from collections.abc import Iterator
from typing import Any

import typer
from rich.console import Console
from rich.text import Text

from probes.errors import UserError

console = Console(stderr=True, soft_wrap=True, highlight=False)
out_console = Console(soft_wrap=True, highlight=False)

# errno → what the user does about it
_OS_ADVICE = {
    errno.ENOSPC: "free some space or choose another --out",
    errno.EDQUOT: "free some space or choose another --out",
    errno.EROFS: "the file system is read-only: choose another --out",
    errno.EACCES: "no permission: choose another --out or fix the permissions",
    errno.EPERM: "no permission: choose another --out or fix the permissions",
    errno.ENOTDIR: "a path component is a file, not a directory: choose another --out",
    errno.EISDIR: "it is a directory: give a file path",
    errno.EEXIST: "it exists already: choose another path",
    errno.ENAMETOOLONG: "choose a shorter path",
    errno.ENOENT: "check the path",
    errno.EIO: "the disk reported an I/O error",
    errno.EMFILE: "too many open files: raise `ulimit -n`",
}


def error_line(message: str) -> Text:
    """`error: MESSAGE` in red, MESSAGE as plain text (no markup, no highlighting)."""
    return Text.assemble(("error:", "red"), " ", str(message).strip().splitlines()[0] if str(message).strip() else "")


def print_error(message: str) -> None:
    console.print(error_line(message), soft_wrap=True)


def print_warning(message: str) -> None:
    console.print(Text.assemble(("warning:", "yellow"), " ", str(message)), soft_wrap=True)


def describe_os_error(err: OSError) -> str | None:
    """One line for an OSError the user can fix (the file, the reason, the advice), None for others."""
    advice = _OS_ADVICE.get(err.errno)
    if advice is None:
        return None
    where = " -> ".join(str(f) for f in (err.filename, err.filename2) if f is not None)
    reason = err.strerror or str(err)
    return f"{where}: {reason}; {advice}" if where else f"{reason}; {advice}"


@contextlib.contextmanager
def one_line_warnings() -> Iterator[None]:
    """Show each warning raised in the block as one `warning: MESSAGE` line (no file, no source line)."""
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *_args, **_kw: print_warning(str(message))
        yield


def user_errors(fn):
    """Turn a UserError, or an OSError the user can fix, into one red line on stderr and exit code 2;
    warnings print as one line each."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with one_line_warnings():
                return fn(*args, **kwargs)
        except UserError as err:
            print_error(str(err))
        except OSError as err:
            line = describe_os_error(err)
            if line is None:
                raise
            print_error(line)
        raise typer.Exit(2)

    return wrapper


def flags_given(ctx: typer.Context, mapping: dict[str, str]) -> dict[str, Any]:
    """{config key: value} for the options the user typed (not defaults): `mapping` is
    option name → dotted config key."""
    given = {}
    for param, key in mapping.items():
        source = ctx.get_parameter_source(param)
        if source is not None and source.name == "COMMANDLINE":  # typer may vendor its own click
            given[key] = ctx.params[param]
    return given


STOPPED_EXIT = 143  # 128 + SIGTERM, as a shell reports a process ended by it


def exit_for_status(status: str) -> None:
    """A run command's exit: 1 for a failed run, 143 for one stopped by SIGTERM (still `running`,
    resumable with the same command), else 0."""
    if status == "failed":
        raise typer.Exit(1)
    if status == "running":
        raise typer.Exit(STOPPED_EXIT)
