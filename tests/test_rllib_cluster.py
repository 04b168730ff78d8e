"""Scale-out: the RLlib path on a two-node Ray cluster simulated on one machine (ray.cluster_utils.Cluster)."""

import time

import pytest

pytest.importorskip("ray")
pytest.importorskip("nle")

import ray
from ray.cluster_utils import Cluster

from crossmoe.integrations.rllib import nethack_ppo_config


@pytest.mark.slow  # about a minute: two nodes, two env runners, four small iterations
def test_env_runners_on_two_nodes_and_training_goes_on_without_the_worker_node():
    if ray.is_initialized():
        pytest.skip("needs its own Ray cluster; another test's Ray session is still up")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker = cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
    algo = None
    try:
        cluster.wait_for_nodes()
        config = nethack_ppo_config(
            "NetHackScore-v0", num_env_runners=2, schedule_total=512, model_config={"dim": 32}, seed=1
        ).training(train_batch_size_per_learner=128, minibatch_size=64, num_epochs=1)
        config = config.env_runners(num_envs_per_env_runner=2, num_cpus_per_env_runner=1)
        algo = config.build_algo()
        algo.train()
        nodes = algo.env_runner_group.foreach_env_runner(
            lambda runner: ray.get_runtime_context().get_node_id(), local_env_runner=False
        )
        assert sorted(nodes) == sorted([cluster.head_node.node_id, worker.node_id])  # one runner per node

        cluster.remove_node(worker)
        steps = algo.metrics.peek(("env_runners", "num_env_steps_sampled_lifetime"), default=0)
        deadline = time.monotonic() + 120
        trained = 0
        while trained < 2 and time.monotonic() < deadline:
            algo.train()
            trained += 1
        after = algo.metrics.peek(("env_runners", "num_env_steps_sampled_lifetime"), default=0)
        assert trained == 2 and after > steps  # the head node's runner goes on sampling, and the learner learning
        assert algo.env_runner_group.num_healthy_remote_env_runners() == 1
    finally:
        if algo is not None:
            algo.stop()
        ray.shutdown()
        cluster.shutdown()
