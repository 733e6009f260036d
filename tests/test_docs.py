"""The README stays in sync with the code: every setting and every command is documented."""

import re
from pathlib import Path

from visdex import config

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_setting_is_documented():
    for s in config.SETTINGS:
        assert f"`{s.env}`" in README, f"{s.env} is not in the README settings table"


def _command_names() -> set[str]:
    from visdex.cli import _load_command_modules, app

    _load_command_modules()
    return {c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands}


def test_every_cli_command_is_documented():
    for name in _command_names():
        assert re.search(rf"visdex {name}\b", README), f"`visdex {name}` is not shown in the README"


def test_readme_commands_exist():
    names = _command_names()
    for used in re.findall(r"^visdex ([\w-]+)", README, flags=re.M):
        assert used in names, f"README shows `visdex {used}`, which does not exist"


def test_env_overrides_default(monkeypatch):
    monkeypatch.setenv("VISDEX_BATCH_SIZE", "7")
    assert config.get("batch_size") == 7
    monkeypatch.delenv("VISDEX_BATCH_SIZE")
    assert config.get("batch_size") == 32
