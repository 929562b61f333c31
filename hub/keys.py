"""Key material on disk: the offline root keys, the online (targets) key, the signed root.

Layout of ``KEYS/``::

    root.json        newest signed trust root (envelope); what devices pin
    root-v{N}.json   every root version ever issued (devices walk the chain on rotation)
    root-{i}.pem     offline root keys: move them off the hub after ``keys init``
    online.pem       the targets-role signing key the hub uses for manifests and desired docs

``init`` refuses to overwrite anything. Root rotation (:func:`rotate`) needs a threshold of
the current root keys and writes root v{N+1} signed by old and new thresholds.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from protocol.errors import ProtocolError
from protocol.signing import Envelope, Root, SigningKey, load_root_unverified, parse_root_payload, root_document, seal

from .errors import Invalid

ROOT_FILE = "root.json"
ONLINE_FILE = "online.pem"
ROOT_TTL = 365 * 86400


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


@dataclass(frozen=True)
class InitResult:
    root_path: Path
    root_key_paths: tuple[Path, ...]
    online_path: Path
    version: int


def init(directory: Path, root_keys: int = 3, threshold: int = 2, now: int | None = None) -> InitResult:
    """Create root keys, the online key and root v1 in ``directory``; never overwrite."""
    if not 1 <= threshold <= root_keys:
        raise Invalid("key threshold", f"{threshold} must be within 1..{root_keys}")
    directory.mkdir(parents=True, exist_ok=True)
    targets = [directory / ROOT_FILE, directory / ONLINE_FILE] + [
        directory / f"root-{i}.pem" for i in range(1, root_keys + 1)
    ]
    existing = [p for p in targets if p.exists()] + sorted(directory.glob("root-v*.json"))
    if existing:
        raise Invalid("keys directory", f"{directory} already holds {existing[0].name}; refusing to overwrite")
    now = int(time.time()) if now is None else now
    rks = [SigningKey.generate() for _ in range(root_keys)]
    online = SigningKey.generate()
    doc = root_document(1, now + ROOT_TTL, rks, threshold, [online])
    raw = seal("root", doc, rks[:threshold]).to_bytes()
    load_root_unverified(raw)  # self-check before anything is written
    paths = []
    for i, k in enumerate(rks, 1):
        p = directory / f"root-{i}.pem"
        _write_private(p, k.to_pem())
        paths.append(p)
    _write_private(directory / ONLINE_FILE, online.to_pem())
    _write_atomic(directory / "root-v1.json", raw)
    _write_atomic(directory / ROOT_FILE, raw)
    return InitResult(directory / ROOT_FILE, tuple(paths), directory / ONLINE_FILE, 1)


@dataclass(frozen=True)
class HubKeys:
    """What the running hub needs: the online key and the current root (bytes + parsed)."""

    online: SigningKey
    root: Root
    root_bytes: bytes

    @classmethod
    def load(cls, directory: Path) -> HubKeys:
        root_path, online_path = directory / ROOT_FILE, directory / ONLINE_FILE
        for p in (root_path, online_path):
            if not p.exists():
                raise Invalid("keys directory", f"{p} is missing (run `edgefleet-hub keys init --dir {directory}`)")
        try:
            raw = root_path.read_bytes()
            root = load_root_unverified(raw)
            online = SigningKey.from_pem(online_path.read_bytes(), str(online_path))
        except ProtocolError as exc:
            raise Invalid("keys directory", f"{directory}: {exc}") from None
        if online.keyid not in root.role("targets").keyids:
            raise Invalid(
                "online key", f"{online_path} (keyid {online.keyid}) is not a targets key of root v{root.version}"
            )
        return cls(online, root, raw)

    def chain(self, directory: Path) -> list[bytes]:
        """Every stored root version in order (v1..vN)."""
        out = []
        for v in range(1, self.root.version + 1):
            p = directory / f"root-v{v}.json"
            if p.exists():
                out.append(p.read_bytes())
        return out


def rotate(
    directory: Path,
    old_root_keys: list[SigningKey],
    new_root_keys: int | None = None,
    new_threshold: int | None = None,
    rotate_online: bool = True,
    now: int | None = None,
) -> tuple[Root, list[Path]]:
    """Issue root v{N+1}: fresh root keys (``new_root_keys`` of them) and, if asked, a fresh
    online key. Signed by a threshold of the old root keys and a threshold of the new ones.

    Returns the new root and the paths of the new private key files.
    """
    current = HubKeys.load(directory)
    old_role = current.root.role("root")
    usable = [k for k in old_root_keys if k.keyid in old_role.keyids]
    if len({k.keyid for k in usable}) < old_role.threshold:
        raise Invalid(
            "root keys",
            f"{len(usable)} of the given keys belong to root v{current.root.version}; "
            f"threshold is {old_role.threshold}",
        )
    n = new_root_keys or len(old_role.keyids)
    k = new_threshold or old_role.threshold
    if not 1 <= k <= n:
        raise Invalid("key threshold", f"{k} must be within 1..{n}")
    now = int(time.time()) if now is None else now
    new_keys = [SigningKey.generate() for _ in range(n)]
    online = SigningKey.generate() if rotate_online else current.online
    version = current.root.version + 1
    doc = root_document(version, now + ROOT_TTL, new_keys, k, [online])
    env = seal("root", doc, usable[: old_role.threshold] + new_keys[:k])
    raw = env.to_bytes()
    new_root = parse_root_payload(Envelope.parse(raw).payload, raw)
    new_root.verify(env, "root", "root")
    current.root.verify(env, "root", "root")
    written = []
    for i, key in enumerate(new_keys, 1):
        p = directory / f"root-v{version}-{i}.pem"
        _write_private(p, key.to_pem())
        written.append(p)
    if rotate_online:
        _write_atomic(directory / f"online-v{version}.pem", online.to_pem(), 0o600)
    _write_atomic(directory / f"root-v{version}.json", raw)
    if rotate_online:
        _write_atomic(directory / ONLINE_FILE, online.to_pem(), 0o600)
    _write_atomic(directory / ROOT_FILE, raw)
    return new_root, written
