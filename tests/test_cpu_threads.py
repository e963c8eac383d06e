"""The engine's OpenMP wait: passive unless the user chose one, set before torch loads (engine/cpu_threads.py)."""

import os
import subprocess  # nosec B404  # runs this interpreter on a fixed snippet
import sys

import pytest

from geovlm.engine.cpu_threads import WAIT_VARIABLES, use_passive_wait


def test_passive_wait_is_set_where_nothing_was_chosen():
    env = {"PATH": "/usr/bin"}
    assert use_passive_wait(env) is True
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"


@pytest.mark.parametrize("name", WAIT_VARIABLES)
def test_a_wait_chosen_by_the_user_is_left_alone(name):
    env = {name: "123"}
    assert use_passive_wait(env) is False
    assert env == {name: "123"}


def test_the_command_line_sets_it_before_any_command_imports_torch(tmp_path):
    snippet = (
        "import os, sys\n"
        "from geovlm.cli import main\n"
        "try:\n    main(['--version'])\nexcept SystemExit:\n    pass\n"
        "print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in WAIT_VARIABLES}
    out = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, env=env,  # nosec B603
                         cwd=str(tmp_path), timeout=120, check=True)
    assert out.stdout.split()[-2:] == ["PASSIVE", "False"]
