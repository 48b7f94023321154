"""oneDNN: located in the onednn-cpu-gomp wheel and loaded at run time (filled by the oneDNN work)."""


def status():
    return {"onednn": None, "onednn_error": "not wired yet"}
