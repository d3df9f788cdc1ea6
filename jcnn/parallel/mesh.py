"""Several devices and hosts: the ('variant', 'data') mesh, where arrays live on it, and multi-process start-up.

    mesh_lib.initialize("10.0.0.1:1234", 2, process_id)   # several processes: first, before any other JAX call
    mesh = mesh_lib.make(config, n_variants=None)          # single run: Mesh {'variant': 1, 'data': all devices}
    ds = mesh_lib.load(config.data, mesh, seed)            # images sharded over 'data'; this process's shard only

Two named axes (`jax.sharding.Mesh`):
  variant  a sweep's leading variant axis V is split over it: each device trains V / variant of the variants, with no
           communication between them;
  data     each variant's batch is split over it. The model code does not change: its means over the batch axis
           (the loss, BatchNorm's statistics) are means over the global batch, and XLA's SPMD partitioner inserts the
           cross-device reductions (the gradient all-reduce, BatchNorm's cross-device mean).
The loop's jitted functions only say where their inputs and outputs live (`replicated`, `by_variant`, `by_data`).
Checkpoints restore into the current mesh's shardings, so a run saved on 4 devices resumes on 1 and the reverse.
"""
from __future__ import annotations

import dataclasses

import json
import os
import socket
import time
from typing import Any, Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jcnn import data as data_lib
from jcnn.errors import ConfigError

AXES = ("variant", "data")
ENV = {"coordinator_address": "JCNN_COORDINATOR_ADDRESS", "num_processes": "JCNN_NUM_PROCESSES",
       "process_id": "JCNN_PROCESS_ID"}


# ----------------------------------------------------------------------------------------------------------------
# The mesh.
def make(config, n_variants: int | None = None, devices=None, divide: int | None = None) -> Mesh:
  """The mesh of config.mesh over `devices` (default: every device of every process). `n_variants`: the variants
  of one sweep program (None for a single run); `divide`: a resumed sweep's program rows, which the variant axis must
  divide. Automatic axes (0): a single run puts every device on `data`; a sweep puts as many on `variant` as divide
  the device count without exceeding the variants, the rest on `data`."""
  devices = list(devices if devices is not None else jax.devices())
  n = len(devices)
  v, d = int(config.mesh.variant), int(config.mesh.data)
  divisors = [k for k in range(1, n + 1) if n % k == 0]
  if n_variants is None:
    if v > 1:
      raise ConfigError(f"config.mesh.variant={v}: a single run has no variants to split; set config.mesh.variant=1 "
                        f"(config.mesh.data splits its batch)")
    v = 1
  for name, k in (("variant", v), ("data", d)):
    if k and n % k:
      raise ConfigError(f"config.mesh.{name}={k} does not divide the {n} devices; use one of {_list(divisors)}")
  if v and d:
    if n % (v * d):
      raise ConfigError(f"config.mesh variant={v} x data={d} = {v * d} devices does not divide the {n} devices; "
                        f"make the product one of {_list(divisors)}")
  elif v:
    d = n // v
  elif d:
    v = n // d
  else:   # a sweep: variants first
    v = max(k for k in divisors if k <= max(n_variants, 1) and (divide is None or divide % k == 0))
    d = n // v
  if divide is not None and divide % v:
    raise ConfigError(f"config.mesh.variant={v} does not divide this resumed sweep's programs ({divide} variant rows "
                      f"each, padding included); resume with a variant axis that divides {divide}")
  if v * d != n and jax.process_count() > 1:
    raise ConfigError(f"config.mesh variant={v} x data={d} uses {v * d} of the {n} devices of {jax.process_count()} "
                      f"processes; with several processes the mesh must use every device (set its product to {n})")
  batch = int(config.train.batch_size)
  if batch % d:
    raise ConfigError(f"config.train.batch_size={batch} does not split over the {d} devices of config.mesh.data; use "
                      f"a batch size divisible by {d}, or set config.mesh.data to a divisor of {batch}")
  if d > 1 and config.train.micro_batch:
    raise ConfigError(f"config.train.micro_batch={config.train.micro_batch} chunks a batch on one device; with "
                      f"config.mesh.data={d} each device already takes batch_size / {d} examples: set micro_batch=0")
  return Mesh(np.asarray(devices[:v * d]).reshape(v, d), AXES)


