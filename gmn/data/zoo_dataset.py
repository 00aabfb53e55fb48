"""A zoo as a PyG dataset of parameter graphs with targets.

Each architecture is traced once; a member's graph is its architecture's graph with the
member's weights as edge values (``converters.state_values``, checked against the template;
ONNX members through ``converters.Templates``, one trace per architecture of the files).
The converted values are cached in the zoo's ``processed/`` folder, so a zoo converts once.
The cache is

- content-keyed: its name is a hash of the catalogue's listing and of every checkpoint's bytes,
  so a checkpoint replaced (``gmn zoo import --replace``, a file overwritten) is converted
  again, never served from an old cache;
- checksummed: a SHA-256 over its tensors and key, checked on load (and read with
  ``weights_only``); a cache that fails it, or holds NaN/inf, is refused in one line;
- confined: ``processed/`` must be a real folder inside the zoo (a link out of it is refused)
  and no cache file is read through a link;
- optional: where it cannot be written (a read-only zoo, a full disk) the zoo is converted in
  memory and a note says so once.

Non-finite weights or targets are refused (naming the checkpoint) rather than trained on.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch
from torch import Tensor
from torch_geometric.data import Dataset
from tqdm.auto import tqdm

import converters
from converters import ConversionError, ParameterGraph
from converters.files import atomic_write
from converters.limits import check_archive

from ..checkpoints import file_sha256
from ..zoo import Zoo
from ..zoo.catalogue import METRICS

CACHE_VERSION = 2  #: the cache's layout; a cache of another version is never read
#: member families that carry their own architecture: each file or folder is converted itself
OWN_ARCHITECTURE = ("onnx", "huggingface")


def architecture_key(member: dict, zoo: Zoo) -> str:
    """A catalogue member's architecture as a key: members with one key share one graph."""
    if member["arch"]["family"] == "huggingface":  # one architecture per config: members of one config share it
        from ..checkpoints import hf_config

        return json.dumps([{"family": "huggingface", "config": hf_config(zoo.path(member))}, None], sort_keys=True)
    if member["arch"]["family"] in OWN_ARCHITECTURE:
        return f"{member['arch']['family']}:{member['path']}"
    arch = {k: v for k, v in member["arch"].items() if k != "dropout"}  # identity in eval: same graph
    return json.dumps([arch, member["dataset"]], sort_keys=True)


