"""The images of the stack test, made without any registry and built as a user behind a proxy would.

Base images come from Debian's packages: `debootstrap --variant=minbase bookworm` and `docker import` give a
Debian image, and the Dockerfiles beside this module (``images/``) add Python 3.11 or redis-server to it. They are
tagged by a hash of their recipe and kept: a later run reuses them. The project's targets are then built from the
repository's Dockerfile with only build arguments changed (PYTHON_IMAGE, TORCH_INDEX_URL), the host's CA bundle
handed in as the ``ca_bundle`` secret and PyTorch's CPU wheel put in ``wheelhouse/``, timed and measured.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.deploy.docker_engine import CommandFailed, Engine, run, tail

ROOT = Path(__file__).resolve().parents[2]
RECIPES = Path(__file__).resolve().parent / "images"
DEBIAN_MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
WHEEL_SOURCE = Path(os.environ.get("BINREC_WHEELS", "/opt/wheels"))
TAG = "stack-test"

# What debian:bookworm-slim sets up, so that the layers above stay small: apt keeps no package files or caches
# and dpkg installs no documentation, manual pages or translations.
CLEAN_APT_CACHE = "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin"
APT_CLEAN = f"""\
DPkg::Post-Invoke {{ "{CLEAN_APT_CACHE} || true"; }};
APT::Update::Post-Invoke {{ "{CLEAN_APT_CACHE} || true"; }};
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT::Install-Recommends "false";
"""
DPKG_SLIM = """\
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
"""
PRUNE = (
    "var/cache/apt/archives/*.deb",
    "var/lib/apt/lists/*_*",
    "usr/share/doc/*/*",
    "usr/share/man/*",
    "usr/share/info/*",
    "usr/share/locale/*",
)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Build:
    """One image: how long making it took here (0 when an earlier run's image was reused) and its size."""

    name: str
    tag: str
    seconds: float
    size: int


@dataclass(frozen=True)
class StackImages:
    redis: str
    api: str
    trainer: str
    load: str
    api_numpy: str  # the api built with FAISS= (no FAISS: the numpy search backend)
    builds: list[Build]
    secret_marker: bytes  # a line only the CA bundle secret holds: found in a layer, the secret leaked

    def table(self) -> str:
        lines = [f"{'image':<10} {'tag':<40} {'build s':>8} {'size MB':>8}"]
        for build in self.builds:
            lines.append(f"{build.name:<10} {build.tag:<40} {build.seconds:>8.1f} {build.size / 1e6:>8.0f}")
        return "\n".join(lines)


def stream(argv: list[str], *, log: Path, progress: Progress, show: Callable[[str], bool], timeout: float) -> None:
    """Run ``argv`` with its output in ``log``, passing the lines ``show`` picks to ``progress``."""
    env = {**os.environ, "DOCKER_BUILDKIT": "1"}
    with log.open("a", encoding="utf-8") as sink:
        sink.write(f"$ {' '.join(argv)}\n")
        sink.flush()
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env=env,
        )
        assert process.stdout is not None

        def pump() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                sink.write(line)
                if show(line):
                    progress("  " + line.rstrip()[:140])

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
            raise CommandFailed(f"{' '.join(argv)}: still running after {timeout:.0f} s (log {log})") from None
        finally:
            reader.join(timeout=30)
            process.stdout.close()
    if process.returncode != 0:
        raise CommandFailed(f"{' '.join(argv)}: exit {process.returncode} (log {log})\n{tail(log, 40)}")


def every(seconds: float) -> Callable[[str], bool]:
    """A ``show`` for chatty tools: at most one line per ``seconds``."""
    last = [0.0]

    def pick(line: str) -> bool:
        if time.monotonic() - last[0] < seconds:
            return False
        last[0] = time.monotonic()
        return True

    return pick


def build_step(line: str) -> bool:
    """BuildKit's plain progress: the line that starts each step (``#12 [builder-api 2/2] RUN ...``)."""
    return re.match(r"#\d+ \[[^\]]+ \d+/\d+\]", line) is not None


