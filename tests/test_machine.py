"""jcnn.parallel.machine: the CPU record every benchmark stores, and the per-machine chunk size (no measuring in tests)."""
import json
import os

import jax
import pytest

from jcnn import train
from jcnn.parallel import machine
from jcnn.train import step

INTEL = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8488C
stepping\t: 8
flags\t\t: fpu vme sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 avx512f avx512dq avx512bw avx512vl avx512_bf16 \
avx512_fp16 avx512_vnni amx_bf16 amx_tile amx_int8 avx_vnni
bogomips\t: 4800.00

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: something else
flags\t\t: fpu
"""
AMD = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse4_2 fma avx avx2 f16c
"""


def test_parse_cpuinfo_intel_and_amd():
  intel = machine.parse_cpuinfo(INTEL)
  assert intel["model_name"] == "Intel(R) Xeon(R) Platinum 8488C" and intel["vendor"] == "GenuineIntel"
  assert (intel["family"], intel["model"]) == ("6", "143")
  assert {"avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"} <= set(intel["flags"])
  assert "sse" not in intel["flags"]                                   # only the recorded subset
  amd = machine.parse_cpuinfo(AMD)
  assert amd["model_name"] == "AMD EPYC 7B13" and amd["vendor"] == "AuthenticAMD"
  assert amd["flags"] == ["sse4_2", "avx", "avx2", "fma", "f16c"]     # in FLAGS order; no avx512 / amx
  assert machine.parse_cpuinfo("")["model_name"] == "unknown"


def test_cache_sizes_from_sysfs(tmp_path):
  for i, (level, kind, size) in enumerate([(1, "Data", "48K"), (1, "Instruction", "32K"), (2, "Unified", "1024K"),
                                           (3, "Unified", "32768K")]):
    d = tmp_path / f"index{i}"
    d.mkdir()
    for name, value in (("level", level), ("type", kind), ("size", size)):
      (d / name).write_text(f"{value}\n")
  assert machine.cache_sizes(str(tmp_path)) == {"L1d": 48 << 10, "L2": 1 << 20, "L3": 32 << 20}
  assert machine.cache_sizes(str(tmp_path / "missing")) == {}


def test_record_and_describe():
  rec = machine.record(123.4)
  assert rec["matmul_gflops"] == 123.4 and rec["cores"] >= 1 and rec["jax"] == jax.__version__ and rec["jaxlib"]
  line = machine.describe(rec)
  assert rec["model_name"] in line and "123 GFLOP/s" in line and f"{rec['cores']} cores" in line
  json.dumps(rec)                                                     # goes into the benchmark JSON as is


def test_chunk_choice_without_cache_is_the_default(monkeypatch):
  assert os.environ["JCNN_MACHINE_CACHE"] == "0"                      # conftest: tests never measure nor write
  assert machine.cache_dir() is None
  never = lambda batch: pytest.fail("measured although there is no machine cache")
  machine.cpu_micro_batch.cache_clear()
  assert machine.cpu_micro_batch(64, never, 16) == 16
  if jax.default_backend() == "cpu":
    assert train.micro_batch_size(64) == train.MICRO_BATCH_CPU   # what the train step asks for
  monkeypatch.setenv("JCNN_MICRO_BATCH_CPU", "0")                     # override: the whole batch
  machine.cpu_micro_batch.cache_clear()
  assert machine.cpu_micro_batch(64, never, 16) == 64
  monkeypatch.setenv("JCNN_MICRO_BATCH_CPU", "32")
  machine.cpu_micro_batch.cache_clear()
  assert machine.cpu_micro_batch(64, never, 16) == 32
  machine.cpu_micro_batch.cache_clear()


def test_chunk_choice_reads_the_cached_measurement(tmp_path, monkeypatch):
  monkeypatch.setenv("JCNN_MACHINE_CACHE", str(tmp_path))
  monkeypatch.setattr(step, "probe_chunk", lambda batch: pytest.fail("measured although cached"))
  (tmp_path / "machine.json").write_text(json.dumps({machine._key(64): {"chunk": 64}, machine._key(256): {"chunk": 16}}))
  machine.cpu_micro_batch.cache_clear()
  try:
    never = lambda batch: pytest.fail("measured although cached")
    assert machine.cpu_micro_batch(64, never, 16) == 64 and machine.cpu_micro_batch(256, never, 16) == 16
    if jax.default_backend() == "cpu":
      assert train.micro_batch_size(64) == 64 and train.micro_batch_size(256) == 16
      assert train.micro_batch_size(64, 16) == 16                     # explicit config.train.micro_batch wins
  finally:
    machine.cpu_micro_batch.cache_clear()


def test_chunk_choice_measures_once_and_caches(tmp_path, monkeypatch):
  monkeypatch.setenv("JCNN_MACHINE_CACHE", str(tmp_path))
  calls = []
  probe = lambda batch: calls.append(batch) or {"chunk": 32, "img_per_s": {}}
  machine.cpu_micro_batch.cache_clear()
  try:
    assert machine.cpu_micro_batch(128, probe, 16) == 32
    machine.cpu_micro_batch.cache_clear()
    assert machine.cpu_micro_batch(128, probe, 16) == 32 and calls == [128]   # a new process reads the file
    assert json.loads((tmp_path / "machine.json").read_text())[machine._key(128)]["chunk"] == 32
  finally:
    machine.cpu_micro_batch.cache_clear()


def test_chunk_choice_pairs_windows():
  """The probe compares each window's chunked rate with the whole batch's in the same window: a machine that slows
  down half-way (windows 3-5 at half speed) does not make a chunk size that lost every window look faster, as
  comparing separate medians did (chunk 16: median 700 > whole batch 600, yet 0.9x in each window)."""
  from jcnn.train import step  # pylint: disable=g-import-not-at-top
  whole = [1000.0, 1000.0, 600.0, 500.0, 500.0]
  chunked = [900.0, 900.0, 700.0, 450.0, 450.0]              # windows 1-2 ran while the other had the fast machine
  out = step.choose_chunk(64, {64: whole, 16: chunked})
  assert out["chunk"] == 64 and out["ratio"] == {"16": 0.9}
  assert step.choose_chunk(64, {64: whole, 16: [w * 1.05 for w in whole]})["chunk"] == 16     # 1.05 >= 1.03
  assert step.choose_chunk(64, {64: whole, 16: [w * 1.02 for w in whole]})["chunk"] == 64     # within the margin
