"""Profile archives are read within a budget of entries and of entry-name bytes
(archives.MAX_MEMBERS, MAX_NAME_BYTES): the 2.4 MB tar of 400,000 empty entries that cost a
worker 175 MB and 13.5 s outside the sandbox ends fast as `profile_unavailable`. Figures are
printed by bench/bench_budgets.py; the memory check here is loose."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from scanfleet.core.errors import BadInput, ProfileUnavailable
from scanfleet.profiles.archives import MAX_MEMBERS, read_manifest
from scanfleet.profiles.download import Limits
from scanfleet.profiles.fetch import FetchConfig, ProfileCache, fetch, fetch_for_run
from scanfleet.testing.bombs import (
    tar_of_empty_entries,
    tar_of_long_names,
    tar_with_huge_header,
    zip_of_empty_entries,
)
from tests.support.profile_server import ProfileServer, profile_archive

# The process's peak RSS in KiB. Not getrusage's ru_maxrss: after fork and exec it starts
# at the parent's peak (pytest's), which would hide the growth measured here.
HWM = "def hwm():\n    return int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])\n"


@pytest.fixture(scope="module")
def tar_bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bomb") / "bomb.tar.gz"
    path.write_bytes(tar_of_empty_entries(400_000))
    return path


@pytest.fixture
def server(tar_bomb: Path) -> Iterator[ProfileServer]:
    with ProfileServer() as srv:
        srv.routes["/bomb.tar.gz"] = tar_bomb.read_bytes()
        srv.routes["/zip-bomb.zip"] = zip_of_empty_entries(MAX_MEMBERS + 1)
        srv.routes["/names.tar.gz"] = tar_of_long_names(50, 100_000)
        srv.routes["/ok.tar.gz"] = profile_archive({"inspec.yml": "name: p\n"}, top="p")
        yield srv


def config(tmp_path: Path) -> FetchConfig:
    return FetchConfig(cache_dir=tmp_path / "cache", limits=Limits())


@pytest.mark.parametrize("path", ["/bomb.tar.gz", "/zip-bomb.zip", "/names.tar.gz"])
def test_archives_over_the_entry_budgets_are_profile_unavailable(
    server: ProfileServer, tmp_path: Path, path: str
) -> None:
    cfg = config(tmp_path)
    with pytest.raises(ProfileUnavailable) as info:
        fetch(server.url(path), ProfileCache.open(cfg.cache_dir), cfg)
    message = str(info.value)
    assert f"more than {MAX_MEMBERS} entries" in message
    assert server.url(path) in message
    assert "\n" not in message
    # The control: the same path through the same code takes an ordinary archive.
    got = fetch(server.url("/ok.tar.gz"), ProfileCache.open(cfg.cache_dir), cfg)
    assert got.path.is_file()


def test_scan_and_submit_local_refuse_the_tar_bomb_as_bad_input(
    server: ProfileServer, tmp_path: Path
) -> None:
    with pytest.raises(BadInput) as info:
        fetch_for_run(server.url("/bomb.tar.gz"), config(tmp_path))
    assert "nothing was started" in str(info.value)


def test_the_tar_bomb_ends_in_bounded_memory(tar_bomb: Path) -> None:
    """Loose: reading the bomb's manifest costs a fresh interpreter less than 48 MB more
    (it cost 175 MB before the budget)."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from scanfleet.core.errors import ProfileUnavailable\n"
        "from scanfleet.profiles.archives import read_manifest\n"
        f"{HWM}before = hwm()\n"
        "try:\n    read_manifest(Path(sys.argv[1]), '.tar.gz', 'bomb')\n"
        "except ProfileUnavailable:\n    pass\nelse:\n    sys.exit('not refused')\n"
        "print(hwm() - before)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tar_bomb)], capture_output=True, text=True, check=True
    )
    assert int(out.stdout) < 48 * 1024, out.stdout  # KiB


def test_a_huge_pax_header_is_refused_in_bounded_memory(tmp_path: Path) -> None:
    """tarfile reads a pax header whole, whatever size it declares: 128 MB of zeros (130 KB
    compressed) must not become 128 MB of memory."""
    path = tmp_path / "header.tar.gz"
    path.write_bytes(tar_with_huge_header(128 << 20))
    with pytest.raises(ProfileUnavailable, match="bytes of entry names"):
        read_manifest(path, ".tar.gz", "header")
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from scanfleet.core.errors import ProfileUnavailable\n"
        "from scanfleet.profiles.archives import read_manifest\n"
        f"{HWM}before = hwm()\n"
        "try:\n    read_manifest(Path(sys.argv[1]), '.tar.gz', 'header')\n"
        "except ProfileUnavailable:\n    pass\n"
        "print(hwm() - before)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True
    )
    assert int(out.stdout) < 32 * 1024, out.stdout  # KiB


def test_an_archive_at_the_budget_is_read(tmp_path: Path) -> None:
    path = tmp_path / "many.zip"
    path.write_bytes(zip_of_empty_entries(MAX_MEMBERS - 1))  # plus inspec.yml
    assert read_manifest(path, ".zip", "many") == {"name": "p"}
