"""Unit tests of highnoon.distribute that need no second process."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from highnoon.distribute import cluster, consistency, hosts
from highnoon.distribute.errors import ConfigMismatchError, PeerFailureError, TPUUnreachableError
from highnoon.utils.validation import InvalidArgumentError

# --- TF_CONFIG / worker_hosts -----------------------------------------------------------------


def test_tf_config_from_worker_hosts():
    config = cluster.tf_config_from_worker_hosts("10.0.0.1:2222, 10.0.0.2:2222", 1)
    assert config == {
        "cluster": {"worker": ["10.0.0.1:2222", "10.0.0.2:2222"]},
        "task": {"type": "worker", "index": 1},
    }


@pytest.mark.parametrize(
    ("hosts", "index", "match"),
    [
        ("a:1,b:2", 2, r"task_index=2 is out of range for 2 worker_hosts \(allowed 0..1\)"),
        ("a:1,b", 0, r"worker_hosts\[1\]='b' must be 'host:port' with a port in \[1, 65535\]"),
        ("a:1,b:65536", 0, r"worker_hosts\[1\]='b:65536' must be 'host:port' with a port in"),
        (":1,b:2", 0, r"worker_hosts\[0\]=':1' must be 'host:port'"),
        ("a:1,b:2", True, r"task_index=True must be an integer \(got bool\)"),
        ("a:1,host:99999", 0, r"worker_hosts\[1\]='host:99999' must be 'host:port' with a port in"),
        ("host:0", 0, r"worker_hosts\[0\]='host:0' must be 'host:port' with a port in"),
        ("a:1,a:1", 0, "duplicate"),
        ("", 0, "comma-separated list"),
        ("a:1", 0.0, r"task_index=0\.0 must be an integer \(got float\)"),
    ],
)
def test_tf_config_from_worker_hosts_rejects_bad_input(hosts, index, match):
    with pytest.raises(InvalidArgumentError, match=match):
        cluster.tf_config_from_worker_hosts(hosts, index)


def test_set_tf_config_writes_env():
    env: dict[str, str] = {}
    cluster.set_tf_config("h:1,h:2", 0, env=env)
    assert json.loads(env["TF_CONFIG"])["task"] == {"type": "worker", "index": 0}
    assert cluster.read_tf_config(env)["cluster"]["worker"] == ["h:1", "h:2"]


def test_collective_tasks_orders_chief_then_workers():
    config = {"cluster": {"worker": ["w0:1", "w1:1"], "chief": ["c:1"], "ps": ["p:1"]}}
    assert cluster.collective_tasks(config) == [
        ("chief", 0, "c:1"),
        ("worker", 0, "w0:1"),
        ("worker", 1, "w1:1"),
    ]


# --- the auto decision ------------------------------------------------------------------------


def _decide(env, **kwargs):
    return cluster.decide_strategy_kind("auto", env=env, tpu_present=False, **kwargs)


def test_auto_one_device_mirrored_and_tpu():
    assert _decide({}) == "one_device"
    assert _decide({}, num_gpus=1) == "one_device"
    assert _decide({}, num_gpus=2) == "mirrored"
    assert _decide({}, tpu="my-tpu") == "tpu"
    assert cluster.decide_strategy_kind("auto", env={}, tpu_present=True) == "tpu"


def test_auto_multi_worker_from_tf_config():
    two = json.dumps(cluster.tf_config_from_worker_hosts("a:1,b:1", 0))
    one = json.dumps(cluster.tf_config_from_worker_hosts("a:1", 0))
    assert _decide({"TF_CONFIG": two}) == "multi_worker"
    assert _decide({"TF_CONFIG": one}) == "one_device"


def test_auto_multi_worker_from_slurm():
    slurm = {"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_JOB_NUM_NODES": "4"}
    assert _decide(slurm, num_gpus=2) == "multi_worker"
    assert _decide({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) == "one_device"
    # The step's task count (inside srun) beats the job's.
    assert _decide({"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_STEP_NUM_TASKS": "1"}) == (
        "one_device"
    )
    assert _decide({"SLURM_PROCID": "0", "SLURM_JOB_NUM_NODES": "2"}) == "multi_worker"


def test_unknown_kind_lists_valid_kinds():
    with pytest.raises(ValueError, match=r"unknown strategy kind 'gpu'; valid kinds: auto, tpu"):
        cluster.canonical_kind("gpu")
    assert cluster.canonical_kind("multi_worker_mirrored") == "multi_worker"
    assert cluster.decide_strategy_kind("MIRRORED", env={}) == "mirrored"


def test_tpu_vm_detection(tmp_path):
    dev = tmp_path / "dev"
    (dev / "vfio").mkdir(parents=True)
    assert not cluster.tpu_vm_present({}, str(dev))
    (dev / "vfio" / "0").touch()
    assert cluster.tpu_vm_present({"TPU_ACCELERATOR_TYPE": "v5litepod-8"}, str(dev))
    (dev / "accel0").touch()
    assert cluster.tpu_vm_present({}, str(dev))


# --- TPU --------------------------------------------------------------------------------------


def test_tpu_resolver_kwargs():
    assert cluster.tpu_resolver_kwargs("local", "z", "p") == {"tpu": "local"}
    assert cluster.tpu_resolver_kwargs("grpc://10.1.2.3:8470", "z", "p") == {
        "tpu": "grpc://10.1.2.3:8470"
    }
    assert cluster.tpu_resolver_kwargs("my-tpu", "us-central2-b", "proj") == {
        "tpu": "my-tpu",
        "zone": "us-central2-b",
        "project": "proj",
    }
    assert cluster.tpu_resolver_kwargs("my-tpu") == {"tpu": "my-tpu"}
    with pytest.raises(ValueError, match="tpu must be 'local'"):
        cluster.tpu_resolver_kwargs("")


def test_named_tpu_off_google_cloud_fails_fast_without_network(monkeypatch):
    from highnoon.distribute import create_strategy

    monkeypatch.setattr(cluster, "on_google_cloud", lambda *a: False)
    with pytest.raises(TPUUnreachableError, match=r"no TPU was reachable at 'my-tpu'"):
        create_strategy("tpu", tpu="my-tpu", num_gpus=0)


def test_create_strategy_validates_before_work():
    from highnoon.distribute import create_strategy

    with pytest.raises(ValueError, match="unknown strategy kind 'tpus'"):
        create_strategy("tpus")
    with pytest.raises(ValueError, match="peer_timeout_seconds must be > 0, got 0"):
        create_strategy("one_device", peer_timeout_seconds=0)
    with pytest.raises(ValueError, match="worker_hosts and task_index go together"):
        create_strategy("auto", worker_hosts="a:1,b:1")


def test_create_strategy_refuses_a_bad_worker_port_before_writing_tf_config(monkeypatch):
    from highnoon.distribute import create_strategy

    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(
        InvalidArgumentError,
        match=r"worker_hosts\[0\]='localhost:99999' must be 'host:port' with a port in \[1, 65535\]",
    ):
        create_strategy("auto", worker_hosts="localhost:99999,localhost:2222", task_index=0)
    assert "TF_CONFIG" not in os.environ


# --- hosts ------------------------------------------------------------------------------------


def test_input_host_info():
    import tensorflow as tf

    ctx = tf.distribute.InputContext(num_input_pipelines=4, input_pipeline_id=2)
    assert hosts.input_host_info(ctx) == (2, 4)
    assert hosts.input_host_info(None) == (0, 1)


class _FakeStrategy:
    def __init__(self, cluster_spec, task_type, task_id):
        import tensorflow as tf

        self.cluster_resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec(cluster_spec), task_type=task_type, task_id=task_id
        )


def test_chief_and_task_info():
    workers = {"worker": ["a:1", "b:1"]}
    assert hosts.is_chief(_FakeStrategy(workers, "worker", 0))
    assert not hosts.is_chief(_FakeStrategy(workers, "worker", 1))
    assert hosts.task_info(_FakeStrategy(workers, "worker", 1)) == ("worker", 1)
    with_chief = {"chief": ["c:1"], "worker": ["a:1"]}
    assert hosts.is_chief(_FakeStrategy(with_chief, "chief", 0))
    assert not hosts.is_chief(_FakeStrategy(with_chief, "worker", 0))


def test_write_dir_chief_and_worker(tmp_path):
    import tensorflow as tf

    model_dir = str(tmp_path / "model")
    assert hosts.write_dir(model_dir, tf.distribute.OneDeviceStrategy("/cpu:0")) == model_dir
    worker = _FakeStrategy({"worker": ["a:1", "b:1"]}, "worker", 1)
    path = hosts.write_dir(model_dir, worker)
    assert path != model_dir and "highnoon-worker-1-" in os.path.basename(path)
    os.makedirs(path)
    hosts.cleanup_write_dir(path, model_dir)
    assert not os.path.exists(path)
    os.makedirs(model_dir)
    hosts.cleanup_write_dir(model_dir, model_dir)  # never removes model_dir
    assert os.path.isdir(model_dir)


# --- verify_consistent ------------------------------------------------------------------------


def test_fingerprint_is_exact_31_bit_chunks():
    fp = consistency.fingerprint("hello")
    assert fp.dtype == np.int32 and fp.shape == (consistency.CHUNKS,)
    assert (fp >= 0).all()
    assert (fp == consistency.fingerprint("hello")).all()
    assert not (fp == consistency.fingerprint("hellp")).all()


def test_disagreements_names_parts_and_replica_groups():
    a, b = consistency.fingerprint("a"), consistency.fingerprint("b")
    gathered = np.stack([np.stack([a, a]), np.stack([a, b]), np.stack([a, a])])
    problems = consistency._disagreements(gathered, ["config", "curriculum"])
    assert [name for name, _ in problems] == ["curriculum"]
    assert "replicas [0, 2]" in problems[0][1] and "replicas [1]" in problems[0][1]


@pytest.mark.parametrize("kind", ["one_device", "mirrored"])
def test_verify_consistent_single_process(kind):
    from highnoon.distribute import create_strategy, verify_consistent

    strategy = create_strategy(kind, num_gpus=0)
    verify_consistent(strategy, {"config": "x", "data": "y", "curriculum": "z"})
    with pytest.raises(ValueError, match="at least one part"):
        verify_consistent(strategy, {})
    with pytest.raises(ValueError, match="part values must be str"):
        verify_consistent(strategy, {"config": 3})
    assert issubclass(ConfigMismatchError, ValueError)


# --- peer_failure_guard -----------------------------------------------------------------------


def test_peer_failure_guard_converts_peer_errors_only():
    import tensorflow as tf

    from highnoon.distribute import peer_failure_guard

    expected = r"peer failure: .*UnavailableError: .*peer gone"
    with pytest.raises(PeerFailureError, match=expected), peer_failure_guard(exit_process=False):
        raise tf.errors.UnavailableError(None, None, "Graph execution error:\npeer gone")
    with pytest.raises(tf.errors.InvalidArgumentError), peer_failure_guard(exit_process=False):
        raise tf.errors.InvalidArgumentError(None, None, "bad shape")


def test_missing_peers_message_names_tasks():
    from highnoon.distribute.bounded import missing_peers_message, probe_address

    message = missing_peers_message(
        [("worker", 1, "127.0.0.1:1"), ("worker", 2, "h:2")], 10, [False, True]
    )
    assert "missing peers (nothing listening): worker:1 at 127.0.0.1:1" in message
    assert "listening but not joined: worker:2 at h:2" in message
    assert not probe_address("127.0.0.1:1", timeout=0.5)