def recipe_tag(repository: str, *files: Path) -> str:
    digest = hashlib.sha256(b"".join(path.read_bytes() for path in files)).hexdigest()[:12]
    return f"{repository}:{digest}"


def debian_image(engine: Engine, workdir: Path, progress: Progress) -> Build:
    """Debian bookworm (minbase) from its packages, slimmed like debian:bookworm-slim, as an image."""
    tag = f"binrec-ci/debian:bookworm-{hashlib.sha256((APT_CLEAN + DPKG_SLIM).encode()).hexdigest()[:12]}"
    if engine.image_exists(tag):
        return Build("debian", tag, 0.0, engine.image_size(tag))
    debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    if not os.path.exists(debootstrap):
        raise CommandFailed("debootstrap is not installed (scripts/setup.sh installs it): no base image can be made")
    started = time.monotonic()
    rootfs = workdir / "rootfs"
    progress(f"debootstrap --variant=minbase bookworm from {DEBIAN_MIRROR} (about a minute)")
    try:
        stream(
            [debootstrap, "--variant=minbase", "bookworm", str(rootfs), DEBIAN_MIRROR],
            log=workdir / "debootstrap.log",
            progress=progress,
            show=every(15),
            timeout=900,
        )
        slim(rootfs)
        archive = workdir / "rootfs.tar"
        run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(archive), "."], timeout=300)
        run([engine.docker, "import", "--change", 'CMD ["bash"]', str(archive), tag], timeout=300)
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)
        (workdir / "rootfs.tar").unlink(missing_ok=True)
    return Build("debian", tag, time.monotonic() - started, engine.image_size(tag))


def slim(rootfs: Path) -> None:
    """What debootstrap leaves that an image does not need (package files, apt lists, docs), and the settings
    that keep the layers built on it as small."""
    (rootfs / "etc/apt/apt.conf.d/docker-clean").write_text(APT_CLEAN)
    (rootfs / "etc/dpkg/dpkg.cfg.d/docker-slim").write_text(DPKG_SLIM)
    for pattern in PRUNE:
        for path in rootfs.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.name != "copyright":
                path.unlink()


def recipe_image(engine: Engine, name: str, debian: str, workdir: Path, progress: Progress) -> Build:
    """``images/<name>.Dockerfile`` on top of the Debian image, tagged by a hash of its recipe and base."""
    files = sorted(RECIPES.glob(f"{name}*"))
    tag = recipe_tag(f"binrec-ci/{name}", *files) + "-" + debian.rsplit("-", 1)[-1]
    if engine.image_exists(tag):
        return Build(name, tag, 0.0, engine.image_size(tag))
    progress(f"building {tag} from Debian's packages")
    options = ["--build-arg", f"DEBIAN_IMAGE={debian}", "--file", str(RECIPES / f"{name}.Dockerfile")]
    return timed_build(engine, name, tag, [*options, str(RECIPES)], workdir, progress, timeout=600)


def timed_build(
    engine: Engine, name: str, tag: str, arguments: list[str], workdir: Path, progress: Progress, timeout: float
) -> Build:
    """``docker build --tag TAG ARGUMENTS…`` with its output in ``<name>-build.log``: the image, its build time
    and size."""
    started = time.monotonic()
    stream(
        [engine.docker, "build", "--progress=plain", "--tag", tag, *arguments],
        log=workdir / f"{name}-build.log",
        progress=progress,
        show=build_step,
        timeout=timeout,
    )
    return Build(name, tag, time.monotonic() - started, engine.image_size(tag))


def stock_wheelhouse(source: Path = WHEEL_SOURCE) -> list[str]:
    """PyTorch's CPU wheels from ``source`` into wheelhouse/ (hard links where possible), as a user would put them."""
    placed = []
    for wheel in sorted(source.glob("torch-*+cpu-*.whl")) if source.is_dir() else []:
        target = ROOT / "wheelhouse" / wheel.name
        if not target.exists():
            try:
                os.link(wheel, target)
            except OSError:
                shutil.copy2(wheel, target)
        placed.append(wheel.name)
    return placed


