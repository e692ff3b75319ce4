"""`apsis job new NAME`: a commented job file to start from (docs/jobs.md).

The file loads as it is (a job that runs only when scheduled by hand); every other
key is there, commented out, with what it means. tests/unit/test_cli_job_new.py
loads it with the server's own loader.
"""

from __future__ import annotations

TEMPLATE = """\
# The job {job_id}: its id is this file's path below the jobs directory.
# Reference: docs/jobs.md. Check the directory with `apsis check-jobs DIR`, then
# load it into the server with `apsis reload`.

metadata:
  description: |
    What this job does, in Markdown: shown on the job's page.
  labels: []                 # e.g. [nightly, reports]: searchable, and on the runs

# Names of the args each run gets; use them in the program as {{{{ name }}}}.
params: []                   # e.g. [date]

# What to run: a shell command (bash), or `type: program` with an argv (no shell).
program:
  type: shell
  command: echo "hello from $APSIS_JOB_ID, run $APSIS_RUN_ID"
  # host: db7.example.com    # an agent host or host group; default: the local agent
  # user: reports            # run as this user
  # timeout:                 # stopped when it runs longer
  #   duration: 1h
  #   signal: SIGTERM
  # stop:                    # how a stop (by hand or by a stop schedule) goes
  #   signal: SIGTERM
  #   grace_period: 1 min    # then SIGKILL

# When to run; without a schedule it runs only when scheduled by hand.
# schedule:
#   - type: daily            # also: interval, daily-interval, crontab, explicit
#     daytime: "09:30"
#     tz: America/New_York
#     calendar: Mon-Fri
#   - type: interval
#     interval: 15 min

# What a run waits for before it starts.
# conditions:
#   - type: dependency       # another job's run with the same args...
#     job_id: other/job
#     states: [success]      # ...in one of these states
#   - type: max_running      # at most this many runs at once
#     count: 1

# What happens after a run.
# actions:
#   - type: retry            # run again on failure
#     max: 2
#     delay: 5 min
#   - type: schedule         # then run another job
#     job_id: other/next
#     states: [success]
"""


def job_template(job_id: str) -> str:
    """The job file text for `job_id` (a path like `demo/hello`, no control characters:
    it is only in the first comment)."""
    return TEMPLATE.format(job_id=job_id)
