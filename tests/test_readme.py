"""Every command and Python snippet of the README, run as written in a folder holding the user's
files it names (checkpoints, an ONNX file, a Hugging Face folder, a package), scaled down by
appended flags only: argparse keeps an option's last value, so ``--runs 600 ... --runs 6`` is the
README's command with fewer runs. What cannot run here is skipped for a stated reason."""

from __future__ import annotations

import multiprocessing
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
GPU = torch.cuda.is_available()

#: flags appended to each command, by its leading words: the same command, smaller
SCALE = {
    ("gmn", "zoo", "build"): ["--runs", "6", "--epochs", "1", "--workers", "1"],
    ("gmn", "bench", "property"): ["--runs", "6", "--epochs", "1", "--workers", "1", "--train-epochs", "1",
                                   "--seeds", "1", "--hidden", "8", "--layers", "1"],
    ("gmn", "train"): ["--train-epochs", "1", "--hidden", "8", "--layers", "1", "--nproc", "2"],
    ("gmn", "edit"): ["--train-epochs", "1", "--hidden", "8", "--layers", "1", "--inputs", "32"],
    ("gmn", "generate"): ["--train-epochs", "1", "--hidden", "8", "--layers", "1", "--count", "2", "--steps", "2"],
    ("gmn", "barrier"): ["--points", "3", "--samples", "64", "--iterations", "2"],
    ("gmn", "align"): ["--iterations", "2"],
    ("gmn", "merge"): ["--samples", "64", "--iterations", "2"],
}
#: the INR preset fits 500-step SIRENs: three images (train, validation, test) walk the path
SCALE_INR = ["--runs", "3"]
#: the adapter hypernetwork writes one adapter per --target (it refuses --count): only its training is scaled
SCALE_HYPERNETWORK = ["--train-epochs", "1", "--hidden", "8", "--layers", "1"]
#: what cannot run on a CI machine, by a piece of the command
SKIP = {
    "pytest": "the test suite itself",
    "--nnodes": "two machines",
    "--backend ray": "a Ray cluster (the Ray backend has its own tests)",
    "--device cuda": "a CUDA device",
    ".cuda()": "a CUDA device",
}


def _blocks() -> list[tuple[str, str]]:
    return re.findall(r"^```(\w+)\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def _commands() -> list[list[str]]:
    """The README's shell commands as argument lists: continuations joined, comments dropped,
    each ``&&`` chain split, the install steps (CI has just done them) left out."""
    out = []
    for lang, text in _blocks():
        if lang != "bash":
            continue
        for line in text.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            chain, part = [], []
            for word in words + ["&&"]:
                if word == "&&":
                    chain.append(part)
                    part = []
                else:
                    part.append(word)
            out += [c for c in chain if c and c[0] not in ("python3", ".", "pip", "source")
                    and c[:3] != ["python", "-m", "venv"]]
    return out


def _skip_reason(text: str) -> str | None:
    if GPU and "cuda" in text:
        return None
    return next((why for piece, why in SKIP.items() if piece in text), None)


def _scaled(command: list[str]) -> list[str]:
    if command[:3] == ["gmn", "zoo", "build"] and "inr" in command:
        return command + SCALE_INR
    if command[:2] == ["gmn", "generate"] and "hypernetwork" in command:
        return command + SCALE_HYPERNETWORK
    flags = next((f for lead, f in SCALE.items() if tuple(command[: len(lead)]) == lead), [])
    return command + flags


def _user_files(root: Path) -> None:
    """The files the README's commands name, as a user would have them."""
    from safetensors.torch import save_file

    from gmn.architectures import ResNet18, SmallCNN
    from gmn.zoo.families import build

    torch.manual_seed(0)
    save_file(SmallCNN().state_dict(), root / "weights.safetensors")
    save_file(ResNet18(width=16, classes=10).state_dict(), root / "resnet.safetensors")
    for name in ("base", "ft1", "ft2"):
        save_file(SmallCNN().state_dict(), root / f"{name}.safetensors")
    spec = {"family": "rescnn", "blocks": 2, "width": 16, "act": "relu"}
    for name in ("a", "b"):
        model = build(spec, (1, 8, 8), 10).eval()
        save_file(model.state_dict(), root / f"{name}.safetensors")
        torch.onnx.export(model, (torch.randn(2, 1, 8, 8),), str(root / f"{name}.onnx"), dynamo=True,
                          optimize=False, verbose=False)
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(8, 10)).eval()
    torch.onnx.export(conv, (torch.randn(1, 3, 32, 32),), str(root / "model.onnx"), dynamo=True, optimize=False,
                      verbose=False)
    (root / "mypkg").mkdir()
    (root / "mypkg" / "models.py").write_text(
        "import torch\n\n\ndef make_model():\n    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(),"
        " torch.nn.Flatten(), torch.nn.Linear(4 * 30 * 30, 10))\n")
    folder = root / "my_ckpts"
    folder.mkdir()
    rows = ["path,test_acc"]
    for i in range(4):
        save_file(SmallCNN().state_dict(), folder / f"m{i}.safetensors")
        rows.append(f"m{i}.safetensors,{0.5 + i / 10}")
    (root / "targets.csv").write_text("\n".join(rows) + "\n")
    import transformers

    config = transformers.GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=32)
    transformers.GPT2LMHeadModel(config).save_pretrained(root / "my-model")
    transformers.GPT2LMHeadModel(config).save_pretrained(root / "my-model-2")  # another seed: a pair to merge
    import peft

    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj"], fan_in_fan_out=True)
    peft.get_peft_model(transformers.GPT2LMHeadModel(config), lora).save_pretrained(root / "my-adapter")
    _adapter_folders(root, peft, lora, transformers.GPT2LMHeadModel(config))


