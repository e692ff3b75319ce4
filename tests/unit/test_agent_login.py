"""The login environment of a user, from the password database and login.defs."""

from __future__ import annotations

import pwd
from pathlib import Path

from apsis_agent.login import ROOT_PATH, USER_PATH, login_environment


def test_root_and_another_user_with_login_defs(tmp_path: Path) -> None:
    defs = tmp_path / "login.defs"
    defs.write_text("# comment\nENV_SUPATH\tPATH=/r/sbin:/r/bin\nENV_PATH PATH=/u/bin\nUMASK 022\n")
    root = login_environment(0, defs)
    assert root == {
        "HOME": pwd.getpwuid(0).pw_dir,
        "USER": "root",
        "LOGNAME": "root",
        "SHELL": pwd.getpwuid(0).pw_shell,
        "PATH": "/r/sbin:/r/bin",
    }
    nobody = pwd.getpwnam("nobody")
    other = login_environment(nobody.pw_uid, defs)
    assert (other["USER"], other["HOME"], other["PATH"]) == ("nobody", nobody.pw_dir, "/u/bin")


def test_defaults_without_login_defs_or_a_password_entry(tmp_path: Path) -> None:
    missing = tmp_path / "none"
    assert login_environment(0, missing)["PATH"] == ROOT_PATH
    assert login_environment(pwd.getpwnam("nobody").pw_uid, missing)["PATH"] == USER_PATH
    assert login_environment(4_000_000_000, missing) == {"HOME": "/", "PATH": USER_PATH}