class ZooDataset(Dataset):
    """The checkpoints of ``zoo`` as :class:`ParameterGraph` s; ``y`` holds ``targets``.

    Targets are catalogue metrics (``test_acc``, ``gap``, ``test_loss``, ...) or extra
    columns of an imported zoo. Every graph also carries ``member`` (its index here),
    ``run`` (an integer per training run, for grouped splits) and ``family``. Diverged runs
    are left out unless asked for. ``allow_modules``: Python ``module:attr`` architectures
    the catalogue may name (see :class:`~gmn.zoo.Zoo`).
    """

    def __init__(self, zoo: Zoo | str | Path, targets: tuple[str, ...] = ("test_acc",), cache: bool = True,
                 include_diverged: bool = False, progress: bool = True, allow_modules: tuple[str, ...] = ()):
        super().__init__(None)
        self.zoo = zoo if isinstance(zoo, Zoo) else Zoo(zoo, allow_modules)
        self.target_names = tuple(targets)
        self.members = self.zoo.members(include_diverged)
        if not self.members:
            raise ValueError(f"the zoo at {self.zoo.root} has no checkpoints")
        self.y = torch.tensor([[self._target(m, t) for t in self.target_names] for m in self.members])
        runs = sorted({m["run_id"] for m in self.members})
        self.run = torch.tensor(_positions([m["run_id"] for m in self.members], runs))
        self.family = [m["family"] for m in self.members]
        self.arch_keys = [architecture_key(m, self.zoo) for m in self.members]
        self._load(cache, progress)

    def _target(self, member: dict, name: str) -> float:
        value = member.get(name) if name in METRICS else member["extra"].get(name)
        if value is None:
            raise ValueError(f"checkpoint {member['path']} of {self.zoo.root} has no target {name!r}")
        if not isinstance(value, (int, float)) or not torch.isfinite(torch.tensor(float(value))):
            raise ValueError(f"checkpoint {member['path']} of {self.zoo.root}: target {name!r} is {value!r}, not a "
                             f"finite number")
        return float(value)

    def _cache_dir(self) -> Path:
        """``processed/`` inside the zoo; a link, or a folder that resolves outside the zoo, is refused."""
        root = self.zoo.root.resolve()
        folder = self.zoo.root / "processed"
        if folder.is_symlink() or (folder.exists() and not folder.resolve().is_relative_to(root)):
            raise ValueError(f"{folder} is a link ({os.path.realpath(folder)}): the zoo's cache must be a folder "
                             f"inside the zoo, never read through a link; remove it to convert the zoo again")
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"{folder} is not a folder: remove it to convert the zoo again")
        return folder

    def _cache_key(self) -> str:
        """A hash of the listing (run, epoch, path, architecture) and of every checkpoint's bytes."""
        digest = hashlib.sha256(f"gmn zoo cache {CACHE_VERSION}".encode())
        for member, key in zip(self.members, self.arch_keys):
            digest.update(json.dumps([member["run_id"], member["epoch"], member["path"], key]).encode())
            path = self.zoo.path(member)
            try:  # a file's SHA-256, or a model folder's (its files, by name)
                digest.update(bytes.fromhex(file_sha256(path)))
            except OSError as err:
                raise FileNotFoundError(f"checkpoint {member['path']} of {self.zoo.root}: cannot read {path} "
                                        f"({err.strerror or err})") from None
        return digest.hexdigest()

    @property
    def content_hash(self) -> str:
        """SHA-256 of the zoo's listing (run, epoch, path, architecture) and every checkpoint's
        bytes: the same for the same checkpoints, another for any change."""
        if self._content_hash is None:
            self._content_hash = self._cache_key()
        return self._content_hash

    def _load(self, cache: bool, progress: bool) -> None:
        self._content_hash = None
        if cache:
            folder, self._content_hash = self._cache_dir(), self._cache_key()
            # graphs of another converter may differ in structure: its caches are other files
            key = hashlib.sha256(f"{self._content_hash} {converters.code_fingerprint()}".encode()).hexdigest()
            path = folder / f"graphs-{key[:32]}.pt"
            if path.is_symlink():
                raise ValueError(f"{path} is a link: the zoo's cache is never read through a link; remove it")
            if path.is_file():
                self._read_cache(path, key)
                return
        self.templates, self.values, self.buffers = {}, [], []
        onnx_files = converters.Templates()  # held while converting: the files' modules go after
        for member, arch in tqdm(list(zip(self.members, self.arch_keys)), desc="converting zoo", unit="ckpt",
                                 disable=not progress):
            values, state = self._convert(member, arch, onnx_files)
            buffers = {k: state[k] for k in self.templates[arch].param_index.buffers if k in state}
            _check_finite(values, buffers, f"checkpoint {self.zoo.path(member)}")
            self.values.append(values)
            self.buffers.append(buffers)
        if cache:
            self._write_cache(path, key)

    def _payload(self, key: str) -> dict:
        payload = {"version": CACHE_VERSION, "key": key,
                   "templates": {k: converters.graph_to_dict(g) for k, g in self.templates.items()},
                   "values": self.values, "buffers": self.buffers}
        payload["checksum"] = _checksum(payload)
        return payload

    def _write_cache(self, path: Path, key: str) -> None:
        """Write the cache atomically; where it cannot be written, keep going in memory."""
        payload = self._payload(key)
        try:
            path.parent.mkdir(exist_ok=True)
            atomic_write(path, lambda tmp: torch.save(payload, tmp))
        except OSError as err:
            _note(f"cannot write the zoo's cache {path} ({err.strerror or err}); the converted zoo is kept in memory "
                 f"(converted again next time)")

    def _read_cache(self, path: Path, key: str) -> None:
        """A cache written by :meth:`_write_cache` for exactly this content, checksum and values checked."""
        where = f"the zoo's cache {path}"
        fix = "remove it to convert the zoo again"
        try:  # a bomb or an archive beyond free memory is refused before torch.load inflates it
            check_archive(path)
        except ConversionError as err:
            raise ValueError(f"{where}: {str(err).removeprefix(f'{path}: ')}; {fix}") from None
        try:
            payload = torch.load(path, weights_only=True, map_location="cpu")
        except Exception as err:  # noqa: BLE001 - a corrupt file fails in many ways; torch's advice is not passed on
            raise ValueError(f"{where} is unreadable ({type(err).__name__}); {fix}") from None
        if not isinstance(payload, dict) or payload.get("version") != CACHE_VERSION or payload.get("key") != key:
            raise ValueError(f"{where} is not a cache of this zoo's checkpoints; {fix}")
        if payload.get("checksum") != _checksum(payload):
            raise ValueError(f"{where} fails its checksum (edited or corrupt); {fix}")
        values, buffers = payload["values"], payload["buffers"]
        if len(values) != len(self.members) or len(buffers) != len(self.members):
            raise ValueError(f"{where} holds {len(values)} members, the zoo {len(self.members)}; {fix}")
        if not all(isinstance(t, dict) and "checksum" in t for t in payload["templates"].values()):
            raise ValueError(f"{where}: a template graph has no checksum; {fix}")
        try:
            self.templates = {k: converters.graph_from_dict(v) for k, v in payload["templates"].items()}
        except ConversionError as err:
            raise ValueError(f"{where}: {err}; {fix}") from None
        for member, k, v, b in zip(self.members, self.arch_keys, values, buffers):
            expected = int(self.templates[k].num_param_edges) if k in self.templates else -1
            if not isinstance(v, Tensor) or v.shape != (expected,):
                raise ValueError(f"{where}: the values of {member['path']} do not fit its architecture; {fix}")
            _check_finite(v, b, f"{where} (member {member['path']})")
        self.values, self.buffers = values, buffers

    def _convert(self, member: dict, key: str, onnx_files: converters.Templates) -> tuple[Tensor, dict[str, Tensor]]:
        """The member's parameter values and its checkpoint (read once: buffers come from it too)."""
        path = self.zoo.path(member)  # confined to the zoo folder, like every read
        family = member["arch"]["family"]
        if family in OWN_ARCHITECTURE:
            if family == "onnx":
                g = onnx_files.from_onnx(path)  # files of one architecture are traced once
            else:  # a Hugging Face model folder
                from ..checkpoints import load_graph

                g = load_graph(path)
            self.templates[key] = _detached(g)
            return converters.parameter_values(g), g.param_index.buffers
        if key not in self.templates:
            model, example = self.zoo.model(member)
            self.templates[key] = _detached(converters.from_torch(model, example))
        state = self.zoo.weights(member)
        return converters.state_values(self.templates[key], state, str(path)), state

    def len(self) -> int:
        return len(self.members)

    def get(self, idx: int) -> ParameterGraph:
        template = self.templates[self.arch_keys[idx]]
        g = converters.with_values(template, self.values[idx], self.buffers[idx] or None)
        g.y = self.y[idx].view(1, -1)
        g.run = self.run[idx].view(1)
        g.member = torch.tensor([idx])
        g.family = self.family[idx]
        return g

    def parameter_std(self, indices: Tensor) -> dict[str, Tensor]:
        """Per architecture: every parameter tensor's standard deviation over the members
        ``indices``, repeated per scalar (``converters.parameter_values`` order). Dividing by
        it puts weights of very different scales (SIRENs' ``w0 = 30``) in one range."""
        out = {}
        for key, template in self.templates.items():
            rows = [self.values[i] for i in indices.tolist() if self.arch_keys[i] == key]
            if not rows:
                continue
            stacked = torch.stack(rows)
            std = torch.empty(stacked.size(1))
            for name, _, _ in template.param_index.params:
                ids = template.param_index.edge_ids(name)
                std[ids] = stacked[:, ids].std().clamp_min(1e-8) if stacked[:, ids].numel() > 1 else 1.0
            out[key] = std
        return out

    def arch_modules(self) -> dict[str, tuple[torch.nn.Module, Tensor]]:
        """One module (eval mode, weights not loaded: run it with ``functional_call``) and an
        example input per architecture of the zoo."""
        out = {}
        for member, key in zip(self.members, self.arch_keys):
            if key not in out:
                module, example = self.zoo.model(member)
                out[key] = module.eval(), example
        return out

    def model(self, idx: int) -> tuple[torch.nn.Module, Tensor]:
        """The member as a runnable module with its weights, and an example input."""
        member = self.members[idx]
        model, example = self.zoo.model(member)
        model.load_state_dict(self.zoo.weights(member))
        return model.eval(), example


