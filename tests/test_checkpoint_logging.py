"""Opening checkpoints read-only (evaluation, ``init_from``) logs nothing that is not actionable."""

import logging
import os

import numpy as np

from nm_hebb_jax.train import checkpoint as C


def _orbax_records(caplog):
    return [r for r in caplog.records if "orbax" in r.pathname]


def test_read_only_open_is_silent_and_restores(tmp_path, caplog):
    writer = C.Checkpointer(str(tmp_path))
    writer.save(3, {"w": np.arange(4, dtype=np.float32)}, {"step": 3})
    writer.save(3, {"w": np.ones(4, np.float32)}, {"step": 3, "best": True}, best=True)
    writer.close()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        reader = C.Checkpointer(str(tmp_path), read_only=True)
    try:
        assert reader.best is not None  # two managers opened, neither logged a warning
        warnings = [r for r in _orbax_records(caplog) if r.levelno >= logging.WARNING]
        assert not warnings, [r.getMessage() for r in warnings]
        tree, meta = reader.restore_raw()
        np.testing.assert_array_equal(tree["w"], np.arange(4, dtype=np.float32))
        assert meta["step"] == 3
    finally:
        reader.close()
    # The filter lives only while the managers open.
    assert not any(
        isinstance(f, C._ReadOnlyNoticeFilter) for f in logging.getLogger("absl").filters
    )


def test_filter_drops_only_orbaxs_read_only_notice():
    orbax_file = os.path.join("site-packages", "orbax", "checkpoint", "checkpoint_manager.py")

    def record(msg, pathname):
        return logging.LogRecord("absl", logging.WARNING, pathname, 1, msg, ("/x",), None)

    keep = C._ReadOnlyNoticeFilter().filter
    assert not keep(record("Given directory is read only=%s", orbax_file))
    assert keep(record("Given directory is read only=%s", "/work/elsewhere.py"))
    assert keep(record("Could not restore %s", orbax_file))  # a real orbax warning passes
