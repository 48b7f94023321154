"""Execute a notebook, render it to HTML with JupyterLab's light and dark themes (nbconvert) and take a
headless Chromium screenshot of each, so that tables and marks can be checked by eye in both themes.

    python examples/notebooks/render_screenshots.py OUTDIR [NOTEBOOK]     (default: parity.ipynb)

Writes OUTDIR/<name>-light.html|png and OUTDIR/<name>-dark.html|png. Needs nbconvert, nbclient,
ipykernel and a Chromium binary (Debian: apt-get install chromium).
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise SystemExit("no Chromium found: apt-get install chromium")


def render(notebook, outdir):
    import nbclient
    import nbformat
    from nbconvert import HTMLExporter

    outdir.mkdir(parents=True, exist_ok=True)
    nb = nbformat.read(str(notebook), as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(outdir)}}).execute()
    shots = []
    for theme in ("light", "dark"):
        body, _ = HTMLExporter(template_name="lab", theme=theme).from_notebook_node(nb)
        html = outdir / f"{notebook.stem}-{theme}.html"
        png = outdir / f"{notebook.stem}-{theme}.png"
        html.write_text(body)
        subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        "--window-size=1400,1600", f"--screenshot={png}", html.as_uri()],
                       check=True, capture_output=True, timeout=120)
        shots.append(png)
    return shots


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    root = HERE.parent.parent
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p)
    nb_path = HERE / (sys.argv[2] if len(sys.argv) > 2 else "parity.ipynb")
    for p in render(nb_path, Path(sys.argv[1]).resolve()):
        print(p)