def _list(ks) -> str:
  return ", ".join(map(str, ks))


def describe(mesh: Mesh) -> dict:
  """What config.json records and the run prints: axis sizes, devices, processes, platform."""
  devs = mesh.devices.flatten()
  return {"axes": {k: int(v) for k, v in mesh.shape.items()}, "devices": len(devs),
          "processes": len({d.process_index for d in devs}), "platform": devs[0].platform}


def line(mesh: Mesh) -> str:
  m = describe(mesh)
  return (f"mesh: variant={m['axes']['variant']} x data={m['axes']['data']} over {m['devices']} {m['platform']} "
          f"device(s) in {m['processes']} process(es)")


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def by_variant(mesh: Mesh) -> NamedSharding:
  """Leading axis split over `variant` (a sweep's stacked state, metrics, batch orders)."""
  return NamedSharding(mesh, P("variant"))


def by_data(mesh: Mesh) -> NamedSharding:
  """Leading axis split over `data` (a batch, the device-resident images)."""
  return NamedSharding(mesh, P("data"))


def axis(mesh: Mesh | None, name: str) -> int:
  return 1 if mesh is None else int(mesh.shape[name])


# ----------------------------------------------------------------------------------------------------------------
# Arrays on the mesh, and back on the host.
def put(x, sharding: NamedSharding) -> jax.Array:
  """A host array (the same on every process) as a global array with `sharding`: each process puts only the
  pieces of its own devices."""
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def put_rows(x: np.ndarray, mesh: Mesh) -> jax.Array:
  """[N, ...] split over `data` (padded with zero rows to a multiple of its size: nothing indexes them). Each process
  passes only the rows of its own devices to jax.make_array_from_process_local_data."""
  d = axis(mesh, "data")
  n_pad = -(-len(x) // d) * d
  sharding = by_data(mesh)
  shape = (n_pad,) + x.shape[1:]
  rows = sorted({(s[0].start or 0, s[0].stop or n_pad)
                 for s in sharding.addressable_devices_indices_map(shape).values()})
  lo, hi = rows[0][0], rows[-1][1]   # this process's devices hold one contiguous block of rows
  local = x[lo:min(hi, len(x))]
  if hi > len(x):
    local = np.concatenate([local, np.zeros((hi - max(lo, len(x)),) + x.shape[1:], x.dtype)])
  return jax.make_array_from_process_local_data(sharding, local, shape)


def load(cfg_data, mesh: Mesh, seed: int = 0, host: data_lib.Dataset | None = None,
         task: str = "classify") -> data_lib.Dataset:
  """data.load placed on the mesh: images split over `data` (each process keeps only its devices' rows), labels
  replicated (they are small, and every process needs them to read the batch order). `host`: the same dataset
  already loaded with numpy arrays (a sweep's plan loads it first), so it is not read twice."""
  host = host if host is not None else data_lib.load(cfg_data, seed=seed, put=np.asarray, task=task)
  rows = lambda x: x if x is None or host.streamed else put_rows(x, mesh)   # streamed: Rows stay on the host
  labels = lambda y: None if y is None else put(y, replicated(mesh))
  return dataclasses.replace(host, train_x=rows(host.train_x), train_y=labels(host.train_y),
                             test_x=rows(host.test_x), test_y=labels(host.test_y), val_x=rows(host.val_x),
                             val_y=labels(host.val_y))


def host(tree: Any) -> Any:
  """Every leaf as numpy, gathered from all processes when it is split across them (a collective then: every process
  must call it at the same point)."""
  def get(a):
    if not isinstance(a, jax.Array) or a.is_fully_addressable:
      return np.asarray(jax.device_get(a))
    if a.is_fully_replicated:
      return np.asarray(a.addressable_data(0))
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return np.asarray(multihost_utils.process_allgather(a, tiled=True))
  return jax.tree.map(get, tree)


def local(tree: Any) -> Any:
  """This process's part of every leaf (its variants), with no communication: for progress lines."""
  def get(a):
    if not isinstance(a, jax.Array) or a.is_fully_addressable:
      return np.asarray(jax.device_get(a))
    if a.is_fully_replicated:
      return np.asarray(a.addressable_data(0))
    shards = sorted(a.addressable_shards, key=lambda s: s.index[0].start or 0)
    seen, parts = set(), []
    for s in shards:
      if (s.index[0].start, s.index[0].stop) not in seen:
        seen.add((s.index[0].start, s.index[0].stop))
        parts.append(np.asarray(s.data))
    return np.concatenate(parts)
  return jax.tree.map(get, tree)


def is_main() -> bool:
  """Only process 0 writes results, plots, TensorBoard and config.json (orbax coordinates checkpoint writes)."""
  return jax.process_index() == 0


def sync(name: str):
  """Every process waits here for the others (no-op with one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def from_process_0(value: int) -> int:
  """Process 0's value on every process (a collective with several processes)."""
  if jax.process_count() == 1:
    return int(value)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return int(multihost_utils.broadcast_one_to_all(np.asarray(value, np.int64)))


def any_process(flag: bool) -> bool:
  """True when `flag` is True on any process (a collective with several processes)."""
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.any(multihost_utils.process_allgather(np.asarray([int(flag)]))))


