"""The one write-then-rename: a file appears whole or not at all, writers never share a
temporary name, and a failed write leaves the previous file and no litter."""
import threading

import pytest

from src_models.durable import atomic_dir, atomic_path, atomic_write, write_text_atomic


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "a.json"
    write_text_atomic(path, "old")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as f:
            f.write("half")
            raise RuntimeError("killed")
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_concurrent_writers_use_their_own_temporary_files(tmp_path):
    path = tmp_path / "summary.csv"
    seen, barrier = [], threading.Barrier(2)

    def write(text):
        with atomic_path(path) as tmp:
            seen.append(tmp.name)
            tmp.write_text(text)
            barrier.wait()  # both temporaries exist at once

    threads = [threading.Thread(target=write, args=(t,)) for t in ("one", "two")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == 2 and all(n.startswith(".summary.csv.") and n.endswith(".part") for n in seen)
    assert path.read_text() in ("one", "two") and sorted(p.name for p in tmp_path.iterdir()) == ["summary.csv"]


def test_a_folder_is_replaced_whole(tmp_path):
    final = tmp_path / "step_0000002"
    with atomic_dir(final) as d:
        (d / "state.json").write_text("{}")
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as d:
            (d / "state.json").write_text("broken")
            raise RuntimeError("killed")
    assert (final / "state.json").read_text() == "{}" and [p.name for p in tmp_path.iterdir()] == ["step_0000002"]
