"""Container labels (Docker's `Config.Labels`), kept beside the container.

docker-compose finds its containers by label (`com.docker.compose.project=…`), so labels
must survive as long as the container and be readable by any process. Until the record
(hv.containers.Record) carries them, they live in `labels.json` in the container's folder,
written once right after create; the facade's `labels()`/`set_labels()` reach it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def _path(paths, cid: str) -> Path:
    return paths.container_labels(cid)


def set_labels(paths, cid: str, labels: dict[str, str]) -> None:
    if not labels:
        return
    path = _path(paths, cid)
    tmp = path.with_name(f".labels.{os.getpid()}")
    tmp.write_text(json.dumps({str(k): str(v) for k, v in labels.items()}))
    tmp.replace(path)


def labels(paths, cid: str) -> dict[str, str]:
    try:
        data = json.loads(_path(paths, cid).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
