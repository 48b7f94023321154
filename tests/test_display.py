"""dsv3.display: theme-safe tables (inherited colour, no wrapping, escaped text) and Summary dicts."""
from dsv3.display import Summary, html_table


def test_summary_is_a_dict_that_renders_as_a_table():
    s = Summary({"layout": "dsv3", "formats": {"bf16": [3, 1024]}, "ok": True, "<b>": 1.5}, title="checkpoint")
    assert s["layout"] == "dsv3" and dict(s) == {"layout": "dsv3", "formats": {"bf16": [3, 1024]}, "ok": True,
                                                 "<b>": 1.5}
    h = s._repr_html_()
    assert "color:inherit" in h and "white-space:nowrap" in h and "checkpoint" in h
    assert h.count("<table") == 2  # the nested dict is a nested table
    assert "&lt;b&gt;" in h and "\u2713 yes" in h
    assert "#fff" not in h.lower() and "background:white" not in h.lower()


def test_long_lists_are_shortened():
    h = html_table([("ids", list(range(100)))])
    assert "100 in all" in h and "99" not in h
