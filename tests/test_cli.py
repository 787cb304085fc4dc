"""The command line: which preset a command resolves, and one clear line (never a traceback) when it stops."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from delrec_lib import __main__ as cli
from delrec_lib import runner
from delrec_lib.config import loading as config_loading
from delrec_lib.errors import DelrecError

COMMANDS = ("run", "data", "teachers", "distill", "finetune", "p2rec")


class Resolved(DelrecError):
    pass


@pytest.fixture
def resolved_preset(monkeypatch):
    """Stop every command right after its config names a preset, reporting which one."""

    def stop(name):
        raise Resolved(f"resolved preset {name}")

    monkeypatch.setattr(config_loading, "preset_config", stop)


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = cli.main(list(argv))
    return code, capsys.readouterr().err


@pytest.mark.parametrize("command", COMMANDS)
def test_the_config_files_preset_is_used_when_no_preset_is_given(command, tmp_path, capsys, resolved_preset):
    f = tmp_path / "x.toml"
    f.write_text('preset = "smoke"\n')
    code, err = run_cli(capsys, command, "--config", str(f), "--run-dir", str(tmp_path / "run"))
    assert (code, err.strip()) == (2, "error: resolved preset smoke")


@pytest.mark.parametrize("command", COMMANDS)
def test_the_default_preset_applies_only_when_neither_names_one(command, tmp_path, capsys, resolved_preset):
    f = tmp_path / "x.toml"
    f.write_text("[data]\nseed = 3\n")
    assert run_cli(capsys, command, "--config", str(f), "--run-dir", str(tmp_path / "run")) == (2, "error: resolved preset cpu\n")
    assert run_cli(capsys, command, "--run-dir", str(tmp_path / "run")) == (2, "error: resolved preset cpu\n")
    code, err = run_cli(capsys, command, "--preset", "paper", "--config", str(f), "--run-dir", str(tmp_path / "run"))
    assert (code, err) == (2, "error: resolved preset paper\n")


def test_an_explicit_preset_that_disagrees_with_the_file_is_refused(tmp_path, capsys):
    f = tmp_path / "x.toml"
    f.write_text('preset = "smoke"\n')
    code, err = run_cli(capsys, "teachers", "--preset", "cpu", "--config", str(f), "--run-dir", str(tmp_path / "run"))
    assert code == 2 and err == f"error: {f}: preset 'smoke' disagrees with the requested preset 'cpu'\n"


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("latin.toml", 'data_dir = "donn\u00e9es"\n'.encode("latin-1"), "not UTF-8 text"),
        ("list.json", b"[1, 2]", "expected an object of config sections at the top level, got list"),
        ("bad.toml", b"[teachers]\npatience = 0\n", "teachers.patience: expected an integer >= 1, got 0"),
    ],
)
def test_a_bad_config_file_is_one_line_and_a_non_zero_exit(name, content, message, tmp_path, capsys):
    f = tmp_path / name
    f.write_bytes(content)
    for command in ("run", "data", "finetune"):
        code, err = run_cli(capsys, command, "--config", str(f), "--run-dir", str(tmp_path / "run"))
        assert code == 2 and err.startswith(f"error: {f}: ") and message in err and err.count("\n") == 1, err


def test_ctrl_c_says_how_to_resume_instead_of_a_traceback(monkeypatch, tmp_path, capsys):
    def interrupted(name):
        raise KeyboardInterrupt

    monkeypatch.setattr(config_loading, "preset_config", interrupted)
    code, err = run_cli(capsys, "teachers", "--run-dir", str(tmp_path / "run"))
    assert code == 130 and err.strip() == "interrupted; rerun the same command to resume"


def test_a_dead_kernel_is_one_line_naming_the_notebook(monkeypatch, tmp_path, capsys):
    import papermill
    from nbclient.exceptions import DeadKernelError

    def die(*args, **kwargs):
        raise DeadKernelError("Kernel died")

    monkeypatch.setattr(papermill, "execute_notebook", die)
    code, err = run_cli(capsys, "run", "--preset", "smoke", "--only", "01", "--run-dir", str(tmp_path / "run"), "--no-progress")
    notebook = runner.series_notebooks()[0].name
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: {notebook}: the kernel died while running it") and "Kernel died" in err


@pytest.mark.parametrize(
    "error, expected",
    [
        ("dead", "02_teachers.ipynb: the kernel died while running it (killed, or out of memory?): Kernel died; "),
        ("timeout", "02_teachers.ipynb: a cell ran past its timeout: "),
        ("kernel", "02_teachers.ipynb: no Jupyter kernel named 'python9'"),
        ("cell", "02_teachers.ipynb failed in cell 4: ValueError: bad (see "),
    ],
)
def test_execution_errors_become_delrec_errors_naming_the_notebook(error, expected, tmp_path):
    from jupyter_client.kernelspec import NoSuchKernel
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    raised = {
        "dead": DeadKernelError("Kernel died"),
        "timeout": CellTimeoutError("A cell timed out while it was being executed, after 10 seconds."),
        "kernel": NoSuchKernel("python9"),
        "cell": PapermillExecutionError(3, 4, "x = f()", "ValueError", "bad", ["traceback"]),
    }[error]
    assert isinstance(raised, runner.execution_errors())
    failure = runner.execution_failure("02_teachers.ipynb", tmp_path / "02_teachers.ipynb", raised)
    assert isinstance(failure, DelrecError) and str(failure).startswith(expected), str(failure)



STAGE_COMMANDS = sorted(cli.LOCKING_COMMANDS)


def test_every_command_that_writes_a_run_folder_holds_its_lock():
    assert set(STAGE_COMMANDS) == set(cli.COMMANDS) - {"run", "data", "report", "stage1-study"}, (
        "run locks inside run_series; data writes no run folder; report and stage1-study only read run folders "
        "(and write their page)")


@pytest.mark.parametrize("command", STAGE_COMMANDS)
def test_a_stage_command_on_a_locked_run_folder_stops_at_once_naming_the_holder(command, monkeypatch, tmp_path, capsys):
    """As ``run`` does: the command stops before its stage starts, naming who holds the folder."""
    started = []
    monkeypatch.setitem(cli.COMMANDS, command, (*cli.COMMANDS[command][:2], lambda args: started.append(command)))
    root = tmp_path / "run"
    with runner.run_folder_lock(root):
        code, err = run_cli(capsys, command, "--preset", "smoke", "--run-dir", str(root))
    assert started == [], "the stage did not start"
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: {root} is in use by another run (pid {os.getpid()}, started 20"), err
    assert run_cli(capsys, command, "--preset", "smoke", "--run-dir", str(root)) == (0, "")
    assert started == [command], "released: the same command then runs"


def test_a_stage_command_takes_its_run_folder_and_lock_without_the_notebook_runner(tmp_path):
    """A stage's command gets its run context and lock from ``config.context``: it loads nothing of the
    notebook runner (a fresh process, the stage itself stubbed)."""
    code = (
        "import sys\n"
        "from delrec_lib import __main__ as cli\n"
        "help_, add_args, _ = cli.COMMANDS['teachers']\n"
        "cli.COMMANDS['teachers'] = (help_, add_args, lambda args: print('delrec_lib.runner' in sys.modules))\n"
        f"sys.exit(cli.main(['teachers', '--preset', 'smoke', '--run-dir', {str(tmp_path / 'run')!r}]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False", "the command went through the notebook runner"
    assert (tmp_path / "run" / ".lock").is_file(), "the command took the run folder's lock"


def launched_as(monkeypatch, main_process: bool, main_says: str | None = None) -> list:
    """Pretend to be one of two launched processes; returns what this process broadcast."""
    sent: list = []

    def broadcast(obj):
        sent.append(obj)
        return obj if main_process else main_says

    monkeypatch.setattr(cli, "launched_processes", lambda: 2)
    monkeypatch.setattr(cli, "is_main_process", lambda: main_process)
    monkeypatch.setattr(cli, "broadcast_object", broadcast)
    return sent


def test_under_a_launcher_the_main_process_takes_the_lock_and_tells_the_others(monkeypatch, tmp_path):
    sent = launched_as(monkeypatch, main_process=True)
    with runner.run_folder_lock(tmp_path):  # another run holds the folder
        with pytest.raises(DelrecError, match="in use by another run"):
            with cli.held_run_folder(tmp_path):
                pytest.fail("the stage started")
    assert len(sent) == 1 and "in use by another run" in sent[0], "the refusal is sent to the other processes"
    with cli.held_run_folder(tmp_path):
        with pytest.raises(DelrecError, match="in use by another run"):
            with runner.run_folder_lock(tmp_path):
                pass
    assert sent[1] is None, "the others are told to go on"


def test_under_a_launcher_the_other_processes_follow_the_main_ones_outcome(monkeypatch, tmp_path):
    """They do not take the lock (the main process holds it: taking it would refuse them), and stop
    when the main process was refused instead of waiting for it in the stage's first collective."""
    sent = launched_as(monkeypatch, main_process=False)
    with runner.run_folder_lock(tmp_path):  # held by the main process of the same launch
        with cli.held_run_folder(tmp_path):
            pass
    launched_as(monkeypatch, main_process=False, main_says=f"{tmp_path} is in use by another run (pid 1)")
    with pytest.raises(DelrecError, match=r"in use by another run \(pid 1\)"):
        with cli.held_run_folder(tmp_path):
            pytest.fail("the stage started")
    assert sent == [None]