def _check_finite(values: Tensor, buffers: dict[str, Tensor], where: str) -> None:
    """Refuse NaN/inf weights or statistics: a metanetwork would train on them silently."""
    bad = int((~torch.isfinite(values)).sum())
    names = [k for k, b in buffers.items() if b.is_floating_point() and not bool(torch.isfinite(b).all())]
    if bad or names:
        what = [f"{bad} NaN/inf parameter values"] if bad else []
        if names:
            what.append(f"NaN/inf in buffer {names[0]}" + (f" and {len(names) - 1} more" if len(names) > 1 else ""))
        raise ValueError(f"{where} holds {' and '.join(what)}: refused (a diverged or corrupt checkpoint; leave it out "
                         f"of the zoo)")


def _checksum(payload: dict) -> str:
    """SHA-256 over the cache's key, its templates' own checksums, and every value and buffer."""
    digest = hashlib.sha256(json.dumps([payload.get("version"), payload.get("key")]).encode())

    def feed(t) -> None:
        if not isinstance(t, Tensor):
            digest.update(repr(t).encode())
            return
        t = t.detach().contiguous()
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")

    templates = payload.get("templates")
    if not isinstance(templates, dict) or not isinstance(payload.get("values"), list) or \
            not isinstance(payload.get("buffers"), list):
        return ""
    for k in sorted(templates):
        digest.update(k.encode())
        digest.update(repr(templates[k].get("checksum") if isinstance(templates[k], dict) else None).encode())
    for v in payload["values"]:
        feed(v)
    for b in payload["buffers"]:
        if not isinstance(b, dict):
            feed(b)
            continue
        for name in sorted(b):
            digest.update(name.encode())
            feed(b[name])
    return digest.hexdigest()


def _positions(items: list[str], order: list[str]) -> list[int]:
    where = {k: i for i, k in enumerate(order)}
    return [where[k] for k in items]


def _detached(g: ParameterGraph) -> ParameterGraph:
    """The graph without live objects (the traced module), as it would be loaded from disk."""
    return converters.graph_from_dict(converters.graph_to_dict(g))


def _note(message: str) -> None:
    """One line on stderr that does not stop the work (the command line's notes look the same)."""
    print(f"gmn: note: {message}", file=sys.stderr)
