"""Runs: every train, grpo, onpolicy and eval run records a manifest and registers it.

- `manifest`: `run.json` in the run's directory, the truth about one run; liveness of a running run;
- `registry`: the SQLite index of every manifest under `$DISTILL_HOME` (rebuilt by scanning);
- `record`: `RunRecord`, how a stage keeps its manifest from start to end; `attach_eval`;
- `resume`: `resume_settings`, what `--resume` restores or refuses (train, grpo, onpolicy).

`distill runs` lists them and `distill compare` puts them side by side (distill.compare).
"""

from distill.runs.manifest import MANIFEST, RunManifest, liveness, read_manifest, run_of_model
from distill.runs.record import RunRecord, attach_eval
from distill.runs.registry import Registry
from distill.runs.resume import config_dict, resume_settings

__all__ = [
    "MANIFEST",
    "Registry",
    "RunManifest",
    "RunRecord",
    "attach_eval",
    "config_dict",
    "liveness",
    "read_manifest",
    "resume_settings",
    "run_of_model",
]