# ----------------------------------------------------------------------------------------------------------------
# Several processes (hosts).
def settings(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1,
             environ: Mapping[str, str] | None = None) -> dict | None:
  """The multi-process settings from flags, else from $JCNN_COORDINATOR_ADDRESS / $JCNN_NUM_PROCESSES /
  $JCNN_PROCESS_ID; None for a single process. Checks them (one line each)."""
  env = os.environ if environ is None else environ
  addr = coordinator_address or env.get(ENV["coordinator_address"], "")
  try:
    n = num_processes or int(env.get(ENV["num_processes"], "0") or 0)
    pid = process_id if process_id >= 0 else int(env.get(ENV["process_id"], "-1") or -1)
  except ValueError as e:
    raise ConfigError(f"${ENV['num_processes']} / ${ENV['process_id']} must be integers ({e})") from None
  if not addr and not n and pid < 0:
    return None
  if not addr:
    raise ConfigError("several processes need --coordinator_address=HOST:PORT (process 0's host and a free port)")
  host_, _, port = addr.rpartition(":")
  if not host_ or not port.isdigit() or not 0 < int(port) < 65536:
    raise ConfigError(f"--coordinator_address={addr!r}: write it as HOST:PORT, e.g. 10.0.0.1:12355")
  if n < 1:
    raise ConfigError(f"--num_processes={n}: set it to the number of processes (>= 1) with --coordinator_address")
  if not 0 <= pid < n:
    raise ConfigError(f"--process_id={pid}: must be one of 0-{n - 1} for --num_processes={n} (0 runs the "
                      f"coordinator)")
  return {"coordinator_address": addr, "num_processes": n, "process_id": pid}


def initialize(coordinator_address: str, num_processes: int, process_id: int, timeout_s: float = 120.0):
  """jax.distributed.initialize for `num_processes` processes, after a handshake that turns the failures JAX would
  abort on (a coordinator that cannot be reached, process counts or ids that disagree) into one-line ConfigErrors.
  CPU collectives go through gloo."""
  if num_processes == 1:
    return
  _handshake(coordinator_address, num_processes, process_id, timeout_s)
  same_cpu_chunks()
  jax.config.update("jax_cpu_collectives_implementation", "gloo")   # CPU devices (GPUs use NCCL regardless)
  jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                             process_id=process_id, initialization_timeout=int(max(timeout_s, 1)))