def ca_secret(path: Path) -> bytes:
    """The host's CA bundle as the build secret, headed by a marker line to look for in the image layers."""
    if not HOST_CA_BUNDLE.is_file():
        raise CommandFailed(f"no CA bundle at {HOST_CA_BUNDLE} to hand to the build (install ca-certificates)")
    marker = f"# binrec stack test CA bundle {os.getpid()}-{time.time_ns()}".encode()
    path.write_bytes(marker + b"\n" + HOST_CA_BUNDLE.read_bytes())
    return marker


def build_target(
    engine: Engine,
    target: str,
    build_args: dict[str, str],
    secret: Path,
    workdir: Path,
    progress: Progress,
    name: str | None = None,
) -> Build:
    """``docker build --target TARGET`` of the repository, as docs/deployment.md tells a user to; ``name`` tags a
    variant of the target (other build arguments) apart from it."""
    name = name or target
    tag = f"binrec-{name}:{TAG}"
    progress(f"building {tag}")
    arguments = [f"--build-arg={name}={value}" for name, value in build_args.items()]
    options = ["--target", target, "--secret", f"id=ca_bundle,src={secret}", *arguments]
    return timed_build(engine, name, tag, [*options, str(ROOT)], workdir, progress, timeout=1200)


def build_stack_images(engine: Engine, workdir: Path, progress: Progress) -> StackImages:
    debian = debian_image(engine, workdir, progress)
    python = recipe_image(engine, "python", debian.tag, workdir, progress)
    redis = recipe_image(engine, "redis", debian.tag, workdir, progress)
    wheels = stock_wheelhouse()
    progress(f"wheelhouse/: {', '.join(wheels) or 'no local torch wheel (TORCH_INDEX_URL stays the CPU index)'}")
    build_args = {"PYTHON_IMAGE": python.tag}
    if wheels:
        build_args["TORCH_INDEX_URL"] = ""  # the wheelhouse's +cpu build then wins over the index's CUDA one
    secret = workdir / "ca-bundle.pem"
    marker = ca_secret(secret)
    try:
        targets = [
            build_target(engine, name, build_args, secret, workdir, progress) for name in ("api", "trainer", "load")
        ]
        without_faiss = {**build_args, "FAISS": ""}
        targets.append(build_target(engine, "api", without_faiss, secret, workdir, progress, name="api-numpy"))
    finally:
        secret.unlink(missing_ok=True)
    api, trainer, load, api_numpy = targets
    return StackImages(
        redis.tag, api.tag, trainer.tag, load.tag, api_numpy.tag, [debian, python, redis, *targets], marker
    )


def files_containing(engine: Engine, tag: str, needle: bytes, largest: int = 16 << 20) -> list[str]:
    """Files of every layer of ``tag`` (as `docker save` writes them) holding ``needle``; larger files are skipped."""
    process = subprocess.Popen([engine.docker, "save", tag], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert process.stdout is not None
    found = []
    try:
        with tarfile.open(fileobj=process.stdout, mode="r|") as image:
            for member in image:
                if not member.isfile() or not (member.name.endswith(".tar") or member.name.startswith("blobs/")):
                    continue
                blob = image.extractfile(member)
                assert blob is not None
                try:
                    with tarfile.open(fileobj=blob, mode="r|") as layer:
                        for entry in layer:
                            handle = layer.extractfile(entry) if entry.isfile() and entry.size <= largest else None
                            if handle is not None and needle in handle.read():
                                found.append(f"{member.name}: /{entry.name}")
                except tarfile.ReadError:
                    continue  # a config or manifest blob, not a layer
    finally:
        process.stdout.close()
        if process.wait(timeout=300) != 0:
            raise CommandFailed(f"docker save {tag}: exit {process.returncode}")
    return found
