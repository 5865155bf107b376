"""The notebook tour (analyses/tour.ipynb) runs top to bottom in a fresh kernel, offline, and its
cells show what they promise: the runs' events, the probes' records and the figures inline."""

import json
import os
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

TOUR = Path(__file__).resolve().parent.parent / "analyses" / "tour.ipynb"
PLOTLY = "application/vnd.plotly.v1+json"


@pytest.mark.integration
def test_tour_notebook_runs(tmp_path, monkeypatch):
    # the kernel inherits the environment: runs go to a temporary folder, one intra-op thread
    monkeypatch.setenv("MECHGROK_TOUR_DIR", str(tmp_path / "tour"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(TOUR, as_version=4)
    # the committed notebook carries no outputs (they are megabytes of plotly JSON)
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")
    t0 = time.perf_counter()
    # the kernel is this interpreter (the project's venv), wherever jupyter would look for one
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.kernel_manager_class = _this_python_kernel_manager()
    client.execute()
    elapsed = time.perf_counter() - t0

    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    text = "\n".join(_text(c) for c in code)
    # the parity run trained into the temporary folder and its events were read back
    assert (tmp_path / "tour" / "parity" / "config.json").exists()
    assert "memorised at step" in text and "ParityEvents(pruned_step=" in text
    # figures are shown inline: training curves, bit dependence, prune-now, weights, circles
    figures = [o for c in code for o in c.outputs if PLOTLY in o.get("data", {})]
    assert len(figures) == 5
    assert json.loads(json.dumps(figures[0]["data"][PLOTLY]))["layout"]["title"]["text"] == "Training curves"
    # the last cell wrote an offline report
    assert (tmp_path / "tour" / "cossin" / "report.html").exists()
    assert elapsed < 120, f"the tour took {elapsed:.0f} s; keep its models tiny"


def _text(cell) -> str:
    out = []
    for o in cell.outputs:
        if o.output_type == "stream":
            out.append(o.text)
        elif "text/plain" in o.get("data", {}):
            out.append(o["data"]["text/plain"])
    return "\n".join(out)


def _this_python_kernel_manager():
    """A KernelManager whose python3 kernel is ``sys.executable -m ipykernel_launcher`` (the
    machine may have no kernelspec installed, or one for another interpreter)."""
    from jupyter_client import KernelManager
    from jupyter_client.kernelspec import KernelSpec

    class ThisPython(KernelManager):
        @property
        def kernel_spec(self):
            return KernelSpec(
                argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                display_name="Python 3",
                language="python",
                env={**os.environ},
            )

    return ThisPython