def same_cpu_chunks():
  """Every process must compile the same program, so none measures its own CPU chunk size (jcnn.parallel.machine): all
  use jcnn.train.MICRO_BATCH_CPU, or $JCNN_MICRO_BATCH_CPU when set."""
  os.environ["JCNN_MACHINE_CACHE"] = "0"


def _handshake(address: str, n: int, pid: int, timeout_s: float):
  """Process 0 listens on the coordinator's port until the other n - 1 processes have said (id, count); every
  process learns that all ids 0..n-1 are present once and that the counts agree, or gets a line saying what is
  wrong. The port is closed again before JAX's coordination service binds it."""
  host_, _, port = address.rpartition(":")
  port = int(port)
  deadline = time.monotonic() + timeout_s
  if pid == 0:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
      srv.bind(("" if host_ not in ("127.0.0.1", "localhost") else host_, port))
    except OSError as e:
      raise ConfigError(f"process 0 cannot listen on {address} ({e.strerror}): is another process 0 running, or "
                        f"the port taken? pick a free port for --coordinator_address") from None
    srv.listen(n)
    peers, conns, problem = set(), [], None
    try:
      while len(peers) < n - 1 and problem is None:
        srv.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
          conn, _ = srv.accept()
        except socket.timeout:
          missing = sorted(set(range(1, n)) - set(peers))
          raise ConfigError(f"process 0 waited {timeout_s:.0f} s at {address} for process(es) {_list(missing)} of "
                            f"{n}; start them with --coordinator_address={address} --num_processes={n}") from None
        conn.settimeout(5)
        try:
          msg = json.loads(conn.recv(256).decode())
        except (OSError, ValueError):
          conn.close()
          continue
        other, other_n = int(msg.get("id", -1)), int(msg.get("n", -1))
        if other_n != n:
          problem = f"process {other} says --num_processes={other_n}, process 0 says {n}"
        elif other in peers or other == 0:
          problem = f"two processes say --process_id={other}"
        peers.add(other)
        conns.append(conn)
      for conn in conns:
        _send(conn, {"error": problem} if problem else {"ok": True})
        conn.close()
    finally:
      srv.close()
    if problem:
      raise ConfigError(f"the processes disagree: {problem}; give each process its own --process_id in 0-{n - 1} "
                        f"and the same --num_processes")
    return
  while True:   # the others: connect (retrying until the deadline), say who we are, wait for the verdict
    try:
      conn = socket.create_connection((host_, port), timeout=max(min(deadline - time.monotonic(), 5), 0.01))
      break
    except OSError as e:
      if time.monotonic() >= deadline:
        raise ConfigError(f"process {pid} could not reach the coordinator at {host_} port {port} within "
                          f"{timeout_s:.0f} s ({e.strerror or e}); start process 0 there first, or fix "
                          f"--coordinator_address") from None
      time.sleep(0.2)
  try:
    _send(conn, {"id": pid, "n": n})
    conn.settimeout(max(deadline - time.monotonic(), 0.01) + 5)
    reply = json.loads(conn.recv(1024).decode() or "{}")
  except (OSError, ValueError) as e:
    raise ConfigError(f"process {pid} lost the coordinator at {address} during the handshake ({e}); start all "
                      f"processes again") from None
  finally:
    conn.close()
  if "error" in reply:
    raise ConfigError(f"the processes disagree: {reply['error']}; give each process its own --process_id in "
                      f"0-{n - 1} and the same --num_processes")
  if not reply.get("ok"):
    raise ConfigError(f"process {pid}: the coordinator at {address} did not answer the handshake; start all "
                      f"processes again")


def _send(conn, msg: dict):
  try:
    conn.sendall(json.dumps(msg).encode())
  except OSError:
    pass
