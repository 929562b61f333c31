"""TEST-ONLY stand-in for Coral's edgetpu_compiler. It never invents output: it prints a
recorded real stdout and writes what the test asks for.

Environment:
  FAKE_EDGETPU_STDOUT  recorded stdout file to print (required)
  FAKE_EDGETPU_LOG     recorded .log to write as <stem>_edgetpu.log (optional)
  FAKE_EDGETPU_OUTPUT  "copy" (default: copy the input model), "none", "stub" (1 KiB), or a path
                       to a real compiled model to copy as <stem>_edgetpu.tflite
  FAKE_EDGETPU_OUTPUTS with several input models (co-compiling): real compiled models to copy, one
                       per input in order, separated by os.pathsep (overrides FAKE_EDGETPU_OUTPUT)
  FAKE_EDGETPU_RC      exit code (default 0)
  FAKE_EDGETPU_ARGV    file to write the received argv to, as JSON (optional)

With ``-n N`` (N > 1) it writes N files ``<stem>_segment_<i>_of_<N>_edgetpu.tflite`` (and
``.log``), each as FAKE_EDGETPU_OUTPUT says (the same content for every segment), as the real
compiler names them (google-coral/test_data, google-coral/edgetpu#557).
"""

import json
import os
import shutil
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    if os.environ.get("FAKE_EDGETPU_ARGV"):
        Path(os.environ["FAKE_EDGETPU_ARGV"]).write_text(json.dumps(argv))
    out_dir = Path(".")
    models = []
    segments = 1
    it = iter(argv)
    for a in it:
        if a in ("-o", "--out_dir"):
            out_dir = Path(next(it))
        elif a in ("-n", "--num_segments"):
            segments = int(next(it))
        elif a in (
            "-m",
            "--min_runtime_version",
            "-t",
            "--timeout_sec",
            "-k",
            "--delegate_search_step",
            "-i",
            "--intermediate_tensors",
        ):
            next(it)
        elif not a.startswith("-"):
            models.append(Path(a))
    sys.stdout.write(Path(os.environ["FAKE_EDGETPU_STDOUT"]).read_text())
    several = [p for p in os.environ.get("FAKE_EDGETPU_OUTPUTS", "").split(os.pathsep) if p]
    for k, model in enumerate(models):
        stem = model.name[: -len(".tflite")] if model.name.endswith(".tflite") else model.name
        outs = (
            [f"{stem}_edgetpu"]
            if segments <= 1
            else [f"{stem}_segment_{i}_of_{segments}_edgetpu" for i in range(segments)]
        )
        for out in outs:
            target = out_dir / f"{out}.tflite"
            mode = several[k] if k < len(several) else os.environ.get("FAKE_EDGETPU_OUTPUT", "copy")
            if mode == "copy":
                shutil.copyfile(model, target)
            elif mode == "stub":
                target.write_bytes(model.read_bytes()[:1024])
            elif mode != "none":
                shutil.copyfile(mode, target)
            if os.environ.get("FAKE_EDGETPU_LOG"):
                shutil.copyfile(os.environ["FAKE_EDGETPU_LOG"], out_dir / f"{out}.log")
    return int(os.environ.get("FAKE_EDGETPU_RC", "0"))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