def _adapter_folders(root: Path, peft, lora, base) -> None:
    """``my-adapters/``: eight PEFT folders of one base (B drawn: PEFT's zero B is no adapter one would
    import) and ``my-adapters.csv``, a score per folder."""
    import copy

    rows = ["path,score"]
    for i in range(8):
        model = peft.get_peft_model(copy.deepcopy(base), lora)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.02)
        model.save_pretrained(root / "my-adapters" / f"task{i}")
        rows.append(f"task{i},{i / 8}")
    (root / "my-adapters.csv").write_text("\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory) -> Path:
    pytest.importorskip("onnxscript")
    pytest.importorskip("transformers")
    pytest.importorskip("mlxtend")
    root = tmp_path_factory.mktemp("readme")
    _user_files(root)
    return root


def _gmn(args: list[str], cwd: str, log: str) -> None:
    """A ``gmn`` command in a child of the fork server: what the entry point runs, with the
    output in ``log`` and the command's exit status as the process's."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.chdir(cwd)
    sys.argv = ["gmn", *args]
    from gmn.cli import main

    try:
        code = main(args)
    except SystemExit as err:
        code = err.code if isinstance(err.code, int) else 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


@pytest.fixture(scope="module")
def forks():
    """A fork server that has imported gmn once (a fresh interpreter, nothing else run): each
    command forks from it instead of paying torch's and PyG's import again, about 8 s each."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["gmn.cli"])
    return context


def _run(args: list[str], cwd: Path, forks=None) -> subprocess.CompletedProcess:
    if args[0] == "gmn" and forks is not None:
        log = cwd / ".gmn-command.log"
        child = forks.Process(target=_gmn, args=(args[1:], str(cwd), str(log)))
        child.start()
        child.join(600)
        if child.is_alive():
            child.kill()
            child.join()
        text = log.read_text(errors="replace")
        return subprocess.CompletedProcess(args, child.exitcode, text, text)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if args[0] == "gmn":  # the installed entry point, run by this interpreter
        args = [sys.executable, "-m", "gmn.cli", *args[1:]]
    elif args[0] == "python":
        args = [sys.executable, *args[1:]]
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


COMMANDS = _commands()


def test_the_readme_has_its_commands():
    names = [" ".join(c[:3]) for c in COMMANDS]
    assert "gmn bench property" in names and len(COMMANDS) > 20
    texts = [shlex.join(c) for c in COMMANDS] + [text for lang, text in _blocks() if lang == "python"]
    used = {piece for piece in SKIP if any(piece in t for t in texts)}
    assert used == set(SKIP), f"skip reasons no README command needs: {set(SKIP) - used}"


@pytest.mark.parametrize("command", COMMANDS, ids=[shlex.join(c)[:60] for c in COMMANDS])
def test_readme_command(command, user_folder, forks):
    why = _skip_reason(shlex.join(command))
    if why:
        pytest.skip(f"needs {why}")
    result = _run(_scaled(command), user_folder, forks)
    assert result.returncode == 0, f"{shlex.join(command)}\n{result.stdout[-5000:]}"


def test_the_entry_point_runs_as_installed(user_folder):
    """The commands above fork from a server that imported gmn; this one is the real thing."""
    script = Path(sys.executable).with_name("gmn")
    result = subprocess.run([str(script), "inspect", "resnet18"], cwd=user_folder, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0 and "parameter" in result.stdout.lower(), result.stderr[-3000:]


def test_readme_python_snippets(user_folder):
    """Every Python snippet, in the README's order, as one script (later snippets use earlier names),
    after the commands have built the zoos they read."""
    snippets = []
    for lang, text in _blocks():
        if lang != "python":
            continue
        why = _skip_reason(text)
        snippets.append(f"# skipped: needs {why}\n" if why else text)
    script = user_folder / "readme_snippets.py"
    script.write_text("\n".join(snippets))
    result = _run(["python", str(script)], user_folder)
    assert result.returncode == 0, result.stderr[-3000:]
