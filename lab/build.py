"""`python3 -m lab build`: the Debian 12 image with systemd as PID 1 and sshd, built once, cached.

The recipe (lab/README.md, "The image"): debootstrap (minbase) into a temp dir under /var/tmp,
adjust the rootfs for life in a container, tar it, `docker import`, then the tiny Dockerfile in
lab/image/ on top. The image tag carries a hash of the recipe (model.recipe_constants, the files
in lab/image/, the host's apt sources), so a changed recipe builds a new image and an unchanged
one is reused in a fraction of a second.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import subprocess
import time
from collections import deque
from pathlib import Path

from . import model
from .dockerctl import Clock, LabError, docker, pid_alive, run, stop_pid

IMAGE_DIR = Path(__file__).resolve().parent / "image"
WORK_PARENT = Path("/var/tmp")
WORK_PREFIX = "fleet-lab-build-"
DEB_CACHE = Path("/var/cache/fleet-lab/debootstrap")  # .debs kept between builds (--purge drops)
DEBOOTSTRAP_TIMEOUT_S = 1800
QUIET_LINE = re.compile(r"^I: (Retrieving|Validating|Extracting|Unpacking|Configuring) ")
HEARTBEAT_S = 5.0


def current_digest() -> str:
    sources = Path(model.HOST_APT_SOURCES)
    return model.recipe_hash(
        model.recipe_constants(),
        model.read_recipe_files(IMAGE_DIR),
        sources.read_bytes() if sources.exists() else b"",
    )


def image_id(ref: str) -> str:
    proc = docker("image", "inspect", "--format", "{{.Id}}", ref, check=False, timeout=30)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def ensure_image(clock: Clock, force: bool = False) -> str:
    """The hashed image tag, built when missing (or when force); the stable tag points at it."""
    digest = current_digest()
    tag = model.image_tag(digest)
    have = image_id(tag)
    if have and not force:
        if image_id(model.STABLE_TAG) != have:
            docker("tag", tag, model.STABLE_TAG)
        clock.say(f"using cached image {tag} (also tagged {model.STABLE_TAG})")
        return tag
    build_image(digest, clock)
    return tag


# --- the build -----------------------------------------------------------------------------------


def build_image(digest: str, clock: Clock) -> None:
    tag = model.image_tag(digest)
    base = model.base_tag(digest)
    for tool in ("debootstrap", "tar", "chroot"):
        if shutil.which(tool) is None:
            raise LabError(f"{tool} not found: apt-get install {tool}")
    clock.say(f"building {tag} (recipe {digest}); a cold build takes a few minutes")
    clean_stale_workdirs(clock)
    work = Path(os.fspath(WORK_PARENT / f"{WORK_PREFIX}{digest}-{os.getpid()}"))
    work.mkdir(parents=True)
    rootfs = work / "rootfs"
    try:
        debootstrap(rootfs, clock)
        configure_rootfs(rootfs, clock)
        tarball = work / "base.tar"
        clock.say("tar --numeric-owner of the rootfs")
        run(
            [
                "tar",
                "--numeric-owner",
                "-C",
                str(rootfs),
                "--exclude=./dev/*",
                "--exclude=./proc/*",
                "--exclude=./sys/*",
                "-cf",
                str(tarball),
                ".",
            ],
            timeout=600,
        )
        clock.say(f"docker import ({tarball.stat().st_size / 1e6:.0f} MB) as {base}")
        docker("import", "--message", f"fleet-lab rootfs {digest}", str(tarball), base, timeout=600)
        clock.say(f"docker build {tag} (Dockerfile in lab/image/)")
        docker_build(base, tag, digest)
    finally:
        clock.say(f"removing {work}")
        remove_tree(work)
    docker("rmi", base, check=False)  # only untags: the image above still uses the layer
    prune_old_images(tag, clock)
    clock.say(f"built {tag} (also tagged {model.STABLE_TAG})")


def docker_build(base: str, tag: str, digest: str) -> None:
    env = dict(os.environ)
    if run(["docker", "buildx", "version"], check=False, timeout=15).returncode != 0:
        env["DOCKER_BUILDKIT"] = "0"  # no buildx plugin here: the classic builder does FROM+ENV
    argv = [
        "docker",
        "build",
        "--build-arg",
        f"BASE={base}",
        "--label",
        f"fleet-lab.recipe={digest}",
        "-t",
        tag,
        "-t",
        model.STABLE_TAG,
        str(IMAGE_DIR),
    ]
    run(argv, env=env, timeout=300)


def prune_dangling() -> None:
    """Untagged lab images (left by a rebuild) that no container uses any more."""
    docker("image", "prune", "-f", "--filter", "label=fleet-lab.recipe", check=False)


def prune_old_images(keep: str, clock: Clock) -> None:
    """Drop the tags of earlier recipes (an image still used by a container stays)."""
    prune_dangling()
    for repo in (model.IMAGE_REPO, model.BASE_REPO):
        proc = docker("image", "ls", repo, "--format", "{{.Repository}}:{{.Tag}}", check=False)
        for ref in proc.stdout.split():
            if (
                ref not in (keep, model.STABLE_TAG)
                and ":debian12-" in ref
                and docker("rmi", ref, check=False).returncode == 0
            ):
                clock.say(f"removed old image {ref}")


def debootstrap(rootfs: Path, clock: Clock) -> None:
    DEB_CACHE.mkdir(parents=True, exist_ok=True)
    argv = [
        "debootstrap",
        f"--variant={model.VARIANT}",
        f"--include={','.join(model.INCLUDE)}",
        f"--cache-dir={DEB_CACHE}",
        model.SUITE,
        str(rootfs),
        model.MIRROR,
    ]
    clock.say("debootstrap: " + " ".join(argv))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", LC_ALL="C.UTF-8")
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    assert proc.stdout is not None
    recent: deque[str] = deque(maxlen=30)
    last_print = time.monotonic()
    start = last_print
    pending = b""
    try:
        while True:
            ready, _, _ = select.select([proc.stdout], [], [], HEARTBEAT_S)
            now = time.monotonic()
            if now - start > DEBOOTSTRAP_TIMEOUT_S:
                raise LabError(f"debootstrap ran over {DEBOOTSTRAP_TIMEOUT_S} s")
            if not ready:
                if now - last_print >= HEARTBEAT_S:
                    clock.say("  debootstrap| (still working)")
                    last_print = now
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                line = raw.decode(errors="replace").rstrip()
                if not line:
                    continue
                recent.append(line)
                if not QUIET_LINE.match(line) or now - last_print >= 2.0:
                    clock.say(f"  debootstrap| {line}")
                    last_print = now
        rc = proc.wait()
    except BaseException:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    if rc != 0:
        log = rootfs / "debootstrap" / "debootstrap.log"
        tail = log.read_text(errors="replace").splitlines()[-20:] if log.exists() else []
        raise LabError(
            f"debootstrap failed (exit {rc}); last output:\n" + "\n".join("    " + ln for ln in [*recent, *tail])
        )
    clock.say("debootstrap done")


# --- making the rootfs fit for a container --------------------------------------------------------


def unit_shipped(rootfs: Path, unit: str) -> bool:
    """Whether the rootfs has this unit (or, for name@inst.type, its template)."""
    names = {unit}
    m = re.fullmatch(r"([^@]+@)[^.]*(\.[a-z]+)", unit)
    if m:
        names.add(m.group(1) + m.group(2))
    dirs = ("usr/lib/systemd/system", "lib/systemd/system", "etc/systemd/system")
    return any((rootfs / d / n).exists() for d in dirs for n in names)


def force_symlink(target: str, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target)


def configure_rootfs(rootfs: Path, clock: Clock) -> None:
    clock.say("configuring the rootfs for a container")
    etc = rootfs / "etc"
    # apt: only the host's (reachable) mirrors
    (etc / "apt" / "sources.list").unlink(missing_ok=True)
    shutil.copyfile(model.HOST_APT_SOURCES, etc / "apt" / "sources.list.d" / "debian.sources")
    # each guest gets its own machine id and SSH host keys, at first boot
    (etc / "machine-id").write_text("")
    dbus_id = rootfs / "var" / "lib" / "dbus" / "machine-id"
    if dbus_id.exists() and not dbus_id.is_symlink():
        dbus_id.unlink()
    for key in (etc / "ssh").glob("ssh_host_*"):
        key.unlink()
    # docker bind-mounts these three; do not ship the build host's
    (etc / "hostname").write_text("fleet-lab\n")
    (etc / "hosts").write_text("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
    (etc / "resolv.conf").write_text("")
    (etc / "default" / "locale").write_text("")  # sshd's pam_env reads it: no "Unable to open env file"
    # nothing may forbid services from starting in the guests
    (rootfs / "usr" / "sbin" / "policy-rc.d").unlink(missing_ok=True)
    root_ssh = rootfs / "root" / ".ssh"
    root_ssh.mkdir(mode=0o700, exist_ok=True)
    os.chmod(root_ssh, 0o700)
    # our units
    systemd_etc = etc / "systemd" / "system"
    for unit, wanted_by in model.ENABLE_UNITS.items():
        shutil.copyfile(IMAGE_DIR / unit, systemd_etc / unit)
        os.chmod(systemd_etc / unit, 0o644)
        for target in wanted_by:
            force_symlink(f"/etc/systemd/system/{unit}", systemd_etc / f"{target}.wants" / unit)
    masked = []
    for unit in model.MASK_UNITS:
        if unit_shipped(rootfs, unit):
            force_symlink("/dev/null", systemd_etc / unit)
            masked.append(unit)
    clock.say(f"masked {len(masked)} units: {' '.join(masked)}")
    # apt: no cached packages, no lists, and a lists dir older than any cache_valid_time
    run(["chroot", str(rootfs), "apt-get", "clean"], timeout=120)
    lists = rootfs / "var" / "lib" / "apt" / "lists"
    for entry in lists.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            for sub in entry.iterdir():
                sub.unlink()
        else:
            entry.unlink()
    for stamp in (rootfs / "var" / "lib" / "apt" / "periodic").glob("*"):
        stamp.unlink()
    os.utime(lists, (0, 0))
    for log in (rootfs / "var" / "log").rglob("*"):
        if log.is_file():
            log.write_bytes(b"")


# --- cleaning up, also after an interrupted build -----------------------------------------------


def unmount_under(path: Path) -> None:
    info = Path("/proc/self/mountinfo").read_text()
    for point in model.mounts_under(info, str(path)):
        run(["umount", "-l", point], check=False, timeout=30)


def processes_using(path: Path) -> list[int]:
    """Pids whose command line names path or whose root is inside it (a chrooted dpkg)."""
    needle = str(path)
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            root = os.readlink(proc / "root")
        except OSError:
            continue
        if needle in cmdline or root == needle or root.startswith(needle + "/"):
            found.append(int(proc.name))
    return found


def remove_tree(path: Path) -> None:
    if not path.exists():
        return
    for pid in processes_using(path):  # e.g. a debootstrap orphaned by a killed build
        stop_pid(pid, wait_s=10)
    unmount_under(path)
    run(["rm", "-rf", "--one-file-system", str(path)], check=False, timeout=300)
    if path.exists():
        raise LabError(f"could not remove {path}: remove it by hand (check `findmnt -R {path}`)")


def clean_stale_workdirs(clock: Clock) -> None:
    for stale in sorted(WORK_PARENT.glob(WORK_PREFIX + "*")):
        owner = stale.name.rsplit("-", 1)[-1]
        if owner.isdigit() and int(owner) != os.getpid() and pid_alive(int(owner)):
            clock.say(f"leaving {stale}: build process {owner} is still running")
            continue
        clock.say(f"removing {stale} left by an earlier, interrupted build")
        remove_tree(stale)


def remove_images(clock: Clock) -> None:
    """For `down --purge`: every tag of the lab's image and of its base (all recipes)."""
    refs = docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}", check=False).stdout.split()
    ours = [r for r in refs if r.split(":")[0] in (model.IMAGE_REPO, model.BASE_REPO)]
    if ours:
        docker("rmi", *ours, check=False)
        clock.say(f"removed images {' '.join(ours)}")


def purge_build_leftovers() -> None:
    for stale in WORK_PARENT.glob(WORK_PREFIX + "*"):
        remove_tree(stale)
    if DEB_CACHE.exists():
        shutil.rmtree(DEB_CACHE)
    parent = DEB_CACHE.parent
    if parent.exists() and not any(parent.iterdir()):
        parent.rmdir()
