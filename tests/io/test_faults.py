"""Outputs are never lost or corrupted: output = input, failed replacements, concurrent
writers, replaced inputs, corrupt chunks, unwritable outputs (issue 18)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest

from volmla.errors import VolmlaError
from volmla.io import check_output, open_volume, output_state, write_volume
from volmla.io import volume as volume_module
from volmla.io.atomic import OLD, TMP, remove, siblings
from volmla.io.lock import lock_holder, lock_path, output_lock
from volmla.io.outputs import input_fingerprint, job_fingerprint

SHAPE = (30, 20, 25)
CHUNKS = (8, 8, 8)  # 4 x 3 x 4 = 48 chunks
N_CHUNKS = 48


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _leftovers(path: Path) -> list[Path]:
    return [*siblings(path, TMP), *siblings(path, OLD), *([lock_path(path)] if lock_path(path).exists() else [])]


class _Kernel:
    """Blocks of ``ref``, counting calls; the ``fail_at``-th call raises ``error``; a call
    waits for ``gate`` (when given) before it returns."""

    def __init__(self, ref: np.ndarray, fail_at: int | None = None, error: BaseException | None = None,
                 gate: threading.Event | None = None) -> None:
        self.ref, self.fail_at, self.error, self.gate = ref, fail_at, error, gate
        self.calls = 0
        self.lock = threading.Lock()
        self.started = threading.Event()

    def __call__(self, block_info: dict | None = None) -> np.ndarray:
        info = block_info[None]
        with self.lock:
            self.calls += 1
            call = self.calls
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(60), "the test never opened the gate"
        if call == self.fail_at:
            raise self.error or RuntimeError("the machine went away in the middle of the write")
        return self.ref[tuple(slice(a, b) for a, b in info["array-location"])].copy()

    def lazy(self) -> da.Array:
        return da.map_blocks(self, chunks=da.core.normalize_chunks(CHUNKS, self.ref.shape), dtype=self.ref.dtype)


@pytest.fixture
def ref(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 60000, SHAPE, dtype=np.uint16)


# ----------------------------------------------------------------------------- item 1: output = input


def test_output_equal_to_or_inside_the_input_is_refused_and_input_untouched(tmp_path: Path, ref: np.ndarray) -> None:
    scan = write_volume(ref, tmp_path / "scan.zarr", voxel_size=1.0, chunks=CHUNKS)
    before = _tree(scan)
    vol = open_volume(scan)
    cases = [
        (vol, scan, "is also the input"),  # the lazy input itself
        (vol * 2 + 1, scan, "is also the input"),  # a computation on it
        (vol[::-1], tmp_path / "link.zarr", "is also the input"),  # a link to it (below)
        (vol.data, scan / "inner.zarr", "lies inside the input"),
        (vol, tmp_path, "lies inside the output"),
    ]
    (tmp_path / "link.zarr").symlink_to(scan)
    for data, out, message in cases:
        with pytest.raises(VolmlaError, match=message) as err:
            write_volume(data, out, voxel_size=1.0, overwrite=True)
        assert "\n" not in str(err.value)
        assert _tree(scan) == before  # byte-identical, nothing deleted
    np.testing.assert_array_equal(open_volume(scan).values, ref)
    # a job naming its input is refused before anything is computed, also without a lazy input
    job = {"command": "preprocess", "input": str(scan.resolve())}
    for check in (check_output, output_state):
        with pytest.raises(VolmlaError, match="is also the input"):
            check(scan, job=job, overwrite=True)
    with pytest.raises(VolmlaError, match="is also the input"):
        write_volume(np.zeros(SHAPE, np.uint16), scan, voxel_size=1.0, overwrite=True, job=job)
    assert _tree(scan) == before


# ----------------------------------------------------------------------------- item 6: overwrite never loses


def test_failed_overwrite_leaves_the_old_output_byte_identical(tmp_path: Path, ref: np.ndarray) -> None:
    out = write_volume(ref, tmp_path / "out.zarr", voxel_size=1.0, chunks=CHUNKS)
    before = _tree(out)
    seen: list[list[Path]] = []

    class Watching(_Kernel):
        def __call__(self, block_info: dict | None = None) -> np.ndarray:
            if block_info and None in block_info:  # not Dask's meta probe
                seen.append(siblings(out, TMP))
            return super().__call__(block_info)

    failing = Watching(ref[::-1].copy(), fail_at=20)
    with dask.config.set(scheduler="synchronous"), pytest.raises(RuntimeError, match="went away"):
        write_volume(failing.lazy(), out, voxel_size=1.0, chunks=CHUNKS, overwrite=True)
    assert seen[0] and all(s == seen[0] for s in seen)  # it was written beside the output
    assert _tree(out) == before
    assert _leftovers(out) == []  # the failed replacement and the lock are gone
    np.testing.assert_array_equal(open_volume(out).values, ref)

    new = ref[::-1].copy()
    write_volume(new, out, voxel_size=1.0, chunks=CHUNKS, overwrite=True)
    np.testing.assert_array_equal(open_volume(out).values, new)
    assert _leftovers(out) == []


def test_interrupted_overwrite_keeps_the_old_output_and_resumes(tmp_path: Path, ref: np.ndarray) -> None:
    out = write_volume(ref, tmp_path / "out.zarr", voxel_size=1.0, chunks=CHUNKS)
    before = _tree(out)
    new = (ref // 2).astype(np.uint16)
    job = {"command": "test", "param": 2}
    with dask.config.set(scheduler="synchronous"), pytest.raises(KeyboardInterrupt):
        write_volume(_Kernel(new, fail_at=20, error=KeyboardInterrupt()).lazy(), out, voxel_size=1.0,
                     chunks=CHUNKS, overwrite=True, job=job)
    assert _tree(out) == before  # Ctrl-C: the old output is whole ...
    (tmp,) = siblings(out, TMP)  # ... and the partial replacement waits beside it
    done = len(list((tmp / ".volmla-done" / "0").iterdir()))
    assert 0 < done < 20
    assert not lock_path(out).exists()

    resumed = _Kernel(new)
    write_volume(resumed.lazy(), out, voxel_size=1.0, chunks=CHUNKS, overwrite=True, job=job)
    assert resumed.calls == N_CHUNKS - done  # the same job resumed the replacement
    np.testing.assert_array_equal(open_volume(out).values, new)
    assert _leftovers(out) == []
    fresh = write_volume(new, tmp_path / "fresh.zarr", voxel_size=1.0, chunks=CHUNKS, job=job)
    assert {k: v for k, v in _tree(out).items() if k.startswith("0/")} == {
        k: v for k, v in _tree(fresh).items() if k.startswith("0/")}


def test_replacement_of_another_job_is_not_resumed(tmp_path: Path, ref: np.ndarray) -> None:
    out = write_volume(ref, tmp_path / "out.zarr", voxel_size=1.0, chunks=CHUNKS)
    with dask.config.set(scheduler="synchronous"), pytest.raises(KeyboardInterrupt):
        write_volume(_Kernel(ref, fail_at=5, error=KeyboardInterrupt()).lazy(), out, voxel_size=1.0,
                     chunks=CHUNKS, overwrite=True, job={"command": "a"})
    assert len(siblings(out, TMP)) == 1
    other = _Kernel(ref + 1)
    write_volume(other.lazy(), out, voxel_size=1.0, chunks=CHUNKS, overwrite=True, job={"command": "b"})
    assert other.calls == N_CHUNKS  # the stale sibling was dropped, not resumed
    np.testing.assert_array_equal(open_volume(out).values, ref + 1)
    assert _leftovers(out) == []


def test_a_swap_cut_short_is_undone_by_the_next_write(tmp_path: Path, ref: np.ndarray) -> None:
    out = write_volume(ref, tmp_path / "out.zarr", voxel_size=1.0, chunks=CHUNKS)
    before = _tree(out)
    os.rename(out, out.with_name(out.name + OLD + "0123"))  # died between the two renames
    with pytest.raises(VolmlaError, match="exists: pass overwrite=True"):
        write_volume(ref + 1, out, voxel_size=1.0, chunks=CHUNKS)
    assert _tree(out) == before  # the old output is back in place
    assert _leftovers(out) == []


def test_a_folder_that_is_no_zarr_group_is_not_replaced(tmp_path: Path) -> None:
    folder = tmp_path / "documents"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    with pytest.raises(VolmlaError, match="no Zarr group: refusing"):
        write_volume(np.zeros((2, 2, 2), np.uint8), folder, voxel_size=1.0, overwrite=True)
    assert (folder / "thesis.tex").read_text() == "years of work"


# ----------------------------------------------------------------------------- item 4: one writer at a time


def test_two_concurrent_writers_one_wins_the_other_gets_one_line(tmp_path: Path, ref: np.ndarray) -> None:
    out = tmp_path / "out.zarr"
    gate = threading.Event()
    first = _Kernel(ref, gate=gate)
    errors: list[BaseException] = []

    def write() -> None:
        try:
            write_volume(first.lazy(), out, voxel_size=1.0, chunks=CHUNKS, job={"command": "first"})
        except BaseException as exc:  # noqa: BLE001 - reported to the test below
            errors.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        assert first.started.wait(60)  # the first writer holds the lock and is computing
        assert lock_holder(out) == f"pid {os.getpid()}"
        second = _Kernel(ref + 7)
        for job in ({"command": "first"}, {"command": "second"}):  # the same job or another
            with pytest.raises(VolmlaError, match=r"being written by another volmla process \(pid \d+\)") as err:
                write_volume(second.lazy(), out, voxel_size=1.0, chunks=CHUNKS, job=job)
            assert "\n" not in str(err.value)
            with pytest.raises(VolmlaError, match="being written by another volmla process"):
                check_output(out, job=job)  # a command's plan refuses before computing
        assert second.calls == 0
    finally:
        gate.set()
        writer.join(60)
    assert errors == []
    single = write_volume(ref, tmp_path / "single.zarr", voxel_size=1.0, chunks=CHUNKS, job={"command": "first"})
    assert {k: v for k, v in _tree(out).items() if k.startswith("0/")} == {
        k: v for k, v in _tree(single).items() if k.startswith("0/")}
    np.testing.assert_array_equal(open_volume(out).values, ref)
    assert _leftovers(out) == [] and lock_holder(out) is None


def test_a_lock_held_by_another_process_is_refused_and_dies_with_it(tmp_path: Path) -> None:
    out = tmp_path / "out.zarr"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from volmla.io.lock import output_lock\n"
         f"with output_lock({str(out)!r}):\n    print('held', flush=True); sys.stdin.readline()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(VolmlaError, match=rf"being written by another volmla process \(pid {holder.pid}\)"):
            write_volume(np.ones((4, 4, 4), np.uint8), out, voxel_size=1.0)
        assert not out.exists()
    finally:
        holder.kill()  # dies holding it: the kernel drops the lock, the file stays
        holder.wait()
    assert lock_path(out).exists() and lock_holder(out) is None
    write_volume(np.ones((4, 4, 4), np.uint8), out, voxel_size=1.0)
    assert open_volume(out).values.sum() == 64 and _leftovers(out) == []


def test_lock_is_exclusive_within_a_process_and_released(tmp_path: Path) -> None:
    out = tmp_path / "x.zarr"
    with output_lock(out) as lock:
        assert lock == lock_path(out) and lock.read_text().split()[0] == str(os.getpid())
        with pytest.raises(VolmlaError, match="being written"), output_lock(out):
            pass
    assert not lock_path(out).exists()
    with output_lock(out):
        pass


def test_a_file_system_that_cannot_lock_writes_unlocked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    import errno
    import fcntl

    def no_locks(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    out = write_volume(np.ones((4, 4, 4), np.uint8), tmp_path / "out.zarr", voxel_size=1.0)
    assert "cannot lock files" in caplog.text
    assert open_volume(out).values.sum() == 64 and _leftovers(out) == []


# ----------------------------------------------------------------------------- item 7: the input's content


def test_replaced_input_never_resumes_into_a_mixed_output(tmp_path: Path, ref: np.ndarray) -> None:
    scan = write_volume(ref, tmp_path / "scan.zarr", voxel_size=1.0, chunks=CHUNKS)
    out = tmp_path / "out.zarr"
    job = {"command": "test", "input": str(scan.resolve())}

    def plus_one(fail_at: int | None = None) -> tuple[_Kernel, da.Array]:
        counter = _Kernel(np.zeros(SHAPE, np.uint16), fail_at=fail_at)
        counted = counter.lazy()
        return counter, open_volume(scan).data + 1 + counted

    _, failing = plus_one(fail_at=20)
    with dask.config.set(scheduler="synchronous"), pytest.raises(RuntimeError, match="went away"):
        write_volume(failing, out, voxel_size=1.0, chunks=CHUNKS, job=job)
    partial = _tree(out)
    assert check_output(out, job=job) == "resume"  # the same input: resumable

    replaced = (ref // 3).astype(np.uint16)
    write_volume(replaced, scan, voxel_size=1.0, chunks=CHUNKS, overwrite=True)  # same shape, new content
    for attempt in (lambda: check_output(out, job=job),
                    lambda: write_volume(plus_one()[1], out, voxel_size=1.0, chunks=CHUNKS, job=job)):
        with pytest.raises(VolmlaError, match=r"exists: pass overwrite=True .*from other input content than .*scan\.zarr holds now") as err:
            attempt()
        assert "\n" not in str(err.value)
    assert _tree(out) == partial  # nothing mixed in
    counter, data = plus_one()
    write_volume(data, out, voxel_size=1.0, chunks=CHUNKS, job=job, overwrite=True)
    assert counter.calls == N_CHUNKS  # started over
    np.testing.assert_array_equal(open_volume(out).values, replaced + 1)


def test_unchanged_input_still_resumes(tmp_path: Path, ref: np.ndarray) -> None:
    scan = write_volume(ref, tmp_path / "scan.zarr", voxel_size=1.0, chunks=CHUNKS)
    out = tmp_path / "out.zarr"
    job = {"command": "test", "input": str(scan.resolve())}
    failing = _Kernel(np.zeros(SHAPE, np.uint16), fail_at=20)
    with dask.config.set(scheduler="synchronous"), pytest.raises(RuntimeError):
        write_volume(open_volume(scan).data + failing.lazy(), out, voxel_size=1.0, chunks=CHUNKS, job=job)
    done = len(list((out / ".volmla-done" / "0").iterdir()))
    resumed = _Kernel(np.zeros(SHAPE, np.uint16))
    write_volume(open_volume(scan).data + resumed.lazy(), out, voxel_size=1.0, chunks=CHUNKS, job=job)
    assert 0 < done and resumed.calls == N_CHUNKS - done
    np.testing.assert_array_equal(open_volume(out).values, ref)


def test_input_fingerprint_sees_content_not_time(tmp_path: Path, ref: np.ndarray) -> None:
    a = write_volume(ref, tmp_path / "a.zarr", voxel_size=1.0, chunks=CHUNKS)
    first = input_fingerprint(a)
    assert input_fingerprint(a) == first
    same = write_volume(ref, tmp_path / "elsewhere" / "a.zarr", voxel_size=1.0, chunks=CHUNKS)
    os.utime(a / "0" / "zarr.json", (0, 0))
    assert input_fingerprint(a) == first  # timestamps are no content
    assert input_fingerprint(same) == first  # nor is where it lies
    chunk = a / "0" / "c" / "0" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[-1] ^= 1  # one bit of a sampled chunk (its checksum)
    chunk.write_bytes(bytes(data))
    assert input_fingerprint(a) != first
    changed = ref.copy()
    changed[-1, -1, -1] += 1  # the last chunk, always sampled
    write_volume(changed, tmp_path / "c.zarr", voxel_size=1.0, chunks=CHUNKS)
    assert input_fingerprint(tmp_path / "c.zarr") != first
    write_volume(ref, tmp_path / "d.zarr", voxel_size=2.0, chunks=CHUNKS)  # metadata only
    assert input_fingerprint(tmp_path / "d.zarr") != first
    tif = tmp_path / "slice.tif"
    tif.write_bytes(b"one")
    before = input_fingerprint(tif)
    tif.write_bytes(b"two")
    assert input_fingerprint(tif) != before
    job = {"command": "x", "input": str(same)}
    before_job = job_fingerprint(job)
    assert job_fingerprint(dict(reversed(job.items()))) == before_job
    write_volume(changed, same, voxel_size=1.0, chunks=CHUNKS, overwrite=True)  # same path, new content
    assert job_fingerprint(job) != before_job


# ----------------------------------------------------------------------------- item 6: checksums


def test_every_chunk_is_checksummed(tmp_path: Path, ref: np.ndarray) -> None:
    out = write_volume(ref, tmp_path / "v.zarr", voxel_size=1.0, chunks=CHUNKS, levels=2, kind="phases")
    for level in ("0", "1"):
        codecs = [c["name"] for c in json.loads((out / level / "zarr.json").read_text())["codecs"]]
        assert codecs == ["bytes", "blosc", "crc32c"]


def _flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupt_chunk_is_one_line_naming_volume_and_chunk(tmp_path: Path, ref: np.ndarray) -> None:
    out = write_volume(ref, tmp_path / "v.zarr", voxel_size=1.0, chunks=CHUNKS)
    bad = out / "0" / "c" / "1" / "2" / "0"
    _flip(bad, len(bad.read_bytes()) // 2)
    vol = open_volume(out)  # opening stays lazy and fine
    for read in (lambda: vol.values, lambda: vol[8:16, 16:20, 0:3].values, lambda: vol.data.sum().compute()):
        with pytest.raises(VolmlaError) as err:
            read()
        message = str(err.value)
        assert "\n" not in message
        assert f"volume {out}: chunk (1, 2, 0) of level 0" in message and "checksum mismatch" in message
        assert str(bad) in message
    np.testing.assert_array_equal(vol[:8].values, ref[:8])  # the other chunks still read
    (out / "0" / "c" / "0" / "0" / "0").write_bytes(b"\x00" * 7)  # truncated
    with pytest.raises(VolmlaError, match=r"chunk \(0, 0, 0\) of level 0 .* cannot be read"):
        vol[:8, :8, :8].compute()
    # a corrupt input never turns into a complete output
    with pytest.raises(VolmlaError, match="cannot be read"):
        write_volume(open_volume(out), tmp_path / "copy.zarr")
    with pytest.raises(VolmlaError, match="incomplete"):
        open_volume(tmp_path / "copy.zarr")


def test_volumes_without_checksum_still_open(tmp_path: Path, ref: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(volume_module, "_codecs", lambda codec: (codec,))  # as volmla wrote them before
    out = write_volume(ref, tmp_path / "old.zarr", voxel_size=1.0, chunks=CHUNKS)
    monkeypatch.undo()
    assert [c["name"] for c in json.loads((out / "0" / "zarr.json").read_text())["codecs"]] == ["bytes", "blosc"]
    np.testing.assert_array_equal(open_volume(out).values, ref)
    (out / "0" / "c" / "0" / "1" / "0").write_bytes(b"garbage")  # Blosc fails
    with pytest.raises(VolmlaError, match=r"chunk \(0, 1, 0\) of level 0 .* cannot be read \(\w+"):
        open_volume(out).compute()


# ----------------------------------------------------------------------------- item 12: unwritable outputs


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_output_says_so(tmp_path: Path) -> None:
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(VolmlaError, match=r"^cannot write output .*out\.zarr: permission denied$"):
            write_volume(np.ones((4, 4, 4), np.uint8), locked / "out.zarr", voxel_size=1.0)
    finally:
        locked.chmod(0o755)


def test_output_that_cannot_be_written_says_so(tmp_path: Path, ref: np.ndarray) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(VolmlaError, match=r"^cannot write output .*out\.zarr: "):
        write_volume(ref, blocker / "out.zarr", voxel_size=1.0)
    # a chunk store that turns unwritable mid-write is the output's fault, not the input's
    out = tmp_path / "out.zarr"
    with dask.config.set(scheduler="synchronous"), pytest.raises(RuntimeError):
        write_volume(_Kernel(ref, fail_at=3).lazy(), out, voxel_size=1.0, chunks=CHUNKS)
    remove(out / "0" / "c")
    (out / "0" / "c").write_text("")  # chunk folders can no longer be made
    with pytest.raises(VolmlaError, match=rf"^cannot write output {out}: "):
        write_volume(_Kernel(ref).lazy(), out, voxel_size=1.0, chunks=CHUNKS)


# ----------------------------------------------------------------------------- outputs that are not volumes


def _liberation_inputs() -> tuple[np.ndarray, np.ndarray]:
    particles = np.zeros((16, 16, 16), np.uint32)
    particles[2:7, 2:7, 2:7], particles[9:14, 9:14, 9:14] = 1, 2
    phases = (particles > 0).astype(np.uint8)
    phases[9:14, 9:14, 9:11] = 2
    return phases, particles


def _analyse(out: Path, **kwargs: object) -> object:
    from volmla.liberation import analyse

    phases, particles = _liberation_inputs()
    return analyse(phases, particles, out_dir=out, voxel_size=1.0, pieces=None, n_boot=0, section_step=None,
                   phase_names=["a", "b"], **kwargs)


def test_liberation_output_is_locked_and_a_failed_replacement_keeps_the_old_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from volmla.liberation import analysis

    out = tmp_path / "lib"
    _analyse(out)
    before = _tree(out)
    with output_lock(out), pytest.raises(VolmlaError, match="being written"):
        _analyse(out, overwrite=True)
    assert _tree(out) == before

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the disk filled up while drawing")

    monkeypatch.setattr(analysis, "write_html", broken)
    with pytest.raises(RuntimeError, match="disk filled up"):
        _analyse(out, overwrite=True)
    assert _tree(out) == before
    assert _leftovers(out) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["lib"]


def test_a_file_replaced_whole_or_not_at_all(tmp_path: Path) -> None:
    from volmla.io.atomic import replaced_file

    target = tmp_path / "report.json"
    target.write_text('{"old": true}')
    with pytest.raises(KeyboardInterrupt), replaced_file(target) as tmp:
        tmp.write_text('{"new": tr')  # cut short
        raise KeyboardInterrupt
    assert target.read_text() == '{"old": true}' and os.listdir(tmp_path) == ["report.json"]
    with replaced_file(target) as tmp:
        tmp.write_text('{"new": true}')
    assert json.loads(target.read_text()) == {"new": True} and os.listdir(tmp_path) == ["report.json"]


def test_correlation_report_is_locked(tmp_path: Path) -> None:
    from volmla.correlate import write_report

    report = {"ct": "ct.zarr", "minerals": ["quartz"], "erode": 1, "planes": []}
    write_report(report, tmp_path)
    before = _tree(tmp_path)
    with output_lock(tmp_path / "report.json"), pytest.raises(VolmlaError, match="being written"):
        write_report({**report, "erode": 2}, tmp_path)
    assert _tree(tmp_path) == before
