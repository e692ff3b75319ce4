"""`python -m apsis_server.checkjobs [--calendars DIR] DIR`: validate a jobs directory offline.

Prints plugins that could not be used (docs/extending.md), every error as
`file: key.path: message`, then warnings (references to jobs that do not exist),
then counts; exits 1 when any job (or calendar) file has errors,
2 on bad usage, 0 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from apsis_server.core.jobs import JobError
from apsis_server.core.templates import Templates
from apsis_server.jobsdir import load_calendars_dir, load_jobs_dir
from apsis_server.plugins import load_extensions


def _print(error: JobError) -> None:
    where = f"{error.path}: {error.key_path}" if error.key_path else error.path
    print(f"{where}: {error.message}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="apsis check-jobs", description=__doc__)
    parser.add_argument("jobs_dir", type=Path, metavar="DIR", help="the jobs directory")
    parser.add_argument(
        "--calendars", type=Path, metavar="DIR", help="directory of named calendar files"
    )
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:
        return 0 if exc.code == 0 else 2
    for name, given in (("jobs", args.jobs_dir), ("calendars", args.calendars)):
        if given is not None and not given.is_dir():
            # A wrong path is a usage error, not a directory of zero jobs.
            what = "no such directory" if not given.exists() else "not a directory"
            print(f"apsis check-jobs: {what}: {given} (the {name} directory)", file=sys.stderr)
            return 2
    errors: list[JobError] = []
    calendars = {}
    if args.calendars is not None:
        loaded = load_calendars_dir(args.calendars)
        calendars, errors = loaded.calendars, list(loaded.errors)
    plugins = load_extensions()
    for problem in plugins.problems:
        print(f"warning: {problem}")
    extensions = plugins.extensions
    templates = Templates(extensions.helpers(calendars))
    result = load_jobs_dir(args.jobs_dir, templates, calendars, extensions)
    errors += result.errors
    for error in errors:
        _print(error)
    for warning in result.warnings:
        _print(
            JobError(warning.job_id, warning.path, warning.key_path, "warning: " + warning.message)
        )
    print(f"{len(result.jobs)} jobs loaded, {len(errors)} errors, {len(result.warnings)} warnings")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
