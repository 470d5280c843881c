"""`gpucp serve --config FILE.toml` and GPUCP_* variables: every flag, one set of checks, flag > env > file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cluster import ControlPlaneProcess
from controlplane import cli
from controlplane.settings import env_name, key, layer
from gpucp import GpucpError


def settings(argv: list[str], env: dict[str, str] | None = None) -> dict[str, object]:
    parser = cli.parser()
    layer(parser, argv, env or {})
    return vars(parser.parse_args(argv))


def test_every_flag_of_gpucp_serve_is_a_file_key_and_a_variable(tmp_path: Path) -> None:
    names = {a.option_strings[-1]: (key(a), env_name(a)) for a in cli.parser()._actions if a.option_strings}
    assert names["--max-queue"] == ("max-queue", "GPUCP_MAX_QUEUE")
    assert names["--tls-client-ca"] == ("tls-client-ca", "GPUCP_TLS_CLIENT_CA")
    # Each flag (but --config and --help) set from a file takes its value from there.
    parser = cli.parser()
    settable = [a for a in parser._actions if a.option_strings and key(a) not in ("config", "help")]
    lines = []
    for action in settable:
        if action.nargs == 0:
            lines.append(f"{key(action)} = true")
        elif action.choices:
            lines.append(f"{key(action)} = {json.dumps(list(action.choices)[-1])}")
        elif action.default == []:
            lines.append(f"{key(action)} = []")
        elif action.type in (int, float):
            lines.append(f"{key(action)} = 7")
        elif action.type not in (None, str):
            if action.default is None:
                continue  # a parser of its own and no default: no value known to be good
            lines.append(f"{key(action)} = {json.dumps(str(action.default))}")  # a value it reads back
        else:
            lines.append(f'{key(action)} = "from-file"')
    (tmp_path / "all.toml").write_text("\n".join(lines))
    args = settings(["--config", str(tmp_path / "all.toml")])
    assert args["max_queue"] == 7 and args["insecure"] is True and args["listen"] == "from-file"
    assert args["policy"] == list(cli.POLICIES)[-1] and args["heartbeat_timeout"] == 7.0


def test_a_flag_beats_a_variable_which_beats_the_file_which_beats_the_default(tmp_path: Path) -> None:
    config = tmp_path / "gpucp.toml"
    config.write_text('max-queue = 10\ndefault-retries = 5\naging = 2.5\ntenant-weight = ["a=2", "b=3"]\n')
    env = {"GPUCP_MAX_QUEUE": "20", "GPUCP_DEFAULT_RETRIES": "6", "GPUCP_TENANT_WEIGHT": "c=4"}
    args = settings(["--config", str(config), "--max-queue", "30"], env)
    assert (args["max_queue"], args["default_retries"], args["aging"]) == (30, 6, 2.5)
    assert args["tenant_weight"] == ["c=4"], "a variable replaces the file's list"
    assert args["quarantine_after"] == 3, "a setting nobody gave keeps its default"
    # A repeatable flag on the command line replaces the lists of the variable and the file.
    assert settings(["--config", str(config), "--tenant-weight", "d=5"], env)["tenant_weight"] == ["d=5"]
    # The file may also be named by GPUCP_CONFIG.
    assert settings([], {"GPUCP_CONFIG": str(config)})["default_retries"] == 5


@pytest.mark.parametrize(("toml", "env", "says"), [
    ("max_queue = 5", {}, "unknown setting 'max_queue'; did you mean 'max-queue'?"),
    ("colour = 'blue'", {}, "unknown setting 'colour'; the settings are the flags of gpucp serve"),
    ("max-queue = 1.5", {}, "max-queue = '1.5': give a whole number (N)"),
    ("max-queue = '5'", {}, "max-queue = '5': give a whole number (N)"),
    ("policy = 'fastest'", {}, "policy = 'fastest': give one of fragmentation, composite"),
    ("insecure = 'yes'", {}, "insecure = 'yes': give true or false"),
    ("kind-policy = 'a=cost'", {}, "kind-policy = 'a=cost': give a list of strings"),
    ("[listen]\nport = 1", {}, "listen = {'port': 1}: give a string"),
    ("max-queue = ", {}, "not TOML"),
    ("", {"GPUCP_HEARTBEAT_TIMEOUT": "soon"}, "GPUCP_HEARTBEAT_TIMEOUT = 'soon': give a number (SECONDS)"),
    ("", {"GPUCP_INSECURE": "maybe"}, "GPUCP_INSECURE='maybe': give 1 or 0"),
    ("", {"GPUCP_SYNC": "always"}, "GPUCP_SYNC = 'always': give one of normal, full"),
    # Range checks of run_serve name the flag and where its value came from.
    ("heartbeat-timeout = -1", {}, "--heartbeat-timeout -1: give seconds > 0 (set by heartbeat-timeout in"),
    ("", {"GPUCP_AGING": "-2"}, "--aging -2: give seconds >= 0 (0: tasks never move up a class) (set by GPUCP_AGING)"),
])
def test_a_bad_setting_is_refused_with_a_sentence_naming_it(tmp_path, capsys, monkeypatch, toml, env, says) -> None:
    config = tmp_path / "gpucp.toml"
    config.write_text(toml)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["--config", str(config), "--db", str(tmp_path / "never.db")]) == 1
    err = capsys.readouterr().err
    assert says in err, err
    assert not (tmp_path / "never.db").exists(), "a bad setting must stop the server before it opens its database"


def test_a_bad_value_given_as_a_flag_is_not_blamed_on_the_variable_it_overrides(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GPUCP_AGING", "5")
    assert cli.main(["--aging", "-1", "--db", str(tmp_path / "never.db")]) == 1
    err = capsys.readouterr().err
    assert "--aging -1: give seconds >= 0" in err and "GPUCP_AGING" not in err, err


def test_a_missing_or_huge_config_file_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli.main(["--config", str(tmp_path / "absent.toml")]) == 1
    assert f"--config {tmp_path / 'absent.toml'}: No such file or directory" in capsys.readouterr().err
    huge = tmp_path / "huge.toml"
    huge.write_text("# padding\n" * 200_000)
    assert cli.main(["--config", str(huge)]) == 1
    assert "over 1048576 bytes" in capsys.readouterr().err
    monkeypatch.setenv("GPUCP_CONFIG", str(tmp_path / "gone.toml"))
    assert cli.main([]) == 1
    assert f"GPUCP_CONFIG={tmp_path / 'gone.toml'}: No such file or directory" in capsys.readouterr().err


def test_a_server_runs_with_settings_from_its_file_and_environment(tmp_path: Path) -> None:
    config = tmp_path / "gpucp.toml"
    config.write_text('max-queue = 1\nlog-format = "json"\n')
    cp = ControlPlaneProcess(tmp_path, "--config", str(config), env={"GPUCP_MAX_QUEUE": "2"}).start()
    try:
        with cp.client() as client:
            client.submit("noop")
            client.submit("noop")  # no agent: both stay pending
            with pytest.raises(GpucpError, match="limit 2"):
                client.submit("noop")
    finally:
        cp.stop()
    # The log (stderr) is JSON; the harness's file also holds stdout's one "listening" line.
    lines = [line for line in cp.log().splitlines() if not line.startswith("gpucp control plane listening on ")]
    assert json.loads(lines[0])["message"].startswith("gpucp "), lines[0]
