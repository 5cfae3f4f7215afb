"""Layer keys, tree digests, the guest layer's inputs, and the layer store's
build-aside-then-rename over real overlayfs."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from hearth import providers
from hearth.config import Settings
from hearth.image import recipes
from hearth.image.builder import DEMO_GUEST_DIR, GUEST_DIR, ImageBuilder, guest_modules
from hearth.image.chroot import BuildError
from hearth.image.layers import LayerStore, key_of, tree_digest


def mounts_under(root: Path) -> list[str]:
    prefix = str(root.resolve())
    targets = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    return [t for t in targets if t == prefix or t.startswith(prefix + "/")]


def overlay_available() -> bool:
    return os.geteuid() == 0 and "overlay" in Path("/proc/filesystems").read_text()


needs_overlay = pytest.mark.skipif(not overlay_available(), reason="needs root and overlayfs")


# -- key_of ----------------------------------------------------------------------------------

BASE_INPUTS = ("base", "trixie", "http://deb.debian.org/debian", ("systemd", "python3"))


def test_key_is_stable_and_short() -> None:
    assert key_of(*BASE_INPUTS) == key_of(*BASE_INPUTS)
    assert len(key_of(*BASE_INPUTS)) == 20
    assert key_of({"b": 1, "a": 2}) == key_of({"a": 2, "b": 1}), "dict order must not matter"


@pytest.mark.parametrize("index", range(len(BASE_INPUTS)))
def test_key_changes_with_each_input(index: int) -> None:
    changed = list(BASE_INPUTS)
    changed[index] = (*changed[index], "x") if isinstance(changed[index], tuple) else "x"
    assert key_of(*changed) != key_of(*BASE_INPUTS)


def test_key_depends_on_the_order_of_inputs() -> None:
    assert key_of("a", "b") != key_of("b", "a")


# -- tree_digest -----------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "guest"
    (root / "files/common").mkdir(parents=True)
    (root / "agent.py").write_text("print('agent')\n")
    (root / "files/common/units.txt").write_text("common hearth-agent.service\n")
    (root / "agent.py").chmod(0o644)
    return root


def test_digest_is_stable(tree: Path) -> None:
    assert tree_digest(tree) == tree_digest(tree)


def test_digest_changes_with_content(tree: Path) -> None:
    before = tree_digest(tree)
    (tree / "agent.py").write_text("print('agent 2')\n")
    assert tree_digest(tree) != before


def test_digest_changes_with_a_name(tree: Path) -> None:
    before = tree_digest(tree)
    (tree / "agent.py").rename(tree / "agent2.py")
    assert tree_digest(tree) != before


def test_digest_changes_with_a_directory_name(tree: Path) -> None:
    before = tree_digest(tree)
    (tree / "files/common").rename(tree / "files/browser")
    assert tree_digest(tree) != before


def test_digest_changes_with_a_mode(tree: Path) -> None:
    before = tree_digest(tree)
    (tree / "agent.py").chmod(0o755)
    assert tree_digest(tree) != before


def test_digest_ignores_pycache(tree: Path) -> None:
    before = tree_digest(tree)
    cache = tree / "__pycache__"
    cache.mkdir()
    (cache / "agent.cpython-311.pyc").write_bytes(b"\x00compiled")
    (tree / "files/common/__pycache__").mkdir()
    (tree / "files/common/__pycache__/x.pyc").write_bytes(b"\x00")
    assert tree_digest(tree) == before


# -- the guest layer's inputs ---------------------------------------------------------------


@pytest.fixture
def guest_copies(tmp_path: Path) -> tuple[Path, Path]:
    """Copies of the agent's and the demo CLI's guest code, free to change."""
    copies = (tmp_path / "guest", tmp_path / "demo-guest")
    for source, copy in zip((GUEST_DIR, DEMO_GUEST_DIR), copies, strict=True):
        shutil.copytree(source, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copies


@pytest.mark.parametrize("changed", ["guest/agent.py", "demo-guest/demo_prompt.py"])
def test_the_guest_key_covers_the_agent_and_the_demo_cli(
    tmp_path: Path, guest_copies: tuple[Path, Path], changed: str
) -> None:
    guest, demo = guest_copies
    builder = ImageBuilder(Settings(home=tmp_path / "home"), guest_dir=guest, demo_guest_dir=demo)
    recipe = recipes.get("cli")
    before = builder.keys(recipe)
    with (tmp_path / changed).open("a") as module:
        module.write("\n# a change\n")
    after = builder.keys(recipe)
    assert after["guest"] != before["guest"] and after["image"] != before["image"]
    assert after["packages"] == before["packages"], "a guest change rebuilt the packages"


def test_the_image_gets_the_agent_and_the_demo_cli_side_by_side() -> None:
    names = [m.name for m in guest_modules(GUEST_DIR, DEMO_GUEST_DIR)]
    assert {"agent.py", "login.py", "demo_login.py", "demo_prompt.py"} <= set(names)
    assert "__init__.py" not in names


def test_every_guest_script_a_provider_runs_is_in_the_image() -> None:
    installed = {f"/usr/lib/hearth/{m.name}" for m in guest_modules(GUEST_DIR, DEMO_GUEST_DIR)}
    for spec in providers.SPECS.values():
        for arg in (*spec.login_argv, *spec.prompt_argv, *spec.status_argv):
            if arg.startswith("/usr/lib/hearth/"):
                assert arg in installed, f"{spec.name} runs {arg}, which no image has"


def test_guest_modules_that_share_a_name_are_refused(tmp_path: Path) -> None:
    for directory in ("guest", "demo-guest"):
        (tmp_path / directory).mkdir()
        (tmp_path / directory / "login.py").write_text("")
    with pytest.raises(BuildError, match="guest modules share a name in /usr/lib/hearth: login.py"):
        guest_modules(tmp_path / "guest", tmp_path / "demo-guest")


# -- LayerStore.build without lowers ---------------------------------------------------------


def test_a_layer_appears_only_when_its_build_succeeds(tmp_path: Path) -> None:
    store = LayerStore(tmp_path / "layers")
    with store.build("base", "k1", []) as upper:
        (upper / "etc").mkdir()
        (upper / "etc/hostname").write_text("hearth\n")
        assert not store.has("base", "k1"), "the layer is visible before the build finished"
    assert store.has("base", "k1")
    assert (store.path("base", "k1") / "etc/hostname").read_text() == "hearth\n"
    assert list(store.root.glob(".partial-*")) == []


def test_a_failed_build_leaves_no_layer_and_clean_partial_removes_its_remains(
    tmp_path: Path,
) -> None:
    store = LayerStore(tmp_path / "layers")
    with pytest.raises(RuntimeError, match="step failed"), store.build("base", "k1", []) as upper:
        (upper / "half-written").write_text("x")
        raise RuntimeError("step failed")
    assert not store.has("base", "k1")
    assert list(store.root.glob(".partial-base-*")), "expected the interrupted build's directory"
    store.clean_partial()
    assert list(store.root.iterdir()) == []


def test_clean_partial_keeps_finished_layers(tmp_path: Path) -> None:
    store = LayerStore(tmp_path / "layers")
    with store.build("base", "k1", []) as upper:
        (upper / "f").write_text("kept")
    store.clean_partial()
    assert (store.path("base", "k1") / "f").read_text() == "kept"


def test_clean_partial_without_a_store_does_nothing(tmp_path: Path) -> None:
    LayerStore(tmp_path / "absent").clean_partial()
    assert not (tmp_path / "absent").exists()


def test_view_of_one_layer_is_the_layer_itself(tmp_path: Path) -> None:
    store = LayerStore(tmp_path / "layers")
    with store.build("base", "k1", []) as upper:
        (upper / "f").write_text("x")
    with store.view([store.path("base", "k1")]) as view:
        assert view == store.path("base", "k1")


# -- LayerStore.build over lowers (overlayfs) ------------------------------------------------


@pytest.fixture
def base(tmp_path: Path) -> tuple[LayerStore, Path]:
    store = LayerStore(tmp_path / "layers")
    with store.build("base", "b", []) as upper:
        (upper / "etc").mkdir()
        (upper / "etc/os-release").write_text("trixie\n")
        (upper / "etc/motd").write_text("welcome\n")
        (upper / "usr/bin").mkdir(parents=True)
        (upper / "usr/bin/tool").write_text("#!/bin/sh\n")
    return store, store.path("base", "b")


def is_whiteout(path: Path) -> bool:
    """overlayfs records a deletion in the upper directory as a 0:0 character device."""
    st = os.lstat(path)
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)


@needs_overlay
def test_a_layer_over_lowers_holds_only_its_changes(base: tuple[LayerStore, Path]) -> None:
    store, lower = base
    with store.build("packages", "p", [lower]) as merged:
        assert (merged / "etc/os-release").read_text() == "trixie\n", "lower not visible"
        assert mounts_under(merged) == [str(merged.resolve())]
        (merged / "etc/added").write_text("new\n")
        (merged / "etc/os-release").write_text("changed\n")
        (merged / "etc/motd").unlink()
    layer = store.path("packages", "p")
    assert (layer / "etc/added").read_text() == "new\n"
    assert (layer / "etc/os-release").read_text() == "changed\n"
    assert is_whiteout(layer / "etc/motd")
    assert not (layer / "usr").exists(), "an untouched directory was copied up"
    assert (lower / "etc/motd").read_text() == "welcome\n", "the lower layer was modified"
    assert (lower / "etc/os-release").read_text() == "trixie\n"
    assert mounts_under(store.root) == []
    assert list(store.root.glob(".partial-*")) == []


@needs_overlay
def test_a_view_merges_layers_top_first_and_hides_deletions(
    base: tuple[LayerStore, Path],
) -> None:
    store, lower = base
    with store.build("packages", "p", [lower]) as merged:
        (merged / "etc/motd").unlink()
        (merged / "etc/os-release").write_text("packages\n")
    packages = store.path("packages", "p")
    with store.build("guest", "g", [packages, lower]) as merged:
        assert not (merged / "etc/motd").exists()
        (merged / "etc/os-release").write_text("guest\n")
        (merged / "etc/hostname").write_text("hearth\n")
    guest = store.path("guest", "g")
    with store.view([guest, packages, lower]) as view:
        assert (view / "etc/os-release").read_text() == "guest\n"
        assert (view / "etc/hostname").read_text() == "hearth\n"
        assert (view / "usr/bin/tool").read_text() == "#!/bin/sh\n"
        assert not (view / "etc/motd").exists()
        assert sorted(p.name for p in (view / "etc").iterdir()) == ["hostname", "os-release"]
        with pytest.raises(OSError):
            (view / "etc/new").write_text("read-only")
    with store.view([packages, lower]) as view:
        assert (view / "etc/os-release").read_text() == "packages\n"
        assert not (view / "etc/hostname").exists()
    assert mounts_under(store.root) == []
    assert list(store.root.glob(".partial-*")) == []


@needs_overlay
def test_a_failed_build_over_lowers_unmounts_and_leaves_no_layer(
    base: tuple[LayerStore, Path],
) -> None:
    store, lower = base
    with (
        pytest.raises(RuntimeError, match="apt failed"),
        store.build("packages", "p", [lower]) as merged,
    ):
        (merged / "etc/half").write_text("x")
        raise RuntimeError("apt failed")
    assert not store.has("packages", "p")
    assert mounts_under(store.root) == []
    store.clean_partial()
    assert sorted(p.name for p in store.root.iterdir()) == ["base-b"]


@needs_overlay
def test_clean_partial_unmounts_what_a_killed_build_left(base: tuple[LayerStore, Path]) -> None:
    """A build whose process died keeps its overlay mounted; the next build clears it."""
    store, lower = base
    build = store.build("packages", "p", [lower])
    merged = build.__enter__()  # entered and abandoned, as a killed process would
    assert mounts_under(store.root) == [str(merged.resolve())]
    store.clean_partial()
    assert mounts_under(store.root) == []
    assert sorted(p.name for p in store.root.iterdir()) == ["base-b"]
