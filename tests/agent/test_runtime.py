"""Edge TPU probing is segfault-safe: it runs in a child process, whatever libedgetpu does."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from agent.runtime import probe_edgetpu

SEGFAULT = "#include <signal.h>\n__attribute__((constructor)) static void boom(void) { raise(SIGSEGV); }\n"
NULL_DELEGATE = (
    "#include <stddef.h>\n"
    "void *tflite_plugin_create_delegate(char **k, char **v, size_t n, void (*e)(const char *)) {\n"
    '  if (e) e("no Edge TPU device found"); return NULL; }\n'
    "void tflite_plugin_destroy_delegate(void *d) {}\n"
)


def _fake_libedgetpu(tmp_path: Path, source: str) -> Path:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler to build a fake libedgetpu")
    d = tmp_path / "lib"
    d.mkdir()
    (d / "fake.c").write_text(source)
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(d / "libedgetpu.so.1"), str(d / "fake.c")], check=True)
    return d


def test_missing_library_is_reported_as_absent(monkeypatch, tmp_path):
    monkeypatch.setenv("LD_LIBRARY_PATH", str(tmp_path))  # nothing there
    p = probe_edgetpu()
    assert not p.present and "libedgetpu.so.1" in p.detail and p.detail.startswith("OSError")


def test_library_that_segfaults_on_load_does_not_take_the_agent_down(monkeypatch, tmp_path):
    monkeypatch.setenv("LD_LIBRARY_PATH", str(_fake_libedgetpu(tmp_path, SEGFAULT)))
    p = probe_edgetpu()
    assert not p.present and "signal 11" in p.detail


def test_library_without_a_device_is_reported_as_absent(monkeypatch, tmp_path):
    monkeypatch.setenv("LD_LIBRARY_PATH", str(_fake_libedgetpu(tmp_path, NULL_DELEGATE)))
    p = probe_edgetpu()
    assert not p.present and p.detail.startswith("ValueError") and "Failed to load delegate" in p.detail


@pytest.mark.integration
def test_agent_with_a_crashing_libedgetpu_serves_on_the_cpu(tmp_path, coral_models, trust, hub, make_agent):
    from .bundles import coral_bundle

    agent = make_agent("crashy")
    agent.env["LD_LIBRARY_PATH"] = str(_fake_libedgetpu(tmp_path, SEGFAULT))
    agent.start()
    env, _, archive = trust.sign_dir(coral_bundle(tmp_path / "b", coral_models))
    pub = hub.publish_bundle(env, archive)
    hub.desire(agent.device, pub)
    hub.report(agent.device, "commit", "ok", pub.ref.digest)
    st = hub.wait(lambda: (s := hub.status.get("crashy")) and s.active and s, 30, "status")
    assert st.inventory.edgetpu is False and "signal 11" in (st.inventory.edgetpu_detail or "")
    code, out = agent.predict_image((coral_models / "cat_720p.jpg").read_bytes())
    assert code == 200 and out["served_by"] == "cpu"


def test_an_unsigned_bundle_of_a_pose_or_segmentation_model_is_refused_not_ranked_as_class_scores(coral_models):
    """A bundle made before signatures is served as a classifier; a MoveNet or deeplab forced
    through an old import would have had its keypoints or mask ranked as class scores."""
    from agent.runtime import LiteRTBackend, signature_problem

    for name, ok in (
        ("mobilenet_v1_0.25_128_quant.tflite", True),
        ("movenet_single_pose_lightning_ptq.tflite", False),
        ("deeplabv3_mnv2_dm05_pascal_quant.tflite", False),
    ):
        backend = LiteRTBackend(coral_models / name)
        try:
            problem = signature_problem(None, backend)
        finally:
            backend.close()
        assert (problem is None) == ok, (name, problem)
        if not ok:
            assert "not one vector of class scores" in problem
