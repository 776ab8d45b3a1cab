"""The target's own check of an incoming migration (``agent/incoming.py``), as libvirt runs its
qemu hook: ``ferry-agent-hook --config agent.toml GUEST migrate begin -`` with the incoming domain
XML on stdin, on a real LocalHostSystem over a temporary tree."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from ferry.agent.incoming import main

XML = (
    "<domain><name>g1</name><devices>"
    "<disk type='file' device='disk'><source file='{vda}'/><target dev='vda'/></disk>"
    "</devices></domain>"
)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    (tmp_path / "images").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "images" / "linked").symlink_to(tmp_path / "outside", target_is_directory=True)
    path = tmp_path / "agent.toml"
    path.write_text(
        '[agent]\nname = "host2"\nlisten = ["127.0.0.1:0"]\nadvertise_libvirt_uri = "qemu+tls://h/system"\n'
        f'image_dirs = ["{tmp_path / "images"}"]\n\n[tls]\ninsecure = true\n'
    )
    return path


def hook(config: Path, xml: str, monkeypatch, capsys, *argv: str) -> tuple[int, str, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(xml))
    code = main(["--config", str(config), "g1", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize(
    ("vda", "reason"),
    [
        ("{images}/g1.qcow2", None),  # what PrepareIncoming created: let in, the XML unchanged
        ("/etc/shadow", "PATH_OUTSIDE_IMAGE_DIRS"),  # the storage copy would write the guest's disk over it
        ("{images}/../outside/g1.qcow2", "PATH_DOTDOT"),
        ("{images}/linked/g1.qcow2", "PATH_SYMLINK"),
    ],
)
def test_an_incoming_disk_outside_the_image_dirs_fails_the_migration(config, monkeypatch, capsys, vda, reason):
    xml = XML.format(vda=vda.format(images=config.parent / "images"))
    code, out, err = hook(config, xml, monkeypatch, capsys, "migrate", "begin", "-")
    assert out == ""  # libvirt keeps the XML as it is
    if reason is None:
        assert (code, err) == (0, "")
    else:
        assert code == 1 and f"ferry refused the incoming migration of g1: {reason}" in err


def test_a_backing_file_or_a_block_device_is_checked_too(config, monkeypatch, capsys):
    images = config.parent / "images"
    xml = (
        f"<domain><devices><disk type='file'><source file='{images}/top.qcow2'/><target dev='vda'/>"
        "<backingStore type='file'><source file='/etc/shadow'/></backingStore></disk>"
        f"<disk type='block'><source dev='{config}'/><target dev='vdb'/></disk></devices></domain>"
    )
    code, _, err = hook(config, xml, monkeypatch, capsys, "migrate", "begin", "-")
    assert code == 1 and "PATH_OUTSIDE_IMAGE_DIRS" in err and "BLOCK_DEVICE_MISMATCH" in err


def test_other_operations_are_left_alone_and_a_missing_config_refuses(config, monkeypatch, capsys):
    assert hook(config, "", monkeypatch, capsys, "start", "begin", "-")[0] == 0
    code, _, err = hook(config.parent / "none.toml", XML.format(vda="/x"), monkeypatch, capsys, "migrate", "begin")
    assert code == 1 and "none.toml" in err
